"""The command line: every command works and every user mistake gets a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import FlowDir

CLI = str(Path(sys.executable).with_name("elasticcode"))

FLOW = """
name: cli
processors:
  - {name: work, code: "mod:step", retries: {max: 0}}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("run", "send", "validate", "export", "queues", "dead-letters"):
        assert command in out.stdout


def test_validate_export_and_python_flows(fd: FlowDir) -> None:
    fd.module("mod", "def step(p):\n    return p\n")
    fd.flow(FLOW)
    out = cli("validate", str(fd.root / "flow.yaml"))
    assert out.returncode == 0 and "1 processor(s), 0 connection(s): OK" in out.stdout
    (fd.root / "pyflow.py").write_text(
        "from elasticcode import Flow\nflow = Flow(name='cli')\n"
        "flow.processor('work', 'mod:step', retries={'max': 0})\n"
    )
    exported = cli("export", str(fd.root / "pyflow.py"), "-o", str(fd.root / "out.json"))
    assert exported.returncode == 0, exported.stderr
    assert (
        cli("export", str(fd.root / "out.json")).stdout
        == cli("export", str(fd.root / "flow.yaml")).stdout
    )


def test_errors_are_clear_and_exit_2(fd: FlowDir) -> None:
    fd.module("mod", "def step(p):\n    return p\n")
    (fd.root / "bad.yaml").write_text(FLOW.replace("mod:step", "mod:stpe"))
    out = cli("validate", str(fd.root / "bad.yaml"))
    assert out.returncode == 2
    assert "processor 'work': module 'mod' has no 'stpe'; it defines step" in out.stderr
    assert "Traceback" not in out.stderr
    out = cli("run", str(fd.root / "missing.yaml"))
    assert out.returncode == 2 and "cannot read flow file" in out.stderr
    out = cli("send", str(fd.root / "bad.yaml"), "nobody", "1")
    assert out.returncode == 2 and "has no processor 'nobody'" in out.stderr
    out = cli("run", "--broker", "amqq://x", str(fd.root / "bad.yaml").replace("bad", "flow"))
    assert out.returncode == 2


def test_dead_letters_list_and_replay(fd: FlowDir) -> None:
    fd.module("mod", "def step(p):\n    raise ValueError('no good')\n")
    fd.flow(FLOW)
    flow = str(fd.root / "flow.yaml")
    state = ["--state-dir", str(fd.state)]
    assert cli("send", flow, "work", '{"a": 1}', *state).returncode == 0
    run = cli("run", flow, "--quiet", *state)
    assert run.returncode == 0, run.stderr
    assert "1 dead letter(s)" in run.stdout
    listed = cli("dead-letters", "list", flow, *state)
    assert '"a": 1' in listed.stdout and "ValueError: no good" in listed.stdout
    assert "Traceback" in cli("dead-letters", "list", flow, "--traceback", *state).stdout
    assert cli("dead-letters", "replay", flow, *state).returncode == 2
    assert "replayed 1 message(s)" in cli("dead-letters", "replay", flow, "--all", *state).stdout
    queues = cli("queues", flow, *state)
    assert "1 msgs" in queues.stdout
