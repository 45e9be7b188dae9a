"""TLS on every connection, with a certificate authority made by the test (trustme): the API
over HTTPS (agents and the CLI verifying it, client certificates when the server asks),
Redis over TLS, and PostgreSQL with ``sslmode=verify-full``, each against a server of the
test's own, configured for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from elasticcode.brokers import Settlement, open_broker
from elasticcode.errors import BrokerError, StateError
from elasticcode.store import StateStore

from .network import ELASTICCODE, Network, free_port, network_for, postgres_database
from .services import unavailable


@dataclass
class Pki:
    """A test CA, a certificate for this host (127.0.0.1, localhost) and a client's."""

    root: Path
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("agent-one@elasticcode")
    paths = Pki(
        folder,
        folder / "ca.pem",
        folder / "cert.pem",
        folder / "key.pem",
        folder / "client.pem",
        folder / "client-key.pem",
        folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.cert))
    server.private_key_pem.write_to_path(str(paths.key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    trustme.CA().cert_pem.write_to_path(str(paths.other_ca))
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return paths


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    databases = postgres_database()
    network = network_for(tmp_path, "redis", next(databases))
    try:
        yield network
    finally:
        network.close()
        for _ in databases:
            pass


def test_the_api_over_https_verified_by_agents_and_the_cli(net: Network, pki: Pki) -> None:
    https = net.start_server(
        extra=["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)], scheme="https", ca=pki.ca
    )
    assert https.url.startswith("https://")
    # a client that does not know the CA refuses the server, and says what to do
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https.url}/api/v1/health")
    env = {**os.environ, **net.env, "ELASTICCODE_SERVER": https.url, "ELASTICCODE_CA": ""}
    refused = subprocess.run([ELASTICCODE, "flow", "list"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--ca FILE" in refused.stderr
    listed = subprocess.run(
        [ELASTICCODE, "flow", "list", "--ca", str(pki.ca)], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0, listed.stderr
    # an agent verifies it too, and runs a flow
    net.start_agent("one", capacity=3, extra=["--ca", str(pki.ca)])
    net.cli("apply", str(net.flow_file(PIPELINE_SMALL)), "--ca", str(pki.ca))
    net.wait(lambda: net.running({"a": 1, "b": 1, "sink": 1}), 30, "the flow over HTTPS")
    net.send("a", range(200))
    net.account(range(200), label="control plane over HTTPS")


def test_client_certificates_when_the_server_asks(net: Network, pki: Pki) -> None:
    server = net.start_server(
        extra=[
            *("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
            *("--tls-client-ca", str(pki.ca)),
        ],
        scheme="https",
        ca=pki.ca,
        client=(pki.client_cert, pki.client_key),
    )
    import ssl

    bare = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/api/v1/health", verify=bare)
    shown = ssl.create_default_context(cafile=str(pki.ca))
    shown.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert httpx.get(f"{server.url}/api/v1/health", verify=shown).status_code == 200
    net.start_agent("one", capacity=1, extra=["--ca", str(pki.ca)])


PIPELINE_SMALL = """
processors:
  - {name: a, code: steps:inc, instances: 1}
  - {name: b, code: steps:inc, instances: 1}
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: a, to: b}
  - {from: b, to: sink}
"""


# -- Redis over TLS ------------------------------------------------------------------------------
@pytest.fixture
def tls_redis(pki: Pki, tmp_path: Path) -> Iterator[int]:
    """A redis-server of the test's own, TLS only, on a free port."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key)),
            *("--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_over_tls_verified(tls_redis: int, pki: Pki) -> None:
    url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={pki.ca}"
    q = f"tls.{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        broker = open_broker(url)
        await broker.connect()
        try:
            await broker.declare([q, f"{q}.out"])
            await broker.publish([(q, b"over tls")])
            got = await broker.fetch([q], 10, "c", 2.0)
            assert [d.body for d in got] == [b"over tls"]
            await broker.settle(Settlement(publish=[(f"{q}.out", b"next")], ack=got))
            assert (await broker.depth([q, f"{q}.out"])) == {q: (0, 0), f"{q}.out": (1, 4)}
        finally:
            await broker.close()

    asyncio.run(go())
    wrong = open_broker(f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={pki.other_ca}&retry_for=0")
    with pytest.raises(BrokerError, match="certificate verify failed"):
        asyncio.run(wrong.connect())
    plain = open_broker(f"redis://127.0.0.1:{tls_redis}/0?retry_for=0")
    with pytest.raises(BrokerError):
        asyncio.run(plain.connect())


# -- PostgreSQL with verify-full -------------------------------------------------------------------
@pytest.fixture
def tls_postgres(pki: Pki) -> Iterator[int]:
    """A PostgreSQL cluster of the test's own (initdb), TLS required, on a free port."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins or shutil.which("runuser") is None:
        unavailable("the TLS test of PostgreSQL needs its binaries (initdb) and runuser")
    bindir = bins[-1]
    # a folder the postgres user may reach (pytest's are its owner's alone)
    tmp_path = Path(tempfile.mkdtemp(prefix="ec-pg-"))
    data = tmp_path / "pgdata"
    certs = tmp_path / "pgcerts"
    certs.mkdir()
    for name, path in (("server.crt", pki.cert), ("server.key", pki.key), ("root.crt", pki.ca)):
        shutil.copy(path, certs / name)
    shutil.chown(tmp_path, "postgres")
    for path in (certs, *certs.iterdir()):
        shutil.chown(path, "postgres")
    (certs / "server.key").chmod(0o600)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"ssl = on\nssl_cert_file = '{certs / 'server.crt'}'\n"
            f"ssl_key_file = '{certs / 'server.key'}'\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{tmp_path}'\n"
        )
    # over TCP: TLS or nothing
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n"
    )
    port = free_port()
    log = tmp_path / "postgres.log"
    subprocess.run(
        [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", f"-p {port}", "start", "-w"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield port
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
            capture_output=True,
        )
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_postgresql_with_verify_full(tls_postgres: int, pki: Pki, tmp_path: Path) -> None:
    base = f"postgresql://postgres@127.0.0.1:{tls_postgres}/postgres"
    good = f"{base}?sslmode=verify-full&sslrootcert={pki.ca}"
    done = subprocess.run(
        [ELASTICCODE, "db", "upgrade", "--db", good], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    store = StateStore(good)
    try:
        run_id, _ = store.start_run("over-tls")
        assert store.last_run("over-tls") == (run_id, "running")
    finally:
        store.close()
    with pytest.raises(StateError, match="certificate verify failed"):
        StateStore(f"{base}?sslmode=verify-full&sslrootcert={pki.other_ca}")
    with pytest.raises(StateError):  # the server takes no connection without TLS
        StateStore(f"{base}?sslmode=disable")
    # the whole control plane on it: each flow's workers get a role, over verify-full too
    net = Network(tmp_path / "net", good, "redis://127.0.0.1:6379/0?prefix=pgtls")
    try:
        net.root.mkdir()
        net.start_server()
        net.start_agent("one", capacity=3)
        net.cli("apply", str(net.flow_file(PIPELINE_SMALL)))
        net.wait(lambda: net.running({"a": 1, "b": 1, "sink": 1}), 30, "the flow")
        net.send("a", range(100))
        net.account(range(100), label="state store over verify-full")
        worker_log = next((net.root / "agent-one" / "logs").glob("*sink-0.log")).read_text()
        assert "Traceback" not in worker_log
    finally:
        net.close()


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")
