"""End-to-end runs on the embedded default: real worker processes, real SQLite queues."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import elasticcode
from elasticcode.brokers.sqlite import SQLiteBroker

from .conftest import FlowDir, kill_worker

CLI = str(Path(sys.executable).with_name("elasticcode"))

PIPELINE = """
name: pipe
processors:
  - {name: gen, code: "steps:numbers", source: true, config: {count: COUNT}}
  - {name: work, code: "steps:inc", instances: 2, prefetch: 20}
  - {name: sink, code: "steps:sink", instances: 1}
connections:
  - {from: gen, to: work}
  - {from: work, to: sink}
"""


def accounting(fd: FlowDir, expected: int, log: str = "sink.log") -> Counter[str]:
    """Check the sink: every input present once after deduplication by message id."""
    rows = [line.split() for line in fd.lines(log)]
    by_id = {mid: int(n) for mid, n in rows}
    ids = Counter(mid for mid, _ in rows)
    duplicates = sum(c - 1 for c in ids.values())
    lost = expected - len(set(by_id.values()))
    print(f"sent={expected} delivered={len(rows)} duplicates={duplicates} lost={lost}")
    assert sorted(by_id.values()) == list(range(expected)), "messages lost or ids unstable"
    return ids


def test_pipeline_delivers_every_message(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    flow = fd.flow(PIPELINE.replace("COUNT", "500"))
    result = fd.run(flow)
    assert result.status == "finished"
    ids = accounting(fd, 500)
    assert set(ids.values()) == {1}
    assert result.processors["gen"].emitted == 500
    assert result.processors["work"].received == 500
    assert result.processors["sink"].received == 500
    assert sum(result.queues.values()) == 0 and result.dead_letters == 0


def test_kill_9_of_a_worker_loses_nothing(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    fd.module("slow", "import time\n\ndef step(p):\n    time.sleep(0.001)\n    return p\n")
    flow = fd.flow(
        PIPELINE.replace("COUNT", "3000").replace(
            '"steps:inc", instances: 2', '"slow:step", instances: 2'
        )
    )
    killed: list[int] = []
    result = fd.run(flow, on_start=kill_worker("work", after=1.0, killed=killed))
    assert killed, "no worker was killed"
    assert result.status == "finished"
    assert any("died (signal 9)" in e for e in result.events)
    accounting(fd, 3000)


def test_retries_then_success(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    fd.module(
        "flaky",
        """
        import os
        def step(p, ctx):
            if ctx.message.delivery < 3:
                raise ConnectionError("upstream not ready")
            return p
        """,
    )
    flow = fd.flow(
        PIPELINE.replace("COUNT", "20").replace(
            '"steps:inc", instances: 2, prefetch: 20',
            '"flaky:step", retries: {max: 3, backoff: 10ms}',
        )
    )
    result = fd.run(flow)
    accounting(fd, 20)
    assert result.processors["work"].errors == 40
    assert result.processors["work"].retried == 40
    assert result.dead_letters == 0


POISON = """
def step(p):
    if p["n"] % 10 == 3:
        raise ValueError(f"cannot handle {p['n']}")
    return p
