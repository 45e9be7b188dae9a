"""What a request must be before any route sees it: addressed to this server by a name it
answers to (no DNS rebinding), from no foreign web page (no cross-site requests), and not
larger than the server takes.

A browser sends ``Origin`` with cross-site requests and websocket handshakes; a request that
carries one whose host is not one of this server's names is refused, so a page on another
site cannot drive the API with a user's credentials. Requests without it (the CLI, agents,
scripts) are not browsers' and pass.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The largest request body taken (a flow document of thousands of processors fits).
MAX_BODY = 16 * 2**20


class Guard:
    """ASGI middleware: host names, origins and body size (see the module docstring)."""

    def __init__(self, app: App, hosts: Iterable[str], max_body: int = MAX_BODY) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.max_body = max_body

    def _ours(self, host: str) -> bool:
        name = host.lower()
        if name.startswith("["):  # [::1]:8750
            name = name[1 : name.find("]")]
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        return name in self.hosts or "*" in self.hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not self._ours(host):
            await _refuse(scope, send, 421, f"this server does not answer to the host {host!r}")
            return
        origin = headers.get("origin")
        if origin is not None and origin != "null" and not self._ours(urlsplit(origin).netloc):
            await _refuse(scope, send, 403, f"requests from the web page at {origin} are refused")
            return
        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _refuse(scope, send, 413, f"request body over {self.max_body:,} bytes")
                return
            receive = self._limited(receive)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except _TooLarge:
            if not started:
                await _refuse(scope, send, 413, f"request body over {self.max_body:,} bytes")

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        return limited


class _TooLarge(Exception):
    pass


async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4403, "reason": detail[:120]})
        return
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def local_names(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """The names a server bound to ``bind`` answers to: loopback, the host's names and (bound
    to every address) every address of this host, and ``extra``."""
    import socket

    names = {"localhost", "127.0.0.1", "::1", *extra}
    for name in (socket.gethostname(), socket.getfqdn()):
        names.add(name.lower())
    if bind in ("0.0.0.0", "::", ""):
        names |= _addresses()
    else:
        names.add(bind.lower())
    return names


def _addresses() -> set[str]:
    """Every address of this host's interfaces (Linux), else those its name resolves to."""
    import socket

    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
        for prev, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(prev.split()[-1])
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                found.add(str(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw))))
    except OSError:
        pass
    with contextlib.suppress(OSError):
        found |= {str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)}
    return found
