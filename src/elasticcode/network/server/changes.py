"""Agents that long-poll for a change of their assignment, woken together by one poll of the
database (every 0.1 s) rather than each asking it; and their assignments, answered from one
read of the state store for all of them (``Cluster.assignments``) rather than one per agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.concurrency import run_in_threadpool

from ..assignments import Assignments
from ..cluster import Cluster

log = logging.getLogger("elasticcode.server")

#: A read of every agent's assignment serves for this long at most (seconds), and only an
#: agent whose generation in it is the latest known.
READ_SERVES = 1.0


class Changes:
    """Waiters for a change of some agent's assignment, woken by one poll of the database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.generations: dict[str, int] = {}
        self.changed = asyncio.Event()
        self._read: Assignments | None = None
        self._reading: asyncio.Future[Assignments] | None = None

    async def watch(self, every: float = 0.1) -> None:
        while True:
            try:
                now = await run_in_threadpool(self.cluster.generations)
                if now != self.generations:
                    self.generations = now
                    self.changed.set()
                    self.changed = asyncio.Event()
            except Exception as exc:  # the database may be away; say so and go on
                log.warning("cannot read assignments: %s", exc)
                await asyncio.sleep(1.0)
            await asyncio.sleep(every)

    async def wait(self, agent_id: str, have: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.generations.get(agent_id) == have:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def assignments(self, agent_id: str, least: int = -1) -> Assignments:
        """A read of every agent's assignment that holds ``agent_id``'s latest one (of
        generation ``least`` at least): the last read while it is recent and current for that
        agent, else a new one, which every agent asking meanwhile shares."""
        last = self._read
        if last is not None and self._serves(last, agent_id, least):
            return last
        for _ in range(3):
            if self._reading is None:
                self._reading = asyncio.ensure_future(run_in_threadpool(self.cluster.assignments))
                self._reading.add_done_callback(self._done)
            read = await asyncio.shield(self._reading)
            if agent_id not in read.generations or self._serves(read, agent_id, least):
                return read  # (an agent it does not hold is told so)
        return read  # changing fast: the agent asks again when it sees a newer generation

    def _serves(self, read: Assignments, agent_id: str, least: int) -> bool:
        if time.monotonic() - read.made > READ_SERVES or agent_id not in read.generations:
            return False
        return read.generations[agent_id] >= max(least, self.generations.get(agent_id, -1))

    def _done(self, reading: asyncio.Future[Assignments]) -> None:
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled() and reading.exception() is None:
            self._read = reading.result()
