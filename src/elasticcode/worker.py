"""A worker: one OS process running one processor instance.

A consuming worker fetches a batch from its input queues (prefetch), calls the processor for
each message, and settles the batch: outputs published, inputs acknowledged, failures retried
with backoff or routed to ``failure`` / the dead-letter store. An input is never acknowledged
before its outputs are durable. A source worker calls its source (once, on an interval or by
cron), publishes what it produces in batches, and records its progress so that a restarted
run resumes where it stopped.

Run as ``python -m elasticcode.worker``; the agent starts and supervises these processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from .brokers import Broker, Delivery, Settlement, open_broker
from .errors import (
    DiskFull,
    ElasticCodeError,
    MessageError,
    ProcessorError,
    Reject,
    StateUnreachable,
)
from .flow import Flow
from .message import Message, decode, derive_id, encode
from .processor import Context, Loaded, Output, collect, collect_sync, load
from .state import StateStore, WorkerReport

log = logging.getLogger("elasticcode.worker")

REPORT_EVERY = 0.5
SOURCE_BATCH = 500
SOURCE_FLUSH = 0.001  # a source publishes what it has after this long (s)
ROOM_FRESH = 0.1  # how long a queue depth reading stands for back pressure (s)
EXIT_CONFIG = 3
EXIT_MEMORY = 4  # over max_memory: to be restarted at once
EXIT_DISK_FULL = 5  # the embedded queues' disk is full
BROKER_ENV = "ELASTICCODE_WORKER_BROKER"
STATE_ENV = "ELASTICCODE_WORKER_STATE"


class OutputError(ElasticCodeError):
    """An output cannot be delivered as emitted; retrying would not help."""


class Worker:
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
        self.stopping = False
        #: set when the worker outgrew max_memory and stops to be restarted
        self.recycle = False
        self._reported = 0.0
        #: room left on the fullest outgoing connection, and when the broker said so
        self._room, self._room_at = 0, 0.0
        self._parent = os.getppid()
        self.loaded: Loaded | None = None
        self._calls = 0
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
        try:
            self.loaded = load(self.spec, self.flow)
            if self.loaded.setup is not None:
                await _maybe_await(_call_hook(self.loaded.setup, self.ctx))
        except ProcessorError as exc:
            return self._fatal(str(exc))
        except Exception as exc:
            return self._fatal(f"processor {self.name!r}: setup() failed: {exc!r}")
        try:
            await self.broker.connect()
            await self.broker.declare(list(self.inputs) + list(self.limits))
            self.report.status = "running"
            self._publish_report(force=True)
            if self.spec.is_source:
                await self._source()
            else:
                await self._consume()
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
            await self.broker.close()
        return 0

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
            if os.getppid() != self._parent:  # the agent is gone: do not run unsupervised
                log.warning("agent process is gone; stopping")
                self.stopping = True
            try:
                self.state.report(self.report)
            except Exception as exc:  # reporting must never stop the data plane
                log.warning("cannot write worker report: %s", exc)

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

    # -- consuming --------------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self.loaded is not None
        queues = list(self.inputs)
        prefetch = self.spec.prefetch
        is_async = self.loaded.is_async
        while not self.stopping:
            # let the loop run its callbacks (SIGTERM's among them) even when every await
            # below completes at once, as on a busy embedded queue
            await asyncio.sleep(0)
            self._publish_report()
            if not await self._wait_for_room():
                break
            batch = await self.broker.fetch(queues, prefetch, self.consumer, timeout=0.25)
            if not batch:
                self.report.holding = 0
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
            if fresh:
                await self._process(fresh, is_async)
            for d in batch:
                if d.delivery > 1:
                    await self._process([d], False, isolated=True)
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
        self, batch: list[Delivery], concurrent: bool, isolated: bool = False
    ) -> None:
        settlement = Settlement()
        deferred: list[Any] = []
        started = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(self._handle(d, settlement, deferred) for d in batch))
        else:
            for d in batch:
                await self._handle(d, settlement, deferred, isolated)
        self.report.busy += time.perf_counter() - started
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
        self.report.received += 1
        try:
            msg = decode(d.body, d.delivery)
        except MessageError as exc:
            self._failed(
                d, None, f"undecodable message on {d.queue}: {exc}", "", settlement, retry=False
            )
            return
        if isolated:
            tries = self.state.bump_attempt(self.name, msg.id)
            deferred.append(lambda: self.state.clear_attempts(self.name, msg.id))
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
                return
        ctx = self.ctx.child(msg, self.inputs[d.queue])
        limit = self.spec.timeout
        try:
            if self.loaded.is_async:
                outputs = await asyncio.wait_for(
                    collect(self.loaded.call(msg.payload, ctx), ctx), limit
                )
            else:
                with _alarm(limit):
                    outputs = collect_sync(self.loaded.call(msg.payload, ctx), ctx)
            items = self._encode(msg, outputs)
        except (TimeoutError, _TimedOut):
            error = f"timed out: took longer than {limit:g}s (timeout) over this message"
            self._failed(d, msg, error, "", settlement, retry=True)
        except Reject as exc:
            self._failed(d, msg, f"rejected: {exc}", "", settlement, retry=False)
        except OutputError as exc:
            self._failed(d, msg, str(exc), "", settlement, retry=False)
        except Exception as exc:
            tb = traceback.format_exc()
            self._failed(d, msg, f"{type(exc).__name__}: {exc}", tb, settlement, retry=True)
        else:
            settlement.publish.extend(items)
            settlement.ack.append(d)
            self.report.emitted += len(outputs)
            deferred.extend(ctx.deferred)

    def _encode(
        self, parent: Message | None, outputs: list[Output], ids: Iterable[str] = ()
    ) -> list[tuple[str, bytes]]:
        items: list[tuple[str, bytes]] = []
        counts: dict[str, int] = {}
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
            child = Message(
                out.payload,
                mid,
                self.flow.name,
                self.name,
                now,
                (parent.id,) if parent is not None else (),
                attributes,
            )
            try:
                body = encode(child, self.max_bytes)
            except MessageError as exc:
                raise OutputError(f"output on port {out.port!r}: {exc}") from None
            items.extend((q, body) for q in queues)
        return items

    def _failed(
        self,
        d: Delivery,
        msg: Message | None,
        error: str,
        tb: str,
        settlement: Settlement,
        retry: bool,
    ) -> None:
        report = self.report
        report.errors += 1
        attempt = d.delivery
        report.last_error = f"{error} (attempt {attempt})"
        retries = self.spec.retries
        if retry and attempt <= retries.max:
            report.retried += 1
            settlement.retry.append((d, retries.delay(attempt), error))
            log.info("processor %s: %s; retry %d of %d", self.name, error, attempt, retries.max)
            return
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
            )
            try:
                body = encode(child, self.max_bytes)
            except MessageError:
                pass  # too large with the traceback attached: dead-letter instead
            else:
                settlement.publish.extend((q, body) for q in failure)
                settlement.ack.append(d)
                return
        report.dead += 1
        settlement.dead.append((d, f"processor {self.name!r}: {error}" + (f"\n{tb}" if tb else "")))

    # -- sources ----------------------------------------------------------------------------
    async def _source(self) -> None:
        spec = self.spec
        schedule = spec.source
        assert schedule is not None and self.loaded is not None
        offset, calls, done = self.state.source_progress(self.run_id, self.name)
        self._calls = calls
        failures = 0
        last_call = 0.0
        while not done and not self.stopping:
            if schedule.scheduled:
                if schedule.count is not None and calls >= schedule.count:
                    break
                if not await self._sleep_until(self._next_tick(last_call)):
                    break
                last_call = time.time()
            try:
                skip = 0 if schedule.scheduled else offset
                offset = await self._produce(offset, skip, calls + 1)
            except _Stopped:
                return
            except Exception as exc:
                failures += 1
                self.report.errors += 1
                self.report.last_error = f"{type(exc).__name__}: {exc}"
                log.error("source %s failed: %s", self.name, traceback.format_exc())
                if schedule.scheduled:
                    calls = self._calls = calls + 1
                    self.state.save_source(self.run_id, self.name, offset, calls, False)
                    continue
                if failures > spec.retries.max:
                    self.report.status = "failed"
                    self.state.save_source(self.run_id, self.name, offset, calls, True)
                    return
                await asyncio.sleep(spec.retries.delay(failures))
                continue
            calls = self._calls = calls + 1
            done = not schedule.scheduled
            self.state.save_source(self.run_id, self.name, offset, calls, done)
        if not self.stopping:
            self.state.save_source(self.run_id, self.name, offset, calls, True)
            self.report.status = "done"

    def _next_tick(self, last_call: float) -> float:
        schedule = self.spec.source
        assert schedule is not None
        if schedule.cron is not None:
            from croniter import croniter

            return float(croniter(schedule.cron, time.time()).get_next(float))
        assert schedule.interval is not None
        return last_call + schedule.interval if last_call else time.time()

    async def _sleep_until(self, when: float) -> bool:
        while not self.stopping:
            left = when - time.time()
            if left <= 0:
                return True
            self._publish_report()
            await asyncio.sleep(min(left, 0.2))
        return False

    async def _produce(self, offset: int, skip: int, call_no: int) -> int:
        """Call the source once and publish what it produces; return the new offset."""
        assert self.loaded is not None
        ctx = self.ctx.child(None, None)
        result = self.loaded.call(ctx)
        if inspect.isawaitable(result):
            result = await result
        pending: list[Output] = []
        flushed = time.monotonic()
        position = 0
        async for item in _items(result, ctx):
            position += 1
            if position <= skip:
                continue  # emitted before a restart
            pending.append(item)
            if len(pending) >= SOURCE_BATCH or time.monotonic() - flushed > SOURCE_FLUSH:
                offset = await self._flush(pending, offset)
                pending = []
                flushed = time.monotonic()
                await asyncio.sleep(0)  # a chance for SIGTERM's callback (see _consume)
                if self.stopping:
                    raise _Stopped
        if pending:
            offset = await self._flush(pending, offset)
        return offset

    async def _flush(self, outputs: list[Output], offset: int) -> int:
        """Publish outputs in chunks that fit the outgoing connections; return the new offset.

        Told to stop while waiting for room, it drops what is unpublished: the offset does
        not cover it, so a resumed run produces it again.
        """
        while outputs:
            room = await self._wait_for_room()
            if not room:
                raise _Stopped
            chunk, outputs = outputs[:room], outputs[room:]
            ids = [
                derive_id(self.flow.name, self.run_id, self.name, offset + i)
                for i in range(len(chunk))
            ]
            await self.broker.publish(self._encode(None, chunk, ids))
            self._room -= len(chunk)
            offset += len(chunk)
            self.report.emitted += len(chunk)
            self.state.save_source(self.run_id, self.name, offset, self._calls, False)
            self._publish_report()
        return offset


class _Stopped(Exception):
    pass


def _resident() -> int:
    """This process's resident memory now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


