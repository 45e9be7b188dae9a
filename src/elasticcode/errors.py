"""One exception tree for everything ElasticCode raises.

``ElasticCodeError`` is the root. Errors a user can cause carry a message that says what was
wrong and how to fix it. Control-flow exceptions that processors raise on purpose
(``Reject``) live apart from the error families.
"""

from __future__ import annotations


class ElasticCodeError(Exception):
    """Root of every error raised by ElasticCode."""


class FlowError(ElasticCodeError):
    """A flow definition is malformed or inconsistent."""


class FlowFileError(FlowError):
    """A flow file cannot be read; carries the file and, where known, the line and column."""

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        where = ""
        if path:
            where = path
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        super().__init__(where + message)
        self.message = message


class ProcessorError(ElasticCodeError):
    """A processor's code cannot be loaded or called as declared."""

    def __init__(self, processor: str, message: str) -> None:
        self.processor = processor
        super().__init__(f"processor {processor!r}: {message}")


class MessageError(ElasticCodeError):
    """A message cannot be built, encoded or decoded."""


class SerializationError(MessageError):
    """An output cannot be encoded as a message payload."""


class PayloadTooLarge(MessageError):
    """An encoded message is larger than the configured maximum."""


class BrokerError(ElasticCodeError):
    """A broker operation failed."""


class BrokerUnreachable(BrokerError):
    """The broker does not answer (for now: it may come back)."""


class DiskFull(BrokerError):
    """The disk holding the embedded queues (or state) is full; nothing was changed."""


class UnknownBackend(BrokerError):
    """A broker URL names a scheme that no backend serves."""


class StorageError(ElasticCodeError):
    """A blob or result store operation failed (the store's URL is masked in the message)."""


class StateError(ElasticCodeError):
    """The state store cannot be opened or used."""


class StateUnreachable(StateError):
    """The state store does not answer (for now: it may come back)."""


class RunLocked(StateError):
    """Another run already owns this state directory."""


class NotFound(ElasticCodeError):
    """A flow, processor, revision, agent, user, role, token or secret that does not exist."""


class Conflict(ElasticCodeError):
    """A name is taken, or a change would leave the network without an admin."""


class AccessError(ElasticCodeError):
    """A request that its caller may not make."""


class AuthError(AccessError):
    """A credential is missing, wrong, expired or revoked: log in (again)."""


class Forbidden(AccessError):
    """The caller is known but holds no privilege for this."""


class Reject(Exception):
    """Raised by a processor to send the current message to ``failure`` without retrying.

    Use it for input that can never succeed (bad data); ordinary exceptions are retried.
    """
