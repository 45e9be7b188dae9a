"""Distributed mode end to end: PostgreSQL state, real servers and agents (three or more, as
separate processes), a real broker, and every message accounted for."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .network import ELASTICCODE, PIPELINE, Network, network_for, postgres_database
from .services import unavailable


@pytest.fixture
def pg() -> Iterator[str]:
    """A database of its own for each test: a network's state is its database."""
    yield from postgres_database()


@pytest.fixture
def net(tmp_path: Path, pg: str, request: pytest.FixtureRequest) -> Iterator[Network]:
    broker = getattr(request, "param", "redis")
    n = network_for(tmp_path, broker, pg)
    try:
        yield n
    finally:
        n.close()


def three_agents(net: Network, **labels: dict[str, str]) -> None:
    net.start_server()
    for name in ("one", "two", "three"):
        net.start_agent(name, capacity=3, labels=labels.get(name))


def test_placement_spreads_over_hosts_and_honours_labels(net: Network) -> None:
    three_agents(net, three={"gpu": "true"})
    path = net.flow_file(
        PIPELINE
        + """
  - {from: b, to: train}
"""
    )
    text = path.read_text().replace(
        "  - {name: sink,",
        "  - {name: train, code: steps:sink, instances: 2, labels: {gpu: 'true'}}\n  - {name: sink,",
    )
    path.write_text(text)
    out = net.cli("apply", str(path))
    assert "revision 1 applied" in out.stdout
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1, "train": 2}), 30, "placement")
    rows = net.workers()
    hosts = {r["host"] for r in rows if r["processor"] == "a"}
    assert hosts == {"host-one", "host-two", "host-three"}, rows
    assert {r["agent"] for r in rows if r["processor"] == "train"} == {"three"}
    # no agent runs more than its slots
    per_agent: dict[str, int] = {}
    for r in rows:
        per_agent[r["agent"]] = per_agent.get(r["agent"], 0) + 1
    assert max(per_agent.values()) <= 3
    # the same file again is no new revision; export gives back what was applied
    assert "unchanged, still revision 1" in net.cli("apply", str(path)).stdout
    exported = net.cli("export", net.flow_name).stdout
    assert "labels:" in exported and "gpu: 'true'" in exported.replace('"', "'")
    # the CLI shows where each instance runs
    listing = net.cli("worker", "list", net.flow_name).stdout
    assert f"{net.flow_name}/train[1]" in listing and "agent three" in listing
    # and how busy each agent's host is (for the leader's CPU-bound rule)
    agents = json.loads(net.cli("agent", "list", "--json").stdout)
    assert all(0 <= a["busy"] <= a["cores"] for a in agents), agents
    assert "cores " in net.cli("agent", "list").stdout


def test_live_changes_touch_only_what_changed_and_lose_nothing(net: Network) -> None:
    three_agents(net)
    path = net.flow_file(PIPELINE)
    net.cli("apply", str(path))
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 30, "placement")
    before = net.pids()
    sent = range(4000)
    feeder = threading.Thread(
        target=lambda: [net.send("a", range(i, i + 200)) or time.sleep(0.05) for i in sent[::200]]
    )
    feeder.start()
    # scale b up: a and sink keep their workers
    net.cli("processor", "scale", net.flow_name, "b", "2")
    net.wait(lambda: net.running({"a": 3, "b": 2, "sink": 1}), 30, "b scaled to 2")
    after_scale = net.pids()
    assert {k: v for k, v in after_scale.items() if k[0] != "b"} == {
        k: v for k, v in before.items() if k[0] != "b"
    }
    assert after_scale[("b", 0)] == before[("b", 0)]  # the first b instance stays too
    # change b's settings: b's instances are replaced, new ones first; the rest stay
    net.cli("processor", "update", net.flow_name, "b", "--set", "prefetch=20")
    net.wait(
        lambda: (
            net.running({"b": 2})
            and all(net.pids()[("b", i)] != after_scale[("b", i)] for i in (0, 1))
        ),
        30,
        "b replaced",
    )
    # pause and resume the sink: its messages wait in its queue meanwhile
    net.cli("processor", "pause", net.flow_name, "sink")
    net.wait(lambda: not [r for r in net.workers() if r["processor"] == "sink"], 20, "sink paused")
    net.cli("processor", "resume", net.flow_name, "sink")
    net.wait(lambda: net.running({"sink": 1}), 20, "sink resumed")
    feeder.join()
    net.account(sent, label="live changes")
    now = net.pids()
    assert {k: v for k, v in now.items() if k[0] == "a"} == {
        k: v for k, v in before.items() if k[0] == "a"
    }, "a processor that was not changed had its workers replaced"
    revisions = net.api("GET", f"/flows/{net.flow_name}/revisions")
    assert [r["revision"] for r in revisions] == [1, 2, 3]
    # rollback to revision 1: b goes back to one instance with the old settings
    net.cli("flow", "rollback", net.flow_name, "1")
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 30, "rollback")
    assert net.api("GET", f"/flows/{net.flow_name}/export")["processors"][1].get("prefetch") is None


