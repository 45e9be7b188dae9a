"""Users, their grants, and custom roles."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..privileges import PRIVILEGES, Caller
from .context import Srv, allow, needs, record

router = APIRouter(tags=["users"])
Pattern = Field("*", min_length=1, max_length=200, pattern=r"^[^\x00]+$")


class UserBody(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str | None = Field(None, min_length=8, max_length=1000, pattern=r"^[^\x00]+$")


class PasswordBody(BaseModel):
    password: str = Field(min_length=8, max_length=1000, pattern=r"^[^\x00]+$")


class GrantBody(BaseModel):
    role: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")
    flows: str = Pattern


class RoleBody(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    privileges: list[str] = Field(min_length=1, max_length=len(PRIVILEGES))


@router.get("/users", dependencies=[needs("user.read")])
async def list_users(srv: Srv) -> list[dict[str, Any]]:
    return await run_in_threadpool(srv.identities.users)


@router.post("/users", status_code=201, dependencies=[needs("user.manage")])
async def add_user(srv: Srv, request: Request, body: UserBody) -> dict[str, Any]:
    await run_in_threadpool(srv.identities.add_user, body.name, body.password)
    await record(request, "user", f"user {body.name} added")
    return {"added": body.name}


@router.delete("/users/{user}", dependencies=[needs("user.manage")])
async def remove_user(srv: Srv, request: Request, user: str) -> dict[str, Any]:
    """Remove a user, their grants and tokens."""
    await run_in_threadpool(srv.identities.remove_user, user)
    await record(request, "user", f"user {user} removed; their tokens revoked")
    return {"removed": user}


@router.put("/users/{user}/password")
async def set_password(
    srv: Srv,
    request: Request,
    user: str,
    body: PasswordBody,
    caller: Annotated[Caller, needs("user")],
) -> dict[str, Any]:
    """Set a password: one's own, or (with ``user.manage``) anyone's."""
    if user != caller.name:
        allow(caller, "user.manage")
    await run_in_threadpool(srv.identities.set_password, user, body.password)
    await record(request, "user", f"user {user}: password set")
    return {"user": user}


@router.post("/users/{user}/grants", dependencies=[needs("user.manage")])
async def grant(srv: Srv, request: Request, user: str, body: GrantBody) -> dict[str, Any]:
    """Give a user a role on the flows matching a pattern (``*``: all, and the network)."""
    await run_in_threadpool(srv.identities.grant, user, body.role, body.flows)
    await record(request, "user", f"user {user}: granted {body.role} on {body.flows}")
    return {"user": user, "role": body.role, "flows": body.flows}


@router.delete("/users/{user}/grants", dependencies=[needs("user.manage")])
async def revoke(
    srv: Srv,
    request: Request,
    user: str,
    role: str = Query(max_length=100),
    flows: str = Query("*", max_length=200),
) -> dict[str, Any]:
    await run_in_threadpool(srv.identities.revoke, user, role, flows)
    await record(request, "user", f"user {user}: {role} on {flows} revoked")
    return {"user": user, "role": role, "flows": flows}


@router.get("/roles", dependencies=[needs("user.read")])
async def list_roles(srv: Srv) -> dict[str, Any]:
    """Every role and its privileges, and what each privilege allows."""
    roles = await run_in_threadpool(srv.identities.roles)
    return {"roles": {n: sorted(p) for n, p in roles.items()}, "privileges": PRIVILEGES}


@router.post("/roles", status_code=201, dependencies=[needs("role.manage")])
async def add_role(srv: Srv, request: Request, body: RoleBody) -> dict[str, Any]:
    await run_in_threadpool(srv.identities.add_role, body.name, body.privileges)
    await record(request, "role", f"role {body.name} defined: {', '.join(body.privileges)}")
    return {"added": body.name}


@router.delete("/roles/{role}", dependencies=[needs("role.manage")])
async def remove_role(srv: Srv, request: Request, role: str) -> dict[str, Any]:
    await run_in_threadpool(srv.identities.remove_role, role)
    await record(request, "role", f"role {role} removed, and its grants")
    return {"removed": role}
