"""The network's secrets, encrypted at rest with a key that the operator holds.

Values are encrypted with Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) under
the key in ``ELASTICCODE_SECRET_KEY`` (or ``--secret-key-file``): the database holds only
ciphertext, so a copy of it (a backup, a replica) gives no secret away without the key. Every
server of a network needs the same key. The API lists secrets' names, never their values; a
value leaves the server only in the assignment of an agent that runs a flow referencing it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import ElasticCodeError, NotFound
from ..secret import check_name
from ..store.tables import secrets

KEY_ENV = "ELASTICCODE_SECRET_KEY"


class NoKey(ElasticCodeError):
    """The server holds no secret key, so it cannot store or hand out secrets."""


def new_key() -> str:
    """A fresh key, for ``ELASTICCODE_SECRET_KEY``."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def read_key(path: str | None) -> str | None:
    """The key from ``path`` (a file only its owner may read), else from the environment."""
    if path is None:
        return os.environ.get(KEY_ENV) or None
    file = Path(path)
    if file.stat().st_mode & 0o077:
        raise ElasticCodeError(
            f"the secret key file {file} may be read by others; chmod 600 {file}"
        )
    return file.read_text().strip() or None


class Vault:
    def __init__(self, engine: sa.Engine, key: str | None) -> None:
        self.engine = engine
        self._fernet: Any = None
        if key:
            from cryptography.fernet import Fernet

            try:
                self._fernet = Fernet(key.encode())
            except ValueError:
                raise ElasticCodeError(
                    f"{KEY_ENV} is not a key: make one with `elasticcode secret keygen`"
                ) from None

    @property
    def _key(self) -> Any:
        if self._fernet is None:
            raise NoKey(
                f"this server has no secret key: start it with {KEY_ENV} set (make one with "
                "`elasticcode secret keygen`; every server of the network needs the same)"
            )
        return self._fernet

    def set(self, name: str, value: str, by: str) -> bool:
        """Store a secret (encrypted); return whether it is new."""
        check_name(name)
        token = self._key.encrypt(value.encode())
        now = time.time()
        values = {"value": token, "updated": now, "updated_by": by}
        with self.engine.begin() as db:
            known = db.execute(sa.select(secrets.c.name).where(secrets.c.name == name)).first()
            if known is None:
                db.execute(secrets.insert().values(name=name, created=now, **values))
            else:
                db.execute(secrets.update().where(secrets.c.name == name).values(**values))
        return known is None

    def remove(self, name: str) -> None:
        with self.engine.begin() as db:
            if not db.execute(secrets.delete().where(secrets.c.name == name)).rowcount:
                raise NotFound(f"no secret named {name!r}")

    def names(self) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(
                    secrets.c.name, secrets.c.created, secrets.c.updated, secrets.c.updated_by
                ).order_by(secrets.c.name)
            ).all()
        return [dict(r._mapping) for r in rows]

    def values(self, names: Iterable[str]) -> dict[str, str]:
        """The values of those of ``names`` that are set (for an agent's assignment)."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(secrets.c.name, secrets.c.value).where(secrets.c.name.in_(wanted))
            ).all()
        if rows and self._fernet is None:
            raise NoKey(f"secrets are stored but this server has no {KEY_ENV} to read them")
        from cryptography.fernet import InvalidToken

        out = {}
        for r in rows:
            try:
                out[r.name] = self._key.decrypt(bytes(r.value)).decode()
            except InvalidToken:
                raise ElasticCodeError(
                    f"secret {r.name!r} was stored under another key than this server's "
                    f"{KEY_ENV}; give every server the same key"
                ) from None
        return out
