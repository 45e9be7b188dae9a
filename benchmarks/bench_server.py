"""A real server on a fresh PostgreSQL database, for the benchmarks that need one
(``network.py``, ``ui.py``); the database is dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa

from elasticcode.store.schema import engine_url

ELASTICCODE = str(Path(sys.executable).with_name("elasticcode"))


@contextlib.contextmanager
def bench_server(admin_db: str, port: int, password: str, *extra: str) -> Iterator[str]:
    """Run a server (first user admin with ``password``) and yield its base URL."""
    name = f"ec_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(engine_url(admin_db), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {name}"))
    url = admin_db.rsplit("/", 1)[0] + f"/{name}"
    server = None
    try:
        subprocess.run([ELASTICCODE, "db", "upgrade", "--db", url], check=True, capture_output=True)
        log = open(f"/tmp/{name}-server.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [ELASTICCODE, "server", "start", "--db", url, "--broker", "redis://127.0.0.1:6379/0",
             "--port", str(port), *extra],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "ELASTICCODE_LOG": "WARNING", "ELASTICCODE_ADMIN_PASSWORD": password},
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/api/v1/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        print(f"server log: {log.name}")
        yield base
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        with admin.connect() as db:
            db.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
