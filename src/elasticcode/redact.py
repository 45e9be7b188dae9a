"""Secrets kept out of everything ElasticCode shows: URLs with their credentials masked, and
known secret strings replaced in any text (a driver's error, a log line).

Every place that prints a URL or an error that may carry one goes through here, so that a
password or token never reaches a log, an error, an API answer or a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

MASK = "***"

#: Schemes whose lone user-info (``scheme://name@host``) is a role name, not a secret.
_NAMED_USERS = ("postgresql", "postgres", "mysql", "mariadb", "sqlite")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<info>[^/@?#\s]*)@")


def redact_url(url: str) -> str:
    """``url`` with its credentials masked: ``user:***@`` where a password follows a user name,
    ``***@`` for a lone user-info (a token in the user's place, as git hosts and NATS take it),
    except where the scheme's lone user-info is a database role."""

    def masked(m: re.Match[str]) -> str:
        scheme, info = m["scheme"], m["info"]
        user, colon, _ = info.partition(":")
        if colon:
            return f"{scheme}://{user}:{MASK}@"
        if scheme.lower().split("+")[0] in _NAMED_USERS:
            return m.group(0)
        return f"{scheme}://{MASK}@"

    return _USERINFO.sub(masked, url)


def secrets_of(url: str) -> list[str]:
    """The secret strings a URL carries (its password, or a token in the user's place), in
    every spelling they may be printed in (as written, unquoted, quoted)."""
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:
        return []
    found = []
    if password:
        found.append(password)
    elif password is None and user and parts.scheme.lower().split("+")[0] not in _NAMED_USERS:
        found.append(user)
    spellings = {s for f in found for s in (f, unquote(f), quote(unquote(f), safe=""))}
    return sorted((s for s in spellings if s), key=len, reverse=True)


def mask(text: object, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    out = str(text)
    for secret in sorted(secrets, key=len, reverse=True):  # a secret inside another: longest first
        if secret:
            out = out.replace(secret, MASK)
    return out
