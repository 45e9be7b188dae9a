"""What a flow document may hold to be deployed in a network, and what deploying it takes.

* No secret in the clear: a broker URL or a git repository URL with a password (or a token
  in the user's place) is refused, with how to write it as ``${secret:NAME}`` instead, so
  that no revision stored in the state store, and no answer of the API, holds one.
* Code is a privilege of its own: a revision that adds a processor's code or changes it
  (``code``, ``inline``, ``command``, ``cwd``, ``git``, ``requirements``, ``entry``, ``path``)
  needs ``code.deploy`` on the flow, besides ``flow.deploy``.
"""

from __future__ import annotations

from typing import Any

from ..errors import FlowError
from ..redact import redact_url, secrets_of
from ..secret import REFERENCE

#: A processor's fields that decide what code its workers run.
CODE_FIELDS = ("code", "inline", "command", "cwd", "git", "requirements", "entry")


def no_secrets_in_clear(document: dict[str, Any]) -> None:
    """Refuse a document that carries a credential in a URL (``FlowError`` saying where)."""
    places: list[tuple[str, Any]] = [
        ("settings.broker", (document.get("settings") or {}).get("broker"))
    ]
    for i, c in enumerate(document.get("connections") or []):
        if isinstance(c, dict):
            places.append((f"connections[{i}].broker", c.get("broker")))
    for p in document.get("processors") or []:
        if isinstance(p, dict) and isinstance(p.get("git"), dict):
            places.append((f"processor {p.get('name')}: git.repo", p["git"].get("repo")))
    for where, url in places:
        if isinstance(url, str) and secrets_of(REFERENCE.sub("", url)):
            raise FlowError(
                f"{where} ({redact_url(url)}) carries a credential; a flow in a network holds "
                "none: store it with `elasticcode secret set NAME` and write ${secret:NAME} in "
                "its place (for git, give the processor credential: NAME)"
            )


def code_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The processors of ``new`` whose code is not what ``old`` runs (all, for a new flow)."""
    before = {p.get("name"): p for p in (old or {}).get("processors") or [] if isinstance(p, dict)}
    changed = []
    moved = old is not None and old.get("path") != new.get("path")  # where modules come from
    for p in new.get("processors") or []:
        if not isinstance(p, dict):
            continue
        was = before.get(p.get("name"))
        if was is None or moved or any(p.get(f) != was.get(f) for f in CODE_FIELDS):
            changed.append(str(p.get("name")))
    return changed
