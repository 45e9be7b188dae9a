"""Where a one-host run keeps its queues, state and logs, and the lock that makes it its own."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from ..errors import RunLocked
from ..flow import Flow


def state_paths(
    flow: Flow, state_dir: str | Path | None = None, broker: str | None = None
) -> tuple[Path, str, str]:
    """(state dir, broker URL, state URL) for a flow, embedded defaults filled in."""
    root = Path(state_dir) if state_dir else Path.cwd() / ".elasticcode" / flow.name
    root = root.resolve()
    broker = broker or os.environ.get("ELASTICCODE_BROKER") or flow.settings.broker
    return root, broker or f"sqlite:///{root / 'queues.db'}", f"sqlite:///{root / 'state.db'}"


def blobs_url(flow: Flow, root: Path) -> str:
    """The flow's blob store (the claim check's): its ``settings.blobs``, else the ``blobs``
    folder of its state directory."""
    return flow.settings.blobs or f"file://{root / 'blobs'}"


class RunLock:
    """The lock of a state directory: one run at a time owns it."""

    def __init__(self, root: Path) -> None:
        # queues, state and logs hold the flow's data: for the user who runs it only
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
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
