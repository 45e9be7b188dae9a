"""``elasticcode run``: one flow on one host, embedded by default.

The runner pins the flow's git code, checks that every processor loads, prepares the state
directory (queues, state, logs, the flow file the workers read), starts a supervisor with the
workers, shows live progress, and stops when every source is exhausted and every queue is
drained (or, with ``forever``, when interrupted). An interrupted run resumes on the next
start: its queues are durable and its sources remember how far they got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from ..autoscale import Autoscaler, HostCPU
from ..brokers import Broker, flow_broker
from ..claimcheck import SWEEP_EVERY, SWEEP_GRACE, ClaimCheckBroker, with_claim_check
from ..code import code_problems, envs
from ..code.pinning import pin
from ..errors import (
    BrokerError,
    DiskFull,
    ElasticCodeError,
    FlowError,
    StateError,
    StorageError,
)
from ..flow import Flow, Processor
from ..launch import write_flow
from ..metrics.endpoint import Endpoint
from ..metrics.history import History
from ..metrics.hub import INTERVAL, MetricsHub
from ..store import StateStore, WorkerReport
from ..supervisor import Supervisor
from .paths import RunLock, blobs_url, state_paths
from .progress import Progress
from .result import ProcessorTotals, RunResult, totals

log = logging.getLogger("elasticcode.run")


def pin_code(
    flow: Flow,
    state_url: str,
    update: list[str] | None = None,
    broken: dict[str, str] | None = None,
) -> tuple[Flow, list[str]]:
    """The flow with each git processor's ref pinned to a commit (see ``code.pinning``), the
    commits recorded in the run's state store, and a line per processor saying which. A ref
    is resolved the first time; later calls keep the record, except for the processors in
    ``update`` ([] for all)."""
    if not any(p.git is not None and not p.git.commit for p in flow.processors):
        return flow, []
    store = StateStore(state_url)
    try:

        def recorded(p: Processor) -> str | None:
            assert p.git is not None
            return store.code_pin(flow.name, p.name, p.git.repo, p.git.ref)

        flow, pins = pin(flow, recorded, update, broken)
        for x in pins:
            if x.resolved and x.commit != x.was:
                store.record_pin(flow.name, x.processor, x.repo, x.ref, x.commit)
    finally:
        store.close()
    return flow, [x.note("`elasticcode code update` moves it") for x in pins]


def run(
    flow: Flow | str | Path,
    *,
    state_dir: str | Path | None = None,
    broker: str | None = None,
    workers: int | None = None,
    forever: bool = False,
    fresh: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[Supervisor], None] | None = None,
    metrics_port: int | None = None,
) -> RunResult:
    """Run a flow until it is done (or interrupted); return what happened. With
    ``metrics_port``, serve its metrics on 127.0.0.1 at that port (see ``endpoint``)."""
    if not isinstance(flow, Flow):
        flow = Flow.load(flow)
    root, broker_url, state_url = state_paths(flow, state_dir, broker)
    lock = RunLock(root)
    # the workers read the flow's blob store from the flow file the run writes for them
    flow.settings.blobs = blobs_url(flow, root)
    try:
        broken: dict[str, str] = {}
        flow, pinned = pin_code(flow, state_url, broken=broken)
        broken |= code_problems(flow, skip=broken)
        if len(broken) == len(flow.processors):  # nothing could run
            raise FlowError("\n".join(broken.values()))
        return asyncio.run(
            _run(
                flow,
                root,
                broker_url,
                state_url,
                workers,
                forever,
                fresh,
                progress or Progress(None),
                on_start,
                pinned,
                broken,
                metrics_port,
            )
        )
    finally:
        lock.release()


async def _run(
    flow: Flow,
    root: Path,
    broker_url: str,
    state_url: str,
    workers: int | None,
    forever: bool,
    fresh: bool,
    progress: Progress,
    on_start: Callable[[Supervisor], None] | None,
    pinned: list[str],
    broken: dict[str, str],
    metrics_port: int | None = None,
) -> RunResult:
    state = StateStore(state_url)
    broker = with_claim_check(flow_broker(broker_url, flow), flow)
    await broker.connect()
    await broker.declare(flow.queues())
    run_id, resumed = state.start_run(flow.name, fresh=fresh)
    events: list[str] = list(pinned)
    if fresh:
        dropped = sum([await broker.purge(q) for q in flow.queues()])
        if dropped:
            events.append(f"--fresh: dropped {dropped} message(s) left by an earlier run")
    released = await broker.release_all()
    if released:
        events.append(f"released {released} message(s) held by workers of an earlier run")
    events += broker.cautions  # what the broker's server may do to accepted messages
    flow_file = write_flow(flow, root)
    supervisor = Supervisor(flow, flow_file, run_id, broker_url, state_url, root / "logs", workers)
    # a processor whose code does not load stays in error; the rest runs, and what is meant
    # for it waits in its queues for a run with its code fixed
    supervisor.instances = [i for i in supervisor.instances if i.processor not in broken]
    for problem in broken.values():
        events.append(
            f"{problem}. It does not run; its input waits in its queue: fix it and run again"
        )
    one = _Run(flow, root, broker, state, supervisor, progress, run_id, broken, events)
    if metrics_port is not None:
        one.endpoint = Endpoint(one.metrics, metrics_port)
        one.endpoint.start()
        events.append(
            f"metrics at {one.endpoint.url}/metrics and ws://127.0.0.1:{metrics_port}/metrics/stream"
        )
    started = time.monotonic()
    status = "interrupted"
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, one.interrupted)
    loop.add_signal_handler(signal.SIGTERM, one.interrupted)
    try:
        supervisor.start()
        if on_start is not None:
            on_start(supervisor)
        progress.begin(flow, run_id, resumed, root)
        for event in events:  # code pins, processors in error, messages released
            progress.event(event)
        status = await one.watch(forever)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        counts, queued, dead = await one.finish(status)
    result = RunResult(
        flow.name,
        run_id,
        status,
        time.monotonic() - started,
        resumed,
        counts,
        queued,
        dead,
        events,
        root,
    )
    progress.end(result)
    return result


#: Seconds between asking the broker whether it lost what it held (see ``Broker.check``).
CHECK_EVERY = 2.0


class _Run:
    """A started run: watches its workers and queues until it is done, then stops them."""

    def __init__(
        self,
        flow: Flow,
        root: Path,
        broker: Broker,
        state: StateStore,
        supervisor: Supervisor,
        progress: Progress,
        run_id: int,
        broken: dict[str, str],
        events: list[str],
    ) -> None:
        self.flow, self.root, self.broker, self.state = flow, root, broker, state
        self.supervisor, self.progress, self.run_id = supervisor, progress, run_id
        self.broken, self.events = broken, events
        self.queues = flow.queues()
        #: the queues of processors in error: what waits there is not the run's to drain
        self.waiting = {q for n in broken for q in flow.inputs_of(n)}
        self.sources = [p.name for p in flow.processors if p.is_source and p.name not in broken]
        # where the broker's counts are exact and include held messages, they alone say when
        # the flow is drained; elsewhere the workers' reports must agree
        self.drained = _Drained(broker.counts_in_flight and not broker.eventually_consistent)
        self.switch = _Switch(flow, root, supervisor)
        #: per worker, from its reports: messages taken on
        self.received: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.interrupts = 0
        self._checked = time.monotonic()
        self._swept = time.monotonic()  # the claim check's orphans: see ``_sweep``
        #: the run's metrics, recorded in its state store's history every interval
        self.metrics = MetricsHub(History(state.engine))
        self._measured = 0.0
        #: where the run serves its metrics, if asked to
        self.endpoint: Endpoint | None = None
        #: the instance counts of the processors that scale (``scale:``)
        self.scaler = Autoscaler() if any(p.scale for p in flow.processors) else None
        self.host_cpu = HostCPU()

    def _say(self, event: str) -> None:
        self.events.append(event)
        self.progress.event(event)

    def interrupted(self) -> None:
        """Ctrl-C (or SIGTERM): stop gracefully; a second time: kill the workers at once."""
        self.interrupts += 1
        if self.interrupts > 1:
            self.supervisor.kill()
        self.stop.set()

    def _progressed(self, consumer: str) -> bool:
        """The worker got as far as taking messages: past its start, so a death is not a
        crash loop (a message that kills workers is dead-lettered after its third try)."""
        return self.received.get(consumer, 0) > 0

    async def watch(self, forever: bool) -> str:
        """Supervise and show progress until the run is over; return how it ended."""
        sup, state = self.supervisor, self.state
        while True:
            for event in await sup.supervise(self.broker, self._progressed):
                self._say(event)
            for event in await self.switch.check(state):
                self._say(event)
            if time.monotonic() - self._checked >= CHECK_EVERY:  # the broker lost nothing?
                self._checked = time.monotonic()
                for event in await self.broker.check():
                    self._say(event)
            if time.monotonic() - self._swept >= SWEEP_EVERY:
                self._swept = time.monotonic()
                await self._sweep(SWEEP_GRACE)
            # read before the depths: a source records that it is done only after it has
            # published everything, so all it published is in the depths read after this
            sources_finished = state.sources_done(self.run_id, self.sources)
            reports = state.worker_reports(self.run_id)
            self.received = {r.id: r.received + r.holding for r in reports}
            depths = await self.broker.depth(self.queues)
            self.progress.update(totals(self.flow, sup.instances, reports, self.broken), depths)
            self._measure(reports, depths)
            if self.stop.is_set():
                return "interrupted"
            if sup.disk_full:
                self._say(
                    f"the disk holding {self.root} is full: the run stops, with every "
                    "message accepted so far kept. Free some space there, then run the "
                    "flow again; it resumes where it stopped"
                )
                return "disk-full"
            live = [r for r in reports if r.id in sup.live_consumers()]
            moving = {q: d for q, d in depths.items() if q not in self.waiting}
            if not forever and self.drained.check(moving, live, sources_finished):
                return "incomplete" if self.broken else "finished"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.1)

    async def _sweep(self, grace: float) -> None:
        """The claim check's orphans (see ``ClaimCheckBroker.sweep``); never fatal."""
        if isinstance(self.broker, ClaimCheckBroker):
            try:
                if swept := await self.broker.sweep(grace):
                    self._say(f"deleted {swept} blob(s) that stopped workers left")
            except (StorageError, BrokerError) as exc:
                log.warning("cannot sweep the blob store: %s", exc)

    def _measure(self, reports: list[WorkerReport], depths: dict[str, tuple[int, int]]) -> None:
        """Every interval: the flow's view, recorded in the history (never fatal)."""
        now = time.monotonic()
        if now - self._measured < INTERVAL:
            return
        self._measured = now
        try:
            messages = self.metrics.tick([(self.flow, reports)], depths=depths)
        except (StateError, sa.exc.OperationalError) as exc:
            log.warning("cannot record the run's metrics: %s", exc)
            return
        if self.endpoint is not None:
            self.endpoint.publish(messages)
        if self.scaler is not None:
            view = next(m for m in messages if m.get("type") == "metrics")
            # this host's cores, and what this run's workers use of them (or, when that is
            # more, what is busy on it by anything)
            used = sum(float(p.get("cpu", 0.0)) for p in view["processors"].values())
            used = max(used, self.host_cpu.busy() or 0.0)
            cores = {p.name: (float(os.cpu_count() or 1), used) for p in self.flow.processors}
            for d in self.scaler.decide(self.flow, view, cores=cores):
                if d.processor not in self.broken:
                    self.supervisor.resize(d.processor, d.after)
                    self._say(d.text())

    async def finish(self, status: str) -> tuple[dict[str, ProcessorTotals], dict[str, int], int]:
        """Stop the workers, record how the run ended; return its counts, what is left in
        each queue and the dead letters stored."""
        self.progress.stopping()
        self.scaler = None  # stopping: nothing starts now
        await asyncio.get_running_loop().run_in_executor(None, self.supervisor.stop)
        broker, state = self.broker, self.state
        with contextlib.suppress(DiskFull):  # the next run releases them
            await broker.release_all()
        # on a full disk this cannot be written: the next run then resumes this one
        with contextlib.suppress(StateError, sa.exc.OperationalError):
            state.end_run(self.run_id, status)
        reports = state.worker_reports(self.run_id)
        counts = totals(self.flow, self.supervisor.instances, reports, self.broken)
        depths = await broker.depth(self.queues)
        self._measured = 0.0
        self._measure(reports, depths)  # the last of it, and what is left of the minute
        with contextlib.suppress(StateError, sa.exc.OperationalError):
            if self.metrics.history is not None:
                self.metrics.history.flush(everything=True)
        if self.endpoint is not None:
            self.endpoint.stop()
        dead = await broker.dead_letter_count(self.queues)
        if status == "finished":  # drained: a blob no dead letter names was left by a crash
            await self._sweep(0.0)
        await broker.close()
        state.close()
        return counts, {q: n for q, (n, _) in depths.items()}, dead


