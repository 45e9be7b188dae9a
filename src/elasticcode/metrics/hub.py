"""Where views are made and handed out: every interval the hub turns each flow's worker reports
into a view and its events (``view``), keeps the newest view per flow (for the API and
Prometheus), records the interval in the history when asked, and puts what each subscriber
asked for into its queue. A server runs one for its network, ``elasticcode run --metrics``
one for its flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..flow import Flow
from ..store import WorkerReport
from .history import History
from .view import FlowMetrics

log = logging.getLogger("elasticcode.metrics")

#: How often views are made, in seconds.
INTERVAL = 1.0
#: Messages a subscriber may fall behind by; past it, the oldest are dropped (and counted).
BACKLOG = 100


@dataclass(eq=False)
class Subscription:
    """One subscriber: what it asked for, and what may be shown to it."""

    flow: str | None = None
    processor: str | None = None
    connection: str | None = None
    #: one host's (an agent's) views and events only
    host: str | None = None
    #: whether the subscriber may see a flow (by name)
    allowed: Callable[[str], bool] = lambda _: True
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=BACKLOG)
    )
    dropped: int = 0

    def pick(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The part of ``message`` (a view or an event) this subscriber asked for, or None."""
        flow = message.get("flow")
        if flow is None or not self.allowed(flow) or self.flow not in (None, flow):
            return None
        if message["type"] != "metrics":
            if self.host not in (None, message.get("host")):
                return None
            return message if self.processor in (None, message.get("processor")) else None
        if message.get("host") != self.host:
            return None  # a host's view for that host's subscribers, the flow's for the rest
        if self.processor is None and self.connection is None:
            return message
        procs = message["processors"]
        conns = message["connections"]
        if self.processor is not None:
            procs = {k: v for k, v in procs.items() if k == self.processor}
            conns = {
                k: c
                for k, c in conns.items()
                if self.processor in (c["from"].split(".")[0], c["to"].split(".")[0])
            }
        if self.connection is not None:
            procs = {}
            conns = {k: c for k, c in conns.items() if self.connection in (k, c["queue"])}
        return {**message, "processors": procs, "connections": conns}

    def put(self, message: dict[str, Any]) -> None:
        picked = self.pick(message)
        if picked is None:
            return
        if self.queue.full():  # a slow reader loses the oldest, never the newest
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(picked)


class MetricsHub:
    def __init__(self, history: History | None = None) -> None:
        self.history = history
        self.subscribers: set[Subscription] = set()
        #: the newest view and reports of each flow
        self.views: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, list[WorkerReport]] = {}
        self._metrics: dict[str, FlowMetrics] = {}
        #: (flow, host) → the metrics of one host's workers, while someone asks for them
        self._hosts: dict[tuple[str, str], FlowMetrics] = {}

    def tick(
        self,
        flows: list[tuple[Flow, list[WorkerReport]]],
        record: bool = True,
        depths: dict[str, tuple[int, int]] | None = None,
    ) -> list[dict[str, Any]]:
        """One interval: the views and events of ``flows`` (each with its workers' reports).
        Blocking (it may write the history): call it off the event loop."""
        out: list[dict[str, Any]] = []
        names = set()
        hosts = {sub.host for sub in list(self.subscribers) if sub.host}
        for flow, reports in flows:
            names.add(flow.name)
            fm = self._metrics.get(flow.name)
            if fm is None:
                fm = self._metrics[flow.name] = FlowMetrics(flow)
            fm.flow = flow  # a new revision: its processors and connections from now on
            view, events, deltas = fm.update(reports, depths)
            self.views[flow.name], self.reports[flow.name] = view, reports
            if record and self.history is not None and view["interval"]:
                try:
                    self.history.record(view, deltas)
                except Exception as exc:  # the views still go out; the next interval tries
                    log.warning("cannot record the metrics history of %s: %s", flow.name, exc)
            out.append(view)
            out.extend(events)
            for host in hosts:
                hm = self._hosts.get((flow.name, host))
                if hm is None:
                    hm = self._hosts[(flow.name, host)] = FlowMetrics(flow)
                hm.flow = flow
                mine = [r for r in reports if r.host == host]
                host_view, _, _ = hm.update(mine, None)  # its events are in the flow's
                out.append({**host_view, "host": host})
        for key in [k for k in self._hosts if k[0] not in names or k[1] not in hosts]:
            del self._hosts[key]
        for gone in set(self._metrics) - names:  # flows removed
            del self._metrics[gone]
            self.views.pop(gone, None)
            self.reports.pop(gone, None)
        return out

    def publish(self, messages: list[dict[str, Any]]) -> None:
        """Hand each message to the subscribers that asked for it (on the event loop)."""
        for sub in list(self.subscribers):
            for m in messages:
                sub.put(m)


async def feed(
    ws: Any,
    sub: Subscription,
    subscribers: set[Subscription],
    hello: dict[str, Any],
    now: list[dict[str, Any]],
) -> None:
    """Serve one subscriber on its websocket (starlette's) until it leaves: ``hello``, the
    views there are ``now``, then what the hub puts in its queue."""
    from starlette.websockets import WebSocketDisconnect

    subscribers.add(sub)
    try:
        await ws.send_json(hello)
        for view in now:
            sub.put(view)
        while True:
            await ws.send_json(await sub.queue.get())
    except WebSocketDisconnect:
        pass
    finally:
        subscribers.discard(sub)
