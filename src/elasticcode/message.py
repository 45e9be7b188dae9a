"""The message envelope and its wire encoding.

A message carries an id, the flow it belongs to, the processor that emitted it, its creation
time, the ids of its lineage parents, free-form attributes, a payload, the creation time of the
source message it descends from (``born``: how old a message's data is, end to end) and whether
its lineage is recorded (``traced``). The payload is any JSON-like value (dict, list, str, int,
float, bool, None) or raw ``bytes``.

Ids are derived, not random, wherever the engine can: a source's n-th message and a
processor's n-th output for a given input always get the same id. A redelivered input
therefore produces outputs with the ids it produced the first time, so a sink that drops ids it
has seen gets each message exactly once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

import msgpack

from .errors import MessageError, PayloadTooLarge, SerializationError

WIRE_VERSION = 1
_pack = msgpack.Packer(use_bin_type=True).pack
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Message:
    """One message as a processor sees it."""

    payload: Any
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    flow: str = ""
    origin: str = ""
    created: float = field(default_factory=time.time)
    parents: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    #: How many times the broker has handed this message out, this delivery included.
    delivery: int = 1
    #: When the source message this one descends from was created (0: this one's ``created``).
    born: float = 0.0
    #: Whether its lineage is recorded (chosen where its tree entered the flow).
    traced: bool = False

    def __post_init__(self) -> None:
        if not self.born:
            self.born = self.created


def derive_id(*parts: object) -> str:
    """A stable 128-bit hex id from the given parts."""
    return blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def encode(message: Message, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Encode a message for a queue; refuse what cannot be encoded or is too large."""
    try:
        body: bytes = _pack(
            [
                WIRE_VERSION,
                message.id,
                message.flow,
                message.origin,
                message.created,
                list(message.parents),
                message.attributes,
                message.payload,
                message.born,
                message.traced,
            ]
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"cannot encode {describe(message.payload)}: {exc}. Emit JSON-like data "
            "(dict, list, str, int, float, bool, None) or bytes"
        ) from None
    if len(body) > max_bytes:
        raise PayloadTooLarge(
            f"message of {len(body):,} bytes exceeds the limit of {max_bytes:,} bytes; "
            "raise max_message_bytes in the flow settings or store large data elsewhere "
            "and pass a reference"
        )
    return body


def decode(body: bytes, delivery: int = 1) -> Message:
    """Decode a queue body into a message; a malformed body raises ``MessageError``."""
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MessageError(f"malformed message body ({len(body)} bytes): {exc}") from None
    # an envelope of 8 fields is from before ``born`` and ``traced``: its creation time stands in
    if not isinstance(fields, list) or len(fields) not in (8, 10) or fields[0] != WIRE_VERSION:
        raise MessageError(
            f"malformed message body ({len(body)} bytes): not an ElasticCode v{WIRE_VERSION} "
            "envelope"
        )
    _, id_, flow, origin, created, parents, attributes, payload = fields[:8]
    born, traced = (fields[8], fields[9]) if len(fields) == 10 else (created, False)
    if not isinstance(attributes, dict) or not isinstance(parents, list):
        raise MessageError("malformed message body: attributes or parents have the wrong type")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise MessageError(f"malformed message body: its creation time is {describe(created)}")
    if isinstance(born, bool) or not isinstance(born, int | float):
        raise MessageError(f"malformed message body: its source's time is {describe(born)}")
    return Message(
        payload=payload,
        id=str(id_),
        flow=str(flow),
        origin=str(origin),
        created=float(created),
        parents=tuple(parents),
        attributes=attributes,
        delivery=delivery,
        born=float(born),
        traced=traced is True,
    )


def describe(value: Any) -> str:
    kind = type(value)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"a value of type {name}"
