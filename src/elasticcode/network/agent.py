"""``elasticcode agent start``: the agent of one host in an ElasticCode network.

It registers with a server (hostname, cores, memory, labels, how many workers it may run),
heartbeats, and keeps its workers matching its assignment: it starts the instances placed on
it, stops those taken away, and replaces an instance whose spec changed (new worker first,
then the old one finishes its batch). Other workers are not touched. A worker that dies is
restarted (see ``elasticcode.supervisor``).

The agent keeps its id and its last assignment in its state folder: with every server down it
goes on running that assignment, and an agent restarted then starts it again. Messages never
pass through a server: workers talk to the broker directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from ..brokers import Broker, open_broker
from ..code import envs
from ..errors import BrokerError, ElasticCodeError
from ..flow import Flow
from ..launch import write_flow
from ..supervisor import Instance, Supervisor

log = logging.getLogger("elasticcode.agent")

SUPERVISE_EVERY = 0.5
RETRY_MAX = 15.0
#: Seconds between tries to start instances that could not start (e.g. the broker is away).
RETRY_START = 5.0


class ServerGone(ElasticCodeError):
    """No server answers."""


class Agent:
    """The agent of one host: registers, heartbeats, and reconciles its workers to its
    assignment (see the module docstring)."""

    def __init__(
        self,
        servers: list[str],
        state_dir: Path,
        *,
        name: str | None = None,
        host: str | None = None,
        labels: dict[str, str] | None = None,
        capacity: int | None = None,
        token: str | None = None,
        db: str | None = None,
    ) -> None:
        if not servers:
            raise ElasticCodeError("give the server's URL: --server http://HOST:8750")
        self.servers = [s.rstrip("/") for s in servers]
        self.server = 0
        self.state_dir = state_dir.resolve()
        self.host = host or socket.gethostname()
        self.name = name or self.host
        self.labels = labels or {}
        self.cores = os.cpu_count() or 1
        self.capacity = self.cores if capacity is None else capacity
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.db = db
        self.id: str | None = None
        self.generation = 0
        self.heartbeat_every = 2.0
        self.supervisor: Supervisor | None = None
        self.brokers: dict[str, Broker] = {}
        self.declared: set[tuple[str, int]] = set()
        self.flows: dict[tuple[str, int], tuple[Flow, Path]] = {}
        self.errors: dict[tuple[str, str, int], str] = {}
        self.stop = asyncio.Event()
        self._outage: float | None = None
        self._last: dict[str, Any] | None = None
        self._applying = asyncio.Lock()
        #: flow documents by NAME@REVISION, of the instances assigned
        self.documents: dict[str, Any] = {}

    # -- the state folder ------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any] | None:
        path = self.state_dir / "agent.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        self.id = data.get("id")
        self.db = self.db or data.get("state")
        return data.get("assignment")

    def _save_state(self, assignment: dict[str, Any] | None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "agent.json.tmp"
        tmp.write_text(json.dumps({"id": self.id, "state": self.db, "assignment": assignment}))
        os.replace(tmp, self.state_dir / "agent.json")

    # -- talking to a server -----------------------------------------------------------------
    async def _call(
        self, client: httpx.AsyncClient, method: str, path: str, **kw: Any
    ) -> dict[str, Any]:
        """One API call, to the first server that answers (trying each once)."""
        last: Exception | None = None
        for _ in range(len(self.servers)):
            url = self.servers[self.server] + path
            try:
                resp = await client.request(method, url, headers=self.headers, **kw)
            except httpx.TransportError as exc:
                last = exc
                self.server = (self.server + 1) % len(self.servers)
                continue
            if resp.status_code == 404 and path.startswith("/api/v1/agents/"):
                self.id = None  # the server forgot this agent: register again
                raise ServerGone("the server does not know this agent; registering again")
            if resp.status_code >= 400:
                detail = resp.text[:500]
                raise ServerGone(f"{url} answered {resp.status_code}: {detail}")
            result: dict[str, Any] = resp.json()
            return result
        raise ServerGone(f"no server answers ({', '.join(self.servers)}): {last}")

    async def _register(self, client: httpx.AsyncClient) -> None:
        body = {
            "id": self.id,
            "name": self.name,
            "host": self.host,
            "cores": self.cores,
            "memory": _memory(),
            "capacity": self.capacity,
            "labels": self.labels,
        }
        reply = await self._call(client, "POST", "/api/v1/agents", json=body)
        self.id = reply["id"]
        self.db = self.db or reply["state"]
        self.heartbeat_every = float(reply.get("heartbeat", 2.0))
        self.generation = -1  # ask for the whole assignment
        self._save_state(self._last)
        log.info(
            "agent %s registered with %s as %s (%d worker slots, labels %s)",
            self.name,
            self.servers[self.server],
            self.id,
            self.capacity,
            self.labels or "none",
        )

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._last = self._load_state()
        if self._last is not None and self.db:
            log.info("resuming the last assignment (generation %s)", self._last["generation"])
            await self._apply(self._last)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        supervise = asyncio.create_task(self._supervise())
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=75.0)) as client:
                await self._control(client)
        finally:
            supervise.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervise
            if self.supervisor is not None:
                await loop.run_in_executor(None, self.supervisor.stop)
            for b in self.brokers.values():
                with contextlib.suppress(Exception):
                    await b.close()

    async def _control(self, client: httpx.AsyncClient) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if self.id is None:
                    await self._register(client)
                reply = await self._call(
                    client,
                    "POST",
                    f"/api/v1/agents/{self.id}/heartbeat",
                    json={
                        "applied": self.generation,
                        "workers": self._workers(),
                        "known": self._known(),
                    },
                )
                if "instances" in reply:
                    await self._apply(reply)
                reply = await self._call(
                    client,
                    "GET",
                    f"/api/v1/agents/{self.id}/assignment",
                    params={
                        "have": self.generation,
                        "wait": self.heartbeat_every,
                        "known": ",".join(self._known()),
                    },
                )
                if "instances" in reply:
                    await self._apply(reply)
                if self._outage is not None:
                    log.info("server %s answers again", self.servers[self.server])
                    self._outage = None
                backoff = 0.5
            except ServerGone as exc:
                if self._outage is None:
                    self._outage = time.monotonic()
                running = len(self._workers())
                log.warning(
                    "waiting for a server: %s; keeping %d worker(s) running; retrying in %.1fs",
                    exc,
                    running,
                    backoff,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), backoff)
                backoff = min(backoff * 2, RETRY_MAX)

    def _known(self) -> list[str]:
        """The flow documents this agent has (the server leaves them out of answers)."""
        return sorted(self.documents)

    async def _supervise(self) -> None:
        retry_at = 0.0
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            if self.errors and self._last is not None and time.monotonic() >= retry_at:
                retry_at = time.monotonic() + RETRY_START  # instances that could not start
                with contextlib.suppress(ElasticCodeError):
                    await self._apply(self._last)
            if self.supervisor is None:
                continue
            try:
                for event in await self.supervisor.supervise(self._broker_of):
                    log.info("%s", event)
                # a source that is done stays (as done, not to be started again); a replaced
                # or removed instance that has exited goes
                self.supervisor.instances = [
                    i for i in self.supervisor.instances if not (i.finished and i.retiring)
                ]
            except Exception as exc:  # supervision must go on
                log.warning("supervising workers: %s", exc)

    async def _broker_of(self, inst: Instance) -> Broker:
        return await self._broker(inst.broker_url or "")

    async def _broker(self, url: str) -> Broker:
        if url not in self.brokers:
            b = open_broker(url)
            await b.connect()
            self.brokers[url] = b
        return self.brokers[url]

    # -- reconciling -------------------------------------------------------------------------
    def _workers(self) -> list[dict[str, Any]]:
        out = []
        for inst in self.supervisor.instances if self.supervisor else []:
            if inst.finished and inst.retiring:
                continue
            state = "running" if inst.alive else "restarting"
            if inst.finished:
                state = "done"
            elif inst.retiring:
                state = "retiring"
            elif inst.last_exit is not None and not inst.alive and inst.failures > 1:
                state = "error"
            out.append(
                {
                    "flow": inst.flow_name,
                    "processor": inst.processor,
                    "instance": inst.index,
                    "pid": inst.pid,
                    "consumer": inst.consumer,
                    "state": state,
                    "restarts": inst.restarts,
                    "last_exit": inst.last_exit,
                    "spec": inst.spec,
                    "retiring": inst.retiring,
                }
            )
        for (flow, processor, index), error in self.errors.items():
            out.append(
                {
                    "flow": flow,
                    "processor": processor,
                    "instance": index,
                    "pid": None,
                    "state": "error",
                    "error": error,
                    "restarts": 0,
                }
            )
        return out

    async def _apply(self, assignment: dict[str, Any]) -> None:
        """Make the running workers match ``assignment``: only the difference changes."""
        async with self._applying:  # one at a time: the heartbeat and the retry may overlap
            await self._reconcile(assignment)

    async def _reconcile(self, assignment: dict[str, Any]) -> None:
        if not self.db:
            raise ServerGone("no state store URL yet")
        if self.supervisor is None:
            self.supervisor = Supervisor(None, None, 0, "", self.db, self.state_dir / "logs", None)
            self.supervisor.log_dir.mkdir(parents=True, exist_ok=True)
        sup = self.supervisor
        wanted = {(i["flow"], i["processor"], i["instance"]): i for i in assignment["instances"]}
        # the server leaves out documents this agent has: keep those its instances need
        documents = {**self.documents, **assignment["flows"]}
        needed = {f"{i['flow']}@{i['revision']}" for i in assignment["instances"]}
        self.documents = {k: v for k, v in documents.items() if k in needed}
        assignment = {**assignment, "flows": self.documents}
        active = {(i.flow_name, i.processor, i.index): i for i in sup.instances if not i.retiring}
        errors: dict[tuple[str, str, int], str] = {}
        started = stopped = replaced = 0
        for key, item in sorted(wanted.items()):
            have = active.get(key)
            if have is not None and have.spec == item["spec"]:
                continue
            try:
                flow, path = await self._flow(item, assignment["flows"])
                await self._prepare(flow, item)
            except ElasticCodeError as exc:
                errors[key] = str(exc)
                log.error("%s/%s[%d] cannot start: %s", *key, exc)
                continue
            fresh = Instance(
                item["processor"],
                item["instance"],
                flow=flow,
                flow_file=path,
                run_id=item["run_id"],
                broker_url=_broker_url(flow),
                spec=item["spec"],
                flow_name=item["flow"],
            )
            sup._spawn(fresh)
            sup.instances.append(fresh)
            if have is None:
                started += 1
            else:  # rolling replacement: the new worker is up, the old one finishes its batch
                self._retire(have)
                replaced += 1
        for key, inst in active.items():
            if key not in wanted:
                self._retire(inst)
                stopped += 1
        self.errors = errors
        self.generation = int(assignment["generation"])
        self._last = assignment
        self._save_state(assignment)
        if started or stopped or replaced:
            log.info(
                "assignment %d: %d worker(s) started, %d replaced, %d stopped; %d running",
                self.generation,
                started,
                replaced,
                stopped,
                len(wanted) - len(errors),
            )

    def _retire(self, inst: Instance) -> None:
        inst.retiring = True
        if inst.alive and inst.process is not None:
            inst.process.send_signal(signal.SIGTERM)
        else:
            inst.finished = True

    async def _flow(self, item: dict[str, Any], documents: dict[str, Any]) -> tuple[Flow, Path]:
        key = (item["flow"], item["revision"])
        if key not in self.flows:
            folder = self.state_dir / "flows"
            folder.mkdir(parents=True, exist_ok=True)
            doc = documents[f"{key[0]}@{key[1]}"]
            flow = Flow.from_dict(doc, base_dir=folder)
            path = write_flow(flow, folder, f"{key[0]}@{key[1]}.yaml")
            self.flows[key] = (Flow.load(path), path)
        return self.flows[key]

    async def _prepare(self, flow: Flow, item: dict[str, Any]) -> None:
        """Before a flow revision's first worker here: its queues exist, and the workers an
        agent now lost ran of this instance have their messages handed out again."""
        key = (flow.name, item["revision"])
        try:
            broker = await self._broker(_broker_url(flow))
            if key not in self.declared:
                await broker.declare(flow.queues())
                self.declared.add(key)
            for consumer in item.get("release", []):
                released = await broker.release(consumer)
                if released:
                    log.info("released %d message(s) held by %s", released, consumer)
        except BrokerError as exc:
            raise ElasticCodeError(f"the broker is not ready: {exc}") from None
        spec = flow.get(item["processor"])
        if spec.requirements:  # built once per host, in the background of the loop
            await asyncio.get_running_loop().run_in_executor(None, envs.python_for, spec, flow)


def _broker_url(flow: Flow) -> str:
    if not flow.settings.broker:
        raise ElasticCodeError(
            f"flow {flow.name!r} names no broker; start the server with --broker URL or set "
            "settings.broker in the flow"
        )
    return flow.settings.broker


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def start(agent: Agent) -> None:
    logging.basicConfig(
        level=os.environ.get("ELASTICCODE_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat
    asyncio.run(agent.run())
