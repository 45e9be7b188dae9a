"""Malformed input on the entry points that take it: message bodies, flow files, CLI arguments.
Each answers with ElasticCode's own error (or a usage error), never another exception."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elasticcode import Flow
from elasticcode.cli import main
from elasticcode.errors import ElasticCodeError, FlowError, MessageError
from elasticcode.message import WIRE_VERSION, decode

from .services import in_ci

CASES = 300
#: Under CI the same cases every run (a failure there is reproducible); locally new ones.
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=in_ci(),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.binary(max_size=512))
def test_decode_random_bytes(body: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(body)


@FUZZ
@given(st.lists(values, min_size=8, max_size=8))
def test_decode_envelopes_of_any_content(fields: list[Any]) -> None:
    fields[0] = WIRE_VERSION
    body = msgpack.packb(fields, use_bin_type=True)
    with contextlib.suppress(MessageError):
        decode(body)


KEYS = ["name", "processors", "connections", "code", "inline", "command", "source", "from", "to"]
KEYS += ["inputs", "outputs", "instances", "retries", "config", "settings", "git", "timeout"]
flowish = st.recursive(
    scalars.filter(lambda v: not isinstance(v, bytes)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.text(max_size=300))
def test_flow_loader_on_random_text(text: str) -> None:
    with contextlib.suppress(FlowError):
        Flow.loads(text)


@FUZZ
@given(flowish)
def test_flow_loader_on_flow_like_documents(doc: Any) -> None:
    for text, source in ((yaml.safe_dump(doc), "<fuzz>"), (json.dumps(doc), "fuzz.json")):
        with contextlib.suppress(FlowError):
            Flow.loads(text, source)


WORDS = ["run", "send", "validate", "export", "queues", "dead-letters", "code", "list"]
WORDS += ["replay", "history", "update", "--help", "--broker", "--state-dir", "--json", "-o"]


@settings(FUZZ, max_examples=100)
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=12), max_size=5))
def test_cli_on_random_arguments(args: list[str]) -> None:
    if args[:1] == ["run"] or "--forever" in args:
        args = ["validate", *args[1:]]  # a run that could start waits for work: check instead
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1, 2), (args, result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert isinstance(result.exception, ElasticCodeError), (args, repr(result.exception))
