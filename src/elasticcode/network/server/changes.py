"""Agents that long-poll for a change of their assignment, woken together by one poll of the
database (every 0.1 s) rather than each asking it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.concurrency import run_in_threadpool

from ..cluster import Cluster

log = logging.getLogger("elasticcode.server")


class Changes:
    """Waiters for a change of some agent's assignment, woken by one poll of the database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.generations: dict[str, int] = {}
        self.changed = asyncio.Event()

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
