"""Flow files: reading YAML and JSON with errors at their line and column, and writing them.

YAML is read with YAML 1.2 booleans (only ``true``/``false``), so ``on``, ``no`` and ``NO``
stay strings; a key given twice is an error; a validation error of the model is placed at the
line of the field it concerns, all errors listed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import FlowFileError

#: Where each key path of a file starts.
Marks = dict[tuple[Any, ...], yaml.Mark]


def parse(text: str, source: str) -> tuple[dict[str, Any], Marks]:
    """The mapping a YAML or JSON flow file holds, and where each of its keys stands; any
    problem is a ``FlowFileError`` at its line and column."""
    if source.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise FlowFileError(f"invalid JSON: {exc.msg}", source, exc.lineno, exc.colno) from None
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise FlowFileError(
            f"invalid YAML: {exc.problem or exc.context}",
            source,
            mark.line + 1 if mark else None,
            mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise FlowFileError(f"invalid YAML: {exc}", source) from None
    if not isinstance(data, dict):
        raise FlowFileError(
            "a flow file must be a mapping with name, processors and connections", source, 1, 1
        )
    marks = _marks(node)
    duplicate = _duplicate_key(node)
    if duplicate:
        key, mark = duplicate
        raise FlowFileError(f"key {key!r} appears twice", source, mark.line + 1, mark.column + 1)
    return data, marks


def render(data: dict[str, Any], fmt: str) -> str:
    """A flow's data as a file: ``yaml`` (multi-line strings as literal blocks) or ``json``."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `on`, `no`, `NO` stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (inline code) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


class GraphProblems(ValueError):
    def __init__(self, problems: list[tuple[tuple[Any, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(msg for _, msg in problems))


def _marks(node: yaml.Node | None, path: tuple[Any, ...] = ()) -> Marks:
    out: Marks = {}
    if node is None:
        return out
    out[path] = node.start_mark
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            out.update(_marks(value, sub))
            out[sub] = key.start_mark
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out.update(_marks(value, (*path, i)))
    return out


def _duplicate_key(node: yaml.Node | None) -> tuple[str, yaml.Mark] | None:
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key, value in node.value:
            if key.value in keys:
                return key.value, key.start_mark
            keys.add(key.value)
            found = _duplicate_key(value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            found = _duplicate_key(value)
            if found:
                return found
    return None


def located(exc: ValidationError, marks: Marks, source: str) -> FlowFileError:
    """The first validation error as a FlowFileError at its place in the file; all in the text."""
    lines: list[tuple[tuple[Any, ...], str]] = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, GraphProblems):
            lines.extend(cause.problems)
            continue
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        field = err["loc"][-1] if err["loc"] else ""  # a key of the file's own, kept as it is
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}; check its spelling"
        elif err["type"] == "missing":
            msg = f"field {field!r} is required"
        lines.append((loc, msg))
    located = []
    first: yaml.Mark | None = None
    for loc, msg in lines:
        mark = _nearest(marks, loc)
        where = f"line {mark.line + 1}: " if mark else ""
        first = first or mark
        located.append(f"{where}{_dotted(loc)}: {msg}" if loc else f"{where}{msg}")
    text = (
        located[0] if len(located) == 1 else f"{len(located)} problems:\n  " + "\n  ".join(located)
    )
    mark = _nearest(marks, lines[0][0]) if lines else None
    return FlowFileError(
        text.split(": ", 1)[1] if len(located) == 1 and mark else text,
        source,
        mark.line + 1 if mark else None,
        mark.column + 1 if mark else None,
    )


def _nearest(marks: Marks, loc: tuple[Any, ...]) -> yaml.Mark | None:
    for n in range(len(loc), -1, -1):
        mark = marks.get(loc[:n])
        if mark is not None:
            return mark
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
