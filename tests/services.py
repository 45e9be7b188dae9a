"""Real services the tests talk to: each answers, or the test skips (locally) or fails (CI)."""

from __future__ import annotations

import os
import socket

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


def service_url(name: str) -> str:
    """The URL of a running service; skip (or, under CI=true, fail) when it does not answer."""
    host, port, url, start = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=2):
            return os.environ.get(f"ELASTICCODE_TEST_{name.upper()}_URL", url)
    except OSError as exc:
        reason = f"{name} does not answer on {host}:{port} ({exc}); start it with `{start}`"
        if in_ci():
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
