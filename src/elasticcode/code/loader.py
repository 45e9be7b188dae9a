"""Loading a processor's code, whatever its form, and checking a whole flow's before it runs."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from ..errors import FlowError, ProcessorError
from ..processor import Loaded
from . import envs
from .command import load_command
from .python import load_python

if TYPE_CHECKING:
    from ..flow import Flow, Processor


def load(spec: Processor, flow: Flow) -> Loaded:
    """Import (or start) and bind a processor; any problem raises ``ProcessorError`` saying
    what to fix."""
    if spec.command is not None:
        return load_command(spec, flow)
    return load_python(spec, flow)


def check_code(flow: Flow) -> None:
    """Load every processor once, so that code errors show before anything starts."""
    if not flow.processors:
        raise FlowError(f"flow {flow.name!r} has no processors; add some under processors")
    for spec in flow.processors:
        _check(spec, flow)


def code_problems(flow: Flow, skip: Collection[str] = ()) -> dict[str, str]:
    """Load every processor once; return what is wrong with each one that does not load."""
    if not flow.processors:
        raise FlowError(f"flow {flow.name!r} has no processors; add some under processors")
    problems = {}
    for spec in flow.processors:
        if spec.name in skip:
            continue
        try:
            _check(spec, flow)
        except ProcessorError as exc:
            problems[spec.name] = str(exc)
    return problems


def _check(spec: Processor, flow: Flow) -> None:
    if spec.requirements:  # importable only in its own environment (built here if new)
        envs.check_in_env(spec, flow)
    else:
        load(spec, flow)