@pytest.mark.slow
@pytest.mark.parametrize("net", ["redis", "rabbitmq"], indirect=True)
def test_agent_loss_moves_its_instances_and_loses_nothing(net: Network) -> None:
    three_agents(net)
    path = net.flow_file(
        PIPELINE.replace(
            "name: b, code: steps:inc, instances: 1", "name: b, code: steps:inc, instances: 2"
        )
    )
    net.cli("apply", str(path))
    net.wait(lambda: net.running({"a": 3, "b": 2, "sink": 1}), 30, "placement")
    victim = next(r["agent"] for r in net.workers() if r["processor"] == "b")
    sent = range(6000)
    net.send("a", sent[:3000])
    net.wait(lambda: len(net.delivered()) > 300, 30, "messages flowing")
    killed = net.agents[victim].kill9()
    assert killed, "the agent had no workers to kill"
    lost_at = time.monotonic()
    net.send("a", sent[3000:])
    took = net.wait(
        lambda: (
            net.running({"a": 3, "b": 2, "sink": 1})
            and victim not in {r["agent"] for r in net.workers()}
        ),
        30,
        "reassignment",
    )
    print(
        f"agent {victim} killed with {len(killed)} workers: instances running elsewhere after {took:.1f}s"
    )
    assert time.monotonic() - lost_at < net.agent_timeout + 10
    agents = {a["name"]: a["status"] for a in net.api("GET", "/agents")}
    assert agents[victim] == "lost"
    net.account(sent, label=f"agent kill -9, {net.broker.split(':')[0]}")


def test_data_plane_flows_with_every_server_down(net: Network) -> None:
    three_agents(net)
    net.cli("apply", str(net.flow_file(PIPELINE)))
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 30, "placement")
    before = net.pids()
    net.servers[0].kill9(with_children=False)
    sent = range(3000)
    net.send("a", sent)
    net.account(sent, label="no server")
    # a server that comes back finds the agents and their workers as they were
    net.start_server()
    net.wait(lambda: all(a["status"] == "up" for a in net.api("GET", "/agents")), 20, "agents back")
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 20, "state converged")
    assert net.pids() == before
    logs = net.agents["one"].log.read_text()
    assert "waiting for a server" in logs and "worker(s) running" in logs


