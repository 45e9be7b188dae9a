"""Agents on hosts of their own: each in a network namespace with its own address, joined to
the test's own bridge. One host is cut off the network and healed; its instances move, nothing
is lost, and after the heal no instance runs twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .network import PIPELINE as ONE_B
from .network import Network, free_port, postgres_database
from .services import service_url, unavailable

pytestmark = pytest.mark.slow

PIPELINE = ONE_B.replace(
    "name: b, code: steps:inc, instances: 1", "name: b, code: steps:inc, instances: 2"
)


def ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(cmd, check=True, capture_output=True)


class Hosts:
    """A bridge with an address of the test's own, and namespaces ("hosts") on it."""

    def __init__(self, count: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.net = f"10.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self.address = f"{self.net}.1"
        self.bridge = f"ecbr{tag}"
        self.names = [f"ec{tag}h{i}" for i in range(count)]
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.names):
            ip("netns", "add", ns)
            outside, inside = f"ecv{tag}{i}", f"eci{tag}{i}"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", ns)
            ip("link", "set", outside, "master", self.bridge)
            ip("link", "set", outside, "up")
            ip("addr", "add", f"{self.net}.{10 + i}/24", "dev", inside, ns=ns)
            ip("link", "set", inside, "up", ns=ns)
            ip("link", "set", "lo", "up", ns=ns)
        self.links = {ns: f"eci{tag}{i}" for i, ns in enumerate(self.names)}

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def cut(self, ns: str) -> None:
        ip("link", "set", self.links[ns], "down", ns=ns)

    def heal(self, ns: str) -> None:
        ip("link", "set", self.links[ns], "up", ns=ns)

    def remove(self) -> None:
        for ns in self.names:
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "delete", ns)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "delete", self.bridge)


class Forward:
    """A TCP forwarder from the bridge's address to a service on loopback (PostgreSQL), so
    that workers on the hosts reach it through the test's own network."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.port = free_port(host)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                tr, tw = await asyncio.open_connection(*target)
            except OSError:
                w.close()
                return
            await asyncio.gather(pipe(r, tw), pipe(tr, w))

        async def serve() -> None:
            self.server = await asyncio.start_server(handle, host, self.port)
            ready.set()

        def run() -> None:
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        unavailable("network namespaces need root and iproute2 (`ip`)")
    if shutil.which("redis-server") is None:
        unavailable("the test runs a Redis of its own on its bridge: install redis-server")
    h = Hosts(3)
    try:
        yield h
    finally:
        h.remove()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_host_cut_off_the_network_then_healed(hosts: Hosts, tmp_path: Path, broker: str) -> None:
    redis = rabbit = None
    if broker == "redis":  # a Redis of the test's own, on its bridge
        port = free_port(hosts.address)
        redis = subprocess.Popen(
            ["redis-server", "--bind", hosts.address, "--port", str(port), "--save", "",
             "--appendonly", "no", "--requirepass", "netns-secret"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        broker_url = f"redis://:netns-secret@{hosts.address}:{port}/0"
    else:  # the machine's RabbitMQ, reached through the bridge; a lost host shows by heartbeat
        amqp = urlsplit(service_url("rabbitmq"))
        rabbit = Forward(hosts.address, (amqp.hostname or "127.0.0.1", amqp.port or 5672))
        broker_url = (
            f"amqp://{amqp.username}:{amqp.password}@{hosts.address}:{rabbit.port}/?heartbeat=5"
        )
    pg_gen = postgres_database()
    db = next(pg_gen)
    forward = Forward(hosts.address, ("127.0.0.1", 5432))
    worker_db = db.replace("127.0.0.1:5432", f"{hosts.address}:{forward.port}")
    net = Network(tmp_path, db, broker_url)
    try:
        net.start_server(host=hosts.address, extra=["--worker-db", worker_db])
        for i, ns in enumerate(hosts.names):
            net.start_agent(f"h{i}", capacity=3, prefix=hosts.prefix(ns))
        net.cli("apply", str(net.flow_file(PIPELINE)))
        net.wait(lambda: net.running({"a": 3, "b": 2, "sink": 1}), 40, "placement")
        hosts_of_a = {r["agent"] for r in net.workers() if r["processor"] == "a"}
        assert hosts_of_a == {"h0", "h1", "h2"}
        victim = next(r["agent"] for r in net.workers() if r["processor"] == "b")
        victim_ns = hosts.names[int(victim[1:])]
        sent = range(6000)
        net.send("a", sent[:3000])
        net.wait(lambda: len(net.delivered()) > 200, 30, "messages flowing")
        hosts.cut(victim_ns)
        net.send("a", sent[3000:])
        took = net.wait(
            lambda: (
                net.running({"a": 3, "b": 2, "sink": 1})
                and victim not in {r["agent"] for r in net.workers()}
            ),
            40,
            "the cut host's instances to run elsewhere",
        )
        print(f"host {victim} cut off: its instances run elsewhere after {took:.1f}s")
        net.account(sent, timeout=90, label=f"host cut off the network, {broker}")
        hosts.heal(victim_ns)
        back = net.wait(
            lambda: {a["name"]: a for a in net.api("GET", "/agents")}[victim]["status"] == "up",
            60,
            "the healed host's agent to be back",
        )

        def single_owners() -> bool:
            owners: dict[tuple[str, int], list[str]] = {}
            for a in net.api("GET", "/agents"):
                for w in a["workers"]:
                    if not w.get("retiring") and w.get("pid"):
                        owners.setdefault((w["processor"], w["instance"]), []).append(a["name"])
            return all(len(v) == 1 for v in owners.values()) and len(owners) == 6

        settled = net.wait(single_owners, 30, "every instance to have one owner")
        print(
            f"host {victim} healed: back after {back:.1f}s, one owner per instance {settled:.1f}s later"
        )
        more = range(6000, 7000)
        net.send("a", more)
        net.account(range(7000), timeout=60, label="after the heal")
    finally:
        net.close()
        forward.close()
        if rabbit is not None:
            rabbit.close()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        with contextlib.suppress(StopIteration):
            next(pg_gen)
