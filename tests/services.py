"""Real services the tests talk to: each answers, or the test skips (locally) or fails (CI)."""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

#: name -> (host, port, URL the tests use, how to start it)
SERVICES = {
    "redis": ("127.0.0.1", 6379, "redis://127.0.0.1:6379/0", "redis-server --daemonize yes"),
    "rabbitmq": (
        "127.0.0.1",
        5672,
        "amqp://guest:guest@127.0.0.1:5672/",
        "rabbitmq-server -detached",
    ),
    "nats": ("127.0.0.1", 4222, "nats://127.0.0.1:4222", "nats-server -js"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip the test, or under CI=true fail it: CI must run every test."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def service_url(name: str) -> str:
    """The URL of a running service; skip (or, under CI=true, fail) when it does not answer."""
    if name == "sqs":
        return sqs_url()
    host, port, url, start = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=2):
            return os.environ.get(f"ELASTICCODE_TEST_{name.upper()}_URL", url)
    except OSError as exc:
        unavailable(f"{name} does not answer on {host}:{port} ({exc}); start it with `{start}`")
        raise  # not reached


_sqs: str | None = None


def sqs_url() -> str:
    """An SQS endpoint: ELASTICCODE_TEST_SQS_URL, else a local moto server that the tests start
    (once per session, on a free port, stopped when the tests end)."""
    global _sqs
    if url := os.environ.get("ELASTICCODE_TEST_SQS_URL"):
        return url
    if _sqs is not None:
        return _sqs
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        unavailable("the SQS tests need moto's server: pip install 'moto[sqs]' flask flask-cors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    atexit.register(server.terminate)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        unavailable(f"the local SQS server (moto) did not start; see {log.name}")
    _sqs = f"sqs://test:test@127.0.0.1:{port}?region=us-east-1&secure=false"
    return _sqs
