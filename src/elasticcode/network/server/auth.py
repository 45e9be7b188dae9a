"""Logging in and out, and who the caller is.

``POST /auth/login`` trades a user's name and password for an API token (what
``elasticcode login`` keeps). Failed logins are limited: ``TRIES`` for one user name from one
address, ``TRIES_PER_ADDRESS`` from one address, within ``WINDOW`` seconds; then more are
refused (429) until the window passes, so that a password cannot be guessed at the speed of
the network (and no one locks a user out from elsewhere).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..privileges import Caller
from .context import Srv, needs

router = APIRouter(tags=["auth"])

TRIES = 10
TRIES_PER_ADDRESS = 100
WINDOW = 300.0


class LoginBody(BaseModel):
    user: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    password: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00]+$")
    name: str = Field("login", max_length=200, pattern=r"^[^\x00]*$", description="the token's")


class _Failures:
    """Failed logins per key, in a sliding window, kept by this server."""

    def __init__(self) -> None:
        self.seen: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, *limits: tuple[str, int]) -> float:
        """Seconds until another try is allowed (0: now), given (key, tries) limits."""
        now = time.monotonic()
        wait = 0.0
        for key, tries in limits:
            times = self.seen.get(key)
            while times and now - times[0] > WINDOW:
                times.popleft()
            if times is not None and len(times) >= tries:
                wait = max(wait, WINDOW - (now - times[0]))
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self.seen[key].append(now)
        if len(self.seen) > 100_000:  # bounded, whatever the traffic
            self.seen.clear()


FAILURES = _Failures()


@router.post("/auth/login")
async def login(srv: Srv, request: Request, body: LoginBody) -> dict[str, Any]:
    """A new API token for the user whose password this is (no credential needed)."""
    address = request.client.host if request.client else "?"
    keys = (f"{body.user}@{address}", address)
    if wait := FAILURES.blocked((keys[0], TRIES), (keys[1], TRIES_PER_ADDRESS)):
        raise HTTPException(
            429,
            f"too many failed logins; try again in {wait:.0f}s",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    user_id = await run_in_threadpool(srv.identities.check_password, body.user, body.password)
    if user_id is None:
        FAILURES.failed(*keys)
        raise HTTPException(401, "wrong user name or password")
    lifetime = srv.settings.login_lifetime
    minted = await run_in_threadpool(
        lambda: srv.identities.mint(
            "user", f"{body.name} from {address}", user_id=user_id, expires=lifetime
        )
    )
    return {"user": body.user, "token": minted.token, "id": minted.id, "expires": minted.expires}


@router.post("/auth/logout")
async def logout(srv: Srv, caller: Annotated[Caller, needs("user")]) -> dict[str, Any]:
    """Revoke the token this request came with."""
    assert caller.token_id is not None
    await run_in_threadpool(srv.identities.revoke_token, caller.token_id)
    return {"revoked": caller.token_id}


@router.get("/auth/whoami")
async def whoami(caller: Annotated[Caller, needs("user")]) -> dict[str, Any]:
    """The caller: name, grants, and what its token is limited to."""
    roles = {g.role: sorted(caller.roles.get(g.role, ())) for g in caller.grants}
    return {
        "user": caller.name,
        "token": caller.token_id,
        "grants": [{"role": g.role, "flows": g.flows} for g in caller.grants],
        "roles": roles,
        "scopes": None if caller.scopes is None else sorted(caller.scopes),
    }