@pytest.mark.slow
@pytest.mark.parametrize("net", ["redis", "rabbitmq"], indirect=True)
def test_leader_killed_during_a_live_change(net: Network) -> None:
    """kill -9 of the leading server right after a change: the other server takes the lead,
    finishes the change and does the leader's work after it; no message is lost."""
    first = net.start_server()
    second = net.start_server()
    for name in ("one", "two", "three"):
        net.start_agent(name, capacity=3)
    net.cli("apply", str(net.flow_file(PIPELINE)))
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 30, "placement")

    def leader() -> str:
        return str(net.api("GET", "/status")["leader"]["holder"])

    holders = {httpx.get(f"{s.url}/api/v1/health").json()["server"]: s for s in (first, second)}
    old = holders[leader()]
    other = second if old is first else first
    sent = range(4000)
    net.send("a", sent[:2000])
    httpx.post(
        f"{other.url}/api/v1/flows/{net.flow_name}/processors/b/scale",
        json={"instances": 2},
        headers=net.headers,
    ).raise_for_status()
    old.kill9(with_children=False)
    took = net.wait(
        lambda: httpx.get(f"{other.url}/api/v1/health").json()["leader"], 20, "a new leader"
    )
    done = net.wait(lambda: net.running({"a": 3, "b": 2, "sink": 1}), 30, "the change")
    print(
        f"leader killed: the other server leads after {took:.1f}s, the change done {done:.1f}s later"
    )
    # the new leader does the leader's work: an agent lost now is replaced
    victim = next(r["agent"] for r in net.workers() if r["processor"] == "sink")
    net.agents[victim].kill9()
    net.wait(
        lambda: (
            net.running({"a": 3, "b": 2, "sink": 1})
            and victim not in {r["agent"] for r in net.workers()}
        ),
        30,
        "reassignment by the new leader",
    )
    net.send("a", sent[2000:])
    net.account(sent, label=f"leader kill -9 during a change, {net.broker.split(':')[0]}")
    events = [e["text"] for e in net.api("GET", "/events")]
    assert sum("leads (term" in e for e in events) >= 2, events


