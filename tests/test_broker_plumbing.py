"""What every broker backend shares: URL options, secret masking and the retry loop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from elasticcode.brokers.retry import Retrying
from elasticcode.brokers.url import BrokerURL
from elasticcode.errors import BrokerError
from elasticcode.redact import mask, redact_url, secrets_of


def test_options_are_typed_bounded_and_say_what_they_take() -> None:
    url = BrokerURL("demo", "demo://u:p@h:1/?lease=2m&wait=3&fifo=yes&mode=b&extra=1")
    assert url.seconds("lease", 300) == 120
    assert url.seconds("retry_for", 30) == 30
    assert url.integer("wait", 0, low=0) == 3
    assert url.flag("fifo", False) is True
    assert url.choice("mode", "a", ("a", "b")) == "b"
    assert url.passed(reconnect="1") == "demo://u:p@h:1/?extra=1&reconnect=1"
    assert url.where("localhost", 9) == "h:1"
    bad = BrokerURL("demo", "demo://h/?lease=-1&wait=x&fifo=maybe&mode=c&n=9")
    with pytest.raises(BrokerError, match=r"demo broker: lease must be a number >= 0 seconds"):
        bad.seconds("lease", 1)
    with pytest.raises(BrokerError, match="wait must be a whole number, not 'x'"):
        bad.integer("wait", 0)
    with pytest.raises(BrokerError, match="fifo must be true or false, not 'maybe'"):
        bad.flag("fifo", False)
    with pytest.raises(BrokerError, match="mode must be a or b, not 'c'"):
        bad.choice("mode", "a", ("a", "b"))
    with pytest.raises(BrokerError, match="n must be a number from 1 to 5"):
        bad.number("n", 1, low=1, high=5)
    with pytest.raises(BrokerError, match=r"unknown option\(s\) \['colour'\]; known: lease"):
        BrokerURL("demo", "demo://h/?colour=red", known=("lease",))
    with pytest.raises(BrokerError, match="invalid port"):
        BrokerURL("demo", "demo://h:port/").where("h", 1)


def test_secrets_are_masked_in_urls_and_in_any_text() -> None:
    assert redact_url("amqp://guest:s3cr%2Ft@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert redact_url("https://ghp_token@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("postgresql://postgres@h/db") == "postgresql://postgres@h/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    found = secrets_of("sqs://KEY:s3cr%2Ft@h:1")
    assert "s3cr/t" in found and "s3cr%2Ft" in found and "KEY" not in found
    assert mask("error: s3cr/t refused", found) == "error: *** refused"
    assert secrets_of("nats://tok@h") == ["tok"]


def test_the_retry_loop_rides_out_transient_failures_then_gives_up() -> None:
    tries: list[int] = []
    logged: list[str] = []

    class Log(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    log = logging.getLogger("test.retry")
    log.addHandler(Log())

    def failed(what: str, exc: BaseException, gave_up: bool) -> BaseException:
        return BrokerError(f"{what} {'gave up' if gave_up else 'failed'}: {exc}")

    retrying = Retrying(
        "server at h", 0.5, lambda e: isinstance(e, OSError), failed, lambda t: str(t), log, 0.01
    )

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise OSError("connection refused: pw=hunter2")
        return "done"

    assert asyncio.run(retrying("fetch", flaky)) == "done"
    assert len(tries) == 3
    assert logged[0].startswith("server at h: fetch failed (connection refused")
    assert logged[-1] == "server at h: reachable again; fetch done"

    async def down() -> None:
        raise OSError("refused")

    with pytest.raises(BrokerError, match="fetch gave up: refused"):
        asyncio.run(retrying("fetch", down))

    async def broken() -> None:
        raise ValueError("bad input")

    with pytest.raises(BrokerError, match="fetch failed: bad input"):
        asyncio.run(retrying("fetch", broken))

    async def refused() -> None:
        raise BrokerError("queue 'q' does not exist")

    with pytest.raises(BrokerError, match="does not exist"):  # a BrokerError passes as it is
        asyncio.run(retrying("fetch", refused))
