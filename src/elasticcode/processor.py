"""What a processor is to the engine, and what it sees of it.

A processor's code, once loaded (see ``elasticcode.code``), is a :class:`Loaded`: a call taking
the payload and a :class:`Context` (a source's takes the context alone), and optional
``setup``/``teardown`` hooks. Parameters after the payload are filled by name from the
processor's ``config``; a parameter named ``ctx`` receives the :class:`Context`. A return value
goes to ``success`` (``None`` emits nothing); :class:`Output` picks another port or adds
attributes; ``ctx.emit`` sends any number of messages to any declared port; a generator emits
what it yields. ``collect`` turns whatever a call gave back into outputs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import KeyValue


@dataclass(slots=True)
class Output:
    """An output with a chosen port, extra attributes, or an idempotency key.

    ``key``: outputs that carry the same key from the same processor and port get the same
    message id, so downstream duplicates are recognisable (effectively-once with a deduplicating
    sink). ``parents``: the ids of the messages it comes from, when it is more than the one
    being handled (a join); lineage records each.
    """

    payload: Any
    port: str = "success"
    attributes: dict[str, Any] | None = None
    key: str | None = None
    parents: tuple[str, ...] | None = None


class Context:
    """What a processor can reach while it handles one message."""

    __slots__ = (
        "config",
        "deferred",
        "flow",
        "input_ports",
        "logger",
        "message",
        "outputs",
        "port",
        "processor",
        "state",
    )

    def __init__(
        self,
        flow: str,
        processor: str,
        config: dict[str, Any],
        logger: logging.Logger,
        state: KeyValue | None = None,
        input_ports: tuple[str, ...] = (),
    ) -> None:
        self.flow = flow
        self.processor = processor
        self.config = config
        self.logger = logger
        self.state = state
        self.input_ports = input_ports
        self.message: Any = None
        self.port: str | None = None
        self.outputs: list[Output] = []
        self.deferred: list[Callable[[], Any]] = []

    def emit(
        self,
        payload: Any,
        port: str = "success",
        attributes: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Send a message to an output port (in addition to what the call returns)."""
        self.outputs.append(Output(payload, port, attributes, key))

    def after_settle(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` once this message's outputs are durable and its input acknowledged."""
        self.deferred.append(fn)

    def child(self, message: Any, port: str | None) -> Context:
        """A context for one message, sharing everything but the message and its outputs."""
        ctx = Context(
            self.flow, self.processor, self.config, self.logger, self.state, self.input_ports
        )
        ctx.message = message
        ctx.port = port
        return ctx


@dataclass
class Loaded:
    """A processor's code, bound to its configuration and ready to call."""

    name: str
    target: str
    call: Callable[..., Any]
    is_async: bool
    setup: Callable[[], Any] | None = None
    teardown: Callable[[], Any] | None = None
    instance: Any = field(default=None, repr=False)
    #: Whether the messages of a batch may be handled at once (async code that does not
    #: take them one at a time anyway); None: as ``is_async`` says.
    concurrent: bool | None = None

    @property
    def overlaps(self) -> bool:
        return self.is_async if self.concurrent is None else self.concurrent


#: The outputs of one message taken at a time: a processor that yields millions of outputs
#: for one input has them encoded and published in parts of this size, not all held at once.
PART = 1000


def parts_sync(result: Any, ctx: Context, size: int = PART) -> Iterator[list[Output]]:
    """What a plain (not async) function returned, as lists of at most about ``size``
    outputs, in the order they came (what it emitted with ``ctx.emit`` included). A
    generator is run as the parts are taken."""

    def emitted() -> list[Output]:
        out, ctx.outputs = ctx.outputs, []
        return out

    if inspect.isgenerator(result):
        part: list[Output] = emitted()
        for item in result:
            part.extend(emitted())
            part.append(item if isinstance(item, Output) else Output(item))
            if len(part) >= size:
                yield part
                part = []
        part.extend(emitted())
        yield part
        return
    part = emitted()
    if isinstance(result, Output):
        part.append(result)
    elif result is not None:
        part.append(Output(result))
    yield part


async def parts(result: Any, ctx: Context, size: int = PART) -> AsyncIterator[list[Output]]:
    """``parts_sync`` for what any call returned: a coroutine is awaited, an async generator
    run as the parts are taken."""
    if inspect.isawaitable(result):
        result = await result
    if not inspect.isasyncgen(result):
        for whole in parts_sync(result, ctx, size):
            yield whole
        return
    part: list[Output] = []
    async for item in result:
        part.extend(ctx.outputs)
        ctx.outputs = []
        part.append(item if isinstance(item, Output) else Output(item))
        if len(part) >= size:
            yield part
            part = []
    part.extend(ctx.outputs)
    ctx.outputs = []
    yield part


async def collect(result: Any, ctx: Context) -> list[Output]:
    """Every output of what a call returned (value, Output, generator, coroutine), at once."""
    return [out async for part in parts(result, ctx) for out in part]