def test_api_openapi_errors_and_event_stream(net: Network) -> None:
    import websockets.sync.client

    server = net.start_server()
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in (
        "/api/v1/flows",
        "/api/v1/agents",
        "/api/v1/workers",
        "/api/v1/flows/{name}/rollback",
    ):
        assert path in spec["paths"], path
    ws_url = server.url.replace("http", "ws") + "/api/v1/stream"
    with websockets.sync.client.connect(
        ws_url, open_timeout=10, additional_headers=net.headers
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        net.start_agent("one", capacity=2)
        net.cli("apply", str(net.flow_file(PIPELINE.replace("instances: 3", "instances: 1"))))
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("revision 1 applied" in t for t in seen):
            seen.append(json.loads(ws.recv(timeout=15)).get("text", ""))
        assert any("revision 1 applied" in t for t in seen), seen
    # a bad flow document says what to fix, and changes nothing
    bad = httpx.post(
        f"{server.url}/api/v1/flows",
        json={"document": {"name": net.flow_name, "processors": [{"name": "x"}]}},
        headers=net.headers,
    )
    assert bad.status_code == 422
    assert "give exactly one of code" in bad.text
    assert [r["revision"] for r in net.api("GET", f"/flows/{net.flow_name}/revisions")] == [1]
    missing = httpx.get(f"{server.url}/api/v1/flows/nosuchflow", headers=net.headers)
    assert missing.status_code == 404 and "elasticcode apply" in missing.json()["detail"]
    # two processors placed on an agent with two slots; the third waits, and says why
    net.cli("processor", "scale", net.flow_name, "a", "3")
    net.wait(
        lambda: any("wait" in e["text"] for e in net.api("GET", "/events")), 15, "a pending note"
    )


def test_git_code_pinned_at_deploy_switched_by_ref_and_rolled_back(
    net: Network, tmp_path: Path
) -> None:
    from .test_gitcode import Repo

    repo = Repo(tmp_path / "repo")
    v1 = repo.commit(1, tag="v1")
    v2 = repo.commit(2, tag="v2")
    net.env["ELASTICCODE_CACHE"] = str(tmp_path / "cache")
    three_agents(net)
    flow = """
processors:
  - {name: a, code: steps:inc, instances: 2}
  - name: work
    code: "stage:step"
    git: {repo: "file://REPO", ref: v1, path: lib}
    instances: 2
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: a, to: work}
  - {from: work, to: sink}
""".replace("REPO", str(repo.path))
    out = net.cli("apply", str(net.flow_file(flow)))
    assert f"resolved to commit {v1[:12]}" in out.stderr
    net.wait(lambda: net.running({"a": 2, "work": 2, "sink": 1}), 30, "placement")
    listing = net.cli("processor", "list", net.flow_name).stdout
    assert f"at {v1[:12]} (v1)" in listing, listing
    net.send("a", range(1000))
    net.account(range(1000), label="git v1")
    assert net.versions(range(1000)) == {"1"}
    before = net.pids()

    def replaced(old: dict[tuple[str, int], int]) -> bool:
        pids = net.pids()
        return all(pids[("work", i)] != old[("work", i)] for i in (0, 1))

    # a branch or tag is not followed silently: the user moves it, and only `work` is replaced
    out = net.cli("processor", "update", net.flow_name, "work", "--ref", "v2")
    assert f"resolved to commit {v2[:12]}" in out.stderr
    net.wait(lambda: net.running({"work": 2}) and replaced(before), 30, "work on v2")
    now = net.pids()
    assert all(now[k] == before[k] for k in before if k[0] != "work")
    net.send("a", range(1000, 2000))
    net.account(range(2000), label="git v2")
    assert net.versions(range(1000, 2000)) == {"2"}
    exported = net.api("GET", f"/flows/{net.flow_name}/export")
    assert exported["processors"][1]["git"]["commit"] == v2
    # the earlier revision, and with it the earlier commit, comes back by a rollback
    net.cli("flow", "rollback", net.flow_name, "1")
    net.wait(lambda: net.running({"work": 2}) and replaced(now), 30, "rollback")
    net.send("a", range(2000, 2500))
    net.account(range(2500), label="git rollback")
    assert net.versions(range(2000, 2500)) == {"1"}


def test_code_that_does_not_load_marks_only_its_instances_in_error(net: Network) -> None:
    three_agents(net)
    flow = PIPELINE.replace("name: sink, code: steps:sink", "name: sink, code: nosuchmodule:sink")
    net.cli("apply", "--no-check", str(net.flow_file(flow)))

    def sink_in_error() -> bool:
        rows = net.workers()
        others = all(r["state"] == "running" for r in rows if r["processor"] != "sink")
        return others and any(
            r["processor"] == "sink"
            and r["state"] == "error"
            and "nosuchmodule" in (r["error"] or "")
            for r in rows
        )

    net.wait(sink_in_error, 40, "the sink in error, the rest running")
    listing = net.cli("worker", "list", net.flow_name).stdout
    assert "error:" in listing and "nosuchmodule" in listing, listing
    net.send("a", range(500))
    # the rest of the flow goes on; the messages wait in the sink's queue
    net.wait(
        lambda: sum(r["received"] for r in net.workers() if r["processor"] == "b") >= 500,
        30,
        "b done",
    )
    assert not net.delivered()
    net.cli("processor", "update", net.flow_name, "sink", "--set", "code=steps:sink")
    net.account(range(500), label="code fixed")


def restart_postgres(down: float) -> None:
    """Stop the machine's PostgreSQL, wait, start it again."""
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if shutil.which("pg_ctlcluster") is None or not versions:
        unavailable("restarting PostgreSQL needs pg_ctlcluster (Debian's postgresql-common)")
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main"]
    subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True)
    time.sleep(down)
    subprocess.run([*cluster, "start"], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["redis", "rabbitmq"], indirect=True)