PAGE = os.sysconf("SC_PAGE_SIZE")


class _TimedOut(BaseException):  # not an Exception: processor code cannot catch it by accident
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _TimedOut


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Interrupt the (synchronous) code inside after ``seconds``: SIGALRM raises in it."""
    if seconds is None:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def _items(result: Any, ctx: Context) -> AsyncIterator[Output]:
    """What a source call produced, one output at a time."""
    for out in ctx.outputs:
        yield out
    if result is None:
        return
    if isinstance(result, Output):
        yield result
    elif inspect.isasyncgen(result):
        async for item in result:
            yield item if isinstance(item, Output) else Output(item)
    elif isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        yield Output(result)
    else:
        for item in result:
            yield item if isinstance(item, Output) else Output(item)


def _call_hook(hook: Any, ctx: Context) -> Any:
    params = inspect.signature(hook).parameters
    return hook(ctx) if params else hook()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elasticcode.worker",
        description="Run one processor instance (started by an agent).",
    )
    parser.add_argument("--flow", required=True, help="flow file")
    parser.add_argument("--processor", required=True)
    parser.add_argument("--instance", type=int, default=0)
    parser.add_argument("--run", type=int, required=True, dest="run_id")
    parser.add_argument(
        "--broker", default=os.environ.get(BROKER_ENV), help=f"[default: ${BROKER_ENV}]"
    )
    parser.add_argument(
        "--state", default=os.environ.get(STATE_ENV), help=f"[default: ${STATE_ENV}]"
    )
    parser.add_argument("--consumer", required=True)
    args = parser.parse_args(argv)
    if not args.broker or not args.state:
        parser.error(f"give --broker and --state, or set {BROKER_ENV} and {STATE_ENV}")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.processor}[{args.instance}] %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when workers stop
    flow = Flow.load(args.flow)
    broker = open_broker(
        args.broker, flow.broker_routes(), max_message_bytes=flow.settings.max_message_bytes
    )
    state = _open_state(args.state)
    worker = Worker(flow, args.processor, broker, state, args.run_id, args.instance, args.consumer)

    async def go() -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
        return await worker.run()

    try:
        return asyncio.run(go())
    except DiskFull as exc:  # nothing more can be written: say so and let the agent decide
        log.error("%s", exc)
        return EXIT_DISK_FULL
    finally:
        state.close()


def _open_state(url: str) -> StateStore:
    """The state store; while it does not answer, wait for it (the agent stops this worker
    if it should give up)."""
    delay = 0.5
    while True:
        try:
            return StateStore(url)
        except StateUnreachable as exc:
            log.warning("waiting for the state store: %s; retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


if __name__ == "__main__":
    sys.exit(main())
