"""Choosing a backend by URL, for every pluggable family (brokers, blob stores): a scheme from
the family's table of ``module:Class`` names (imported only when used, so that optional
drivers stay optional), or ``module:Class`` itself for a user's own."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from .errors import ElasticCodeError
from .redact import redact_url


def backend_class(
    url: str,
    table: Mapping[str, str],
    base: type[Any],
    family: str,
    error: type[ElasticCodeError],
) -> type[Any]:
    """The class serving ``url`` in ``table`` (scheme -> ``module:Class``), a subclass of
    ``base``; ``error`` naming the known schemes (and the nearest) when none does."""
    scheme, sep, _ = url.partition("://")
    # without "://", module:Class names a user's own backend
    target = url if not sep and ":" in url else table.get(scheme.lower(), "")
    if not target:
        near = difflib.get_close_matches(scheme.lower(), table, n=1)
        hint = f" Did you mean {near[0]}://?" if near else ""
        raise error(
            f"No {family} for {redact_url(scheme)[:40]!r} URLs. Known schemes: "
            f"{', '.join(sorted(table))}; or name your own backend as module:Class.{hint}"
        )
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise error(f"cannot load {family} backend {target!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(f"{target!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls
