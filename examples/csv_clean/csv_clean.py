"""Processors of the CSV cleaning example: read rows, validate and normalise them, store the
clean rows and the rejected ones (with the reason) as JSON lines.

Relative paths in the configuration are resolved against this folder. Each row's message is
keyed by its line in the file, so its id (and the ids derived from it downstream) is the same
in every run. The sinks write each message id at most once, so neither a redelivery nor a
second run duplicates a line.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from elasticcode import Context, Output, Reject

HERE = Path(__file__).resolve().parent
EMAIL = re.compile(r"[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")
REQUIRED = ("id", "name", "email", "age", "signup_date")
EXTRA = "_extra"


def resolve(path: str | Path) -> Path:
    """``path`` relative to this folder (an absolute path is kept as it is)."""
    return HERE / path


def read_rows(path: str = "data/people.csv") -> Iterator[Output]:
    """Source: one message per data row of a CSV file with a header line."""
    file = resolve(path)
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, restkey=EXTRA)
        for row in reader:
            yield Output(
                {"line": reader.line_num, "row": row}, key=f"{file.name}:{reader.line_num}"
            )


def clean(
    record: dict[str, Any],
    date_formats: list[str] | None = None,
    max_age: int = 130,
) -> dict[str, Any]:
    """A validated, normalised person; a row that cannot be one is rejected with the reason."""
    row: dict[str, Any] = record["row"]
    if row.get(EXTRA):
        raise Reject(f"{len(row[EXTRA])} field(s) more than the header names")
    missing = [name for name, value in row.items() if value is None]
    if missing:
        raise Reject(f"missing field(s): {', '.join(missing)}")
    values = {name: " ".join(str(value).split()) for name, value in row.items()}
    empty = [name for name in REQUIRED if not values.get(name)]
    if empty:
        raise Reject(f"empty field(s): {', '.join(empty)}")

    if not values["id"].isdigit():
        raise Reject(f"id {values['id']!r} is not a whole number")
    email = values["email"].lower()
    if not EMAIL.fullmatch(email):
        raise Reject(f"email {values['email']!r} is not an email address")
    try:
        age = int(values["age"])
    except ValueError:
        raise Reject(f"age {values['age']!r} is not a whole number") from None
    if not 0 <= age <= max_age:
        raise Reject(f"age {age} is not between 0 and {max_age}")
    signup = parse_date(values["signup_date"], date_formats or ["%Y-%m-%d"])
    if signup is None:
        raise Reject(f"signup_date {values['signup_date']!r} is not a date")
    return {
        "id": int(values["id"]),
        "name": proper_case(values["name"]),
        "email": email,
        "age": age,
        "city": proper_case(values["city"]) or None,
        "signup_date": signup,
    }


def parse_date(text: str, formats: list[str]) -> str | None:
    """``text`` as an ISO date (YYYY-MM-DD), trying each format in turn; None if none fits."""
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def proper_case(text: str) -> str:
    """Names typed all in lower or upper case get capitals; mixed case is left as written."""
    return text.title() if text in (text.lower(), text.upper()) else text


class CleanRows:
    """Sink: appends each clean person to a JSON-lines file, once per message id."""

    def __init__(self, path: str = "out/clean.jsonl") -> None:
        self.file = JsonLines(resolve(path), key="message_id")

    def process(self, person: dict[str, Any], ctx: Context) -> None:
        self.file.append({"message_id": ctx.message.id, **person})


class RejectedRows:
    """Sink for the ``failure`` port: appends each rejected row with the reason, once per
    message id."""

    def __init__(self, path: str = "out/rejected.jsonl") -> None:
        self.file = JsonLines(resolve(path), key="message_id")

    def process(self, record: dict[str, Any], ctx: Context) -> None:
        self.file.append(
            {
                "message_id": ctx.message.id,
                "line": record["line"],
                "row": record["row"],
                "reason": ctx.message.attributes.get("error", ""),
            }
        )


class JsonLines:
    """A JSON-lines file that holds at most one record per key.

    Several processes may append at once: an append holds an exclusive lock on the file,
    first reads what others wrote since its last visit, and skips a record whose key is
    already there. A line left half-written by a crash is cut off before the next append.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.keys: set[str] = set()
        self.inode = 0
        self.read_up_to = 0

    def append(self, record: dict[str, Any]) -> bool:
        """Append ``record`` unless the file has one with the same key; True if written."""
        key = str(record[self.key])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._catch_up(handle)
            if key in self.keys:
                return False
            handle.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            self.read_up_to = handle.tell()
            self.keys.add(key)
        return True

    def _catch_up(self, handle: IO[bytes]) -> None:
        stat = os.fstat(handle.fileno())
        if stat.st_ino != self.inode or stat.st_size < self.read_up_to:
            self.inode, self.read_up_to = stat.st_ino, 0
            self.keys.clear()
        handle.seek(self.read_up_to)
        data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.keys.update(
            str(json.loads(line)[self.key]) for line in complete.splitlines() if line.strip()
        )
        self.read_up_to += len(complete)
        if len(complete) < len(data):
            handle.truncate(self.read_up_to)