"""


def test_poison_messages_are_dead_lettered_and_replayed(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    sink_module()
    fd.module("poison", POISON)
    flow = fd.flow(
        PIPELINE.replace("COUNT", "50").replace(
            '"steps:inc", instances: 2, prefetch: 20',
            '"poison:step", retries: {max: 1, backoff: 10ms}',
        )
    )
    result = fd.run(flow)
    assert result.status == "finished"
    assert result.dead_letters == 5
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [
        n for n in range(50) if n % 10 != 3
    ]
    letters = elasticcode.dead_letters(flow, state_dir=fd.state)
    assert len(letters) == 5
    assert all("ValueError: cannot handle" in d.error and "Traceback" in d.error for d in letters)
    assert all(d.deliveries == 2 for d in letters)

    # fix the processor, replay, run again: the dead letters flow on (beside a new run's 50)
    fd.module("poison", "def step(p):\n    return p\n")
    assert elasticcode.replay(flow, state_dir=fd.state) == 5
    again = fd.run(flow)
    assert again.dead_letters == 0
    seen = Counter(int(line.split()[1]) for line in fd.lines("sink.log"))
    assert seen == {n: 2 for n in range(50)}


def test_failure_port_gets_the_error(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    fd.module("poison", POISON)
    fd.module(
        "errs",
        f"""
        import json
        def keep(p, ctx):
            with open({str(fd.root / "errors.log")!r}, "a") as f:
                f.write(json.dumps({{"n": p["n"], "error": ctx.message.attributes["error"]}}) + "\\n")
        """,
    )
    flow = fd.flow(
        PIPELINE.replace("COUNT", "20").replace(
            '"steps:inc", instances: 2, prefetch: 20', '"poison:step", retries: {max: 0}'
        )
    )
    flow.processor("errors", "errs:keep")
    flow.connect("work.failure", "errors")
    result = fd.run(flow)
    assert result.dead_letters == 0
    errors = fd.lines("errors.log")
    assert len(errors) == 2
    assert all("ValueError: cannot handle" in e for e in errors)


def test_bad_outputs_are_dead_lettered_with_a_clear_error(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    sink_module()
    fd.module(
        "bad",
        """
        def step(p):
            if p["n"] == 1:
                return {"when": object()}
            if p["n"] == 2:
                return "x" * 2_000_000
            if p["n"] == 3:
                from elasticcode import Output
                return Output(p, port="nowhere")
            return p
        """,
    )
    flow = fd.flow(
        PIPELINE.replace("COUNT", "6").replace(
            '"steps:inc", instances: 2, prefetch: 20', '"bad:step"'
        )
        + "settings: {max_message_bytes: 1MB}\n"
    )
    result = fd.run(flow)
    assert result.status == "finished"
    errors = "\n".join(d.error for d in elasticcode.dead_letters(flow, state_dir=fd.state))
    assert errors.count("processor 'work': ") == 3
    assert "cannot encode a value of type dict: can not serialize 'object' object" in errors
    assert "emitted to port 'nowhere', which it does not declare" in errors
    assert "exceeds the limit of 1,000,000 bytes; raise max_message_bytes" in errors
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [0, 4, 5]


def test_back_pressure_bounds_queue_depth(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    fd.module("slow", "import time\n\ndef step(p):\n    time.sleep(0.002)\n    return p\n")
    flow = fd.flow(
        PIPELINE.replace("COUNT", "1500")
        .replace(
            '"steps:inc", instances: 2, prefetch: 20', '"slow:step", instances: 1, prefetch: 10'
        )
        .replace("{from: gen, to: work}", "{from: gen, to: work, max_messages: 50}")
    )
    queue = flow.queue_name(flow.connections[0])
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        broker = SQLiteBroker(f"sqlite:///{fd.state / 'queues.db'}")
        while not stop.is_set():
            try:
                n, _ = asyncio.run(broker.depth([queue]))[queue]
                peak = max(peak, n)
            except Exception:
                pass  # not created yet
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    result = fd.run(flow, on_start=lambda _: watcher.start())
    stop.set()
    watcher.join()
    assert result.status == "finished"
    accounting(fd, 1500)
    print(f"peak depth {peak} with max_messages=50")
    assert 0 < peak <= 50


def test_send_then_run(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    flow = fd.flow(
        """
        name: inbox
        processors:
          - {name: work, code: "steps:inc"}
          - {name: sink, code: "steps:sink"}
        connections:
          - {from: work, to: sink}
        """
    )
    ids = elasticcode.send(flow, "work", [{"n": i} for i in range(3)], state_dir=fd.state)
    assert len(ids) == 3
    out = subprocess.run(
        [
            CLI,
            "send",
            str(fd.root / "flow.yaml"),
            "work.input",
            '{"n": 3}',
            "--state-dir",
            str(fd.state),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "queued 1 message(s)" in out.stderr
    bad = subprocess.run(
        [CLI, "send", str(fd.root / "flow.yaml"), "work", "{nope", "--state-dir", str(fd.state)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr and "--text" in bad.stderr
    result = fd.run(flow)
    assert result.processors["sink"].received == 4
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [0, 1, 2, 3]


def test_interval_source_with_count(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    fd.module(
        "tick",
        "import itertools\nCOUNTER = itertools.count()\n\ndef tick():\n    return {'n': next(COUNTER)}\n",
    )
    flow = fd.flow(
        """
        name: ticks
        processors:
          - {name: tick, code: "tick:tick", source: {interval: 100ms, count: 3}}
          - {name: sink, code: "steps:sink"}
        connections:
          - {from: tick, to: sink}
        """
    )
    start = time.monotonic()
    result = fd.run(flow)
    assert result.status == "finished"
    assert time.monotonic() - start >= 0.2
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [0, 1, 2]


def test_ctrl_c_then_rerun_resumes(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    sink_module()
    fd.module("slow", "import time\n\ndef step(p):\n    time.sleep(0.002)\n    return p\n")
    fd.flow(
        PIPELINE.replace("COUNT", "2000").replace(
            '"steps:inc", instances: 2', '"slow:step", instances: 1'
        )
    )
    cmd = [CLI, "run", str(fd.root / "flow.yaml"), "--state-dir", str(fd.state), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fd.lines("sink.log")) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)  # interrupt once the flow is well under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "interrupted" in out
    partial = len(fd.lines("sink.log"))
    assert 0 < partial < 2000
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout
    accounting(fd, 2000)


def test_message_that_crashes_the_interpreter_is_isolated(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    sink_module()
    fd.module(
        "crash",
        "import os\n\ndef step(p):\n    if p['n'] == 7:\n        os._exit(1)\n    return p\n",
    )
    flow = fd.flow(
        PIPELINE.replace("COUNT", "200").replace(
            '"steps:inc", instances: 2, prefetch: 20', '"crash:step", retries: {max: 1}'
        )
    )
    result = fd.run(flow)
    assert result.status == "finished"
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [
        n for n in range(200) if n != 7
    ]
    (letter,) = elasticcode.dead_letters(flow, state_dir=fd.state)
    assert "started 3 times without completing" in letter.error
    assert sum("died (exit code 1)" in e for e in result.events) == 3


def test_code_that_does_not_load_stays_in_error_and_the_rest_runs(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    """A processor whose code does not load does not stop the flow: the rest runs, what is
    meant for it waits in its queue, and a run with its code fixed resumes and delivers it."""
    sink_module()
    flow = fd.flow(
        """
        name: partial
        processors:
          - {name: gen, code: steps:numbers, source: true, config: {count: 300}}
          - {name: work, code: steps:inc, instances: 1}
          - {name: sink, code: steps:nosuch, instances: 1}
        connections:
          - {from: gen, to: work}
          - {from: work, to: sink}
        """
    )
    first = fd.run(flow)
    assert first.status == "incomplete"
    assert first.processors["work"].received == 300
    assert first.processors["sink"].status == "error"
    assert "module 'steps' has no 'nosuch'" in (first.processors["sink"].last_error or "")
    assert any("fix it and run again" in e for e in first.events)
    assert sum(first.queues.values()) == 300 and not fd.lines("sink.log")
    flow.get("sink").code = "steps:sink"
    again = fd.run(flow)
    assert again.status == "finished" and again.resumed
    assert len(fd.lines("sink.log")) == 300  # the source did not run again
