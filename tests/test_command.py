"""Processors in other languages: executables speaking JSON lines, run by real workers."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import elasticcode
from elasticcode import Flow
from elasticcode.code import load
from elasticcode.errors import FlowError, ProcessorError

from .conftest import FlowDir, kill_worker
from .services import unavailable
from .test_examples import EXAMPLES, run_to_end
from .test_run import accounting

POLYGLOT = EXAMPLES / "polyglot"

PIPE = """
name: pipe
processors:
  - {name: gen, code: "steps:numbers", source: true, config: {count: COUNT}}
  - {name: work, command: CMD, instances: 2}
  - {name: sink, code: "steps:sink", instances: 1}
connections:
  - {from: gen, to: work}
  - {from: work, to: sink}
"""


def node() -> str:
    found = shutil.which("node")
    if found is None:
        unavailable("Node.js (node) is not installed")
    return str(found)


def script(fd: FlowDir, name: str, text: str) -> str:
    path = fd.root / name
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o755)
    return f"./{name}"


def test_polyglot_example_runs_bash_and_node(tmp_path: Path) -> None:
    node()
    folder = tmp_path / "polyglot"
    shutil.copytree(POLYGLOT, folder)
    flow = Flow.load(folder / "flow.yaml")
    assert run_to_end(flow, tmp_path) == {}
    measured = [
        json.loads(line) for line in (folder / "out/measured.jsonl").read_text().splitlines()
    ]
    rejected = [
        json.loads(line) for line in (folder / "out/rejected.jsonl").read_text().splitlines()
    ]
    texts = {m["payload"]["text"]: m["payload"] for m in measured}
    assert len(measured) == 5 and len(rejected) == 2
    best = texts["It was the best of times, it was the worst of times"]
    assert (best["words"], best["longest"]) == (12, "times,")
    assert texts['"Curiouser and curiouser!" cried Alice']["words"] == 5
    assert texts["The end — fin — 終わり"]["chars"] == 19  # JSON escapes survive bash
    assert all(m["quoted_by"] == "bash" for m in measured + rejected)
    assert sorted(r["payload"]["line"] for r in rejected) == ["> ", ">   "]


def test_node_processor_survives_a_worker_kill(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    sink_module()
    cmd = script(
        fd,
        "inc.js",
        """
        #!/usr/bin/env node
        require("node:readline").createInterface({ input: process.stdin }).on("line", (line) => {
          const { payload } = JSON.parse(line);
          const out = { ...payload, hops: (payload.hops || 0) + 1 };
          process.stdout.write(JSON.stringify({ outputs: [{ payload: out }] }) + "\\n");
        });
        """,
    )
    node()
    flow = fd.flow(PIPE.replace("COUNT", "2000").replace("CMD", cmd))
    killed: list[int] = []
    result = fd.run(flow, on_start=kill_worker("work", after=1.0, killed=killed))
    assert result.status == "finished" and killed
    accounting(fd, 2000)


def test_protocol_errors_fail_the_message_and_the_flow_goes_on(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    sink_module()
    cmd = script(
        fd,
        "moody.sh",
        """
        #!/usr/bin/env bash
        # n % 10 == 3: not JSON; == 5: an error reply; == 7: exits mid-message; else passes on
        while IFS= read -r line; do
          [[ $line =~ \\"n\\":([0-9]+) ]] && n=${BASH_REMATCH[1]}
          case $((n % 10)) in
            3) echo "not json" ;;
            5) echo '{"error": "five is not welcome"}' ;;
            7) echo "bye" >&2; exit 4 ;;
            *) echo "{\\"outputs\\":[{\\"payload\\":{\\"n\\":$n}}]}" ;;
          esac
        done
        """,
    )
    flow = fd.flow(PIPE.replace("COUNT", "30").replace("CMD", cmd))
    flow.get("work").retries.max = 1
    flow.get("work").retries.backoff = 0.01
    result = fd.run(flow)
    assert result.status == "finished"
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [
        n for n in range(30) if n % 10 not in (3, 5, 7)
    ]
    errors = [d.error for d in elasticcode.dead_letters(flow, state_dir=fd.state)]
    assert len(errors) == 9
    assert sum("is not JSON" in e for e in errors) == 3
    assert sum("five is not welcome" in e for e in errors) == 3
    assert sum("exited with code 4 before it answered" in e for e in errors) == 3


def test_bad_commands_are_named_before_the_run(fd: FlowDir) -> None:
    fd.module("steps", "def numbers():\n    yield 1\n")
    for cmd, why in [
        ("./missing.sh", "not found in"),
        ("no-such-program-here", "is not installed"),
        ("''", "command is empty"),
    ]:
        flow = fd.flow(PIPE.replace("COUNT", "1").replace("CMD", cmd))
        with pytest.raises(ProcessorError, match=why):
            load(flow.get("work"), flow)
    (fd.root / "plain.sh").write_text("echo hi\n")
    flow = fd.flow(PIPE.replace("COUNT", "1").replace("CMD", "./plain.sh"))
    with pytest.raises(ProcessorError, match="is not executable; chmod"):
        load(flow.get("work"), flow)
    with pytest.raises(FlowError, match="exactly one of code"):
        fd.flow(PIPE.replace("CMD", "./plain.sh, code: 'steps:numbers'").replace("COUNT", "1"))
