"""Secrets by reference: a flow names a secret, and never holds its value.

``${secret:NAME}`` may stand in a broker URL (``settings.broker``, a connection's ``broker``),
the blob store's URL (``settings.blobs``) and any string of a processor's ``config``; a git
source's ``credential: NAME`` names a secret too. The flow file, the flow's revisions in the state store and every answer of the API
keep the reference; the value is put in place only by the process that uses it, from the
environment variable ``ELASTICCODE_SECRET_NAME``. On one host, set those yourself. In a
network, the server keeps each secret encrypted (``elasticcode secret set``) and an agent sets
them for the workers of the flows that reference them, and for nothing else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ElasticCodeError

if TYPE_CHECKING:
    from .flow import Flow

ENV_PREFIX = "ELASTICCODE_SECRET_"
NAME = r"[A-Za-z_][A-Za-z0-9_]{0,99}"
REFERENCE = re.compile(r"\$\{secret:(" + NAME + r")\}")


class SecretMissing(ElasticCodeError):
    """A flow references a secret that is not set where it runs."""


def env_name(name: str) -> str:
    """The environment variable that holds secret ``name`` for the process that needs it."""
    return ENV_PREFIX + name


def names_in(value: Any) -> set[str]:
    """The secrets referenced anywhere in ``value`` (strings, lists and mappings)."""
    if isinstance(value, str):
        return set(REFERENCE.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(names_in(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(names_in(v) for v in value))
    return set()


def names_of_flow(flow: Flow) -> set[str]:
    """Every secret a flow needs: in its broker and blob store URLs, its processors' config,
    its git credentials."""
    found = names_in(flow.settings.broker or "") | names_in(flow.settings.blobs or "")
    for c in flow.connections:
        found |= names_in(c.broker or "")
    for p in flow.processors:
        found |= names_in(p.config)
        if p.git is not None and p.git.credential:
            found.add(p.git.credential)
    return found


def resolve(value: Any, values: Mapping[str, str] | None = None, where: str = "") -> Any:
    """``value`` with every reference replaced by the secret's value: from ``values`` when
    given, else from the environment. A secret that is not set raises ``SecretMissing``."""

    def one(m: re.Match[str]) -> str:
        return lookup(m[1], values, where)

    if isinstance(value, str):
        return REFERENCE.sub(one, value) if "${secret:" in value else value
    if isinstance(value, Mapping):
        return {k: resolve(v, values, where) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, values, where) for v in value]
    return value


def lookup(name: str, values: Mapping[str, str] | None = None, where: str = "") -> str:
    """Secret ``name``'s value; ``SecretMissing`` saying how to set it."""
    found = values.get(name) if values is not None else os.environ.get(env_name(name))
    if found is None:
        place = f" (for {where})" if where else ""
        raise SecretMissing(
            f"secret {name!r}{place} is not set: on one host, put it in the environment "
            f"variable {env_name(name)}; in a network, `elasticcode secret set {name}`"
        )
    return found


def check_name(name: str) -> str:
    if not re.fullmatch(NAME, name):
        raise ElasticCodeError(
            f"secret name {name!r}: use letters, digits and _, starting with a letter or _"
        )
    return name
