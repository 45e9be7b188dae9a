"""The control plane end to end with simulated agents: a real server on a fresh PostgreSQL
database, and ``--agents`` agents simulated in this process, each registering, heartbeating
and waiting for its assignment through the API as a real agent does (long-polling
``/agents/ID/assignment``). No workers run. Figures:

- placement: from ``apply`` of a flow with ``--instances`` instances (``--processors`` of
  ``--per-processor`` each; more flows if that is not enough) until every agent holds its
  assignment;
- scale: one processor scaled up by 5, until every agent it affects holds its new assignment;
- update: one processor's settings changed (its instances are replaced on their agents);
- agent gone: one agent forgotten, until its instances reached the agents they moved to.

    .venv/bin/python benchmarks/network.py
    .venv/bin/python benchmarks/network.py --agents 200 --instances 2000

It needs PostgreSQL (``--admin-db``, default postgresql://postgres@127.0.0.1/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from typing import Any

import aiohttp
import httpx
from bench_server import bench_server  # a sibling script (this folder is on sys.path)


class Fleet:
    def __init__(self, url: str, agents: int, capacity: int, enrol: str) -> None:
        self.url = url
        #: the enrolment token each simulated agent enrols with
        self.enrol = enrol
        #: agent id -> its own credential (from its enrolment), as headers
        self.headers: dict[str, dict[str, str]] = {}
        self.count = agents
        self.capacity = capacity
        self.ids: list[str] = []
        #: agent id -> (generation, number of instances, when received)
        self.got: dict[str, tuple[int, int, float]] = {}
        self.changed = asyncio.Event()
        #: flow documents each simulated agent has
        self.known: dict[str, set[str]] = {}

    async def run(self, client: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        for i in range(self.count):
            body = {
                "name": f"sim{i:04d}",
                "host": f"simhost{i // 2:04d}",
                "cores": self.capacity,
                "memory": 2**30,
                "capacity": self.capacity,
                "labels": {"zone": "abc"[i % 3]},
            }
            enrol = {"authorization": f"Bearer {self.enrol}"}
            async with client.post(f"{self.url}/api/v1/agents", json=body, headers=enrol) as resp:
                reply = await resp.json()
                if resp.status >= 400:
                    raise SystemExit(f"agent {i} cannot enrol: {reply}")
            self.headers[reply["id"]] = {"authorization": f"Bearer {reply['token']}"}
            self.ids.append(reply["id"])
            self.got[reply["id"]] = (0, 0, time.monotonic())
        await asyncio.gather(*(self._agent(client, a, stop) for a in self.ids))

    async def _agent(self, client: aiohttp.ClientSession, agent: str, stop: asyncio.Event) -> None:
        last_beat = time.monotonic() - random.uniform(0, 20)  # heartbeats spread out
        base = f"{self.url}/api/v1/agents/{agent}"
        headers = self.headers[agent]
        while not stop.is_set():
            have = self.got[agent][0]
            if time.monotonic() - last_beat > 20:
                body = {"applied": have, "workers": []}
                async with client.post(f"{base}/heartbeat", json=body, headers=headers) as resp:
                    await resp.read()
                last_beat = time.monotonic()
            try:
                params = {
                    "have": str(have),
                    "wait": "10",
                    "known": ",".join(self.known.setdefault(agent, set())),
                }
                async with client.get(f"{base}/assignment", params=params, headers=headers) as resp:
                    if resp.status == 404:  # forgotten: it runs nothing
                        self.got[agent] = (have, 0, time.monotonic())
                        return
                    reply = await resp.json()
            except aiohttp.ClientError:
                continue
            if "instances" in reply and reply["generation"] != have:
                self.known.setdefault(agent, set()).update(reply["flows"])
                self.got[agent] = (reply["generation"], len(reply["instances"]), time.monotonic())
                self.changed.set()

    def snapshot(self) -> dict[str, tuple[int, int, float]]:
        return dict(self.got)

    async def until(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                held = sum(g[1] for g in self.got.values())
                raise SystemExit(f"gave up after {timeout}s waiting for {what} ({held} are)")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)


def flows_for(instances: int, per: int, processors: int) -> list[dict[str, Any]]:
    docs, left, f = [], instances, 0
    while left > 0:
        procs = []
        for p in range(processors):
            if left <= 0:
                break
            n = min(per, left)
            procs.append({"name": f"p{p:03d}", "code": "steps:inc", "instances": n})
            left -= n
        conns = [
            {"from": procs[i]["name"], "to": procs[i + 1]["name"]} for i in range(len(procs) - 1)
        ]
        docs.append({"name": f"bench{f:03d}", "processors": procs, "connections": conns})
        f += 1
    return docs


async def bench(args: argparse.Namespace, url: str, password: str) -> None:
    connector = aiohttp.TCPConnector(limit=args.agents + 50)
    timeout = aiohttp.ClientTimeout(total=60)
    login = httpx.post(f"{url}/api/v1/auth/login", json={"user": "admin", "password": password})
    login.raise_for_status()
    admin = {"authorization": f"Bearer {login.json()['token']}"}
    enrol = httpx.post(
        f"{url}/api/v1/agents/enrolment-tokens", json={"uses": None}, headers=admin
    ).json()["token"]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=admin) as client:
        fleet = Fleet(url, args.agents, args.capacity, enrol)
        stop = asyncio.Event()
        t = time.monotonic()
        task = asyncio.create_task(fleet.run(client, stop))
        while len(fleet.ids) < args.agents:
            if task.done():
                task.result()  # what stopped it
            await asyncio.sleep(0.1)
        print(f"{args.agents} agents registered in {time.monotonic() - t:.1f}s")
        await asyncio.sleep(3.0)  # every agent is waiting for its assignment
        rows = []

        docs = flows_for(args.instances, args.per_processor, args.processors)
        t = time.monotonic()
        for doc in docs:
            async with client.post(f"{url}/api/v1/flows", json={"document": doc}) as r:
                r.raise_for_status()
        applied = time.monotonic() - t
        await fleet.until(
            lambda: sum(g[1] for g in fleet.got.values()) == args.instances,
            300,
            f"{args.instances} instances placed",
        )
        got = sorted(g[2] - t for g in fleet.got.values())
        print(
            f"placement: done (first agent {got[0]:.2f}s, half {got[len(got) // 2]:.2f}s)",
            flush=True,
        )
        rows.append(("placement", args.instances, len([a for a, g in fleet.got.items() if g[1]]),
                     applied, max(g[2] for g in fleet.got.values()) - t))  # fmt: skip

        async def change(label: str, call: Any, expect_instances: int) -> None:
            await asyncio.sleep(3.0)  # from a network at rest
            before = fleet.snapshot()
            t = time.monotonic()
            await call()
            made = time.monotonic() - t
            await asyncio.sleep(3.0)  # let every affected agent hear of it
            await fleet.until(
                lambda: sum(g[1] for g in fleet.got.values()) == expect_instances,
                60,
                f"{label}: {expect_instances} instances held",
            )
            touched = [a for a, g in fleet.got.items() if g[0] != before[a][0]]
            print(f"{label}: done", flush=True)
            last = max((fleet.got[a][2] for a in touched), default=t)
            rows.append((label, expect_instances, len(touched), made, last - t))

        async def call(method: str, path: str, body: Any = None) -> None:
            async with client.request(method, f"{url}/api/v1{path}", json=body) as r:
                r.raise_for_status()

        flow0 = docs[0]["name"]
        total = args.instances + 5
        grown = {"instances": args.per_processor + 5}
        await change(
            "scale +5", lambda: call("POST", f"/flows/{flow0}/processors/p000/scale", grown), total
        )
        settings = {"prefetch": 50}
        await change(
            "update (rolling)",
            lambda: call("PATCH", f"/flows/{flow0}/processors/p001", settings),
            total,
        )
        busiest = max(fleet.got, key=lambda a: fleet.got[a][1])
        forget = lambda: call("DELETE", f"/agents/{busiest}")  # noqa: E731
        await change("agent gone", forget, total)
        stop.set()
        task.cancel()

    print(f"\n{args.agents} simulated agents, {args.capacity} slots each; seconds")
    print(
        f"{'change':<18} {'instances':>9} {'agents hit':>10} {'API call':>9} {'all agents have it':>19}"
    )
    for label, n, hit, made, reached in rows:
        print(f"{label:<18} {n:>9} {hit:>10} {made:>9.2f} {reached:>19.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--per-processor", type=int, default=20)
    parser.add_argument(
        "--processors", type=int, default=500, help="processors per flow (the rest: more flows)"
    )
    parser.add_argument("--admin-db", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()

    password = uuid.uuid4().hex  # the first user's, for this run only
    with bench_server(args.admin_db, args.port, password, "--agent-timeout", "120") as base:
        asyncio.run(bench(args, base, password))


if __name__ == "__main__":
    main()
