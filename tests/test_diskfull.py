"""A full disk under the embedded default: the run stops with a clear error, the queue
database is not corrupted, and once there is space again the run resumes and delivers every
message."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import FlowDir
from .services import unavailable

pytestmark = pytest.mark.slow

STEPS = """
import os

OUT = {out!r}

def numbers(count):
    for i in range(count):
        yield {{"n": i, "pad": "x" * 1000}}

def inc(payload):
    return payload

def sink(payload):
    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % payload["n"])
    os.close(fd)
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of the test's own (tmpfs)."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)])
    if done.returncode != 0:
        unavailable("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_cleanly_and_it_resumes(fd: FlowDir, small_disk: Path) -> None:
    out = fd.root / "sink.log"  # outside the small disk
    fd.module("fullsteps", STEPS.format(out=str(out)))
    count = 20_000
    flow = fd.flow(
        f"""
        name: diskfull
        processors:
          - {{name: numbers, code: fullsteps:numbers, source: true, config: {{count: {count}}}}}
          - {{name: a, code: fullsteps:inc, instances: 1}}
          - {{name: sink, code: fullsteps:sink, instances: 1}}
        connections:
          - {{from: numbers, to: a}}
          - {{from: a, to: sink}}
        """
    )
    state = small_disk / "state"
    first = fd.run(flow, state_dir=state)
    assert first.status == "disk-full", first.events
    said = " ".join(first.events)
    assert "is full" in said and "Free some space" in said and "resumes" in said
    with sqlite3.connect(state / "queues.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    subprocess.run(["mount", "-o", "remount,size=512m", str(small_disk)], check=True)
    runs = [first]
    while runs[-1].status != "finished" and len(runs) < 4:
        runs.append(fd.run(flow, state_dir=state))
    assert runs[-1].status == "finished", [r.status for r in runs]
    assert runs[-1].resumed
    seen = Counter(int(n) for n in out.read_bytes().split())
    lost = count - len(set(seen))
    print(
        f"\naccounting (disk full, embedded): sent {count} / delivered {len(seen)} / "
        f"duplicates {sum(seen.values()) - len(seen)} / lost {lost}; "
        f"runs: {', '.join(r.status for r in runs)}"
    )
    assert lost == 0
