"""Processors of the word-count example: list files, split lines, count words, total them.

Relative paths in the configuration are resolved against this folder, so the flow behaves
the same from whichever directory it is run.

The sink stores each message's counts in its own file named by the message id. A redelivered
message rewrites the same file with the same content and instances never write the same file,
so the total is right with any number of instances and any number of redeliveries. The lines
stage gives each line a key (file and line number), so the ids, and with them the part files,
are the same from one run to the next: running the flow again replaces the parts rather than
adding to them.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elasticcode import Context, Output

HERE = Path(__file__).resolve().parent
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def resolve(path: str | Path) -> Path:
    """``path`` relative to this folder (an absolute path is kept as it is)."""
    return HERE / path


def words(text: str) -> list[str]:
    """The words of ``text``, case-folded; inner apostrophes belong to the word."""
    return WORD.findall(text.casefold())


def list_files(folder: str = "data", pattern: str = "*.txt") -> list[dict[str, str]]:
    """Source: one message per file in ``folder`` that matches ``pattern``."""
    root = resolve(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    return [
        {"name": path.relative_to(root).as_posix(), "path": str(path)}
        for path in sorted(root.glob(pattern))
        if path.is_file()
    ]


def read_lines(file: dict[str, str]) -> Iterator[Output]:
    """One message per non-blank line of a file, keyed by file name and line number."""
    with open(file["path"], encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield Output(
                    {"file": file["name"], "line": number, "text": text.rstrip("\n")},
                    key=f"{file['name']}:{number}",
                )


def count_words(
    line: dict[str, Any], stopwords: list[str] | None = None, min_length: int = 1
) -> dict[str, Any] | None:
    """The word counts of one line, leaving out stop words and words shorter than
    ``min_length``; nothing for a line without any words left."""
    skip = {w.casefold() for w in stopwords or []}
    counts = Counter(w for w in words(line["text"]) if w not in skip and len(w) >= min_length)
    if not counts:
        return None
    return {"file": line["file"], "line": line["line"], "counts": dict(counts)}


class CountSink:
    """Sink: keeps each message's counts as ``parts/<message id>.json`` under ``output`` and
    writes the totals to ``counts.json`` there when the worker stops."""

    def __init__(self, output: str = "out") -> None:
        self.output = resolve(output)

    def process(self, counted: dict[str, Any], ctx: Context) -> None:
        parts = self.output / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        write_atomic(parts / f"{ctx.message.id}.json", json.dumps(counted))

    def teardown(self, ctx: Context) -> None:
        if (self.output / "parts").is_dir():
            totals = write_summary(self.output)
            ctx.logger.info("%d distinct words written to %s", len(totals), self.output)


def summarize(output: str | Path) -> dict[str, int]:
    """The word totals over every part in ``output``, most frequent first."""
    totals: Counter[str] = Counter()
    for part in sorted((resolve(output) / "parts").glob("*.json")):
        totals.update(json.loads(part.read_text(encoding="utf-8"))["counts"])
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def write_summary(output: str | Path) -> dict[str, int]:
    """Write the totals to ``counts.json`` in ``output`` and return them."""
    totals = summarize(output)
    write_atomic(resolve(output) / "counts.json", json.dumps(totals, indent=1) + "\n")
    return totals


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
