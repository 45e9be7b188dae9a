"""The one retry loop of every broker backend: ride out a lost server for a while, then fail.

A backend says which failures are transient (the server cannot be reached, a reconnection is
under way) and how to phrase a failure; the loop runs an operation, and while it fails for a
transient reason, runs it again with a growing pause, for up to ``retry_for`` seconds. The
first failure and the recovery are logged once each, with secrets masked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import BrokerError

T = TypeVar("T")


@dataclass
class Retrying:
    #: The server, as errors and logs name it (``Redis at host:port``).
    where: str
    #: How long an operation keeps trying while the server is away (``retry_for``).
    seconds: float
    #: Whether a failure may pass once the server is back.
    transient: Callable[[BaseException], bool]
    #: The error to raise for a failure of ``what``: one that is not transient
    #: (``gave_up`` False), or one that lasted ``seconds`` (``gave_up`` True).
    failed: Callable[[str, BaseException, bool], BaseException]
    #: Masks the URL's secrets in a text.
    mask: Callable[[object], str]
    log: logging.Logger
    first: float = 0.1
    most: float = 2.0
    #: Waits between tries, given the pause due and the time left (default: sleeps the
    #: pause); a backend may wait for its reconnection instead.
    pause: Callable[[float, float], Awaitable[None]] | None = None

    async def __call__(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.seconds
        pause = self.first
        failing = False
        while True:
            try:
                result = await op()
            except Exception as exc:
                transient = self.transient(exc)
                if not transient and isinstance(exc, BrokerError):
                    raise
                left = deadline - time.monotonic()
                if not transient or left <= 0:
                    error = self.failed(what, exc, transient)
                    if error is exc:
                        raise
                    raise error from None
                if not failing:
                    failing = True
                    self.log.warning(
                        "%s: %s failed (%s); retrying for up to %gs",
                        self.where,
                        what,
                        self.mask(exc) or type(exc).__name__,
                        self.seconds,
                    )
                if self.pause is None:
                    await asyncio.sleep(min(pause, left))
                else:
                    await self.pause(pause, left)
                pause = min(pause * 2, self.most)
                continue
            if failing:
                self.log.warning("%s: reachable again; %s done", self.where, what)
            return result
