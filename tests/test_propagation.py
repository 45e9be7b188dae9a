"""A change reaching a network's agents: every agent's assignment answered from one read of
the state store, agents' credentials checked again together, and a change made through the
API starting the leader's round at once. (The figures at 1,000 agents:
``benchmarks/network.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from elasticcode.errors import AuthError
from elasticcode.network.cluster import Cluster
from elasticcode.network.identity import Identities
from elasticcode.network.leader import Leader
from elasticcode.network.server import ServerSettings, create_app
from elasticcode.network.server.changes import Changes
from elasticcode.store.tables import agents, tokens

from .network import ELASTICCODE, postgres_database


@pytest.fixture
def db() -> Iterator[str]:
    for url in postgres_database():
        subprocess.run([ELASTICCODE, "db", "upgrade", "--db", url], check=True, capture_output=True)
        yield url


def _flow(name: str, processors: int, instances: int) -> dict[str, Any]:
    procs = [
        {"name": f"p{i}", "code": "steps:inc", "instances": instances} for i in range(processors)
    ]
    conns = [{"from": f"p{i}", "to": f"p{i + 1}"} for i in range(processors - 1)]
    return {"name": name, "processors": procs, "connections": conns}


def _agents(cl: Cluster, count: int) -> list[str]:
    return [cl.register(f"a{i}", f"host{i}", 4, 2**30, 4, {}) for i in range(count)]


def test_many_agents_are_answered_from_one_read(db: str) -> None:
    cl = Cluster(db)
    try:
        ids = _agents(cl, 30)
        cl.apply(_flow("wide", 6, 10))
        leader = Leader(cl, "test", 5.0)
        assert leader.round() is not None
        reads = 0
        read_all = cl.assignments

        def counted() -> Any:
            nonlocal reads
            reads += 1
            return read_all()

        cl.assignments = counted  # type: ignore[method-assign]
        changes = Changes(cl)
        changes.generations = cl.generations()

        async def everyone() -> list[dict[str, Any]]:
            answers = await asyncio.gather(*(changes.assignments(a) for a in ids))
            return [r.of(a) for r, a in zip(answers, ids, strict=True)]

        got = asyncio.run(everyone())
        assert reads == 1, f"{reads} reads of the state store for one change"
        assert sum(len(g["instances"]) for g in got) == 60
        fresh = read_all()
        for agent, answer in zip(ids, got, strict=True):
            assert answer == fresh.of(agent)  # what each agent gets is its own assignment

        # one processor grows: the agents it reaches get their new generation from a new
        # read, shared; the others are answered from it too
        cl.update_processor("wide", "p0", {"instances": 25})
        assert leader.round() is not None
        now = cl.generations()
        bumped = [a for a in ids if now[a] != changes.generations[a]]
        calm = [a for a in ids if now[a] == changes.generations[a]]
        assert bumped and calm
        changes.generations = now

        async def one(agent: str) -> dict[str, Any]:
            return (await changes.assignments(agent)).of(agent)

        for agent in bumped:
            assert asyncio.run(one(agent))["generation"] == now[agent]
        assert reads == 2, "the agents a change reached are answered from one new read"
        assert asyncio.run(one(calm[0]))["generation"] == now[calm[0]]
        assert reads == 2, "an agent the change did not reach is answered from the last read"
        with pytest.raises(Exception, match="no agent nobody"):
            asyncio.run(one("nobody"))
    finally:
        cl.close()


def test_agents_credentials_are_checked_again_together(db: str) -> None:
    cl = Cluster(db)
    ids = Identities(cl.engine)
    try:
        agent_ids = _agents(cl, 20)
        texts = [ids.mint("agent", f"agent {a}", agent_id=a).token for a in agent_ids]
        for t in texts:
            assert ids.caller(t).kind == "agent"
        # another server revokes one credential and forgets an agent: this one does not hear
        with cl.engine.begin() as conn:
            conn.execute(
                tokens.update().where(tokens.c.agent_id == agent_ids[0]).values(revoked=True)
            )
            conn.execute(agents.delete().where(agents.c.id == agent_ids[1]))
        ids.forget_cache()  # as if CACHE_SECONDS had passed for all of them
        statements: list[str] = []

        def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        sa.event.listen(cl.engine, "before_cursor_execute", count)
        with pytest.raises(AuthError, match="revoked"):
            ids.caller(texts[0])
        with pytest.raises(AuthError, match="forgotten"):
            ids.caller(texts[1])
        for t in texts[2:]:
            assert ids.caller(t).kind == "agent"
        sa.event.remove(cl.engine, "before_cursor_execute", count)
        checks = [s for s in statements if "FROM tokens" in s]
        # one check of all 20, then the whole check of the two that failed it (which says why)
        assert len(checks) <= 4, statements
    finally:
        cl.close()


async def _admin_and_agent(
    api: httpx.AsyncClient, agents: httpx.AsyncClient
) -> tuple[dict[str, str], str, dict[str, str]]:
    """The admin's credential (logged in through ``api``) and an agent enrolled through
    ``agents``: its id and its own credential."""
    r = await api.post("/auth/login", json={"user": "admin", "password": "pw-for-this-test"})
    admin = {"authorization": f"Bearer {r.json()['token']}"}
    r = await api.post("/agents/enrolment-tokens", json={}, headers=admin)
    enrol = {"authorization": f"Bearer {r.json()['token']}"}
    body = {"name": "one", "host": "h", "cores": 2, "memory": 2**30, "capacity": 4}
    r = await agents.post("/agents", json=body, headers=enrol)
    return admin, r.json()["id"], {"authorization": f"Bearer {r.json()['token']}"}


def test_a_change_through_the_api_starts_the_leaders_round_at_once(db: str) -> None:
    # a tick far longer than the test waits: only the nudge can place the flow in time
    settings = ServerSettings(db=db, tick=60.0, broker="redis://127.0.0.1:6379/0")
    app = create_app(settings)
    srv = app.state.server
    srv.identities.first_admin("pw-for-this-test")

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as api,
        ):
            admin, agent, mine = await _admin_and_agent(api, api)
            await asyncio.sleep(1.0)  # the leader's first round is behind it
            gen = (await api.get(f"/agents/{agent}/assignment", headers=mine)).json()
            assert gen["instances"] == []
            doc = _flow("nudged", 2, 1)
            r = await api.post("/flows", json={"document": doc}, headers=admin)
            assert r.status_code < 300, r.text
            params = {"have": gen["generation"], "wait": 10}
            r = await api.get(f"/agents/{agent}/assignment", params=params, headers=mine)
            assert len(r.json().get("instances", [])) == 2, r.json()

    asyncio.run(go())


def test_a_change_through_a_server_that_does_not_lead_starts_the_leaders_round(db: str) -> None:
    # two servers on one database, both with a tick far longer than the test waits: the
    # change is made through the one that follows, so only its nudge through PostgreSQL
    # (NOTIFY, the leader LISTENs) can place the flow in time
    apps = [
        create_app(ServerSettings(db=db, tick=60.0, broker="redis://127.0.0.1:6379/0"))
        for _ in range(2)
    ]
    apps[0].state.server.identities.first_admin("pw-for-this-test")

    async def go() -> None:
        leader, follower = apps
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(leader.router.lifespan_context(leader))
            await asyncio.sleep(1.0)  # the first leads
            await stack.enter_async_context(follower.router.lifespan_context(follower))
            await asyncio.sleep(1.0)  # the second's first round found the lease held
            assert leader.state.server.leading and not follower.state.server.leading
            api, via = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app), base_url="http://test/api/v1"
                    )
                )
                for app in (leader, follower)
            ]
            admin, agent, mine = await _admin_and_agent(via, api)
            await asyncio.sleep(1.0)  # the rounds the registration nudged are behind it
            gen = (await api.get(f"/agents/{agent}/assignment", headers=mine)).json()
            assert gen["instances"] == []
            r = await via.post("/flows", json={"document": _flow("told", 2, 1)}, headers=admin)
            assert r.status_code < 300, r.text
            params = {"have": gen["generation"], "wait": 10}
            r = await api.get(f"/agents/{agent}/assignment", params=params, headers=mine)
            assert len(r.json().get("instances", [])) == 2, r.json()

    asyncio.run(go())
