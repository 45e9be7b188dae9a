"""Secrets: set and remove them, list their names. No route answers with a value."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .context import Srv, needs, record, who

router = APIRouter(tags=["secrets"], dependencies=[needs("secret.manage")])


class SecretBody(BaseModel):
    value: str = Field(min_length=1, max_length=64 * 1024)


@router.get("/secrets")
async def list_secrets(srv: Srv) -> list[dict[str, Any]]:
    """The secrets' names, and when and by whom each was set."""
    return await run_in_threadpool(srv.vault.names)


@router.put("/secrets/{secret}")
async def set_secret(srv: Srv, request: Request, secret: str, body: SecretBody) -> dict[str, Any]:
    """Store a secret, encrypted; flows reference it as ${secret:NAME}."""
    new = await run_in_threadpool(srv.vault.set, secret, body.value, who(request).actor)
    await record(request, "secret", f"secret {secret} {'set' if new else 'changed'}")
    return {"secret": secret, "new": new}


@router.delete("/secrets/{secret}")
async def remove_secret(srv: Srv, request: Request, secret: str) -> dict[str, Any]:
    await run_in_threadpool(srv.vault.remove, secret)
    await record(request, "secret", f"secret {secret} removed")
    return {"removed": secret}
