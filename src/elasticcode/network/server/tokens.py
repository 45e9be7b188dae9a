"""API tokens: a user's own, for scripts and CI (named, scoped, expiring, revocable)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ...units import Duration
from ..privileges import PRIVILEGES, Caller
from .context import Srv, allow, needs, record

router = APIRouter(tags=["tokens"])


class TokenBody(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    expires: Duration | None = Field(
        90 * 86400.0, gt=0, le=10 * 366 * 86400, description="e.g. 30d"
    )
    scopes: list[str] | None = Field(
        None, max_length=len(PRIVILEGES), description="privileges it is limited to"
    )


@router.get("/tokens")
async def list_tokens(srv: Srv, caller: Annotated[Caller, needs("user")]) -> list[dict[str, Any]]:
    """The caller's tokens (never their secrets)."""
    return await run_in_threadpool(lambda: srv.identities.tokens(caller.user_id, "user"))


@router.post("/tokens", status_code=201)
async def create_token(
    srv: Srv, request: Request, body: TokenBody, caller: Annotated[Caller, needs("user")]
) -> dict[str, Any]:
    """A new token of the caller's, shown this once; with ``scopes``, it can do only those
    of its user's privileges."""
    if caller.scopes is not None and (body.scopes is None or set(body.scopes) - caller.scopes):
        raise HTTPException(403, "a scoped token makes only tokens within its own scopes")
    minted = await run_in_threadpool(
        lambda: srv.identities.mint(
            "user", body.name, user_id=caller.user_id, scopes=body.scopes, expires=body.expires
        )
    )
    await record(request, "token", f"token {minted.id} ({body.name}) made")
    return {"id": minted.id, "token": minted.token, "expires": minted.expires}


@router.delete("/tokens/{token_id}")
async def revoke_token(
    srv: Srv, request: Request, token_id: str, caller: Annotated[Caller, needs("user")]
) -> dict[str, Any]:
    """Revoke one of the caller's tokens, or (with ``user.manage``) anyone's."""
    owner = await run_in_threadpool(srv.identities.token_owner, token_id)
    if owner != caller.user_id:
        allow(caller, "user.manage")
    await run_in_threadpool(srv.identities.revoke_token, token_id)
    await record(request, "token", f"token {token_id} revoked")
    return {"revoked": token_id}
