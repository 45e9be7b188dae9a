"""ElasticCode: a distributed dataflow engine for Python processors on durable queues."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .control import dead_letters, replay, send
    from .errors import ElasticCodeError, Reject
    from .flow import Connection, Flow, Processor, Retry, Schedule
    from .message import Message
    from .processor import Context, Output
    from .runner import RunResult, run

__version__ = "0.1.0"

#: Public name -> module. Imported on first use, so that a worker process loads only what it
#: needs (and ``python -m elasticcode.worker`` does not import itself twice).
_EXPORTS = {
    "Connection": "flow",
    "Context": "processor",
    "ElasticCodeError": "errors",
    "Flow": "flow",
    "Message": "message",
    "Output": "processor",
    "Processor": "flow",
    "Reject": "errors",
    "Retry": "flow",
    "RunResult": "runner",
    "Schedule": "flow",
    "dead_letters": "control",
    "replay": "control",
    "run": "runner",
    "send": "control",
}

__all__ = [
    "Connection",
    "Context",
    "ElasticCodeError",
    "Flow",
    "Message",
    "Output",
    "Processor",
    "Reject",
    "Retry",
    "RunResult",
    "Schedule",
    "__version__",
    "dead_letters",
    "replay",
    "run",
    "send",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'elasticcode' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
