"""Processors with requirements: workers in environments of their own, built from PyPI once per
host and shared; two versions of one library side by side; a requirement that cannot install."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elasticcode import Flow
from elasticcode.code import check_code
from elasticcode.errors import ProcessorError

from .conftest import FlowDir, json_steps

FLOW = """
name: envs
processors:
  - {name: gen, code: "steps:numbers", source: true, config: {count: 10}}
  - {name: old, code: "which:version", requirements: ["six==1.15.0"], instances: 1}
  - {name: new, code: "which:version", requirements: req.txt, instances: 1}
  - {name: sink, code: "steps:sink", instances: 1}
connections:
  - {from: gen, to: old}
  - {from: gen, to: new}
  - {from: old, to: sink}
  - {from: new, to: sink}
"""

WHICH = """
import sys

import six

def version(payload, ctx):
    return {**payload, "by": ctx.processor, "six": six.__version__, "python": sys.executable}
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ELASTICCODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def flow(fd: FlowDir, cache: Path) -> Flow:
    """Two processors, one needing six 1.15.0 (inline), one six 1.16.0 (req.txt)."""
    json_steps(fd)
    fd.module("which", WHICH)
    (fd.root / "req.txt").write_text("# the newer one\nsix==1.16.0\n")
    return fd.flow(FLOW)


def built(cache: Path) -> int:
    """How many environments the cache holds."""
    return len([e for e in (cache / "envs").glob("[0-9a-f]*") if e.is_dir()])


@pytest.mark.slow
def test_conflicting_requirements_run_side_by_side(fd: FlowDir, flow: Flow, cache: Path) -> None:
    result = fd.run(flow)
    assert result.status == "finished"
    rows = [json.loads(line) for line in fd.lines("sink.log")]
    seen = {(r["by"], r["six"]) for r in rows}
    assert seen == {("old", "1.15.0"), ("new", "1.16.0")}
    pythons = {r["by"]: r["python"] for r in rows}
    assert pythons["old"] != pythons["new"]
    assert all("/envs/" in p for p in pythons.values())
    # the same needs share one environment: a third processor adds none
    assert built(cache) == 2
    flow.get("old").requirements = ["six==1.16.0"]
    assert fd.run(flow, fresh=True).status == "finished"
    assert built(cache) == 2


def test_requirement_that_cannot_install_names_the_processor(flow: Flow, cache: Path) -> None:
    flow.get("old").requirements = ["this-is-not a requirement !!"]
    with pytest.raises(ProcessorError, match="processor 'old': installing its requirements failed"):
        check_code(flow)
    with pytest.raises(ProcessorError, match="Invalid requirement"):
        check_code(flow)
    assert not list((cache / "envs").glob(".*")), "a failed build left files"
    flow.get("old").requirements = None
    flow.get("new").requirements = "missing.txt"
    with pytest.raises(ProcessorError, match=r"requirements file 'missing\.txt' not in"):
        check_code(flow)
