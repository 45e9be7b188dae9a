"""What a server does in the background: lead (when it holds the lease), pump new events
to the event stream's subscribers, and (leading) sweep the claim check's orphaned blobs.
(Watching assignments for waiting agents: ``changes``.)

A change made through a server (``Nudge``: any request that writes, but an agent's
heartbeat) starts its leader's next round at once rather than at the next ``tick``, so it
reaches the agents sooner: on this server when it leads, else through PostgreSQL
(``network.nudges``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from starlette.concurrency import run_in_threadpool

from ...autoscale import host_cores
from ...claimcheck import SWEEP_EVERY, SWEEP_GRACE, ClaimCheckBroker
from ...flow import Flow
from ...metrics.hub import INTERVAL
from .. import nudges
from ..cluster import Cluster
from ..leader import LEADING
from .context import Server
from .deadletters import flow_broker

log = logging.getLogger("elasticcode.server")


async def lead(srv: Server) -> None:
    """Run the leader's rounds for as long as the server runs (each a no-op unless it leads)."""
    backoff = 1.0
    said: set[str] = set()
    while True:
        try:
            notes = await run_in_threadpool(srv.leader.round)
            if (notes is not None) != srv.leading:
                srv.leading = notes is not None
                log.info("%s", "leading" if notes is not None else "following the leader")
            for n in notes or []:
                if n not in said:  # a standing condition is said once, not every round
                    log.info("%s", n)
            said = set(notes or [])
            backoff = 1.0
        except Exception as exc:
            srv.leading = False
            log.warning("cannot reach the state store (%s); retrying in %.0fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(srv.nudged.wait(), srv.settings.tick)
        srv.nudged.clear()


#: Requests that change nothing the leader places by.
CALM = ("GET", "HEAD", "OPTIONS")


class Nudge:
    """ASGI middleware: a request that changed something (it wrote, and was answered below
    400) starts the leader's next round at once; an agent's heartbeat does not."""

    def __init__(self, app: Any, srv: Server) -> None:
        self.app = app
        self.srv = srv
        #: one NOTIFY at a time; a change made meanwhile asks for one more after it
        self._telling: asyncio.Task[None] | None = None
        self._again = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in CALM
            or scope["path"].endswith("/heartbeat")
        ):
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                self.srv.nudged.set()
                if not self.srv.leading and nudges.can_nudge(self.srv.cluster.engine):
                    self._tell_leader()
            await send(message)

        await self.app(scope, receive, sending)

    def _tell_leader(self) -> None:
        if self._telling is not None and not self._telling.done():
            self._again = True  # the NOTIFY under way may have left before this change
            return
        self._telling = asyncio.create_task(self._notify())

    async def _notify(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await run_in_threadpool(nudges.notify, self.srv.cluster.engine)
            except Exception as exc:  # the leader's tick comes anyway
                log.warning("cannot nudge the leader: %s", exc)
                return


async def listen_for_nudges(srv: Server) -> None:
    """A change made through another server starts this one's round at once, when it leads."""
    if not nudges.can_nudge(srv.cluster.engine):
        return
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(srv.nudged.set)

    try:
        await asyncio.to_thread(nudges.listen, srv.cluster.engine, wake, stop)
    finally:
        stop.set()  # cancelled: the listening thread ends within a second


async def pump_events(srv: Server) -> None:
    """Hand every new event to each subscriber's queue (a full queue misses it)."""
    after = await run_in_threadpool(_last_event_id, srv.cluster)
    while True:
        try:
            for e in await run_in_threadpool(srv.cluster.events, after):
                after = e["id"]
                for q in list(srv.subscribers):
                    with contextlib.suppress(asyncio.QueueFull):
                        q.put_nowait({"type": "event", **e})
        except Exception as exc:
            log.warning("cannot read events: %s", exc)
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.25)


async def sweep_blobs(srv: Server) -> None:
    """Leading, every ``SWEEP_EVERY``: each flow with a blob store loses the orphans that
    workers killed between acknowledging a message and deleting its blob left."""
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        if not srv.leading:
            continue
        try:
            runs = await run_in_threadpool(srv.cluster.runs)
        except Exception as exc:
            log.warning("cannot sweep blob stores: %s", exc)
            continue
        for name, revision, _ in runs:
            flow = srv.cluster.parsed(name, revision)
            if not flow.settings.blobs:
                continue
            try:
                broker = await flow_broker(srv, flow)
                try:
                    assert isinstance(broker, ClaimCheckBroker)
                    if swept := await broker.sweep(SWEEP_GRACE):
                        log.info("%s: deleted %d blob(s) that stopped workers left", name, swept)
                finally:
                    await broker.close()
            except Exception as exc:  # a store or broker away: the next sweep tries again
                log.warning("%s: cannot sweep its blob store: %s", name, exc)


def _last_event_id(cl: Cluster) -> int:
    last = 0
    while batch := cl.events(last, 5000):
        last = batch[-1]["id"]
    return last


async def watch_metrics(srv: Server) -> None:
    """Every interval: each flow's view and events to the metrics subscribers; the leader
    records the interval in the history (one server writes it, whichever leads)."""
    hub = srv.metrics
    while True:
        started = asyncio.get_running_loop().time()
        try:
            messages = await run_in_threadpool(_tick, srv)
            hub.publish(messages)
        except Exception as exc:
            log.warning("cannot gather metrics: %s", exc)
        elapsed = asyncio.get_running_loop().time() - started
        await asyncio.sleep(max(0.05, INTERVAL - elapsed))


def _tick(srv: Server) -> list[dict[str, object]]:
    cl = srv.cluster  # a flow's document is read once per revision (``parsed`` keeps it)
    flows = [(cl.parsed(name, rev), cl.reports(run)) for name, rev, run in cl.runs()]
    messages = srv.metrics.tick(flows, record=srv.leading)
    if srv.leading:
        for flow, _ in flows:
            if any(p.scale is not None for p in flow.processors):
                _scale(srv, flow)
    return messages


def _scale(srv: Server, flow: Flow) -> None:
    """The leader's autoscaling of one flow: each decision recorded (placement follows it)
    with the event that says why; a processor held at a count by hand is left alone."""
    recorded = srv.cluster.scaled(flow.name)  # name -> (decided, held by hand)
    pinned = {name for name, (_, pin) in recorded.items() if pin is not None}
    counts = {
        name: count
        for name, (scaled, pin) in recorded.items()
        if (count := pin if pin is not None else scaled) is not None
    }
    up = [(a.host, a.cores, a.labels, a.busy) for a in srv.cluster.agents() if a.status == "up"]
    cores = host_cores(flow, srv.metrics.views.values(), up)
    for d in srv.scaler.decide(flow, srv.metrics.views[flow.name], counts, cores=cores):
        if d.processor not in pinned:  # held: the count stays what the hand set
            srv.cluster.record_scale(flow.name, d.processor, d.after, d.text(), LEADING)
            log.info("%s: %s", flow.name, d.text())
