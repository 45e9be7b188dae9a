"""Loading processor code: every mistake a user can make gets an error that says what to fix."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from elasticcode import Flow, Output
from elasticcode.code import load
from elasticcode.errors import ProcessorError
from elasticcode.processor import Context, collect

from .conftest import FlowDir

MODULE = """
import asyncio

def plain(payload):
    return payload + 1

def configured(payload, factor, offset=0, ctx=None):
    ctx.emit(payload, port="copy")
    return payload * factor + offset

def many(payload):
    for i in range(payload):
        yield Output(i, port="odd" if i % 2 else "success")

async def slow(payload, ctx):
    await asyncio.sleep(0)
    return {"got": payload, "port": ctx.port}

def numbers(count):
    return range(count)

def no_args():
    return 1

class Stateful:
    def __init__(self, start=0):
        self.total = start
        self.ready = False

    def setup(self):
        self.ready = True

    def process(self, payload, step=1):
        self.total += payload * step
        return self.total

from elasticcode import Output
"""


def proc(fd: FlowDir, **fields: Any) -> Any:
    fd.module("mod", MODULE)
    flow = Flow(name="t", base_dir=fd.root)
    spec = flow.processor("p", **fields)
    return load(spec, flow), flow


def call(loaded: Any, payload: Any) -> list[Output]:
    ctx = Context("t", "p", {}, logging.getLogger("t")).child(None, "input")
    return asyncio.run(collect(loaded.call(payload, ctx), ctx))


def test_plain_function(fd: FlowDir) -> None:
    loaded, _ = proc(fd, code="mod:plain")
    assert [o.payload for o in call(loaded, 1)] == [2]
    assert not loaded.is_async


def test_config_reaches_parameters_and_ctx_emits(fd: FlowDir) -> None:
    loaded, _ = proc(fd, code="mod:configured", config={"factor": 3}, outputs=["success", "copy"])
    outs = call(loaded, 2)
    assert [(o.port, o.payload) for o in outs] == [("copy", 2), ("success", 6)]


def test_generator_yields_many_to_ports(fd: FlowDir) -> None:
    loaded, _ = proc(fd, code="mod:many")
    assert [(o.port, o.payload) for o in call(loaded, 3)] == [
        ("success", 0),
        ("odd", 1),
        ("success", 2),
    ]


def test_async_function(fd: FlowDir) -> None:
    loaded, _ = proc(fd, code="mod:slow")
    assert loaded.is_async
    assert call(loaded, 5)[0].payload == {"got": 5, "port": "input"}


def test_class_with_setup_and_config_split(fd: FlowDir) -> None:
    loaded, _ = proc(fd, code="mod:Stateful", config={"start": 10, "step": 2})
    loaded.setup()
    assert loaded.instance.ready
    assert [o.payload for o in call(loaded, 1)] == [12]
    assert [o.payload for o in call(loaded, 1)] == [14]


def test_inline_code(fd: FlowDir) -> None:
    loaded, _ = proc(fd, inline="def process(p):\n    return p * 2\n")
    assert call(loaded, 4)[0].payload == 8


def test_source_takes_no_payload(fd: FlowDir) -> None:
    loaded, _ = proc(fd, code="mod:numbers", source=True, config={"count": 3})
    ctx = Context("t", "p", {}, logging.getLogger("t"))
    assert list(loaded.call(ctx)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"code": "nomodule:f"}, "module 'nomodule' not found"),
        ({"code": "mod:missing"}, "module 'mod' has no 'missing'; it defines"),
        ({"code": "mod:configured"}, "needs parameter 'factor'; give it under config"),
        ({"code": "mod:plain", "config": {"x": 1}}, "config 'x' not accepted by mod:plain"),
        ({"code": "mod:no_args"}, "must take the message payload as its first argument"),
        ({"code": "mod:Stateful", "config": {"bogus": 1}}, "config 'bogus' not accepted"),
        ({"inline": "def process(p)\n  return p"}, "inline code has a syntax error at line 1"),
        (
            {"inline": "def other(p):\n  return p"},
            "inline code defines no 'process'; set entry to one of other",
        ),
        (
            {"inline": "import not_installed_pkg_xyz\ndef process(p): pass"},
            "inline code failed to run",
        ),
    ],
)
def test_load_errors_say_what_to_fix(fd: FlowDir, fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ProcessorError) as info:
        proc(fd, **fields)
    assert expected in str(info.value)
    assert str(info.value).startswith("processor 'p':")


def test_missing_dependency_is_named(fd: FlowDir) -> None:
    fd.module("needs", "import not_installed_pkg_xyz\n\ndef f(p):\n    return p\n")
    flow = Flow(name="t", base_dir=fd.root)
    spec = flow.processor("p", "needs:f")
    with pytest.raises(
        ProcessorError, match="imports 'not_installed_pkg_xyz', which is not installed"
    ):
        load(spec, flow)


def test_module_syntax_error_is_located(fd: FlowDir) -> None:
    fd.module("broken", "def f(p):\n    return (\n")
    flow = Flow(name="t", base_dir=fd.root)
    spec = flow.processor("p", "broken:f")
    with pytest.raises(ProcessorError, match=r"syntax error at .*broken.py:\d"):
        load(spec, flow)