class _Drained:
    """Decides when a flow has no work left.

    Queues empty (held messages included) and sources exhausted is enough when the broker
    counts held messages, exactly. When it does not, every worker must also report holding nothing,
    with unchanged counters, in two observations ``SETTLE`` seconds apart. A worker reports at
    once when it starts holding messages and at least every half second after, so work in
    progress anywhere shows up in one of the two.
    """

    SETTLE = 1.2  # seconds between the two observations (> twice the report interval)

    def __init__(self, counts_in_flight: bool) -> None:
        #: the broker's depth alone is to be trusted
        self.counts_in_flight = counts_in_flight
        self.first: tuple[float, tuple[tuple[str, int, int], ...]] | None = None

    def check(
        self, depths: dict[str, tuple[int, int]], live: list[WorkerReport], sources_done: bool
    ) -> bool:
        """``live``: the latest reports of the workers running now."""
        if not sources_done or any(n for n, _ in depths.values()):
            self.first = None
            return False
        if self.counts_in_flight:
            return True
        if any(r.holding for r in live):
            self.first = None
            return False
        counters = tuple(sorted((r.id, r.received, r.emitted) for r in live))
        now = time.monotonic()
        if self.first is None or self.first[1] != counters:
            self.first = (now, counters)
            return False
        return now - self.first[0] >= self.SETTLE


