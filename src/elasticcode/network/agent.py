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

from ..autoscale import HostCPU
from ..brokers import Broker, open_broker
from ..code import envs
from ..errors import BrokerError, ElasticCodeError
from ..flow import Flow
from ..launch import write_flow
from ..metrics.hub import INTERVAL
from ..secret import names_of_flow, resolve
from ..supervisor import Instance, Supervisor
from ..worker import HOST_ENV
from .agent_metrics import AgentMetrics
from .client import detail, verify

log = logging.getLogger("elasticcode.agent")

SUPERVISE_EVERY = 0.5
RETRY_MAX = 15.0
#: Seconds between tries to start instances that could not start (e.g. the broker is away).
RETRY_START = 5.0
#: Seconds between asking each broker whether it lost what it held.
CHECK_EVERY = 5.0


class ServerGone(ElasticCodeError):
    """No server answers."""


class Refused(ElasticCodeError):
    """A server refuses the agent's credential (revoked when it was forgotten)."""


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
        enrol_token: str | None = None,
        ca: str | None = None,
        metrics_port: int | None = None,
    ) -> None:
        if not servers:
            raise ElasticCodeError("give the server's URL: --server http://HOST:8750")
        self.servers = [s.rstrip("/") for s in servers]
        self.server = 0
        self.state_dir = state_dir.resolve()
        self.host = host or socket.gethostname()
        os.environ[HOST_ENV] = self.host  # the host its workers report
        self.name = name or self.host
        self.labels = labels or {}
        self.cores = os.cpu_count() or 1
        self.capacity = self.cores if capacity is None else capacity
        self.enrol_token = enrol_token
        #: the agent's own credential (from its enrolment)
        self.token: str | None = None
        self.verify = verify(ca)
        self.id: str | None = None
        self.generation = 0
        self.heartbeat_every = 2.0
        self.host_cpu = HostCPU()  # how busy the host is, for the leader's CPU-bound rule
        self.supervisor: Supervisor | None = None
        self.brokers: dict[str, Broker] = {}
        self.declared: set[tuple[str, int]] = set()
        self.flows: dict[tuple[str, int], tuple[Flow, Path]] = {}
        self.errors: dict[tuple[str, str, int], str] = {}
        self.stop = asyncio.Event()
        self._outage: float | None = None
        self._last: dict[str, Any] | None = None
        #: the metrics endpoint of this agent's workers, if asked for one
        self.metrics = AgentMetrics(metrics_port) if metrics_port is not None else None
        self._applying = asyncio.Lock()
        #: flow documents by NAME@REVISION, of the instances assigned
        self.documents: dict[str, Any] = {}

    # -- the state folder ------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any] | None:
        path = self.state_dir / "agent.json"
        if not path.exists():
            return None
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # written by an older version: it holds credentials
        data: dict[str, Any] = json.loads(path.read_text())
        self.id, self.token = data.get("id"), data.get("token")
        return data.get("assignment")

    def _save_state(self, assignment: dict[str, Any] | None) -> None:
        """Keep the agent's id, credential and assignment (with its flows' secrets) where
        only its user may read them."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        tmp = self.state_dir / "agent.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"id": self.id, "token": self.token, "assignment": assignment}, f)
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
                resp = await client.request(method, url, headers=self._headers(path), **kw)
            except httpx.TransportError as exc:
                last = exc
                self.server = (self.server + 1) % len(self.servers)
                continue
            if resp.status_code == 401:
                raise Refused(f"{url} refused this agent's credential: {detail(resp)}")
            if resp.status_code == 404 and path.startswith("/api/v1/agents/"):
                self.id = None  # the server forgot this agent: register again
                raise ServerGone("the server does not know this agent; registering again")
            if resp.status_code >= 400:
                raise ServerGone(f"{url} answered {resp.status_code}: {detail(resp)}")
            result: dict[str, Any] = resp.json()
            return result
        raise ServerGone(f"no server answers ({', '.join(self.servers)}): {last}")

    def _headers(self, path: str) -> dict[str, str]:
        enrolling = path == "/api/v1/agents" and self.token is None
        token = self.enrol_token if enrolling else self.token
        return {"authorization": f"Bearer {token}"} if token else {}

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
        if self.token is None and not self.enrol_token:
            raise Refused(
                "this agent has no credential: start it with --enrol-token TOKEN (make one with "
                "`elasticcode agent enrol-token`)"
            )
        reply = await self._call(client, "POST", "/api/v1/agents", json=body)
        self.id = reply["id"]
        self.token = reply.get("token") or self.token
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
        if self.metrics is not None:
            self.metrics.start()
        self._last = self._load_state()
        if self._last is not None:
            log.info("resuming the last assignment (generation %s)", self._last["generation"])
            await self._apply(self._last)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        supervise = asyncio.create_task(self._supervise())
        measure = asyncio.create_task(self._measure()) if self.metrics is not None else None
        try:
            timeout = httpx.Timeout(10.0, read=75.0)
            async with httpx.AsyncClient(timeout=timeout, verify=self.verify) as client:
                await self._control(client)
        finally:
            for task in (supervise, measure):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self.metrics is not None:
                self.metrics.close()
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
                        "busy": self.host_cpu.busy(),
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
            except Refused as exc:
                self._expelled(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), backoff)
                backoff = min(backoff * 2, RETRY_MAX)
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

    def _expelled(self, why: Exception) -> None:
        """The network no longer knows this agent's credential (it was forgotten, or its
        token revoked): stop its workers, whose instances run elsewhere by now, and wait to
        be enrolled again."""
        sup = self.supervisor
        running = [i for i in sup.instances if not i.retiring] if sup is not None else []
        log.error(
            "%s; stopping %d worker(s). Enrol this agent again: start it with --enrol-token "
            "TOKEN (`elasticcode agent enrol-token`)",
            why,
            len(running),
        )
        for inst in running:
            self._retire(inst)
        self.id = self.token = self._last = None
        self.errors = {}
        self._save_state(None)

    def _known(self) -> list[str]:
        """The flow documents this agent has (the server leaves them out of answers)."""
        return sorted(self.documents)

    async def _measure(self) -> None:
        """Every interval, the views of this agent's workers to its metrics endpoint."""
        assert self.metrics is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(INTERVAL)
            instances = list(self.supervisor.instances) if self.supervisor else []
            await loop.run_in_executor(None, self.metrics.tick, instances)

    async def _supervise(self) -> None:
        retry_at = checked = 0.0
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            if time.monotonic() - checked >= CHECK_EVERY:  # did a broker lose its messages?
                checked = time.monotonic()
                for b in list(self.brokers.values()):
                    with contextlib.suppress(ElasticCodeError):
                        await b.check()  # a loss is logged by the broker, loudly
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
        return await self._broker(resolve(inst.broker_url or "", inst.secrets))

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
        if self.supervisor is None:
            self.supervisor = Supervisor(None, None, 0, "", "", self.state_dir / "logs", None)
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
                state = _state_of(assignment, item["flow"])
                secrets = assignment.get("secrets") or {}
                await self._prepare(flow, item, secrets)
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
                revision=item["revision"],
                state_url=state,
                secrets={n: secrets[n] for n in names_of_flow(flow) if n in secrets},
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

    async def _prepare(self, flow: Flow, item: dict[str, Any], secrets: dict[str, str]) -> None:
        """Before a flow revision's first worker here: its queues exist, and the workers an
        agent now lost ran of this instance have their messages handed out again."""
        key = (flow.name, item["revision"])
        try:
            broker = await self._broker(resolve(_broker_url(flow), secrets, "the flow's broker"))
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


def _state_of(assignment: dict[str, Any], flow: str) -> str:
    state = (assignment.get("state") or {}).get(flow)
    if not state:
        raise ElasticCodeError(f"the assignment gives no state store for flow {flow!r}")
    return str(state)


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
