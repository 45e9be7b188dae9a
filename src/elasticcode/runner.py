"""``elasticcode run``: one flow on one host, embedded by default.

The runner prepares the state directory (queues, state, logs, a snapshot of the flow), starts a
local agent with its workers, shows live progress, and stops when every source is exhausted
and every queue is drained (or, with ``forever``, when interrupted). An interrupted run resumes
on the next start: its queues are durable and its sources remember how far they got.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from . import envs, gitcode
from .agent import Agent
from .brokers import Broker, open_broker
from .errors import DiskFull, ElasticCodeError, FlowError, ProcessorError, RunLocked, StateError
from .flow import Flow, Processor
from .processor import import_paths, load
from .progress import Progress
from .state import StateStore, WorkerReport


@dataclass
class ProcessorTotals:
    name: str
    instances: int = 0
    received: int = 0
    emitted: int = 0
    errors: int = 0
    retried: int = 0
    dead: int = 0
    status: str = ""
    last_error: str | None = None


@dataclass
class RunResult:
    flow: str
    run_id: int
    status: str
    seconds: float
    resumed: bool
    processors: dict[str, ProcessorTotals] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    #: Dead letters stored for the flow (from this run and earlier ones, until replayed).
    dead_letters: int = 0
    events: list[str] = field(default_factory=list)
    state_dir: Path = Path()


def state_paths(
    flow: Flow, state_dir: str | Path | None = None, broker: str | None = None
) -> tuple[Path, str, str]:
    """(state dir, broker URL, state URL) for a flow, embedded defaults filled in."""
    root = Path(state_dir) if state_dir else Path.cwd() / ".elasticcode" / flow.name
    root = root.resolve()
    broker = broker or os.environ.get("ELASTICCODE_BROKER") or flow.settings.broker
    return root, broker or f"sqlite:///{root / 'queues.db'}", f"sqlite:///{root / 'state.db'}"


def pin_code(
    flow: Flow,
    state_url: str,
    update: list[str] | None = None,
    broken: dict[str, str] | None = None,
) -> tuple[Flow, list[str]]:
    """The flow with each git processor's ref pinned to a commit (checked out in the cache),
    and a line per processor saying which. A ref is resolved the first time and recorded;
    later calls use the record, except for the processors in ``update`` ([] for all).

    With ``broken``, a processor whose code cannot be fetched is noted there (with what to
    fix) instead of raising."""
    pinned, notes = [], []
    store: StateStore | None = None
    try:
        for p in flow.processors:
            git = p.git
            if git is None or git.commit:
                pinned.append(p)
                continue
            store = store or StateStore(state_url)
            moving = update is not None and (not update or p.name in update)
            recorded = store.code_pin(flow.name, p.name, git.repo, git.ref)
            where = f"processor {p.name}: {git.ref} of {gitcode.shown(git.repo)}"
            try:
                if moving or recorded is None:
                    commit = gitcode.resolve(git.repo, git.ref, git.credential)
                else:
                    commit = recorded
                gitcode.checkout(git.repo, commit, git.credential)
            except gitcode.GitError as exc:
                if broken is None:
                    raise
                broken[p.name] = f"processor {p.name!r}: {exc}"
                pinned.append(p)
                continue
            if moving or recorded is None:
                if commit != recorded:
                    store.record_pin(flow.name, p.name, git.repo, git.ref, commit)
                was = f" (was {recorded[:12]})" if recorded and recorded != commit else ""
                notes.append(f"{where} resolved to commit {commit[:12]}{was}")
            else:
                commit = recorded
                notes.append(f"{where} at commit {commit[:12]} (elasticcode code update to move)")
            pinned.append(p.model_copy(update={"git": git.model_copy(update={"commit": commit})}))
    finally:
        if store is not None:
            store.close()
    return flow.model_copy(update={"processors": pinned}), notes


def check_code(flow: Flow) -> None:
    """Load every processor once, so that code errors show before anything starts."""
    if not flow.processors:
        raise FlowError(f"flow {flow.name!r} has no processors; add some under processors")
    for spec in flow.processors:
        _check(spec, flow)


def code_problems(flow: Flow, skip: Collection[str] = ()) -> dict[str, str]:
    """Load every processor once; return what is wrong with each one that does not load."""
    if not flow.processors:
        raise FlowError(f"flow {flow.name!r} has no processors; add some under processors")
    problems = {}
    for spec in flow.processors:
        if spec.name in skip:
            continue
        try:
            _check(spec, flow)
        except ProcessorError as exc:
            problems[spec.name] = str(exc)
    return problems


def _check(spec: Processor, flow: Flow) -> None:
    if spec.requirements:  # importable only in its own environment (built here if new)
        envs.check_in_env(spec, flow)
    else:
        load(spec, flow)


def frozen(flow: Flow, base_dir: Path | None = None) -> Flow:
    """The flow with module paths and command folders made absolute, so that it runs the same
    from any folder (``base_dir``)."""
    folder = flow.base_dir.resolve()
    processors = [
        p.model_copy(update={"cwd": str(folder / (p.cwd or "."))})
        if p.command and p.git is None
        else p
        for p in flow.processors
    ]
    return flow.model_copy(
        update={
            "path": import_paths(flow),
            "base_dir": base_dir or folder,
            "processors": processors,
        }
    )


def snapshot(flow: Flow, root: Path, name: str = "flow.yaml") -> Path:
    """Write the flow as run (see ``frozen``) for the workers to load."""
    frozen_flow = frozen(flow, root)
    path = root / name
    tmp = path.with_suffix(".tmp")
    frozen_flow.dump(tmp)
    os.replace(tmp, path)
    return path


class _Lock:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] = open(root / "run.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RunLocked(
                f"another `elasticcode run` is using {root}; stop it first, or give this run "
                "its own --state-dir"
            ) from None

    def release(self) -> None:
        self.file.close()


def run(
    flow: Flow | str | Path,
    *,
    state_dir: str | Path | None = None,
    broker: str | None = None,
    workers: int | None = None,
    forever: bool = False,
    fresh: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[Agent], None] | None = None,
) -> RunResult:
    """Run a flow until it is done (or interrupted); return what happened."""
    if not isinstance(flow, Flow):
        flow = Flow.load(flow)
    root, broker_url, state_url = state_paths(flow, state_dir, broker)
    lock = _Lock(root)
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
    on_start: Callable[[Agent], None] | None,
    pinned: list[str],
    broken: dict[str, str],
) -> RunResult:
    state = StateStore(state_url)
    broker = open_broker(
        broker_url, flow.broker_routes(), max_message_bytes=flow.settings.max_message_bytes
    )
    await broker.connect()
    queues = flow.queues()
    await broker.declare(queues)
    run_id, resumed = state.start_run(flow.name, fresh=fresh)
    events: list[str] = list(pinned)
    if fresh:
        dropped = sum([await broker.purge(q) for q in queues])
        if dropped:
            events.append(f"--fresh: dropped {dropped} message(s) left by an earlier run")
    released = await _release_all(broker)
    if released:
        events.append(f"released {released} message(s) held by workers of an earlier run")
    flow_file = snapshot(flow, root)
    agent = Agent(flow, flow_file, run_id, broker_url, state_url, root / "logs", workers)
    # a processor whose code does not load stays in error; the rest runs, and what is meant
    # for it waits in its queues for a run with its code fixed
    agent.instances = [i for i in agent.instances if i.processor not in broken]
    for problem in broken.values():
        events.append(
            f"{problem}. It does not run; its input waits in its queue: fix it and run again"
        )
    waiting = {q for n in broken for q in flow.inputs_of(n)}
    sources = [p.name for p in flow.processors if p.is_source and p.name not in broken]
    # where the broker's counts are exact and include held messages, they alone say when the
    # flow is drained; elsewhere the workers' reports must agree
    drained = _Drained(broker.counts_in_flight and not broker.eventually_consistent)

    stop = asyncio.Event()
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            agent.kill()
        stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted)
    loop.add_signal_handler(signal.SIGTERM, interrupted)
    started = time.monotonic()
    agent.start()
    if on_start is not None:
        on_start(agent)
    progress.begin(flow, run_id, resumed, root)
    for event in events:  # code pins, processors in error, messages released
        progress.event(event)
    status = "interrupted"
    switch = _Switch(flow, root, agent)
    received: dict[str, int] = {}  # per worker, from its reports: messages taken on

    def progressed(consumer: str) -> bool:
        """The worker got as far as taking messages: past its start, so a death is not a
        crash loop (a message that kills workers is dead-lettered after its third try)."""
        return received.get(consumer, 0) > 0

    try:
        while True:
            supervised = await agent.supervise(broker, progressed)
            for event in supervised + await switch.check(state):
                events.append(event)
                progress.event(event)
            # read before the depths: a source records that it is done only after it has
            # published everything, so all it published is in the depths read after this
            sources_finished = state.sources_done(run_id, sources)
            reports = state.worker_reports(run_id)
            received = {r.id: r.received + r.holding for r in reports}
            depths = await broker.depth(queues)
            progress.update(_totals(flow, agent, reports, broken), depths)
            if stop.is_set():
                break
            if agent.disk_full:
                status = "disk-full"
                event = (
                    f"the disk holding {root} is full: the run stops, with every message "
                    "accepted so far kept. Free some space there, then run the flow again; "
                    "it resumes where it stopped"
                )
                events.append(event)
                progress.event(event)
                break
            live = [r for r in reports if r.id in agent.live_consumers()]
            moving = {q: d for q, d in depths.items() if q not in waiting}
            if not forever and drained.check(moving, live, sources_finished):
                status = "incomplete" if broken else "finished"
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        progress.stopping()
        await loop.run_in_executor(None, agent.stop)
        with contextlib.suppress(DiskFull):  # the next run releases them
            await _release_all(broker)
        # on a full disk this cannot be written: the next run then resumes this one
        with contextlib.suppress(StateError, sa.exc.OperationalError):
            state.end_run(run_id, status)
        totals = _totals(flow, agent, state.worker_reports(run_id), broken)
        depths = await broker.depth(queues)
        dead = await broker.dead_letter_count(queues)
        await broker.close()
        state.close()
    result = RunResult(
        flow.name,
        run_id,
        status,
        time.monotonic() - started,
        resumed,
        totals,
        {q: n for q, (n, _) in depths.items()},
        dead,
        events,
        root,
    )
    progress.end(result)
    return result


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

    def __init__(self, flow: Flow, root: Path, agent: Agent) -> None:
        self.flow, self.root, self.agent = flow, root, agent
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
            flow_file = snapshot(candidate, self.root, f"flow-{self.revision}.yaml")
            self.agent.replace(p.name, candidate, flow_file)
            events.append(
                f"processor {p.name}: switching from commit {git.commit[:12]} to "
                f"{latest[:12]}, new workers first"
            )
        return events


async def _release_all(broker: Broker) -> int:
    release_all = getattr(broker, "release_all", None)
    return int(await release_all()) if release_all is not None else 0


def _totals(
    flow: Flow, agent: Agent, reports: list[WorkerReport], broken: dict[str, str]
) -> dict[str, ProcessorTotals]:
    totals = {p.name: ProcessorTotals(p.name) for p in flow.processors}
    for name, problem in broken.items():
        totals[name].status, totals[name].last_error = "error", problem
    for inst in agent.instances:
        totals[inst.processor].instances += not inst.retiring
    statuses: dict[str, set[str]] = {}
    for r in reports:
        t = totals.get(r.processor)
        if t is None:
            continue
        t.received += r.received
        t.emitted += r.emitted
        t.errors += r.errors
        t.retried += r.retried
        t.dead += r.dead
        t.last_error = r.last_error or t.last_error
        statuses.setdefault(r.processor, set()).add(r.status)
    for name, seen in statuses.items():
        for s in ("error", "failed", "back-pressure", "running", "done", "stopped"):
            if s in seen:
                totals[name].status = s
                break
    return totals


def summarize(result: RunResult) -> dict[str, Any]:
    """A JSON-friendly summary of a run."""
    return {
        "flow": result.flow,
        "run": result.run_id,
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "processors": {n: vars(t) for n, t in result.processors.items()},
        "queued": sum(result.queues.values()),
        "dead_letters": result.dead_letters,
    }
