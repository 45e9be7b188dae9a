"""The bodies and parameters of API requests, checked before any route runs: every number and
name is bounded, so that bad input answers 422, never a database error."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, Field

#: A name or id: text without NUL characters (which no database stores).
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Revision = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


class ApplyBody(BaseModel):
    document: dict[str, Any] = Field(description="the flow, as in a flow file")
    note: str = ""


class RegisterBody(BaseModel):
    id: Text | None = Field(None, description="the id the agent had, to register again")
    name: Text
    host: Text
    cores: int = Field(ge=1, le=1_000_000)
    memory: int = Field(ge=0, le=2**62)
    capacity: int = Field(ge=0, le=1_000_000, description="how many workers it may run")
    labels: dict[str, str] = {}


class HeartbeatBody(BaseModel):
    applied: int = Field(0, ge=-1, le=2**62, description="the assignment generation it runs")
    workers: list[dict[str, Any]] = []
    known: list[str] = Field([], description="flow documents it has, as NAME@REVISION")
    busy: float | None = Field(
        None, ge=0, le=100_000, description="cores busy on its host since its last heartbeat"
    )


class ScaleBody(BaseModel):
    instances: Annotated[int, Field(ge=0, le=100_000)] | Literal["auto", "release"]


class RollbackBody(BaseModel):
    revision: int = Field(ge=1, le=2**31 - 1)


class ConnectionBody(BaseModel):
    model_config = {"populate_by_name": True, "extra": "allow"}
    source: str = Field(alias="from")
    target: str = Field(alias="to")


class ReplayBody(BaseModel):
    ids: list[Annotated[str, Field(max_length=200)] | int] | None = Field(
        None, max_length=100_000, description="the dead letters to replay (their ids)"
    )
    all: bool = Field(False, description="replay every dead letter of the flow")
