"""A worker: one OS process running one processor instance.

A message's path through the engine reads top to bottom here: a ``Consumer`` fetches a batch
from its input queues (prefetch), calls the processor for each message (``_handle``), encodes
what it emitted (``_encode``) and settles the batch (``_process``): outputs published,
inputs acknowledged, failures retried with backoff or routed to ``failure`` / the dead-letter
store. An input is never acknowledged before its outputs are durable. A source worker is in
``elasticcode.source``; the process entry point in ``elasticcode.launch``; a supervisor
starts and restarts these processes (``elasticcode.supervisor``).

Exit codes: 0 stopped or exhausted; ``EXIT_CONFIG`` the code does not load (restarted after
a pause); ``EXIT_MEMORY`` over ``max_memory`` (restarted at once); ``EXIT_DISK_FULL`` the
embedded queues' disk is full.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any

import msgpack

from .batch import Held, Staged, TimedOut
from .brokers import Broker, Delivery, Settlement
from .claimcheck import ClaimCheckBroker, is_claim
from .code import load
from .errors import (
    BrokerUnreachable,
    ElasticCodeError,
    MessageError,
    ProcessorError,
    Reject,
)
from .flow import Flow
from .message import Message, decode, derive_id, encode
from .metrics import Histogram
from .metrics.lineage import Recorder
from .metrics.lineage import write as write_lineage
from .processor import Context, Loaded, Output
from .secret import SecretMissing, names_in, resolve
from .storage import ResultStore, ResultTooLarge
from .store import StateStore, WorkerReport

log = logging.getLogger("elasticcode.worker")

REPORT_EVERY = 0.5
ROOM_FRESH = 0.1  # how long a queue depth reading stands for back pressure (s)
EXIT_CONFIG = 3
EXIT_MEMORY = 4  # over max_memory: to be restarted at once
EXIT_DISK_FULL = 5  # the embedded queues' disk is full
#: The host name a worker reports (its agent's ``--host-name``; default: the machine's).
HOST_ENV = "ELASTICCODE_HOST_NAME"


def _schedstat(pid: int | str) -> float:
    """Seconds a process's main thread has waited for a CPU while runnable (Linux's
    schedstat; 0 where there is none)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _children() -> list[int]:
    """The processes this worker started that still run (a command processor's, or what a
    processor's code runs), where Linux lists them."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                pids += [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        pass
    return pids


def _usage() -> tuple[float, float]:
    """CPU seconds used, and seconds waited for a CPU while runnable, by this worker and the
    processes it started: those still running (with what they reaped) and those it reaped.
    Beyond Linux, the worker's own CPU time alone."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    waited = _schedstat("self")
    for pid in _children():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14 to 17, counted from 1 before the name
            cpu += sum(int(x) for x in fields[11:15]) / _TICKS
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile: its time is in RUSAGE_CHILDREN once reaped
        waited += _schedstat(pid)
    return cpu, waited


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class OutputError(ElasticCodeError):
    """An output cannot be delivered as emitted; retrying would not help."""


