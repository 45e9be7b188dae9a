"""Nudges between servers sharing a PostgreSQL state store: a server that made a change which
it does not lead over says so (``NOTIFY``), and every server listens (``LISTEN``), so the
leader's next round starts at once rather than at its next tick. Other databases have no such
channel: there, a change made through a server that does not lead waits for the tick."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import sqlalchemy as sa

log = logging.getLogger("elasticcode.server")

#: The PostgreSQL notification channel.
CHANNEL = "elasticcode_nudge"


def can_nudge(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


def notify(engine: sa.Engine) -> None:
    """Tell the leader, wherever it runs, that something changed."""
    with engine.begin() as db:
        db.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def listen(engine: sa.Engine, wake: Callable[[], None], stop: threading.Event) -> None:
    """Call ``wake`` on every nudge until ``stop`` is set, on a connection of its own (out of
    the engine's pool); when the database goes away, again once it answers."""
    backoff = 1.0
    while not stop.is_set():
        try:
            raw = engine.raw_connection()
            conn = raw.dbapi_connection
            raw.detach()  # held for as long as the server runs: not one of the pool's
            try:
                assert conn is not None
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                backoff = 1.0
                while not stop.is_set():
                    for _ in conn.notifies(timeout=1.0):
                        wake()
            finally:
                raw.close()
        except Exception as exc:
            if stop.is_set():
                return
            log.warning("cannot listen for nudges (%r); again in %.0fs", exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
