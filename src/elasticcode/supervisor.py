"""The supervisor: starts, watches and restarts the worker processes of one host.

A supervisor is given instances to run (by the one-host runner, or by a network agent) and
keeps exactly those workers running: a worker that dies is restarted with backoff, and the messages it held are released
to the other consumers at once. Workers are separate OS processes (one per CPU core by default)
so that processors use every core and a crash in user code takes down only its own worker.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import launch
from .autoscale import starting_count
from .brokers import Broker
from .code import envs
from .errors import BrokerError
from .flow import Flow
from .worker import EXIT_CONFIG, EXIT_DISK_FULL, EXIT_MEMORY

log = logging.getLogger("elasticcode.supervisor")

_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In a new worker (Linux): be sent SIGTERM when the supervisor dies, so that no worker
    outlives it (a restarted supervisor would run a second copy)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


#: A worker that ran at least this long before dying restarts without delay.
STABLE_AFTER = 10.0
MAX_BACKOFF = 30.0


@dataclass
class Instance:
    processor: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    consumer: str = ""
    started: float = 0.0
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    finished: bool = False
    last_exit: int | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)
    #: The flow (and its flow file) this instance runs; None: the supervisor's.
    flow: Flow | None = field(default=None, repr=False)
    flow_file: Path | None = None
    #: Asked to finish its batch and exit, replaced by a newer instance (or scaled down).
    retiring: bool = False
    #: What happened when a retiring instance's worker has exited.
    retired: str = "replaced"
    #: Distributed mode: the run and broker of the instance's flow, and its spec digest.
    run_id: int | None = None
    broker_url: str | None = None
    spec: str = ""
    flow_name: str = ""
    revision: int | None = None
    #: Distributed mode: the state store as the instance's flow's workers log in to it, and
    #: the values of the secrets the flow references.
    state_url: str | None = None
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def instance_count(flow: Flow, processor: str, workers: int | None = None) -> int:
    """How many instances a processor runs: its own setting, else one per core."""
    spec = flow.get(processor)
    if spec.is_source:
        return 1
    if spec.scale is not None:
        return starting_count(spec.scale, spec.instances)
    if isinstance(spec.instances, int):
        return spec.instances
    return workers or os.cpu_count() or 1


class Supervisor:
    """Keeps one worker process running per assigned processor instance."""

    def __init__(
        self,
        flow: Flow | None,
        flow_file: Path | None,
        run_id: int,
        broker_url: str,
        state_url: str,
        log_dir: Path,
        workers: int | None = None,
    ) -> None:
        self.flow = flow
        self.flow_file = flow_file
        self.run_id = run_id
        self.broker_url = broker_url
        self.state_url = state_url
        self.log_dir = log_dir
        #: A worker found the embedded queues' disk full.
        self.disk_full = False
        self.instances = (
            [
                Instance(p.name, i)
                for p in flow.processors
                for i in range(instance_count(flow, p.name, workers))
            ]
            if flow is not None
            else []
        )

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for inst in self.instances:
            self._spawn(inst)

    def _spawn(self, inst: Instance) -> None:
        inst.consumer = (
            f"{os.uname().nodename}:{inst.processor}:{inst.index}:{uuid.uuid4().hex[:8]}"
        )
        if inst.log_file is None:
            prefix = f"{inst.flow_name}." if inst.flow_name else ""
            log_path = self.log_dir / f"{prefix}{inst.processor}-{inst.index}.log"
            inst.log_file = open(log_path, "ab")  # noqa: SIM115
        flow = inst.flow or self.flow
        flow_file = inst.flow_file or self.flow_file
        assert flow is not None and flow_file is not None, "an instance without a flow"
        python = envs.python_for(flow.get(inst.processor), flow)
        run_id = inst.run_id if inst.run_id is not None else self.run_id
        cmd = launch.command(
            python, flow_file, inst.processor, inst.index, run_id, inst.consumer, inst.revision
        )
        broker = inst.broker_url or self.broker_url
        env = launch.environment(broker, inst.state_url or self.state_url, inst.secrets)
        inst.process = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=inst.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops workers in order
            preexec_fn=_stop_with_parent,
        )
        inst.started = time.monotonic()
        log.debug("started %s[%d] pid %d", inst.processor, inst.index, inst.process.pid)

    async def supervise(
        self,
        broker: Broker | Callable[[Instance], Awaitable[Broker]],
        progressed: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Restart dead workers (after releasing their messages); return what happened.

        ``broker``: the broker of every instance, or a function giving an instance's.
        ``progressed(consumer)``: whether that worker took on messages before it died; one
        that did (killed by a message, say) restarts at once, one that did not backs off,
        doubling the delay each time."""
        events = []
        now = time.monotonic()
        for inst in self.instances:
            if inst.finished:
                continue
            if inst.process is None:
                if now >= inst.next_start:
                    inst.restarts += 1
                    self._spawn(inst)
                continue
            code = inst.process.poll()
            if code is None:
                continue
            inst.last_exit = code
            inst.process = None
            try:
                own = broker if isinstance(broker, Broker) else await broker(inst)
                released = await own.release(inst.consumer)
                held = (
                    f"{released} message(s) released"
                    if own.releases_held
                    else "the broker returns its messages to their queues"
                )
            except BrokerError as exc:  # the broker redelivers them when their lease runs out
                held = f"its messages wait for their lease to run out ({exc})"
            if code == 0 or inst.retiring:
                inst.finished = True
                if inst.retiring:
                    events.append(f"worker {inst.processor}[{inst.index}] {inst.retired} ({held})")
                continue
            if code == EXIT_MEMORY:  # it settled what it held: a fresh one takes over at once
                inst.next_start = now
                events.append(f"worker {inst.processor}[{inst.index}] restarted: over max_memory")
                continue
            ran = now - inst.started
            worked = ran >= STABLE_AFTER or (progressed is not None and progressed(inst.consumer))
            inst.failures = 0 if worked else inst.failures + 1
            delay = 0.0 if inst.failures <= 1 else min(MAX_BACKOFF, 0.5 * 2 ** (inst.failures - 1))
            if code == EXIT_CONFIG:
                delay = max(delay, 5.0)
            if code == EXIT_DISK_FULL:  # a run on the embedded queues stops (see runner)
                self.disk_full = True
                delay = max(delay, 5.0)
                events.append(
                    f"worker {inst.processor}[{inst.index}] stopped: the disk of the embedded "
                    "queues is full"
                )
                inst.next_start = now + delay
                continue
            inst.next_start = now + delay
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            events.append(
                f"worker {inst.processor}[{inst.index}] died ({how}); {held}; "
                f"restarting{f' in {delay:.1f}s' if delay else ''}"
            )
        return events

    def replace(self, processor: str, flow: Flow, flow_file: Path) -> None:
        """Rolling replacement of one processor's workers: new ones (from ``flow_file``) start
        first, then the old ones finish their batch and exit; other workers are not touched."""
        old = [i for i in self.instances if i.processor == processor and not i.retiring]
        fresh = [Instance(processor, i.index, flow=flow, flow_file=flow_file) for i in old]
        for inst in fresh:
            self._spawn(inst)
        self.instances += fresh
        for inst in old:
            inst.retiring = True
            if inst.alive and inst.process is not None:
                inst.process.send_signal(signal.SIGTERM)
            else:
                inst.finished = True

    def resize(self, processor: str, count: int) -> None:
        """Run ``count`` instances of ``processor``: new ones start; those above ``count``
        (the highest indices first) finish their batch and exit."""
        active = sorted(
            (i for i in self.instances if i.processor == processor and not i.retiring),
            key=lambda i: i.index,
        )
        for inst in active[count:]:
            inst.retiring, inst.retired = True, "stopped (scaled down)"
            if inst.alive and inst.process is not None:
                inst.process.send_signal(signal.SIGTERM)
            else:
                inst.finished = True
        taken = {i.index for i in self.instances if i.processor == processor and not i.finished}
        free = (n for n in itertools.count() if n not in taken)
        for _ in range(count - len(active)):
            fresh = Instance(processor, next(free))
            self._spawn(fresh)
            self.instances.append(fresh)

    def live_consumers(self) -> set[str]:
        """Consumer ids of the workers running now."""
        return {inst.consumer for inst in self.instances if inst.alive}

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every worker to finish its batch and exit; kill those that do not in time."""
        for inst in self.instances:
            if inst.alive and inst.process is not None:
                inst.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for inst in self.instances:
            if inst.process is None:
                continue
            try:
                inst.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker %s[%d] did not stop in time; killing it", inst.processor, inst.index
                )
                inst.process.kill()
                inst.process.wait()
        for inst in self.instances:
            if inst.log_file is not None:
                inst.log_file.close()
                inst.log_file = None

    def kill(self) -> None:
        for inst in self.instances:
            if inst.alive and inst.process is not None:
                inst.process.kill()
