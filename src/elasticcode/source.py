"""A source worker: calls its source (once, on an interval or by cron) and publishes what it
produces in batches, recording its progress so that a restarted run resumes where it stopped.

A source's n-th message of a run always gets the same id (see ``elasticcode.message``); after
a restart, what the offset covers is skipped, so nothing is produced twice.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import AsyncIterator, Iterable
from typing import Any

from .message import derive_id
from .processor import Context, Output
from .worker import Worker

log = logging.getLogger("elasticcode.worker")

SOURCE_BATCH = 500
SOURCE_FLUSH = 0.001  # a source publishes what it has after this long (s)


class Source(Worker):
    #: calls of the source so far, in this run
    _calls = 0

    async def _work(self) -> None:
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
            await self._read_outputs()

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


async def _items(result: Any, ctx: Context) -> AsyncIterator[Output]:
    """What a source call produced, one output at a time, in the order it came: what it
    emitted with ``ctx.emit`` (before and while a generator runs) among what it yields."""

    def emitted() -> list[Output]:
        out, ctx.outputs = ctx.outputs, []
        return out

    for out in emitted():
        yield out
    if result is None:
        return
    if isinstance(result, Output):
        yield result
    elif inspect.isasyncgen(result):
        async for item in result:
            for out in emitted():
                yield out
            yield item if isinstance(item, Output) else Output(item)
    elif isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        yield Output(result)
    else:
        for item in result:
            for out in emitted():
                yield out
            yield item if isinstance(item, Output) else Output(item)
    for out in emitted():  # after the generator's last item
        yield out