class _Switch:
    """Moves a running git processor to the commit ``elasticcode code update`` recorded: its
    workers are replaced, new ones first, once the commit's code loads; nothing else stops."""

    EVERY = 1.0  # seconds between looks at the recorded pins

    def __init__(self, flow: Flow, root: Path, supervisor: Supervisor) -> None:
        self.flow, self.root, self.supervisor = flow, root, supervisor
        self.next = 0.0
        self.refused: set[tuple[str, str]] = set()
        self.revision = 1

    async def check(self, state: StateStore) -> list[str]:
        if not any(p.git for p in self.flow.processors) or time.monotonic() < self.next:
            return []
        self.next = time.monotonic() + self.EVERY
        events = []
        for p in self.flow.processors:
            git = p.git
            if git is None or git.commit is None:
                continue
            latest = state.code_pin(self.flow.name, p.name, git.repo, git.ref)
            if latest is None or latest == git.commit or (p.name, latest) in self.refused:
                continue
            spec = p.model_copy(update={"git": git.model_copy(update={"commit": latest})})
            candidate = self.flow.model_copy(
                update={
                    "processors": [spec if q.name == p.name else q for q in self.flow.processors]
                }
            )
            loop = asyncio.get_running_loop()
            try:  # the new commit's code must load before the old workers go
                await loop.run_in_executor(None, envs.check_in_env, spec, candidate)
            except ElasticCodeError as exc:
                self.refused.add((p.name, latest))
                events.append(
                    f"processor {p.name}: stays at commit {git.commit[:12]}; commit "
                    f"{latest[:12]} does not load: {exc}"
                )
                continue
            self.flow, self.revision = candidate, self.revision + 1
            flow_file = write_flow(candidate, self.root, f"flow-{self.revision}.yaml")
            self.supervisor.replace(p.name, candidate, flow_file)
            events.append(
                f"processor {p.name}: switching from commit {git.commit[:12]} to "
                f"{latest[:12]}, new workers first"
            )
        return events
