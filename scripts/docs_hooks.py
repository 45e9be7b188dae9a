"""Hooks of the documentation site (mkdocs.yml): the reference pages made from the code.

A page that holds ``<!-- reference: flow-file -->`` gets the flow file's fields, read from
the models of ``elasticcode.flow`` (types and defaults from the models, descriptions from the
``#:`` comments above each field); ``<!-- reference: api -->`` gets every route of the HTTP
API from its OpenAPI description, with the privilege each needs.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from elasticcode import flow as flow_model
from elasticcode.network.server.app import openapi, routes

#: The models of the flow file, in the order the page shows them.
MODELS = [
    ("Flow", flow_model.Flow),
    ("settings", flow_model.Settings),
    ("processors[]", flow_model.Processor),
    ("connections[]", flow_model.Connection),
    ("retries", flow_model.Retry),
    ("scale", flow_model.Scale),
    ("source", flow_model.Schedule),
    ("git", flow_model.GitSource),
]


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if "<!-- reference: flow-file -->" in markdown:
        markdown = markdown.replace("<!-- reference: flow-file -->", flow_file())
    if "<!-- reference: api -->" in markdown:
        markdown = markdown.replace("<!-- reference: api -->", api())
    return markdown


def comments(cls: type) -> dict[str, str]:
    """field name -> the ``#:`` comment lines just above it in the class body."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            out[match[1]] = " ".join(pending)
        pending = []
    return out


def annotations(cls: type) -> dict[str, str]:
    """field name -> its annotation as written (``Duration``, ``Size | None``, ...)."""
    found = re.findall(r"^    (\w+)\s*:\s*([^=\n]+)", inspect.getsource(cls), re.M)
    return {name: text.strip() for name, text in found}


def type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[1]
    if "anyOf" in prop:
        return " or ".join(t for t in (type_text(p, defs) for p in prop["anyOf"]) if t != "null")
    if "enum" in prop:
        return " or ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type")
    if kind == "array":
        return f"list of {type_text(prop.get('items', {}), defs)}"
    if kind == "object":
        return "mapping"
    return {"integer": "integer", "string": "string", "boolean": "boolean", "number": "number"}.get(
        str(kind), str(kind or "any")
    )


def default_text(model: type[BaseModel], name: str, unit: str = "") -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "required"
    factory = field.default_factory
    value = factory() if factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None:
        return "—"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, (list, dict, str)) and not value:
        return "empty"
    if unit == "duration":
        return f"`{value:g}s`"
    if unit == "size":
        for suffix, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value % factor == 0:
                return f"`{value // factor}{suffix}`"
    return f"`{value}`"


def flow_file() -> str:
    parts = []
    for title, model in MODELS:
        schema = model.model_json_schema(by_alias=True)
        defs = schema.get("$defs", {})
        notes = comments(model)
        written = annotations(model)
        doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")
        parts.append(f"## {title}\n\n{doc.split(chr(10) + chr(10))[0]}\n")
        rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue  # not part of the file
            key = field.alias or name
            prop = schema.get("properties", {}).get(key, {})
            meaning = notes.get(name, "").replace("|", "\\|")
            kind = type_text(prop, defs)
            unit = ""
            for word, text in (("Duration", "duration"), ("Size", "size")):
                if word in written.get(name, ""):
                    unit = text
                    kind = kind.replace("number", text).replace("integer", text)
            default = default_text(model, name, unit)
            rows.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def api() -> str:
    spec = openapi()
    needs = {(m, p): priv for m, p, priv in routes()}
    parts = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            priv = needs.get((method.upper(), path))
            title = f"### `{method.upper()} {path}`"
            text = (op.get("description") or op.get("summary") or "").strip()
            lines = [title, "", text, "", f"Needs: {priv or 'no credential'}."]
            params = [p for p in op.get("parameters", []) if p.get("in") in ("query", "path")]
            if params:
                lines += ["", "| parameter | in | meaning |", "|---|---|---|"]
                for p in params:
                    meaning = (p.get("description") or p["schema"].get("description") or "").strip()
                    lines.append(f"| `{p['name']}` | {p['in']} | {meaning} |")
            parts.append("\n".join(lines) + "\n")
    websockets = [(p, priv) for m, p, priv in routes() if m == "WS"]
    if websockets:
        parts.append("### Websockets\n")
        parts.append("| route | needs |\n|---|---|")
        parts.append(
            "\n".join(f"| `WS {p}` | {priv or 'no credential'} |" for p, priv in websockets)
        )
    return "\n".join(parts) + "\n"
