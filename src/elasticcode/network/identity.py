"""Identities in the state store: users with argon2-hashed passwords, their grants, custom
roles, and API tokens (named, scoped, expiring, revocable, stored as a hash only).

A token reads ``ec_<kind><id>_<secret>``: ``u`` a user's, ``a`` an agent's own credential,
``e`` an agent enrolment token (short-lived, a number of uses). The server keeps the
SHA-256 of the secret part; the token itself is shown once, when it is made. Tokens are
random (256 bits), so a fast hash is enough for them; passwords are not, and get argon2.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import AuthError, Conflict, ElasticCodeError, NotFound
from ..store.tables import agents, grants, roles, tokens, users
from .privileges import ROLES, Caller, Grant, check_privileges, role_privileges

KINDS = {"u": "user", "a": "agent", "e": "enrol"}
_TOKEN = re.compile(r"ec_([uae])([0-9a-f]{16})_([A-Za-z0-9_-]{32,})")
#: How long a resolved token is trusted without asking the database again: a revocation
#: takes effect on every server within this.
CACHE_SECONDS = 5.0
#: Agents' credentials due a check within this of each other are checked together, in one
#: query (a network's agents all ask at once when a change reaches them).
RECHECK_TOGETHER = CACHE_SECONDS / 2
#: Seconds between updates of a token's ``last_used``.
TOUCH_EVERY = 60.0
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,100}")


@dataclass(frozen=True, slots=True)
class Minted:
    id: str
    token: str
    expires: float | None


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Identities:
    """Users, roles, grants and tokens, on one state store's engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[float, Caller]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._rechecking = threading.Lock()

    # -- users --------------------------------------------------------------------------------
    def first_admin(self, password: str | None) -> str | None:
        """On a store with no users, create ``admin`` with ``password`` (or a random one,
        returned to be shown once); None when there were users already."""
        with self.engine.begin() as db:
            if db.execute(sa.select(sa.func.count()).select_from(users)).scalar_one():
                return None
            made = password or secrets.token_urlsafe(18)
            user_id = self._insert_user(db, "admin", made)
            db.execute(grants.insert().values(user_id=user_id, role="admin", flows="*"))
        return None if password else made

    def add_user(self, name: str, password: str | None) -> None:
        if not NAME.fullmatch(name):
            raise ElasticCodeError(f"user name {name!r}: use 1-100 letters, digits, and . _ @ -")
        with self.engine.begin() as db:
            if db.execute(sa.select(users.c.id).where(users.c.name == name)).first():
                raise Conflict(f"there is already a user {name!r}")
            self._insert_user(db, name, password)

    def _insert_user(self, db: sa.Connection, name: str, password: str | None) -> int:
        hashed = _hasher().hash(password) if password else None
        row = db.execute(
            users.insert().values(name=name, password=hashed, created=time.time(), disabled=False)
        )
        return int(row.inserted_primary_key[0])  # type: ignore[index]

    def set_password(self, name: str, password: str) -> None:
        if len(password) < 8:
            raise ElasticCodeError("a password has at least 8 characters")
        with self.engine.begin() as db:
            user_id = self._user_id(db, name)
            db.execute(
                users.update()
                .where(users.c.id == user_id)
                .values(password=_hasher().hash(password))
            )

    def remove_user(self, name: str) -> None:
        with self.engine.begin() as db:
            user_id = self._user_id(db, name)
            self._keep_an_admin(db, without_user=user_id)
            db.execute(grants.delete().where(grants.c.user_id == user_id))
            db.execute(tokens.update().where(tokens.c.user_id == user_id).values(revoked=True))
            db.execute(users.delete().where(users.c.id == user_id))
        self.forget_cache()

    def users(self) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(users).order_by(users.c.name)).all()
            given = db.execute(sa.select(grants)).all()
        by_user: dict[int, list[dict[str, str]]] = {}
        for g in given:
            by_user.setdefault(g.user_id, []).append({"role": g.role, "flows": g.flows})
        return [
            {
                "name": r.name,
                "created": r.created,
                "disabled": r.disabled,
                "password": r.password is not None,
                "grants": by_user.get(r.id, []),
            }
            for r in rows
        ]

    def _user_id(self, db: sa.Connection, name: str) -> int:
        found = db.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
        if found is None:
            raise NotFound(f"no user named {name!r}")
        return int(found)

    # -- roles and grants -----------------------------------------------------------------------
    def roles(self) -> dict[str, frozenset[str]]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(roles)).all()
        return role_privileges({r.name: json.loads(r.privileges) for r in rows})

    def add_role(self, name: str, privileges: Iterable[str]) -> None:
        if not NAME.fullmatch(name):
            raise ElasticCodeError(f"role name {name!r}: use 1-100 letters, digits, and . _ @ -")
        names = check_privileges(privileges)
        if name in ROLES:
            raise Conflict(f"{name!r} is a built-in role")
        with self.engine.begin() as db:
            if db.execute(sa.select(roles.c.name).where(roles.c.name == name)).first():
                raise Conflict(f"there is already a role {name!r}")
            db.execute(
                roles.insert().values(name=name, privileges=json.dumps(names), created=time.time())
            )
        self.forget_cache()

    def remove_role(self, name: str) -> None:
        if name in ROLES:
            raise Conflict(f"{name!r} is a built-in role; it cannot be removed")
        with self.engine.begin() as db:
            if db.execute(roles.delete().where(roles.c.name == name)).rowcount == 0:
                raise NotFound(f"no role named {name!r}")
            db.execute(grants.delete().where(grants.c.role == name))
        self.forget_cache()

    def grant(self, user: str, role: str, flows: str = "*") -> None:
        if role not in self.roles():
            raise NotFound(f"no role named {role!r}; roles are {', '.join(self.roles())}")
        with self.engine.begin() as db:
            user_id = self._user_id(db, user)
            found = db.execute(
                sa.select(grants.c.id).where(
                    grants.c.user_id == user_id, grants.c.role == role, grants.c.flows == flows
                )
            ).first()
            if found is None:
                db.execute(grants.insert().values(user_id=user_id, role=role, flows=flows))
        self.forget_cache()

    def revoke(self, user: str, role: str, flows: str = "*") -> None:
        with self.engine.begin() as db:
            user_id = self._user_id(db, user)
            if role == "admin" and flows == "*":
                self._keep_an_admin(db, without_user=user_id)
            gone = db.execute(
                grants.delete().where(
                    grants.c.user_id == user_id, grants.c.role == role, grants.c.flows == flows
                )
            ).rowcount
            if not gone:
                raise NotFound(f"user {user!r} has no grant of {role!r} on {flows!r}")
        self.forget_cache()

    def _keep_an_admin(self, db: sa.Connection, without_user: int) -> None:
        others = db.execute(
            sa.select(sa.func.count())
            .select_from(grants)
            .where(
                grants.c.role == "admin", grants.c.flows == "*", grants.c.user_id != without_user
            )
        ).scalar_one()
        if not others:
            raise Conflict("that would leave no admin; grant admin to another user first")

    def _grants(self, db: sa.Connection, user_id: int) -> tuple[Grant, ...]:
        rows = db.execute(sa.select(grants).where(grants.c.user_id == user_id)).all()
        return tuple(Grant(r.role, r.flows) for r in rows)

    # -- logging in -------------------------------------------------------------------------------
    def check_password(self, name: str, password: str) -> int | None:
        """The user's id if ``password`` is theirs (rehashed when argon2's settings grew)."""
        with self.engine.connect() as db:
            row = db.execute(
                sa.select(users.c.id, users.c.password, users.c.disabled).where(
                    users.c.name == name
                )
            ).first()
        hasher = _hasher()
        if row is None or row.password is None or row.disabled:
            hasher.hash(password)  # the same work either way: no timing hint of who exists
            return None
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            hasher.verify(row.password, password)
        except (VerificationError, InvalidHashError):
            return None
        if hasher.check_needs_rehash(row.password):
            with self.engine.begin() as db:
                db.execute(
                    users.update()
                    .where(users.c.id == row.id)
                    .values(password=hasher.hash(password))
                )
        return int(row.id)

    # -- tokens -----------------------------------------------------------------------------------
    def mint(
        self,
        kind: str,
        name: str,
        *,
        user_id: int | None = None,
        agent_id: str | None = None,
        scopes: Iterable[str] | None = None,
        expires: float | None = None,
        uses: int | None = None,
    ) -> Minted:
        """A new token; its text is in the answer only (the store keeps its hash)."""
        letter = next(k for k, v in KINDS.items() if v == kind)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        scope_list = None if scopes is None else check_privileges(scopes)
        until = None if expires is None else time.time() + expires
        with self.engine.begin() as db:
            db.execute(
                tokens.insert().values(
                    id=token_id,
                    kind=kind,
                    user_id=user_id,
                    agent_id=agent_id,
                    name=name[:200],
                    secret=_digest(secret),
                    scopes=None if scope_list is None else json.dumps(scope_list),
                    created=time.time(),
                    expires=until,
                    uses_left=uses,
                    revoked=False,
                )
            )
        return Minted(token_id, f"ec_{letter}{token_id}_{secret}", until)

    def _row(self, db: sa.Connection, text: str) -> Any:
        """The live token row ``text`` names; AuthError saying why not."""
        m = _TOKEN.fullmatch(text)
        if m is None:
            raise AuthError("not an ElasticCode token; log in with `elasticcode login`")
        letter, token_id, secret = m.groups()
        row = db.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
        if (
            row is None
            or row.kind != KINDS[letter]
            or not secrets.compare_digest(row.secret, _digest(secret))
        ):
            raise AuthError("unknown token; log in again, or ask for a new one")
        if row.revoked:
            raise AuthError("this token was revoked; log in again, or ask for a new one")
        if row.expires is not None and row.expires < time.time():
            raise AuthError("this token has expired; log in again, or ask for a new one")
        return row

    def caller(self, text: str) -> Caller:
        """Who ``text`` (a user's or agent's token) belongs to; AuthError if no one."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(text)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        if hit is not None and hit[1].kind == "agent":
            self._recheck_agents()
            with self._lock:
                hit = self._cache.get(text)
            if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
                return hit[1]
        # not known, or no longer valid: the whole check, which says why not
        with self.engine.connect() as db:
            row = self._row(db, text)
            if row.kind == "enrol":
                raise AuthError("an enrolment token only enrols an agent; log in to use the API")
            if row.kind == "agent":
                name = db.execute(
                    sa.select(agents.c.name).where(agents.c.id == row.agent_id)
                ).scalar()
                if name is None:
                    raise AuthError("this agent was forgotten; enrol it again")
                who = Caller("agent", str(name), agent_id=row.agent_id, token_id=row.id)
            else:
                user = db.execute(
                    sa.select(users.c.name, users.c.disabled).where(users.c.id == row.user_id)
                ).first()
                if user is None or user.disabled:
                    raise AuthError("this token's user is gone or disabled")
                scopes = None if row.scopes is None else frozenset(json.loads(row.scopes))
                who = Caller(
                    "user",
                    user.name,
                    user_id=row.user_id,
                    token_id=row.id,
                    grants=self._grants(db, row.user_id),
                    scopes=scopes,
                    roles=self.roles(),
                )
        self._touch(row.id)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[text] = (now, who)
        return who

    def _recheck_agents(self) -> None:
        """Check again, in one query, every agent credential whose check is due or nearly
        so; those still valid (not revoked, not expired, their agent known) are trusted for
        another ``CACHE_SECONDS``, the others dropped from the cache."""
        with self._rechecking:  # one thread checks; the others then find the result
            start = time.monotonic()
            with self._lock:
                due = {
                    text: caller
                    for text, (at, caller) in self._cache.items()
                    if caller.kind == "agent" and start - at >= CACHE_SECONDS - RECHECK_TOGETHER
                }
            if not due:
                return
            ids = sorted({c.token_id for c in due.values() if c.token_id})
            valid: set[str] = set()
            with self.engine.connect() as db:
                for i in range(0, len(ids), 1000):
                    valid.update(
                        db.execute(
                            sa.select(tokens.c.id)
                            .join(agents, agents.c.id == tokens.c.agent_id)
                            .where(
                                tokens.c.id.in_(ids[i : i + 1000]),
                                tokens.c.kind == "agent",
                                tokens.c.revoked.is_(False),
                                sa.or_(tokens.c.expires.is_(None), tokens.c.expires >= time.time()),
                            )
                        ).scalars()
                    )
            self._touch(*valid)
            with self._lock:
                for text, caller in due.items():
                    if self._cache.get(text, (0.0, None))[1] is not caller:
                        continue  # changed meanwhile
                    if caller.token_id in valid:
                        self._cache[text] = (start, caller)
                    else:
                        del self._cache[text]

    def _touch(self, *token_ids: str) -> None:
        """Note the tokens as used now (each at most every ``TOUCH_EVERY``), in one update."""
        now = time.time()
        due = [t for t in token_ids if now - self._touched.get(t, 0.0) >= TOUCH_EVERY]
        if not due:
            return
        self._touched.update(dict.fromkeys(due, now))
        with self.engine.begin() as db:
            db.execute(tokens.update().where(tokens.c.id.in_(due)).values(last_used=now))

    def enrolling(self, text: str) -> Caller:
        """Who enrols an agent: the holder of an enrolment token (not yet spent; see
        ``enrol``), or an agent registering again with its own credential."""
        if not text:
            raise AuthError(
                "an agent enrols with an enrolment token: make one with `elasticcode agent "
                "enrol-token` and start the agent with --enrol-token TOKEN"
            )
        m = _TOKEN.fullmatch(text)
        if m is not None and m[1] == "a":
            return self.caller(text)
        with self.engine.connect() as db:
            row = self._row(db, text)
        if row.kind != "enrol" or (row.uses_left is not None and row.uses_left <= 0):
            raise AuthError("not an enrolment token with a use left; make another")
        return Caller("enrol", f"enrolment token {row.id}", token_id=row.id)

    def enrol(self, text: str) -> None:
        """Spend one use of an enrolment token; AuthError if it has none left."""
        with self.engine.begin() as db:
            row = self._row(db, text)
            if row.kind != "enrol":
                raise AuthError(
                    "an agent enrols with an enrolment token (`elasticcode agent enrol-token`)"
                )
            if row.uses_left is not None:
                spent = db.execute(
                    tokens.update()
                    .where(tokens.c.id == row.id, tokens.c.uses_left > 0)
                    .values(uses_left=tokens.c.uses_left - 1)
                ).rowcount
                if not spent:
                    raise AuthError("this enrolment token is used up; make another")

    def tokens(self, user_id: int | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(tokens).order_by(tokens.c.created)
        if user_id is not None:
            query = query.where(tokens.c.user_id == user_id)
        if kind is not None:
            query = query.where(tokens.c.kind == kind)
        with self.engine.connect() as db:
            rows = db.execute(query).all()
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "name": r.name,
                "agent": r.agent_id,
                "scopes": None if r.scopes is None else json.loads(r.scopes),
                "created": r.created,
                "expires": r.expires,
                "last_used": r.last_used,
                "uses_left": r.uses_left,
                "revoked": r.revoked,
            }
            for r in rows
        ]

    def token_owner(self, token_id: str) -> int | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(tokens.c.user_id).where(tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        return None if row.user_id is None else int(row.user_id)

    def revoke_token(self, token_id: str) -> None:
        with self.engine.begin() as db:
            if not db.execute(
                tokens.update().where(tokens.c.id == token_id).values(revoked=True)
            ).rowcount:
                raise NotFound(f"no token {token_id!r}")
        self.forget_cache()

    def revoke_agent(self, agent_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(tokens.update().where(tokens.c.agent_id == agent_id).values(revoked=True))
        self.forget_cache()

    def forget_cache(self) -> None:
        """Check every token again at its next use (agents' credentials together)."""
        with self._lock:
            for text, (_, caller) in list(self._cache.items()):
                self._cache[text] = (-CACHE_SECONDS, caller)