class Worker:
    """What every worker does: load and set up the processor, connect to the broker, report,
    hold back while an outgoing connection is full, encode outputs, tear down. ``Consumer``
    (below) and ``Source`` (``elasticcode.source``) do the work in between."""

    def __init__(
        self,
        flow: Flow,
        processor: str,
        broker: Broker,
        state: StateStore,
        run_id: int,
        instance: int = 0,
        consumer: str | None = None,
    ) -> None:
        self.flow = flow
        self.spec = flow.get(processor)
        #: what stops the processor before it starts (a secret its config names is not set)
        self._problem: str | None = None
        if names_in(self.spec.config):
            try:
                config = resolve(self.spec.config, where=f"processor {processor!r}'s config")
                self.spec = self.spec.model_copy(update={"config": config})
            except SecretMissing as exc:
                self._problem = str(exc)
        self.name = processor
        self.broker = broker
        self.state = state
        self.run_id = run_id
        self.consumer = consumer or f"{os.uname().nodename}:{os.getpid()}:{processor}:{instance}"
        self.inputs = flow.inputs_of(processor)
        self.outputs = {
            port: [flow.queue_name(c) for c in conns]
            for port, conns in flow.outputs_of(processor).items()
        }
        self.limits = {
            flow.queue_name(c): (c.max_messages, c.max_bytes)
            for conns in flow.outputs_of(processor).values()
            for c in conns
        }
        self.max_bytes = flow.settings.max_message_bytes
        self.report = WorkerReport(self.consumer, run_id, processor, instance, os.getpid())
        self.report.host = os.environ.get(HOST_ENV) or os.uname().nodename
        #: per message: time in the processor, time in the queue, age since its source message
        self.process, self.wait, self.latency = Histogram(), Histogram(), Histogram()
        #: messages received per input queue; per output queue, the last depth read
        self.received_from: dict[str, int] = {}
        self.depths: dict[str, list[float]] = {}
        #: the lineage of traced messages (None: the flow traces none)
        self.lineage: Recorder | None = None
        if flow.settings.lineage != "off":
            commit = self.spec.git.commit if self.spec.git is not None else None
            self.lineage = Recorder(flow.name, processor, instance, self.report.host, commit)
        self._writing: asyncio.Future[None] | None = None
        self.stopping = False
        #: set when the worker outgrew max_memory and stops to be restarted
        self.recycle = False
        self._reported = 0.0
        #: CPU seconds, and seconds waiting for a CPU, while in the processor's code
        self._cpu = 0.0
        self._cpu_wait = 0.0
        #: room left on the fullest outgoing connection, and when the broker said so
        self._room, self._room_at = 0, 0.0
        self._parent = os.getppid()
        self.loaded: Loaded | None = None
        #: where a processor that keeps its results puts them (the flow's blob store)
        self.results: ResultStore | None = None
        if self.spec.results is not None:
            if isinstance(broker, ClaimCheckBroker):
                self.results = ResultStore(broker.store, max_bytes=self.spec.results.max_bytes)
            else:
                self._problem = (
                    f"processor {processor!r} keeps its results, and the flow names no blob "
                    "store to keep them in: set settings.blobs"
                )
        self.ctx = Context(
            flow.name,
            processor,
            self.spec.config,
            logging.getLogger(f"elasticcode.processor.{processor}"),
            state.kv(f"{flow.name}.{processor}"),
            tuple(self.spec.input_ports),
        )

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping = True

    def _asked_to_stop(self) -> bool:
        """Whether ``stop`` was called (by a signal, while the worker awaited something)."""
        return self.stopping

    async def run(self) -> int:
        """Run until stopped (or, for a source, until it is exhausted); return an exit code."""
        if self._problem is not None:
            return self._fatal(self._problem)
        try:
            self.loaded = load(self.spec, self.flow)
            if self.loaded.setup is not None:
                await _maybe_await(_call_hook(self.loaded.setup, self.ctx))
        except ProcessorError as exc:
            return self._fatal(str(exc))
        except Exception as exc:
            return self._fatal(f"processor {self.name!r}: setup() failed: {exc!r}")
        try:
            await self._connect()
            await self.broker.declare(list(self.inputs) + list(self.limits))
            self.report.status = "running"
            self._publish_report(force=True)
            await self._work()
            if self.recycle:
                return EXIT_MEMORY
        finally:
            if self.loaded.teardown is not None:
                try:
                    await _maybe_await(_call_hook(self.loaded.teardown, self.ctx))
                except Exception:
                    log.exception("processor %s: teardown() failed", self.name)
            if self.report.status == "running":
                self.report.status = "stopped"
            self._publish_report(force=True)
            self._write_lineage(wait=True)
            await self.broker.close()
        return 0

    async def _connect(self) -> None:
        """Connect to the broker; while it does not answer (it is restarting, say), wait for
        it: the supervisor stops this worker if it should give up."""
        delay = 0.5
        while True:
            try:
                return await self.broker.connect()
            except BrokerUnreachable as exc:
                log.warning("waiting for the broker: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _work(self) -> None:
        """What the worker does between setup and teardown: consume, or produce."""
        raise NotImplementedError

    def _fatal(self, message: str) -> int:
        log.error("%s", message)
        self.report.status = "error"
        self.report.last_error = message
        self._publish_report(force=True)
        return EXIT_CONFIG

    def _publish_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._reported >= REPORT_EVERY:
            self._reported = now
            if os.getppid() != self._parent:  # the supervisor is gone: do not run unsupervised
                log.warning("supervisor process is gone; stopping")
                self.stopping = True
            self.report.metrics = {
                "process": self.process.to_wire(),
                "wait": self.wait.to_wire(),
                "latency": self.latency.to_wire(),
                "queues": self.received_from,
                "depths": self.depths,
                "cpu": round(self._cpu, 4),
                "cpu_wait": round(self._cpu_wait, 4),
            }
            try:
                self.state.report(self.report)
            except Exception as exc:  # reporting must never stop the data plane
                log.warning("cannot write worker report: %s", exc)
            self._write_lineage()

    def _write_lineage(self, wait: bool = False) -> None:
        """Write the lineage noted since the last time, in a thread (one write at a time; at
        the end, ``wait``, in this one)."""
        if self.lineage is None or not self.lineage.rows:
            return
        if self._writing is not None and not self._writing.done() and not wait:
            return  # still writing the last batch: this one waits for the next report
        rows = self.lineage.take()

        def write() -> None:
            try:
                write_lineage(self.state.engine, rows)
            except Exception as exc:  # lineage is not worth stopping the data plane for
                log.warning("cannot write %d lineage record(s): %s", len(rows), exc)

        if wait:
            write()
        else:
            self._writing = asyncio.get_running_loop().run_in_executor(None, write)

    def _note_depths(self, depths: dict[str, tuple[int, int]]) -> None:
        """Queue depths as read now, for the report: [messages, bytes, when]."""
        at = round(time.time(), 3)
        for q, (n, size) in depths.items():
            self.depths[q] = [n, size, at]

    async def _read_depths(self, queues: list[str]) -> bool:
        """The depth of ``queues`` as they are now, into the next report; False if the broker
        could not say (never fatal)."""
        try:
            self._note_depths(await self.broker.depth(queues))
        except ElasticCodeError as exc:
            log.debug("cannot read the depth of %s: %s", ", ".join(queues), exc)
            return False
        return True

    async def _read_outputs(self) -> None:
        """The outgoing queues' depth, reported at once: after a burst, the last reading then
        holds what this worker published, which is how a network sees that a processor
        scaled to zero has something waiting."""
        if self.limits and await self._read_depths(list(self.limits)):
            self._publish_report(force=True)

    async def _wait_for_room(self) -> int:
        """Back pressure: wait while any outgoing connection is at its threshold.

        Return how many more messages the fullest connection takes (0 if the worker was told
        to stop while waiting). A reading with room left stands for ``ROOM_FRESH`` seconds,
        less what this worker publishes meanwhile, so a busy worker does not ask the broker
        before every batch.
        """
        if self._room > 0 and time.monotonic() - self._room_at < ROOM_FRESH:
            return self._room  # less what this worker published since
        while self.limits and not self.stopping:
            depths = await self.broker.depth(list(self.limits))
            self._note_depths(depths)
            room = min(
                self.limits[q][0] - n if size < self.limits[q][1] else 0
                for q, (n, size) in depths.items()
            )
            if room > 0:
                if self.report.status == "back-pressure":
                    self.report.status = "running"
                self._room, self._room_at = room, time.monotonic()
                return room
            self.report.status = "back-pressure"
            self._publish_report()
            await asyncio.sleep(0.05)
        return 0 if self.stopping else sys.maxsize

    def _note_output(self, parent: Message | None, child: Message, port: str, size: int) -> None:
        """Lineage: where an output came from (one row per parent of a join)."""
        assert self.lineage is not None
        attrs = child.attributes
        if parent is None:
            self.lineage.note("created", child.id, port=port, size=size, attributes=attrs)
        elif len(child.parents) > 1:
            for p in child.parents:
                self.lineage.note("joined", child.id, parent=p, port=port, size=size)
        else:
            self.lineage.note(
                "routed", child.id, parent=parent.id, port=port, size=size, attributes=attrs
            )

    def _encode(
        self,
        parent: Message | None,
        outputs: list[Output],
        ids: Iterable[str] = (),
        counts: dict[str, int] | None = None,
    ) -> list[tuple[str, bytes]]:
        """Outputs as queue bodies; ``counts`` (per port, the outputs so far) carries the
        numbering of one input's outputs from part to part."""
        items: list[tuple[str, bytes]] = []
        counts = {} if counts is None else counts
        given = iter(ids)
        now = time.time()
        for out in outputs:
            queues = self.outputs.get(out.port)
            if queues is None:
                raise OutputError(
                    f"emitted to port {out.port!r}, which it does not "
                    f"declare; declare it under outputs (now: {', '.join(self.outputs)})"
                )
            n = counts[out.port] = counts.get(out.port, -1) + 1
            if not queues:
                continue  # port not connected: the message ends here
            if out.key is not None:
                mid = derive_id(self.flow.name, self.name, out.port, out.key)
            elif parent is not None:
                mid = derive_id(parent.id, self.name, out.port, n)
            else:
                mid = next(given)
            attributes = parent.attributes if parent is not None else {}
            if out.attributes:
                attributes = {**attributes, **out.attributes}
            traced = parent.traced if parent is not None else self.flow.settings.traces(mid)
            child = Message(
                out.payload,
                mid,
                self.flow.name,
                self.name,
                now,
                out.parents or ((parent.id,) if parent is not None else ()),
                attributes,
                born=parent.born if parent is not None else now,
                traced=traced,
            )
            try:
                body = encode(child, self.max_bytes)
            except MessageError as exc:
                raise OutputError(f"output on port {out.port!r}: {exc}") from None
            items.extend((q, body) for q in queues)
            if traced and self.lineage is not None:
                self._note_output(parent, child, out.port, len(body))
            self.report.bytes_out += len(body) * len(queues)
        return items


class Consumer(Worker):
    """A worker of a processor with inputs: fetch a batch, call the processor for each
    message, settle the batch (outputs published before inputs are acknowledged)."""

    async def _work(self) -> None:
        assert self.loaded is not None
        queues = list(self.inputs)
        prefetch = self.spec.prefetch
        overlaps = self.loaded.overlaps
        while not self.stopping:
            # let the loop run its callbacks (SIGTERM's among them) even when every await
            # below completes at once, as on a busy embedded queue
            await asyncio.sleep(0)
            if self.spec.scale is not None and time.monotonic() - self._reported >= REPORT_EVERY:
                await self._read_depths(queues)  # the backlog the autoscaler scales on
            self._publish_report()
            if not await self._wait_for_room():
                break
            batch = await self.broker.fetch(queues, prefetch, self.consumer, timeout=0.25)
            if not batch:
                if self.report.holding:  # the end of a burst
                    self.report.holding = 0
                    await self._read_outputs()
                continue
            if self._asked_to_stop():  # while it waited: this batch is for the other workers
                await self.broker.release(self.consumer)
                self.report.holding = 0
                break
            # Tell the runner at once when an idle worker starts holding messages: with brokers
            # that do not count held messages, that is how it knows the flow is not drained.
            # (Between busy batches ``holding`` stays above 0, so this is one write per burst.)
            idle = self.report.holding == 0
            self.report.holding = len(batch)
            if idle:
                self._publish_report(force=True)
            # Redelivered messages go one at a time, each settled on its own: if one of them
            # crashes the worker, it cannot take the rest of a batch down with it again.
            fresh = [d for d in batch if d.delivery == 1]
            again = [d for d in batch if d.delivery > 1]
            async with Held(self.broker, batch) as held:
                if fresh:
                    await self._process(fresh, overlaps, held)
                held.settled(fresh)
                for d in again:
                    await self._process([d], False, held, isolated=True)
                    held.settled([d])
            if idle:  # the first counts of a burst at once: live views show them an interval on
                self._publish_report(force=True)
            if self.spec.max_memory and (rss := _resident()) > self.spec.max_memory:
                log.warning(
                    "processor %s: worker uses %d MB, over its max_memory of %d MB; restarting",
                    self.name,
                    rss // 2**20,
                    self.spec.max_memory // 2**20,
                )
                self.report.last_error = f"restarted at {rss // 2**20} MB (max_memory)"
                self.recycle = self.stopping = True

    async def _process(
        self, batch: list[Delivery], concurrent: bool, held: Held, isolated: bool = False
    ) -> None:
        settlement = Settlement()
        deferred: list[Any] = []
        # how much of the time in the code is on a CPU, and how much waiting for one (the
        # autoscaler tells CPU-bound processors from those that wait, whatever else the host
        # runs); for processors that scale, the processes the worker started count too (a
        # command processor's); the others, the worker's CPU time alone (no file reads)
        scales = self.spec.scale is not None
        started = time.perf_counter()
        cpu, waited = _usage() if scales else (time.process_time(), 0.0)
        if concurrent:
            await asyncio.gather(*(self._handle(d, settlement, deferred) for d in batch))
        else:
            for d in batch:
                await held.renew_if_due()  # sync code keeps the loop: renew between messages
                await self._handle(d, settlement, deferred, isolated)
        self.report.busy += time.perf_counter() - started
        if scales:
            cpu_now, waited_now = _usage()
            self._cpu += cpu_now - cpu
            self._cpu_wait += max(0.0, waited_now - waited)  # a child's ends with it
        else:
            self._cpu += time.process_time() - cpu
        await self.broker.settle(settlement)
        self._room -= len(settlement.publish)
        for fn in deferred:
            try:
                fn()
            except Exception:
                log.exception("processor %s: after_settle callback failed", self.name)

    async def _handle(
        self, d: Delivery, settlement: Settlement, deferred: list[Any], isolated: bool = False
    ) -> None:
        assert self.loaded is not None
        report = self.report
        report.received += 1
        self.received_from[d.queue] = self.received_from.get(d.queue, 0) + 1
        try:
            body = await self._claimed(d.body) if is_claim(d.body) else d.body
            report.bytes_in += len(body)
            msg = decode(body, d.delivery)
            del body  # a claim-checked body is held by the message alone while it runs
        except MessageError as exc:
            self._failed(
                d, None, f"undecodable message on {d.queue}: {exc}", "", settlement, retry=False
            )
            return
        if isolated:
            key = f"{self.flow.name}.{self.name}"  # a flow's workers see only its own rows
            tries = self.state.bump_attempt(key, msg.id)
            deferred.append(lambda: self.state.clear_attempts(key, msg.id))
            if tries > self.spec.retries.max + 1:
                self._failed(
                    d,
                    msg,
                    f"started {tries} times without completing: the worker processing it died "
                    "or was stopped each time (does the processor crash the interpreter or run "
                    "out of memory on this input?)",
                    "",
                    settlement,
                    retry=False,
                )
                if msg.traced and self.lineage is not None:
                    self.lineage.note("dead-lettered", msg.id, attempt=tries, error="crashed")
                return
        now = time.time()
        self.wait.observe(max(0.0, now - msg.created))
        self.latency.observe(max(0.0, now - msg.born))
        ctx = self.ctx.child(msg, self.inputs[d.queue])
        limit = self.spec.timeout
        staged = Staged(msg, self._encode, self._publish_part, self.results is not None)
        started = time.perf_counter()
        error: str | None = None
        try:
            if self.loaded.is_async:
                await asyncio.wait_for(staged.run_async(self.loaded.call, msg.payload, ctx), limit)
            else:
                await staged.run_sync(self.loaded.call, msg.payload, ctx, limit)
            if staged.kept is not None:  # kept before the input is acknowledged
                await self._keep_result(msg, staged.kept)
        except ResultTooLarge as exc:
            error = str(exc)
            outcome = self._failed(d, msg, error, "", settlement, retry=False)
        except (TimeoutError, TimedOut):
            error = f"timed out: took longer than {limit:g}s (timeout) over this message"
            outcome = self._failed(d, msg, error, "", settlement, retry=True)
        except Reject as exc:
            error = f"rejected: {exc}"
            outcome = self._failed(d, msg, error, "", settlement, retry=False)
        except OutputError as exc:
            error = str(exc)
            outcome = self._failed(d, msg, error, "", settlement, retry=False)
        except Exception as exc:
            tb = traceback.format_exc()
            error = f"{type(exc).__name__}: {exc}"
            outcome = self._failed(d, msg, error, tb, settlement, retry=True)
        else:
            settlement.publish.extend(staged.items)
            settlement.ack.append(d)
            report.emitted += staged.emitted
            deferred.extend(ctx.deferred)
            outcome = "processed" if staged.emitted else "dropped"
        took = time.perf_counter() - started
        self.process.observe(took)
        if msg.traced and self.lineage is not None:
            self.lineage.note(
                outcome,
                msg.id,
                wait=round(now - msg.created, 6),
                duration=round(took, 6),
                attempt=d.delivery,
                outputs=staged.emitted if error is None else None,
                error=error,
            )

    async def _publish_part(self, items: list[tuple[str, bytes]]) -> bool:
        """Publish a part of one input's outputs now (once there is room downstream); False
        when told to stop meanwhile: the part then goes with the batch."""
        if not await self._wait_for_room():
            return False
        await self.broker.publish(items)
        self._room -= len(items)
        return True

    async def _keep_result(self, msg: Message, outputs: list[Any]) -> None:
        """What the processor emitted for ``msg``, as its result (see ``flow.Results``)."""
        assert self.results is not None and self.spec.results is not None
        key = msg.attributes.get("key")
        key = key if isinstance(key, str) and key else msg.id
        value: bytes = msgpack.packb(outputs, use_bin_type=True)
        await self.results.put(self.flow.name, key, value, self.spec.results.ttl)

    async def _claimed(self, reference: bytes) -> bytes:
        """A claim-checked message's body, from the flow's blob store."""
        if not isinstance(self.broker, ClaimCheckBroker):
            raise MessageError(
                "its body is in a blob store, and this flow names none: set settings.blobs "
                "to the store its senders use"
            )
        return await self.broker.resolve(reference)

    def _failed(
        self,
        d: Delivery,
        msg: Message | None,
        error: str,
        tb: str,
        settlement: Settlement,
        retry: bool,
    ) -> str:
        """Settle a failed message: retried, routed to ``failure``, or dead-lettered (which
        of them it was is returned, as lineage names it)."""
        report = self.report
        report.errors += 1
        attempt = d.delivery
        report.last_error = f"{error} (attempt {attempt})"
        retries = self.spec.retries
        if retry and attempt <= retries.max:
            report.retried += 1
            settlement.retry.append((d, retries.delay(attempt), error))
            log.info("processor %s: %s; retry %d of %d", self.name, error, attempt, retries.max)
            return "retried"
        log.warning("processor %s: %s; giving up after %d attempt(s)", self.name, error, attempt)
        failure = self.outputs.get("failure")
        if failure and msg is not None:
            attrs = {
                **msg.attributes,
                "error": error,
                "failed_processor": self.name,
                "attempts": attempt,
            }
            if tb:
                attrs["traceback"] = tb
            child = Message(
                msg.payload,
                derive_id(msg.id, self.name, "failure", 0),
                self.flow.name,
                self.name,
                time.time(),
                (msg.id,),
                attrs,
                born=msg.born,
                traced=msg.traced,
            )
            try:
                body = encode(child, self.max_bytes)
            except MessageError:
                pass  # too large with the traceback attached: dead-letter instead
            else:
                settlement.publish.extend((q, body) for q in failure)
                settlement.ack.append(d)
                if msg.traced and self.lineage is not None:
                    self.lineage.note(
                        "routed", child.id, parent=msg.id, port="failure", size=len(body)
                    )
                return "failed"
        report.dead += 1
        settlement.dead.append((d, f"processor {self.name!r}: {error}" + (f"\n{tb}" if tb else "")))
        return "dead-lettered"


def _resident() -> int:
    """This process's resident memory now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


PAGE = os.sysconf("SC_PAGE_SIZE")


def _call_hook(hook: Any, ctx: Context) -> Any:
    params = inspect.signature(hook).parameters
    return hook(ctx) if params else hook()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
