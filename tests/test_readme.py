"""The README's flow example, in YAML and in Python, runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import elasticcode
from elasticcode import Flow

README = (Path(__file__).parents[1] / "README.md").read_text()


def block(first_line: str) -> str:
    match = re.search(rf"```\w+\n({re.escape(first_line)}\n.*?)```", README, re.S)
    assert match, f"README has no code block starting with {first_line!r}"
    return match[1]


def test_readme_flow_runs_and_python_version_matches(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(block("# flow.yaml"))
    (tmp_path / "steps.py").write_text(block("# steps.py"))
    (tmp_path / "input.txt").write_text("hello\nworld\n")
    flow = Flow.load(tmp_path / "flow.yaml")
    flow.get("lines").config = {"path": str(tmp_path / "input.txt")}
    result = elasticcode.run(flow, state_dir=tmp_path / "state")
    assert result.status == "finished"
    assert result.processors["show"].received == 2

    code = block("from elasticcode import Flow, run").replace("run(flow)", "")
    code = code.replace('flow.dump("flow.yaml")', "")
    namespace: dict[str, object] = {}
    exec(code, namespace)
    python_flow = namespace["flow"]
    assert isinstance(python_flow, Flow)
    assert python_flow.to_dict() == Flow.load(tmp_path / "flow.yaml").to_dict()
