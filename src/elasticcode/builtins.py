"""Processors that ship with ElasticCode."""

from __future__ import annotations

from typing import Any

from .errors import Reject
from .processor import Context, Output


class Join:
    """Wait for one message on each input port with the same key, then emit them together.

    Config: ``key`` -- the payload field (dotted for nested dicts) that correlates messages.
    The output payload maps each input port to its message's payload. Parts are held in the
    state store, so a join survives restarts and is shared by all instances; the output's id
    is derived from the key, so a redelivered part never produces a second, different output.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def process(self, payload: Any, ctx: Context) -> Output | None:
        value: Any = payload
        for part in self.key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise Reject(f"payload has no field {self.key!r} to join on")
            value = value[part]
        key = str(value)
        assert ctx.state is not None and ctx.port is not None and ctx.message is not None
        parts = ctx.state.merge(key, ctx.port, {"id": ctx.message.id, "payload": payload})
        if set(ctx.input_ports) - set(parts):
            return None
        state = ctx.state
        ctx.after_settle(lambda: state.delete(key))
        joined = [parts[port]["id"] for port in ctx.input_ports]
        return Output(
            {port: parts[port]["payload"] for port in ctx.input_ports},
            attributes={"joined": joined},
            key=key,
            parents=tuple(joined),
        )
