"""The Python ends of the polyglot example: a source reading lines and a JSON-lines sink."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elasticcode import Context

HERE = Path(__file__).resolve().parent


def local(path: str) -> Path:
    """A path from the flow's config: relative ones are relative to this folder."""
    return HERE / path


def read_lines(path: str) -> Iterator[str]:
    """Every line of a text file, without its line break."""
    with local(path).open(encoding="utf-8") as f:
        yield from (line.rstrip("\n") for line in f)


class Store:
    """Appends each payload with its message id to a JSON-lines file, once per message id."""

    def __init__(self, path: str) -> None:
        self.path = local(path)
        self.seen: set[str] = set()

    def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.seen = {json.loads(line)["id"] for line in self.path.read_text().splitlines()}

    def process(self, payload: Any, ctx: Context) -> None:
        if ctx.message.id in self.seen:  # redelivered after a crash: already stored
            return
        self.seen.add(ctx.message.id)
        line = json.dumps({"id": ctx.message.id, **ctx.message.attributes, "payload": payload})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
