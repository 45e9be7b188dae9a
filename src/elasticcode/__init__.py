"""ElasticCode: a distributed dataflow engine for Python processors on durable queues."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import ElasticCodeError, Reject
    from .flow import Connection, Flow, Processor, Retry, Schedule
    from .local.queues import dead_letters, replay, send
    from .local.result import RunResult
    from .local.runner import run
    from .message import Message
    from .processor import Context, Output

__version__ = "0.1.0"

#: Public name -> module. Imported on first use, so that a worker process loads only what it
#: needs.
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
    "RunResult": "local.result",
    "Schedule": "flow",
    "dead_letters": "local.queues",
    "replay": "local.queues",
    "run": "local.runner",
    "send": "local.queues",
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
