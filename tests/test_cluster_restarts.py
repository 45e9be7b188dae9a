"""A broker restarted under a running network (PostgreSQL, a server, two agents): RabbitMQ,
Redis (one of the test's own that writes every message to disk) and NATS, each stopped
mid-stream and started again; every message arrives, none twice beyond at-least-once."""

from __future__ import annotations

import asyncio
import shutil
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


def _own_redis(folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """A redis-server of the test's own, persisting every write (appendfsync always)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    port = free_port()
    cmd = [
        *("redis-server", "--port", str(port), "--dir", str(folder), "--save", ""),
        *("--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"),
    ]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        ping = ["redis-cli", "-p", str(port), "ping"]
        deadline = time.monotonic() + 20
        while subprocess.run(ping, capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop() -> None:
        for p in procs:
            p.terminate()
            p.wait(20)

    start()
    return f"redis://127.0.0.1:{port}/0", start, stop


def _restarter(broker: str, folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """The broker's URL, how to restart it (stopped, then back a little later), and a
    clean-up."""
    if broker == "redis":
        url, start, stop = _own_redis(folder)

        def restart() -> None:
            stop()
            time.sleep(2)
            start()

        return url, restart, stop
    if broker == "rabbitmq":
        from .test_broker_rabbitmq import rabbitmqctl

        if shutil.which("rabbitmqctl") is None:
            unavailable("restarting RabbitMQ needs rabbitmqctl")

        def restart_rabbit() -> None:
            asyncio.run(rabbitmqctl("stop_app"))
            time.sleep(2)
            asyncio.run(rabbitmqctl("start_app"))

        return service_url("rabbitmq"), restart_rabbit, lambda: None
    from .test_broker_nats import restart_server

    return service_url("nats"), restart_server, lambda: None


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
