"""Shared fixtures: flows written into a temporary folder and run on the embedded default."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import elasticcode
from elasticcode import Flow, RunResult
from elasticcode.supervisor import Supervisor


class FlowDir:
    """A temporary folder holding a processor module and a flow file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"

    def module(self, name: str, code: str) -> Path:
        path = self.root / f"{name}.py"
        path.write_text(textwrap.dedent(code))
        return path

    def flow(self, text: str, name: str = "flow.yaml") -> Flow:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return Flow.load(path)

    def run(self, flow: Flow, **options: Any) -> RunResult:
        options.setdefault("state_dir", self.state)
        return elasticcode.run(flow, **options)

    def lines(self, name: str) -> list[str]:
        path = self.root / name
        return path.read_text().splitlines() if path.exists() else []


def kill_worker(
    processor: str, after: float, killed: list[int], when: Callable[[], bool] | None = None
) -> Callable[[Supervisor], None]:
    """An ``on_start`` hook that kill -9s one worker of ``processor`` after ``after`` seconds,
    or, given ``when``, as soon as it is true (checked every 10 ms for up to 60 s)."""

    def hook(agent: Supervisor) -> None:
        def go() -> None:
            if when is None:
                time.sleep(after)
            else:
                deadline = time.monotonic() + 60
                while not when() and time.monotonic() < deadline:
                    time.sleep(0.01)
            for inst in agent.instances:
                if inst.processor == processor and inst.pid:
                    try:
                        os.kill(inst.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue  # it ended meanwhile: another, if there is one
                    killed.append(inst.pid)
                    return

        threading.Thread(target=go, daemon=True).start()

    return hook


@pytest.fixture
def fd(tmp_path: Path) -> FlowDir:
    return FlowDir(tmp_path)


@pytest.fixture
def sink_module(fd: FlowDir) -> Callable[[], Path]:
    """A module with a counting source, a pass-through stage and a sink that logs ids."""

    def make() -> Path:
        return fd.module(
            "steps",
            f"""
            import os

            OUT = {str(fd.root)!r}

            def numbers(count=100):
                for i in range(count):
                    yield {{"n": i}}

            def inc(payload):
                return {{**payload, "hops": payload.get("hops", 0) + 1}}

            def sink(payload, ctx, name="sink.log"):
                line = f"{{ctx.message.id}} {{payload['n']}}\\n"
                fd = os.open(os.path.join(OUT, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            """,
        )

    return make


JSON_STEPS = """
import json, os
OUT = {out!r}

def numbers(count):
    for i in range(count):
        yield {{"n": i}}

def sink(payload, ctx):
    with open(os.path.join(OUT, "sink.log"), "a") as f:
        f.write(json.dumps(payload) + "\\n")
"""


def json_steps(fd: FlowDir) -> None:
    """A ``steps`` module: ``numbers(count)`` and a ``sink`` appending payloads to sink.log."""
    fd.module("steps", JSON_STEPS.format(out=str(fd.root)))


async def delete_queues(url: str, queues: list[str]) -> None:
    """Remove a test's queues from a broker server, so that runs leave nothing behind."""
    from elasticcode.brokers import open_broker

    b = open_broker(url)
    await b.connect()
    try:
        await b.delete(queues)
    finally:
        await b.close()
