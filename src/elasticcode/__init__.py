"""ElasticCode: a distributed dataflow engine for Python processors on durable queues."""

from __future__ import annotations

from .control import dead_letters, replay, send
from .errors import ElasticCodeError, Reject
from .flow import Connection, Flow, Processor, Retry, Schedule
from .message import Message
from .processor import Context, Output
from .runner import RunResult, run

__version__ = "0.1.0"

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
