"""A broker restarted under a running network (PostgreSQL, a server, two agents): RabbitMQ,
Redis and NATS (each one of the test's own that writes every message to disk), each stopped
mid-stream and started again; every message arrives, none twice beyond at-least-once."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .network import PIPELINE, Network, free_port, postgres_database
from .services import service_url, unavailable


@pytest.fixture
def pg() -> Iterator[str]:
    yield from postgres_database()


def _own_server(
    cmd: list[str], answers: Callable[[], bool], what: str
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Start a server of the test's own; return how to restart it (stopped, then back a
    little later) and how to stop it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while not answers():
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)

    def stop() -> None:
        for p in procs:
            p.terminate()
            p.wait(20)

    def restart() -> None:
        stop()
        time.sleep(2)
        start()

    start()
    return restart, stop


def _own_redis(folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """A redis-server of the test's own, persisting every write (appendfsync always)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    port = free_port()
    cmd = [
        *("redis-server", "--port", str(port), "--dir", str(folder), "--save", ""),
        *("--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"),
    ]
    ping = ["redis-cli", "-p", str(port), "ping"]
    restart, stop = _own_server(
        cmd, lambda: subprocess.run(ping, capture_output=True).stdout.strip() == b"PONG", "redis"
    )
    return f"redis://127.0.0.1:{port}/0", restart, stop


def _own_nats(folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """A nats-server of the test's own with JetStream on disk. Messages a fetch was answered
    with as the server went down reach no worker: the server hands them out again after the
    ack wait, kept short here so that the test sees them."""
    server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(server).exists():
        unavailable("nats-server is not installed")
    port = free_port()
    cmd = [server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(folder / "nats")]
    restart, stop = _own_server(cmd, lambda: _answers(port), "nats-server")
    return f"nats://127.0.0.1:{port}?ack_wait=30", restart, stop


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _restarter(broker: str, folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """The broker's URL, how to restart it (stopped, then back a little later), and a
    clean-up."""
    if broker == "redis":
        return _own_redis(folder)
    if broker == "nats":
        return _own_nats(folder)
    from .test_broker_rabbitmq import rabbitmqctl

    if shutil.which("rabbitmqctl") is None:
        unavailable("restarting RabbitMQ needs rabbitmqctl")

    def restart_rabbit() -> None:
        asyncio.run(rabbitmqctl("stop_app"))
        time.sleep(2)
        asyncio.run(rabbitmqctl("start_app"))

    return service_url("rabbitmq"), restart_rabbit, lambda: None


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq", "nats"])
def test_a_broker_restart_under_a_network_loses_nothing(
    tmp_path: Path, pg: str, broker: str
) -> None:
    url, restart, clean_up = _restarter(broker, tmp_path)
    net = Network(tmp_path, pg, url)
    try:
        net.start_server()
        net.start_agent("one", capacity=3)
        net.start_agent("two", capacity=3)
        net.cli("apply", str(net.flow_file(PIPELINE)))
        net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 60, "placement")
        sent = range(6000)
        net.send("a", sent[:3000])
        # mid-stream, every worker past its start (connected, and working)
        net.wait(lambda: len(net.delivered()) >= 300, 60, "the first messages at the sink")
        before = net.pids()
        started = time.monotonic()
        restart()
        back = time.monotonic() - started
        net.send("a", sent[3000:])
        seen = net.account(sent, timeout=240, label=f"{broker} restarted under a network")
        print(
            f"{broker} down and back in {back:.1f}s; {sum(seen.values()) - len(seen)} duplicate(s)"
        )
        assert net.pids() == before, "workers were restarted or moved because of the broker"
    finally:
        net.close()
        clean_up()
