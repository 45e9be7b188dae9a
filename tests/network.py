"""An ElasticCode network on this machine for the tests: a fresh PostgreSQL database, servers
and agents as real processes (``elasticcode server start`` / ``agent start``), and a sink
that records every message it sees, so that each test can account for every message."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from elasticcode.flow import Flow
from elasticcode.local import queues as control

from .services import service_url, unavailable

ELASTICCODE = str(Path(sys.executable).with_name("elasticcode"))
PG_ADMIN = os.environ.get(
    "ELASTICCODE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

STEPS = """
import os
import time

OUT = {out!r}

def inc(payload):
    return {{**payload, "hops": payload.get("hops", 0) + 1}}

def slow(payload):
    time.sleep(0.003)
    return payload

def sink(payload, ctx):
    line = f"{{payload['n']}} {{os.getpid()}} {{payload.get('version', '-')}}\\n"
    fd = os.open(os.path.join(OUT, "sink.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
"""

#: A three-stage flow of the tests' steps (a → b → sink).
PIPELINE = """
processors:
  - {name: a, code: steps:inc, instances: 3}
  - {name: b, code: steps:inc, instances: 1}
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: a, to: b}
  - {from: b, to: sink}
"""


#: A processor that fails on 3 (dead-lettered) until the file ``fixed`` exists.
PICKY = """
import os

def picky(payload):
    if payload["n"] == 3 and not os.path.exists({fixed!r}):
        raise ValueError("three is odd")
    return payload
"""


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); skips (fails in CI) without one."""
    import sqlalchemy as sa

    from elasticcode.store.schema import engine_url

    name = f"ec_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(
            engine_url(PG_ADMIN), isolation_level="AUTOCOMMIT", pool_pre_ping=True
        )
        with admin.connect() as db:
            db.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        unavailable(f"PostgreSQL does not answer at {PG_ADMIN} ({exc.orig})")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as db:
            db.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self, with_children: bool = True) -> list[int]:
        """kill -9 the process (and, as a lost host would, every worker it started)."""
        pids = _children(self.process.pid) if with_children else []
        for pid in [self.process.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        return pids

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@dataclass
class Network:
    root: Path
    db: str
    broker: str
    agent_timeout: float = 3.0
    lease: float = 2.0
    servers: list[Proc] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)
    #: a command prefix for processes of another network namespace (see test_netns)
    env: dict[str, str] = field(default_factory=dict)
    #: the first user's password, and the token of its login (see ``login``)
    password: str = field(default_factory=lambda: uuid.uuid4().hex)
    token: str = ""
    enrol: str = ""
    #: the servers' secret key (broker passwords are secrets: a flow holds none in the clear)
    secret_key: str = field(default_factory=lambda: _fernet_key())

    def __post_init__(self) -> None:
        self.flow_name = f"net{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [ELASTICCODE, "db", "upgrade", "--db", self.db], check=True, capture_output=True
        )
        # the tests' own configuration folder: no login of theirs lands in the user's
        self.env.setdefault("ELASTICCODE_CONFIG_DIR", str(self.root / "config"))

    # -- processes ---------------------------------------------------------------------------
    def start_server(
        self,
        host: str = "127.0.0.1",
        extra: list[str] | None = None,
        scheme: str = "http",
        ca: Path | None = None,
        client: tuple[Path, Path] | None = None,
    ) -> Proc:
        """A server; over HTTPS (``scheme``), verified with ``ca``, showing the client
        certificate ``client`` (cert, key) where it asks for one."""
        if ca is not None:
            self.env["ELASTICCODE_CA"] = str(ca)
        if client is not None:
            self.env["ELASTICCODE_CLIENT_CERT"], self.env["ELASTICCODE_CLIENT_KEY"] = map(
                str, client
            )
        port = free_port(host)
        log = self.root / f"server-{len(self.servers)}.log"
        cmd = [
            ELASTICCODE, "server", "start", "--db", self.db, "--broker", self.server_broker,
            "--host", host, "--port", str(port),
            "--agent-timeout", str(self.agent_timeout), "--lease", str(self.lease),
            *(["--insecure-plain-http"] if host != "127.0.0.1" and scheme == "http" else []),
            *(extra or []),
        ]  # fmt: skip
        env = {
            "ELASTICCODE_ADMIN_PASSWORD": self.password,
            "ELASTICCODE_SECRET_KEY": self.secret_key,
        }
        proc = Proc(
            f"server-{len(self.servers)}",
            self._spawn(cmd, log, env),
            log,
            f"{scheme}://{host}:{port}",
        )
        self.servers.append(proc)
        self.wait(lambda: self._answers(proc.url), 20, f"server {proc.url} to answer ({log})")
        if not self.token:
            self.login(proc.url)
        return proc

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def login(self, url: str) -> None:
        """Log in as the first user (admin), and make a token that enrols the tests' agents."""
        reply = httpx.post(
            f"{url}/api/v1/auth/login",
            json={"user": "admin", "password": self.password},
            timeout=30,
            verify=self.verify,
        )
        reply.raise_for_status()
        self.token = reply.json()["token"]
        self.env["ELASTICCODE_TOKEN"] = self.token
        self.enrol = self.api("POST", "/agents/enrolment-tokens", json={"uses": None})["token"]
        password = urlsplit(self.broker).password
        if password:
            self.api("PUT", "/secrets/TEST_BROKER_PASSWORD", json={"value": unquote(password)})

    @property
    def server_broker(self) -> str:
        """The broker URL as the servers give it to flows: its password a secret."""
        password = urlsplit(self.broker).password
        if not password:
            return self.broker
        return self.broker.replace(f":{password}@", ":${secret:TEST_BROKER_PASSWORD}@", 1)

    def start_agent(
        self,
        name: str,
        capacity: int = 3,
        labels: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        servers: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> Proc:
        log = self.root / f"agent-{name}.log"
        cmd = [
            *(prefix or []),
            ELASTICCODE,
            "agent",
            "start",
            "--name",
            name,
            "--host-name",
            f"host-{name}",
        ]
        for url in servers or [s.url for s in self.servers]:
            cmd += ["--server", url]
        cmd += ["--max-workers", str(capacity), "--state-dir", str(self.root / f"agent-{name}")]
        cmd += ["--enrol-token", self.enrol, *(extra or [])]
        for k, v in (labels or {}).items():
            cmd += ["--label", f"{k}={v}"]
        proc = Proc(name, self._spawn(cmd, log), log)
        self.agents[name] = proc
        self.wait(
            lambda: any(
                a["name"] == name and a["status"] == "up" for a in self.api("GET", "/agents")
            ),
            20,
            f"agent {name} to register ({log})",
        )
        return proc

    def _spawn(
        self, cmd: list[str], log: Path, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:  # the process keeps its own copy of the file
            return subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env, **(extra or {})},
            )

    def close(self) -> None:
        for proc in [*self.agents.values(), *self.servers]:
            proc.stop()

    # -- the API -----------------------------------------------------------------------------
    @property
    def verify(self) -> Any:
        """How the tests' own calls check the servers (as the CLI would, with the same env)."""
        from elasticcode.network.client import verify

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return verify(self.env.get("ELASTICCODE_CA"))
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _answers(self, url: str) -> bool:
        try:
            return (
                httpx.get(f"{url}/api/v1/health", timeout=2, verify=self.verify).status_code == 200
            )
        except httpx.TransportError:
            return False

    def api(self, method: str, path: str, **kw: Any) -> Any:
        """Call any live server (the first that answers)."""
        last: Exception | None = None
        for s in self.servers:
            if not s.alive():
                continue
            try:
                resp = httpx.request(
                    method,
                    f"{s.url}/api/v1{path}",
                    headers=self.headers,
                    timeout=30,
                    verify=self.verify,
                    **kw,
                )
            except httpx.TransportError as exc:
                last = exc
                continue
            resp.raise_for_status()
            return resp.json()
        raise AssertionError(f"no server answers: {last}")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        server = next(s.url for s in self.servers if s.alive())
        done = subprocess.run(
            [ELASTICCODE, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env, "ELASTICCODE_SERVER": server},
            cwd=self.root,
        )
        if check:
            assert done.returncode == 0, f"elasticcode {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def wait(self, ok: Callable[[], Any], timeout: float, what: str) -> float:
        """Wait until ``ok()``; return how long it took."""
        start = time.monotonic()
        while True:
            try:
                if ok():
                    return time.monotonic() - start
            except (httpx.HTTPError, AssertionError, KeyError):
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(f"gave up after {timeout}s waiting for {what}")
            time.sleep(0.1)

    # -- flows and messages ---------------------------------------------------------------------
    def picky(self) -> Path:
        """Write the module ``picky`` (see ``PICKY``); return the file that fixes it."""
        fixed = self.root / "fixed"
        (self.root / "picky.py").write_text(PICKY.format(fixed=str(fixed)))
        return fixed

    def flow_file(self, body: str) -> Path:
        (self.root / "steps.py").write_text(STEPS.format(out=str(self.root)))
        path = self.root / "flow.yaml"
        path.write_text(f"name: {self.flow_name}\n" + textwrap.dedent(body))
        return path

    def deploy(self, body: str, counts: dict[str, int], what: str = "the flow to run") -> Path:
        """Write the flow file, apply it, and wait until it runs ``counts`` instances."""
        flow = self.flow_file(body)
        self.cli("apply", str(flow))
        self.wait(lambda: self.running(counts), 60, what)
        return flow

    def workers(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api("GET", "/workers", params={"flow": self.flow_name})
        return rows

    def running(self, counts: dict[str, int]) -> bool:
        """Every processor named runs that many instances, all up, nothing pending."""
        rows = self.workers()
        for proc, n in counts.items():
            mine = [r for r in rows if r["processor"] == proc]
            if len(mine) != n or not all(r["state"] == "running" and r["pid"] for r in mine):
                return False
        return True

    def pids(self) -> dict[tuple[str, int], int]:
        return {(r["processor"], r["instance"]): r["pid"] for r in self.workers()}

    def send(self, target: str, numbers: range, flow_file: Path | None = None) -> None:
        flow = Flow.load(flow_file or self.root / "flow.yaml")
        payloads = ({"n": n} for n in numbers)
        control.send(flow, target, payloads, broker=self.broker)

    def delivered(self) -> Counter[int]:
        path = self.root / "sink.log"
        if not path.exists():
            return Counter()
        return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)

    def versions(self, numbers: range) -> set[str]:
        """The code versions (the ``version`` field) the sink saw on these numbers."""
        path = self.root / "sink.log"
        want = set(numbers)
        return {
            line.split()[2]
            for line in path.read_text().splitlines()
            if line and int(line.split()[0]) in want
        }

    def account(self, sent: range, timeout: float = 60.0, label: str = "") -> Counter[int]:
        """Wait until every sent number reached the sink; print and check the accounting."""
        want = set(sent)
        try:
            self.wait(
                lambda: want <= set(self.delivered()), timeout, f"{len(want)} messages at the sink"
            )
        finally:
            seen = self.delivered()
            lost = len(want - set(seen))
            dups = sum(c - 1 for n, c in seen.items() if c > 1)
            print(f"accounting{f' ({label})' if label else ''}: sent {len(want)} / delivered "
                  f"{len(set(seen) & want)} / duplicates {dups} / lost {lost}")  # fmt: skip
        assert lost == 0
        return seen


def redis_network(tmp_path: Path) -> Iterator[Network]:
    """A network on Redis and a fresh PostgreSQL database, closed afterwards (a fixture's
    body: ``yield from redis_network(tmp_path)``)."""
    for db in postgres_database():
        n = network_for(tmp_path, "redis", db)
        try:
            yield n
        finally:
            n.close()


def add_user(net: Network, name: str, role: str, flows: str = "*") -> str:
    """A user with ``role`` on ``flows``; return the token of its login."""
    password = f"pw-{name}-0123456789"
    net.api("POST", "/users", json={"name": name, "password": password})
    net.api("POST", f"/users/{name}/grants", json={"role": role, "flows": flows})
    url = net.servers[0].url
    reply = httpx.post(f"{url}/api/v1/auth/login", json={"user": name, "password": password})
    reply.raise_for_status()
    token: str = reply.json()["token"]
    return token


def network_for(tmp_path: Path, broker_name: str, db: str, **kw: Any) -> Network:
    broker = service_url(broker_name)
    if broker_name == "redis":
        broker += f"?prefix=t{uuid.uuid4().hex[:8]}"
    return Network(tmp_path, db, broker, **kw)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
