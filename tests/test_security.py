"""Who may do what in a network: every route of the API (and the event stream) walked as
anonymous, as each built-in role, as a developer of other flows and as an agent; deploying
code as its own privilege; what a worker's environment and database role reach; secrets
that never come back; the audit log; logins, their limit and the CLI's credential file;
the checks on hosts, origins and sizes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from elasticcode.network.server import ServerSettings, create_app
from elasticcode.network.server.app import privilege_table, routes

from .network import ELASTICCODE, Network, add_user, network_for, postgres_database

#: Every route of the API and the privilege it needs (None: no credential). A route added
#: without an entry here, or with another privilege than here, fails the first test.
ROUTES: dict[str, str | None] = {
    "GET /api/v1/health": None,
    "GET /api/v1/status": "agent.read",
    "POST /api/v1/auth/login": None,
    "POST /api/v1/auth/logout": "user",
    "GET /api/v1/auth/whoami": "user",
    "GET /api/v1/flows": "user",  # lists only the flows the caller may read
    "POST /api/v1/flows": "user",  # then flow.deploy (and code.deploy) on the document's flow
    "GET /api/v1/flows/{name}": "flow.read",
    "GET /api/v1/flows/{name}/export": "flow.read",
    "GET /api/v1/flows/{name}/metrics": "flow.read",
    "GET /api/v1/flows/{name}/stats": "flow.read",
    "GET /api/v1/flows/{name}/trace/{message_id}": "flow.read",
    "GET /api/v1/flows/{name}/dead-letters": "flow.operate",  # message data
    "POST /api/v1/flows/{name}/dead-letters/replay": "flow.operate",
    "GET /api/v1/flows/{name}/results/{key}": "flow.operate",  # message data
    "GET /api/v1/metrics": "user",  # only the flows the caller may read
    "DELETE /api/v1/flows/{name}": "flow.remove",
    "POST /api/v1/flows/{name}/start": "flow.operate",
    "POST /api/v1/flows/{name}/stop": "flow.operate",
    "GET /api/v1/flows/{name}/revisions": "flow.read",
    "POST /api/v1/flows/{name}/rollback": "flow.deploy",
    "GET /api/v1/flows/{name}/processors": "flow.read",
    "POST /api/v1/flows/{name}/processors": "flow.deploy",
    "PATCH /api/v1/flows/{name}/processors/{processor}": "flow.deploy",
    "DELETE /api/v1/flows/{name}/processors/{processor}": "flow.deploy",
    "POST /api/v1/flows/{name}/processors/{processor}/scale": "flow.operate",
    "POST /api/v1/flows/{name}/processors/{processor}/{action}": "flow.operate",
    "GET /api/v1/flows/{name}/connections": "flow.read",
    "POST /api/v1/flows/{name}/connections": "flow.deploy",
    "DELETE /api/v1/flows/{name}/connections": "flow.deploy",
    "GET /api/v1/agents": "agent.read",
    "POST /api/v1/agents": "enrol",
    "POST /api/v1/agents/enrolment-tokens": "agent.manage",
    "DELETE /api/v1/agents/{agent_id}": "agent.manage",
    "POST /api/v1/agents/{agent_id}/heartbeat": "agent.self",
    "GET /api/v1/agents/{agent_id}/assignment": "agent.self",
    "GET /api/v1/workers": "user",  # only the flows the caller may read
    "GET /api/v1/events": "user",  # only the flows the caller may read
    "GET /api/v1/audit": "audit.read",
    "GET /api/v1/users": "user.read",
    "POST /api/v1/users": "user.manage",
    "DELETE /api/v1/users/{user}": "user.manage",
    "PUT /api/v1/users/{user}/password": "user",  # one's own; anyone's with user.manage
    "POST /api/v1/users/{user}/grants": "user.manage",
    "DELETE /api/v1/users/{user}/grants": "user.manage",
    "GET /api/v1/roles": "user.read",
    "POST /api/v1/roles": "role.manage",
    "DELETE /api/v1/roles/{role}": "role.manage",
    "GET /api/v1/tokens": "user",
    "POST /api/v1/tokens": "user",
    "DELETE /api/v1/tokens/{token_id}": "user",  # one's own; anyone's with user.manage
    "GET /api/v1/secrets": "secret.manage",
    "PUT /api/v1/secrets/{secret}": "secret.manage",
    "DELETE /api/v1/secrets/{secret}": "secret.manage",
}
#: What the built-in roles hold, as the documentation says.
VIEWER = {"flow.read", "agent.read"}
OPERATOR = VIEWER | {"flow.operate"}
DEVELOPER = OPERATOR | {"flow.deploy", "code.deploy", "flow.remove"}
ADMIN = DEVELOPER | {
    "agent.manage",
    "secret.manage",
    "user.read",
    "user.manage",
    "role.manage",
    "audit.read",
}
ROLE = {"viewer": VIEWER, "operator": OPERATOR, "developer": DEVELOPER, "admin": ADMIN}
FLOW_WIDE = {"flow.read", "flow.operate", "flow.deploy", "code.deploy", "flow.remove"}
A, B = "team-a-one", "team-b-one"
STEPS_FLOW = """
processors:
  - {name: a, code: steps:inc, instances: 1}
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: a, to: sink}
"""


@pytest.fixture
def db() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture
def net(tmp_path: Path, db: str) -> Iterator[Network]:
    network = network_for(tmp_path, "redis", db)
    try:
        yield network
    finally:
        network.close()


def document(name: str, net: Network) -> dict[str, Any]:
    net.flow_file(STEPS_FLOW)
    return {
        "name": name,
        "path": [str(net.root)],
        "processors": [
            {"name": "a", "code": "steps:inc", "instances": 1},
            {"name": "sink", "code": "steps:sink", "instances": 1},
        ],
        "connections": [{"from": "a", "to": "sink"}],
    }


def test_every_route_declares_the_privilege_it_needs(db: str) -> None:
    declared = {f"{m} {path}": p for m, path, p in routes() if m != "WS"}
    assert declared == ROUTES
    assert [r for r in routes() if r[0] == "WS"] == [
        ("WS", "/api/v1/stream", "user"),
        ("WS", "/api/v1/metrics/stream", "user"),
    ]
    # the documentation's table says the same
    docs = Path(__file__).parents[1] / "docs" / "security.md"
    assert privilege_table() in docs.read_text(), (
        "docs/security.md's table of routes is not the code's: put in the output of "
        "python -c 'from elasticcode.network.server.app import privilege_table as t; print(t())'"
    )
    # and the app serves exactly these
    subprocess.run([ELASTICCODE, "db", "upgrade", "--db", db], check=True, capture_output=True)
    served = create_app(ServerSettings(db=db)).openapi()["paths"]
    operations = {f"{m.upper()} {path}" for path, ops in served.items() for m in ops}
    assert operations == set(ROUTES)


def test_every_route_answers_each_caller_as_its_privilege_says(net: Network) -> None:
    server = net.start_server()
    url = f"{server.url}/api/v1"
    for flow in (A, B):
        net.api("POST", "/flows", json={"document": document(flow, net)})
    net.start_agent("one", capacity=2)
    saved = net.root / "agent-one" / "agent.json"  # written just after it registered
    net.wait(saved.exists, 10, f"the agent to save {saved}")
    agent = json.loads(saved.read_text())
    callers: dict[str, tuple[str | None, set[str], str]] = {
        "anonymous": (None, set(), ""),
        "agent": (agent["token"], set(), ""),
        "admin": (net.token, ADMIN, "*"),
    }
    for role in ("viewer", "operator", "developer"):
        callers[role] = (add_user(net, f"{role}-user", role), ROLE[role], "*")
    callers["dev-of-a"] = (add_user(net, "dev-of-a", "developer", "team-a-*"), DEVELOPER, "a")

    def allowed(caller: str, route: str, flow: str) -> bool:
        token, privileges, scope = callers[caller]
        need = ROUTES[route]
        if need is None:
            return True
        if token is None:
            return False
        if need == "agent.self":
            return caller == "agent"
        if need == "enrol":
            return caller == "agent"
        if caller == "agent":
            return False
        if route == "POST /api/v1/flows":
            need = "flow.deploy"
        if route == "PUT /api/v1/users/{user}/password":
            need = "user.manage"  # the walk sets another user's
        if route == "DELETE /api/v1/tokens/{token_id}":
            return True  # an unknown token: 404 to anyone, before whose it is matters
        if need == "user":
            return True
        if scope == "a" and need in FLOW_WIDE:
            return need in privileges and flow == A
        return need in privileges and (scope == "*")

    params = {
        "{name}": None,
        "{processor}": "a",
        "{action}": "pause",
        "{agent_id}": agent["id"],
        "{user}": "nobody",
        "{role}": "no-such-role",
        "{token_id}": "0123456789abcdef",
        "{secret}": "WALKED",
        "{key}": "no-such-result",
    }
    bodies: dict[str, Any] = {
        "POST /api/v1/flows": None,  # the flow's document, below
        "POST /api/v1/flows/{name}/rollback": {"revision": 1},
        "POST /api/v1/flows/{name}/dead-letters/replay": {"all": True},
        "POST /api/v1/flows/{name}/processors/{processor}/scale": {"instances": 1},
        "POST /api/v1/flows/{name}/connections": {"from": "a", "to": "sink"},
        "PATCH /api/v1/flows/{name}/processors/{processor}": {"prefetch": 50},
        "POST /api/v1/auth/login": {"user": "admin", "password": net.password},
        "PUT /api/v1/users/{user}/password": {"password": "long-enough-1"},
        "POST /api/v1/users/{user}/grants": {"role": "viewer"},
        "POST /api/v1/users": {"name": "walked-user"},
        "POST /api/v1/roles": {"name": "walked", "privileges": ["flow.read"]},
        "POST /api/v1/tokens": {"name": "walked"},
        "PUT /api/v1/secrets/{secret}": {"value": "v"},
        "POST /api/v1/agents/enrolment-tokens": {},
        "POST /api/v1/agents/{agent_id}/heartbeat": {"applied": 0},
        "POST /api/v1/agents": {
            "id": agent["id"], "name": "one", "host": "host-one", "cores": 1, "memory": 0,
            "capacity": 2,
        },
    }  # fmt: skip
    destructive = (
        "DELETE /api/v1/flows/{name}",
        "POST /api/v1/auth/logout",
        "DELETE /api/v1/agents/{agent_id}",
    )
    wrong: list[str] = []
    order = sorted(ROUTES, key=lambda r: r in destructive)
    for route in order:
        method, path = route.split(" ", 1)
        for caller, (token, _, _) in callers.items():
            for flow in (A, B) if "{name}" in path else (A,):
                if route == "POST /api/v1/auth/logout" and token is not None:
                    token = _fresh(net, caller, callers)  # logging out revokes: another one
                target = path
                for key, value in params.items():
                    target = target.replace(key, value or flow)
                body = bodies.get(route)
                if route == "POST /api/v1/flows":
                    body = {"document": document(flow, net)}
                if route == "DELETE /api/v1/flows/{name}/connections":
                    target += "?from=a&to=sink"
                headers = {"authorization": f"Bearer {token}"} if token else {}
                answer = httpx.request(
                    method, f"{server.url}{target}", json=body, headers=headers, timeout=30
                )
                got = answer.status_code not in (401, 403)
                if got != allowed(caller, route, flow):
                    wrong.append(
                        f"{caller} {method} {target}: {answer.status_code} {answer.text[:120]}"
                    )
                if answer.status_code >= 500:
                    wrong.append(f"{caller} {method} {target}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)
    # lists show only what the caller may read
    a_token = callers["dev-of-a"][0]
    assert a_token is not None
    seen = httpx.get(f"{url}/flows", headers={"authorization": f"Bearer {a_token}"}).json()
    assert {f["name"] for f in seen} <= {A}


def _fresh(net: Network, caller: str, callers: dict[str, Any]) -> str | None:
    """A new token for ``caller`` (for a logout that revokes it)."""
    if caller == "admin":
        reply = httpx.post(
            f"{net.servers[0].url}/api/v1/auth/login",
            json={"user": "admin", "password": net.password},
        )
        return str(reply.json()["token"])
    if caller in ("agent", "anonymous"):
        token: str | None = callers[caller][0]
        return token
    name = "dev-of-a" if caller == "dev-of-a" else f"{caller}-user"
    reply = httpx.post(
        f"{net.servers[0].url}/api/v1/auth/login",
        json={"user": name, "password": f"pw-{name}-0123456789"},
    )
    return str(reply.json()["token"])


def test_the_event_stream_wants_a_credential(net: Network) -> None:
    import websockets.sync.client
    from websockets.exceptions import ConnectionClosed

    server = net.start_server()
    ws_url = server.url.replace("http", "ws") + "/api/v1/stream"
    with websockets.sync.client.connect(ws_url, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with websockets.sync.client.connect(f"{ws_url}?token={net.token}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    # the metrics stream: a credential, and a flow the caller may read
    metrics_url = server.url.replace("http", "ws") + "/api/v1/metrics/stream"
    viewer = add_user(net, "viewer", "viewer", flows="b*")
    for query, code in ((f"?flow={A}", 4401), (f"?flow={A}&token={viewer}", 4403)):
        with websockets.sync.client.connect(metrics_url + query, open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    with websockets.sync.client.connect(f"{metrics_url}?token={viewer}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    # a socket open when its token is revoked is closed, on both streams, within seconds
    for url in (ws_url, metrics_url):
        made = net.api("POST", "/tokens", json={"name": "for a socket"})
        with websockets.sync.client.connect(f"{url}?token={made['token']}") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            net.api("DELETE", f"/tokens/{made['id']}")
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # views and events may come first
                    ws.recv(timeout=20)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
            assert "no longer valid" in closed.value.rcvd.reason


def test_deploying_code_is_a_privilege_of_its_own(net: Network) -> None:
    """Anonymous: refused. A user who may change a flow but not deploy code: may change its
    settings, may not bring new code (inline, a command, git) or change it."""
    server = net.start_server()
    url = f"{server.url}/api/v1"
    inline = {
        "name": A,
        "processors": [{"name": "x", "inline": "def process(p):\n    return p\n"}],
    }
    anonymous = httpx.post(f"{url}/flows", json={"document": inline})
    assert anonymous.status_code == 401
    assert httpx.get(f"{url}/flows", headers=net.headers).json() == []
    net.api("POST", "/roles", json={"name": "tuner", "privileges": ["flow.read", "flow.deploy"]})
    tuner = {"authorization": f"Bearer {add_user(net, 'tuner', 'tuner')}"}
    refused = httpx.post(f"{url}/flows", json={"document": inline}, headers=tuner)
    assert refused.status_code == 403 and "code.deploy" in refused.json()["detail"]
    net.api("POST", "/flows", json={"document": inline})  # the admin may
    settings = {**inline, "processors": [{**inline["processors"][0], "prefetch": 10}]}
    changed = httpx.post(f"{url}/flows", json={"document": settings}, headers=tuner)
    assert changed.status_code == 201, changed.text
    new_code = {**inline, "processors": [{"name": "x", "inline": "import os\ndef process(p):\n    return p\n"}]}  # fmt: skip
    assert httpx.post(f"{url}/flows", json={"document": new_code}, headers=tuner).status_code == 403
    command = {"name": "x", "command": "./evil.sh"}
    patched = httpx.patch(f"{url}/flows/{A}/processors/x", json=command, headers=tuner)
    assert patched.status_code == 403
    added = httpx.post(f"{url}/flows/{A}/processors", json={"name": "y", "command": "sh"}, headers=tuner)  # fmt: skip
    assert added.status_code == 403
    # a flow carries no secret in the clear
    leaky = {**inline, "settings": {"broker": "amqp://u:hunter2@h:5672/"}}
    answer = httpx.post(f"{url}/flows", json={"document": leaky}, headers=net.headers)
    assert answer.status_code == 422 and "hunter2" not in answer.text
    assert "${secret:NAME}" in answer.json()["detail"]


def test_workers_get_their_flows_secrets_and_role_and_nothing_more(net: Network) -> None:
    """A processor writes out what its worker can see: no control-plane credential in its
    environment, the secret its flow references, a database role that reaches only its own
    flow's rows. The API never answers with a secret's value."""
    server = net.start_server()
    net.api("PUT", "/secrets/API_KEY", json={"value": "k3y-for-the-flow"})
    net.api("PUT", "/secrets/OTHER", json={"value": "n0t-for-this-flow"})
    (net.root / "spy.py").write_text(
        "import json, os\n"
        f"OUT = {str(net.root)!r}\n"
        "def spy(payload, api_key):\n"
        "    with open(os.path.join(OUT, 'spy.json'), 'w') as f:\n"
        "        json.dump({'env': dict(os.environ), 'api_key': api_key}, f)\n"
    )
    flow = net.root / "spy.yaml"
    flow.write_text(
        f"name: {net.flow_name}\n"
        "processors:\n"
        "  - {name: spy, code: spy:spy, instances: 1, config: {api_key: '${secret:API_KEY}'}}\n"
    )
    net.start_agent("one", capacity=3)
    net.api("POST", "/flows", json={"document": document(A, net)})  # another flow, not its
    net.cli("apply", "--no-check", str(flow))
    net.wait(lambda: net.running({"spy": 1}), 30, "the spy to run")
    net.send("spy", range(1), flow)
    net.wait(lambda: (net.root / "spy.json").exists(), 30, "the spy's report")
    seen = json.loads((net.root / "spy.json").read_text())
    env = seen["env"]
    assert seen["api_key"] == "k3y-for-the-flow"
    for name in ("ELASTICCODE_TOKEN", "ELASTICCODE_ENROL_TOKEN", "ELASTICCODE_SECRET_KEY"):
        assert name not in env, name
    assert "ELASTICCODE_SECRET_OTHER" not in env
    for value in env.values():
        assert net.token not in value and net.enrol not in value and net.password not in value
    state = env["ELASTICCODE_WORKER_STATE"]
    assert "postgres@" not in state and "ec_w_" in state
    # the worker's role: its own flow's rows only, no control-plane table at all
    engine = sa.create_engine(state.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as db:
            for table in ("users", "tokens", "secrets", "flows", "agents", "worker_roles"):
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    db.execute(sa.text(f"SELECT * FROM {table}"))
                db.rollback()
            flows = {r[0] for r in db.execute(sa.text("SELECT DISTINCT flow FROM runs"))}
            assert flows == {net.flow_name}
            with pytest.raises(sa.exc.ProgrammingError):
                db.execute(sa.text("INSERT INTO kv VALUES ('other.x', 'k', 'f', 'v')"))
            db.rollback()
    finally:
        engine.dispose()
    # never back out of the API
    for path in ("/secrets", f"/flows/{net.flow_name}", f"/flows/{net.flow_name}/export"):
        text = json.dumps(net.api("GET", path))
        assert "k3y-for-the-flow" not in text and "n0t-for-this-flow" not in text
    agent_state = net.root / "agent-one" / "agent.json"
    assert stat.S_IMODE(agent_state.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent_state.parent.stat().st_mode) == 0o700
    # the audit log says who did what
    audit = net.api("GET", "/audit", params={"actor": "admin"})
    texts = [e["text"] for e in audit]
    assert any("secret API_KEY set" in t for t in texts)
    assert any("revision 1 applied" in t for t in texts)
    assert all(e["origin"] for e in audit)
    assert server.alive()


def test_logins_are_limited_and_the_cli_keeps_its_credential_private(net: Network) -> None:
    server = net.start_server()
    login = f"{server.url}/api/v1/auth/login"
    for _ in range(10):
        wrong = httpx.post(login, json={"user": "admin", "password": "guess"})
        assert wrong.status_code == 401 and "guess" not in wrong.text
    blocked = httpx.post(login, json={"user": "admin", "password": net.password})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    # the CLI: log in (from another address's view the limit is per address and user)
    env = {**os.environ, "ELASTICCODE_CONFIG_DIR": str(net.root / "cli"), "ELASTICCODE_TOKEN": ""}
    net.api("POST", "/users", json={"name": "carol", "password": "carol-s3cret-pw"})
    net.api("POST", "/users/carol/grants", json={"role": "viewer"})
    done = subprocess.run(
        [ELASTICCODE, "login", "--server", server.url, "--user", "carol", "--password-stdin"],
        input="carol-s3cret-pw\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    kept = net.root / "cli" / "credentials.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert "carol-s3cret-pw" not in kept.read_text()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ELASTICCODE, *args, "--server", server.url], capture_output=True, text=True, env=env
        )

    assert "carol" in cli("whoami").stdout and "viewer on *" in cli("whoami").stdout
    denied = cli("secret", "list")
    assert denied.returncode == 2 and "may not secret.manage" in denied.stderr
    assert cli("logout").returncode == 0
    after = cli("whoami")
    assert after.returncode == 2 and "elasticcode login" in after.stderr


def test_requests_from_elsewhere_are_refused(net: Network) -> None:
    """DNS rebinding (a foreign Host), a foreign web page (Origin) and oversized bodies."""
    server = net.start_server()
    url = f"{server.url}/api/v1/flows"
    rebound = httpx.get(url, headers={**net.headers, "host": "attacker.example"})
    assert rebound.status_code == 421
    foreign = httpx.get(url, headers={**net.headers, "origin": "https://attacker.example"})
    assert foreign.status_code == 403
    same = httpx.get(url, headers={**net.headers, "origin": server.url})
    assert same.status_code == 200
    huge = httpx.post(url, content=b"x" * (17 * 2**20), headers={**net.headers, "content-type": "application/json"})  # fmt: skip
    assert huge.status_code == 413


def test_a_server_beyond_loopback_wants_tls(net: Network) -> None:
    done = subprocess.run(
        [ELASTICCODE, "server", "start", "--db", net.db, "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 over plain HTTP" in done.stderr
    assert "--tls-cert" in done.stderr
