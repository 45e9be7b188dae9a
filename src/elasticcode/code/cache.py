"""The host's code cache: git clones and commit trees, and isolated environments.

``$ELASTICCODE_CACHE``, else ``~/.cache/elasticcode``. Everything in it is written once, under a
file lock, by whichever process needs it first, and shared by every worker and flow after.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "ELASTICCODE_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "elasticcode")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
