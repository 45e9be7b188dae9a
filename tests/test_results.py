"""Results: what a processor that keeps them emitted for an input, read by the input's key or
message id, on one host and through a network's server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from elasticcode import Flow
from elasticcode.local import queues as control

from .conftest import FlowDir
from .network import ELASTICCODE, Network, redis_network

STEPS = """
def square(payload):
    yield payload["n"] ** 2
    yield {"of": payload["n"], "raw": b"\\x00\\x01"}
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ELASTICCODE, *args], cwd=cwd, capture_output=True, text=True)


def test_a_processor_keeps_its_results_by_message_id_and_by_key(fd: FlowDir) -> None:
    fd.module("sq", STEPS)
    flow = fd.flow(
        """
        name: squares
        processors:
          - {name: square, code: sq:square, results: {ttl: 1h}}
        """
    )
    path = str(fd.root / "flow.yaml")
    state = ["--state-dir", str(fd.state)]
    (first,) = control.send(flow, "square", [{"n": 3}], state_dir=fd.state)
    control.send(flow, "square", [{"n": 4}], attributes={"key": "job-4"}, state_dir=fd.state)
    waiting = _cli("result", "get", path, first, *state, cwd=fd.root)
    assert waiting.returncode == 1 and "no result" in waiting.stderr  # not run yet
    assert fd.run(flow).status == "finished"
    shown = _cli("result", "get", path, first, *state, cwd=fd.root)
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line) for line in shown.stdout.splitlines()] == [
        9,
        {"of": 3, "raw": {"base64": "AAE="}},
    ]
    assert control.result(flow, "job-4", state_dir=fd.state) == [16, {"of": 4, "raw": b"\0\1"}]
    assert control.result(flow, "job-5", state_dir=fd.state) is None
    timed = _cli("result", "get", path, "job-5", "--wait", "300ms", *state, cwd=fd.root)
    assert timed.returncode == 1


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    yield from redis_network(tmp_path)


def test_a_network_keeps_large_messages_and_results_in_its_blob_store(net: Network) -> None:
    server = net.start_server()
    net.start_agent("one", capacity=3)
    (net.root / "sq.py").write_text(
        STEPS + "\n\ndef big(payload):\n    return {'n': payload['n'], 'pad': b'x' * 3_000_000}\n"
        "\n\ndef size(payload):\n    return len(payload['pad'])\n"
    )
    blobs = net.root / "blobs"
    flow = net.deploy(
        f"""
        settings: {{blobs: "file://{blobs}", max_message_bytes: 8MB}}
        processors:
          - {{name: grow, code: sq:big, instances: 1}}
          - {{name: measure, code: sq:size, instances: 1, results: {{ttl: 10m}}}}
        connections:
          - {{from: grow, to: measure}}
        """,
        {"grow": 1, "measure": 1},
    )
    ids = control.send(
        Flow.load(flow), "grow", [{"n": 1}], attributes={"key": "job-1"}, broker=net.broker
    )
    out = net.cli(
        "result", "get", net.flow_name, "job-1", "--wait", "30s", "--server", server.url, "--json"
    ).stdout
    assert json.loads(out) == [3_000_000]  # a 3 MB message went through the blob store
    missing = net.cli("result", "get", net.flow_name, ids[0], "--server", server.url, check=False)
    assert missing.returncode == 1  # kept by the key it was sent with, not by its id
    assert [p for p in blobs.rglob("*") if p.is_file() and "messages" in p.parts] == []
    # a network has no store unless the flow names one: results need it
    nowhere = net.flow_file(
        """
        processors:
          - {name: measure, code: sq:size, results: {}}
        """
    )
    refused = net.cli("apply", str(nowhere), check=False)
    assert refused.returncode != 0 and "settings.blobs" in refused.stderr + refused.stdout


def test_a_source_keeps_no_results() -> None:
    with pytest.raises(ValueError, match="is a source: results are kept per input"):
        Flow.from_dict(
            {
                "name": "n",
                "processors": [{"name": "s", "code": "m:f", "source": True, "results": {}}],
            }
        )