def test_database_restart_mid_stream(net: Network) -> None:
    """The state store goes away for a while: the data plane goes on, no agent is called
    lost for heartbeats the database could not record, and the control plane resumes."""
    three_agents(net)
    net.cli("apply", str(net.flow_file(PIPELINE)))
    net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 30, "placement")
    before = net.pids()
    sent = range(4000)
    net.send("a", sent[:2000])
    started = time.monotonic()
    restart_postgres(down=net.agent_timeout * 2)
    net.send("a", sent[2000:])
    net.account(sent, label=f"database restart, {net.broker.split(':')[0]}")
    back = net.wait(lambda: net.running({"a": 3, "b": 1, "sink": 1}), 60, "the API to answer")
    print(
        f"database down {net.agent_timeout * 2:.0f}s; control plane answering {time.monotonic() - started:.1f}s after the stop"
    )
    assert back >= 0
    assert net.pids() == before, "workers were moved or restarted because of the database"
    assert all(a["status"] == "up" for a in net.api("GET", "/agents"))
    net.cli("processor", "scale", net.flow_name, "b", "2")
    net.wait(lambda: net.running({"a": 3, "b": 2, "sink": 1}), 30, "a change after the restart")


def test_credentials_guard_the_server_and_agents_enrol(net: Network) -> None:
    server = net.start_server()
    base = f"{server.url}/api/v1"
    refused = httpx.get(f"{base}/flows")
    assert refused.status_code == 401 and "elasticcode login" in refused.json()["detail"]
    assert httpx.get(f"{base}/flows", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{base}/health").status_code == 200  # liveness needs no credential
    # an agent without an enrolment token cannot join; with one, it enrols once
    stranger = net._spawn(
        [
            *(ELASTICCODE, "agent", "start", "--name", "stranger", "--server", server.url),
            *("--state-dir", str(net.root / "agent-stranger")),
        ],
        net.root / "agent-stranger.log",
        {"ELASTICCODE_ENROL_TOKEN": ""},
    )
    try:
        net.start_agent("one", capacity=2)
        time.sleep(1)
        assert [a["name"] for a in net.api("GET", "/agents")] == ["one"]
        assert "--enrol-token" in (net.root / "agent-stranger.log").read_text()
        state = json.loads((net.root / "agent-one" / "agent.json").read_text())
        assert state["token"].startswith("ec_a") and "enrol" not in state
        assert (net.root / "agent-one" / "agent.json").stat().st_mode & 0o077 == 0
        done = net.cli("flow", "list")  # the CLI sends $ELASTICCODE_TOKEN
        assert "no flows" in done.stdout
        # the agent's own credential serves its own heartbeat, nothing else
        agent = {"authorization": f"Bearer {state['token']}"}
        assert httpx.get(f"{base}/flows", headers=agent).status_code == 403
        other = f"{base}/agents/someone-else/assignment"
        assert httpx.get(other, headers=agent).status_code == 403
        # forgetting the agent revokes its credential: it stops its workers and waits
        net.api("DELETE", f"/agents/{state['id']}")
        net.wait(
            lambda: "Enrol this agent again" in (net.root / "agent-one.log").read_text(),
            20,
            "the forgotten agent to say so",
        )
        assert (
            httpx.get(f"{base}/agents/{state['id']}/assignment", headers=agent).status_code == 401
        )
    finally:
        stranger.terminate()
        stranger.wait(20)


def test_a_source_that_is_done_gives_its_slot_back(net: Network) -> None:
    """One agent, two slots, three processors: the source and the sink run first; once the
    source is done, its slot goes to the processor that waited, and everything arrives."""
    net.start_server()
    net.start_agent("one", capacity=2)
    (net.root / "gen.py").write_text(
        "def numbers(count):\n    for n in range(count):\n        yield {'n': n}\n"
    )
    flow = net.flow_file(
        """
processors:
  - {name: gen, code: gen:numbers, source: true, config: {count: 300}}
  - {name: work, code: steps:inc, instances: 1}
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: gen, to: work}
  - {from: work, to: sink}
"""
    )
    net.cli("apply", str(flow))
    net.account(range(300), timeout=60, label="a done source's slot reused")
    assert {r["processor"] for r in net.workers()} == {"work", "sink"}
