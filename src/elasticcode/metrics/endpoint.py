"""The metrics endpoint of a one-host run (``elasticcode run --metrics-port PORT``) and of an
agent (``elasticcode agent start --metrics-port PORT``): the same Prometheus scrape
(``/metrics``) and websocket stream (``/metrics/stream``, narrowed by ``?flow=``,
``?processor=`` or ``?connection=``) as a server's, on 127.0.0.1 only, off unless asked.

It needs the ``server`` extra (uvicorn, starlette). It runs in a thread of its own, with its
own event loop, so that it never holds up its owner, who hands it each interval's views.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ..errors import ElasticCodeError
from .hub import MetricsHub, Subscription, feed

#: Subscribers the endpoint takes at once.
MAX_SUBSCRIBERS = 100


class Endpoint:
    def __init__(self, hub: MetricsHub, port: int) -> None:
        try:
            import uvicorn
            from starlette.applications import Starlette
            from starlette.routing import Route, WebSocketRoute

            from . import prometheus  # noqa: F401  (prometheus-client, of the same extra)
        except ImportError:
            raise ElasticCodeError(
                "--metrics-port needs the server extra: pip install 'elasticcode[server]'"
            ) from None
        self.hub, self.port = hub, port
        self.subscribers: set[Subscription] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        app = Starlette(
            routes=[
                Route("/metrics", self._prometheus),
                WebSocketRoute("/metrics/stream", self._stream),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="metrics-endpoint", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen; an error saying why if the port cannot be had."""
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ElasticCodeError(
                    f"cannot serve metrics on 127.0.0.1:{self.port} (is the port in use?); "
                    "choose another with --metrics-port"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    def publish(self, messages: list[dict[str, Any]]) -> None:
        """Hand an interval's views and events to the subscribers (from the run's thread)."""
        if self.loop is not None and messages:
            self.loop.call_soon_threadsafe(self._publish, messages)

    def _publish(self, messages: list[dict[str, Any]]) -> None:
        for sub in list(self.subscribers):
            for m in messages:
                sub.put(m)

    def _serve(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()  # in a thread: it leaves the run's signals alone

        asyncio.run(main())

    async def _prometheus(self, _: Any) -> Any:
        from starlette.responses import Response

        from .prometheus import CONTENT_TYPE, exposition

        body = exposition(dict(self.hub.reports), list(self.hub.views.values()))
        return Response(body, media_type=CONTENT_TYPE)

    async def _stream(self, ws: Any) -> None:
        await ws.accept()
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            await ws.close(code=4429, reason="too many subscribers; try again later")
            return
        q = ws.query_params
        sub = Subscription(q.get("flow"), q.get("processor"), q.get("connection"))
        hello = {"type": "hello", "v": 1}
        await feed(ws, sub, self.subscribers, hello, list(self.hub.views.values()))
