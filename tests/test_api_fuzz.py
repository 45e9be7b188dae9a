"""The server's API fuzzed from its own OpenAPI description (schemathesis): every operation
gets generated requests, valid and not, as the admin (so that they reach past the
credential check); none may answer with a server error, and the server is healthy
afterwards, with the flow deployed before still as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .network import Network, postgres_database
from .services import in_ci, service_url

FLOW = """
processors:
  - {name: a, code: steps:inc, instances: 1}
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: a, to: sink}
"""

TRIED: dict[str, int] = {}
#: per operation, the requests that got past the credential check (not 401)
ADMITTED: dict[str, int] = {}
#: logging out would revoke the fuzzer's own token: it has a test of its own
LEFT_OUT = {"POST /api/v1/auth/logout"}
#: operations that take another credential than a user's (a password, an enrolment token)
OTHER_CREDENTIALS = {"POST /api/v1/auth/login", "POST /api/v1/agents"}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    databases = postgres_database()
    db = next(databases)
    net = Network(tmp_path_factory.mktemp("api"), db, service_url("redis") + "?prefix=apifuzz")
    try:
        net.start_server()
        net.cli("apply", "--no-check", str(net.flow_file(FLOW)))
        yield net
    finally:
        net.close()
        for _ in databases:
            pass


def fuzz(operation: Any, url: str, token: str, failures: list[str]) -> None:
    """Generated requests for one operation; each 5xx answer is recorded."""
    name = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=50,
        deadline=None,
        derandomize=in_ci(),
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, timeout=30, headers={"authorization": f"Bearer {token}"})
        TRIED[name] = TRIED.get(name, 0) + 1
        ADMITTED[name] = ADMITTED.get(name, 0) + (response.status_code != 401)
        if response.status_code >= 500:
            failures.append(f"{name} answered {response.status_code}: {response.text[:300]}")
        assert response.status_code < 500

    with contextlib.suppress(AssertionError):  # recorded in failures, with the others
        check()


def test_no_request_gets_a_server_error(network: Network) -> None:
    """Every operation of the API, each with generated requests (schemathesis's strategies,
    run by hypothesis): valid and invalid data, none answered with a 5xx."""
    url = network.servers[0].url
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    for result in api.get_all_operations():
        operation = result.ok()
        if f"{operation.method.upper()} {operation.path}" not in LEFT_OUT:
            fuzz(operation, url, network.token, failures)
    assert not failures, "\n".join(sorted(set(failures))[:20])


def test_the_server_is_healthy_after_the_fuzzing(network: Network, tmp_path: Path) -> None:
    url = network.servers[0].url
    assert network.servers[0].alive()
    assert httpx.get(f"{url}/api/v1/health").json()["status"] == "ok"
    total = sum(TRIED.values())
    admitted = sum(ADMITTED.values())
    print(
        f"\nAPI fuzzing: {total} requests over {len(TRIED)} operations, {admitted} of them "
        "past the credential check; no server error"
    )
    assert total > 0 or not TRIED, "the fuzzing ran no case"
    shut = [name for name, n in ADMITTED.items() if not n and name not in OTHER_CREDENTIALS]
    assert not shut, f"every request of these answered 401: {shut}"
    assert network.api("GET", f"/flows/{network.flow_name}")["revision"] >= 1
