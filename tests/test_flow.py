"""The flow model: YAML, JSON and Python give the same model; errors point at the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elasticcode import Flow
from elasticcode.errors import FlowError, FlowFileError
from elasticcode.units import parse_duration, parse_size

YAML = """\
name: demo
processors:
  - name: gen
    code: steps:numbers
    source: true
    config: {count: 10}
  - name: work
    code: steps:inc
    instances: 2
    retries: {max: 2, backoff: 100ms}
  - name: sink
    inline: |
      def process(payload):
          return None
connections:
  - from: gen
    to: work
  - {from: work.success, to: sink, max_bytes: 1MB}
"""


def python_flow(base: Path) -> Flow:
    flow = Flow(name="demo", base_dir=base)
    flow.processor("gen", "steps:numbers", source=True, config={"count": 10})
    flow.processor("work", "steps:inc", instances=2, retries={"max": 2, "backoff": "100ms"})
    flow.processor("sink", inline="def process(payload):\n    return None\n")
    flow.connect("gen", "work")
    flow.connect("work.success", "sink", max_bytes="1MB")
    return flow


def test_yaml_json_and_python_give_the_same_model(tmp_path: Path) -> None:
    from_yaml = Flow.loads(YAML, "demo.yaml", tmp_path)
    as_json = json.dumps(from_yaml.to_dict())
    from_json = Flow.loads(as_json, "demo.json", tmp_path)
    assert from_yaml == from_json == python_flow(tmp_path)


def test_dump_loads_back_unchanged(tmp_path: Path) -> None:
    flow = python_flow(tmp_path)
    for name in ("out.yaml", "out.json"):
        flow.dump(tmp_path / name)
        assert Flow.load(tmp_path / name) == flow
    assert "inline: |" in flow.dump()


def test_ports_queues_and_defaults(tmp_path: Path) -> None:
    flow = Flow.loads(YAML, "demo.yaml", tmp_path)
    assert flow.get("gen").input_ports == []
    assert flow.get("work").input_ports == ["input"]
    assert flow.inputs_of("work") == {
        "demo.work.input.inbox": "input",
        "demo.gen.success-work.input": "input",
    }
    assert [c.max_bytes for c in flow.outputs_of("work")["success"]] == [1_000_000]
    assert flow.outputs_of("work")["failure"] == []
    assert flow.get("work").retries.delay(1) == pytest.approx(0.1)
    assert flow.get("work").retries.delay(3) == pytest.approx(0.4)


def error_for(text: str, name: str = "bad.yaml") -> FlowFileError:
    with pytest.raises(FlowFileError) as info:
        Flow.loads(text, name)
    return info.value


def test_unknown_field_names_line_and_field() -> None:
    err = error_for(YAML.replace("    instances: 2", "    instancs: 2"))
    assert err.line == 9
    assert "processors[1].instancs" in str(err)
    assert "unknown field" in str(err)


def test_bad_code_reference_is_located() -> None:
    err = error_for(YAML.replace("code: steps:inc", "code: steps.inc"))
    assert (err.line, "module:function") == (8, "module:function")
    assert "module:function" in str(err)


def test_connection_to_unknown_processor_suggests_a_name() -> None:
    err = error_for(YAML.replace("    to: work\n", "    to: wrok\n"))
    assert err.line == 17
    assert "did you mean 'work'" in str(err)


def test_connection_from_undeclared_port() -> None:
    err = error_for(YAML.replace("from: work.success", "from: work.done"))
    assert "no output port 'done'" in str(err)
    assert "declare more under outputs" in str(err)


def test_source_cannot_take_input() -> None:
    err = error_for(YAML + "  - {from: work, to: gen}\n")
    assert "is a source and takes no input" in str(err)


def test_duplicate_names_and_keys() -> None:
    err = error_for(YAML.replace("name: sink", "name: work"))
    assert "used twice" in str(err)
    err = error_for(YAML.replace("    instances: 2\n", "    instances: 2\n    instances: 3\n"))
    assert (err.line, "appears twice" in str(err)) == (10, True)


def test_syntax_errors_are_located() -> None:
    err = error_for("name: x\nprocessors: [\n")
    assert err.line == 3 and "invalid YAML" in str(err)
    err = error_for('{"name": "x",}', "bad.json")
    assert (err.line, err.column) == (1, 14)
    assert "invalid JSON" in str(err)
    assert "must be a mapping" in str(error_for("- just a list\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FlowFileError, match="cannot read flow file"):
        Flow.load(tmp_path / "nope.yaml")


def test_python_builder_errors_are_clear(tmp_path: Path) -> None:
    flow = Flow(name="x", base_dir=tmp_path)
    flow.processor("a", "m:f", source=True)
    with pytest.raises(FlowError, match="no processor named 'b'"):
        flow.connect("a", "b")
    with pytest.raises(FlowError, match="module:function"):
        flow.processor("c", "nocolon")
    assert flow.connections == [] and [p.name for p in flow.processors] == ["a"]


def test_durations_and_sizes() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3
    assert parse_size("64MB") == 64_000_000
    assert parse_size("1GiB") == 2**30
    for bad in ("fast", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_yaml_booleans_are_only_true_and_false(tmp_path: Path) -> None:
    flow = Flow.loads(
        "name: x\nprocessors:\n  - name: a\n    code: m:f\n"
        "    config: {country: NO, switch: on, answer: yes, flag: true, other: False}\n",
        "x.yaml",
        tmp_path,
    )
    assert flow.get("a").config == {
        "country": "NO",
        "switch": "on",
        "answer": "yes",
        "flag": True,
        "other": False,
    }
