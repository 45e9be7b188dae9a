"""Autoscaling: the decisions on made-up views (up at once, down only when stable, no
flapping, waking from zero) and a run on one host that scales a slow processor up and down."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elasticcode.autoscale import Autoscaler, host_cores
from elasticcode.errors import FlowError
from elasticcode.flow import Flow
from elasticcode.local.runner import run

from .network import Network, redis_network

SCALED = """
name: burst
processors:
  - {name: slow, code: steps:slow, scale: {min: 1, max: 8, target_latency: 2s,
     up_after: 5s, down_after: 30s}}
  - {name: sink, code: steps:sink, instances: 1}
connections:
  - {from: slow, to: sink}
"""


def view(
    backlog: int | None,
    rate_in: float,
    busy: float,
    instances: int,
    cpu: float = 0.0,
    wait: float | None = None,
) -> dict[str, Any]:
    """What the metrics view of ``SCALED`` would show for one interval (``cpu``: cores its
    instances used; ``wait``: the p90 of how long messages waited, in seconds)."""
    waited = {"count": 0, "p50": None, "p90": None, "p99": None}
    if wait is not None:
        waited = {"count": 100, "p50": wait * 500, "p90": wait * 1000, "p99": wait * 1000}
    return {
        "interval": 1.0,
        "processors": {
            "slow": {
                "rates": {"in": rate_in},
                "busy": busy,
                "cpu": cpu,
                "instances": instances,
                "waiting": backlog,
                "wait_ms": waited,
            },
            "sink": {"rates": {"in": rate_in}, "busy": 0.1, "instances": 1, "waiting": 0},
        },
    }


def test_a_backlog_scales_up_at_once_at_most_doubling_and_says_why() -> None:
    flow, scaler = Flow.loads(SCALED), Autoscaler()
    # one instance doing 100/s while busy, 48k waiting: wants 241, gets 1 → 5 (double or +4)
    decisions = scaler.decide(flow, view(48_000, 100, 1.0, 1), now=0.0)
    assert decisions == []  # not sooner than up_after since it started
    [d] = scaler.decide(flow, view(48_000, 100, 1.0, 1), now=5.0)
    assert (d.before, d.after) == (1, 5)
    assert d.text().startswith("scaled slow 1 → 5: backlog 48k, 100/s per instance")
    assert "target 2s" in d.text()
    assert scaler.decide(flow, view(47_000, 500, 1.0, 5), now=6.0) == []  # up_after again
    [d] = scaler.decide(flow, view(46_000, 500, 1.0, 5), now=11.0)
    assert (d.before, d.after) == (5, 8)  # its max


def test_fewer_only_after_a_whole_window_asked_for_fewer() -> None:
    flow, scaler = Flow.loads(SCALED), Autoscaler()
    counts = {"slow": 8}  # as recorded (e.g. by the server that led before)
    t = 0.0
    for _ in range(29):  # idle for 29 s: not yet
        assert scaler.decide(flow, view(0, 0, 0.0, 8), counts, now=t) == []
        t += 1.0
    t = 30.0
    [d] = scaler.decide(flow, view(0, 0, 0.0, 8), counts, now=t)
    assert (d.before, d.after) == (8, 1)
    assert "at most 1 asked for over the last 30s" in d.text()


def test_a_bursty_source_does_not_make_instances_come_and_go() -> None:
    flow, scaler = Flow.loads(SCALED), Autoscaler()
    changes, backlog = [], 0
    for second in range(300):  # a burst of 2,000 every 20 s; one instance does 100/s
        backlog += 2000 if second % 20 == 0 else 0
        n = scaler.count("burst", "slow") or 1
        done = min(backlog, 100 * n)
        backlog -= done
        changes += scaler.decide(flow, view(backlog, done, done / (100 * n), n), now=second)
    ups = [d for d in changes if d.after > d.before]
    downs = [d for d in changes if d.after < d.before]
    # up for the first burst; never down while bursts come closer than down_after (30 s)
    assert 1 <= len(ups) <= 3 and not downs, [d.text() for d in changes]


def test_a_processor_at_zero_wakes_on_the_first_message_and_sleeps_again() -> None:
    flow = Flow.loads(SCALED.replace("min: 1", "min: 0"))
    scaler = Autoscaler()
    assert scaler.decide(flow, view(0, 0, 0.0, 0), now=0.0) == []  # starts at min: 0
    [d] = scaler.decide(flow, view(3, 0, 0.0, 0), now=1.0)
    assert (d.before, d.after) == (0, 1) and "at 0 instances" in d.text()
    assert scaler.decide(flow, view(0, 3, 0.01, 1), now=2.0) == []
    [d] = scaler.decide(flow, view(0, 0, 0.0, 1), now=40.0)
    assert (d.before, d.after) == (1, 0)


def test_a_measured_processor_sleeps_again_once_idle() -> None:
    flow = Flow.loads(SCALED.replace("min: 1", "min: 0"))
    scaler = Autoscaler()
    assert scaler.decide(flow, view(0, 0, 0.0, 0), now=0.0) == []
    [d] = scaler.decide(flow, view(500, 0, 0.0, 0), now=1.0)
    assert (d.before, d.after) == (0, 1)
    scaler.decide(flow, view(200, 300, 0.9, 1), now=2.0)  # measured: 333/s per instance
    scaler.decide(flow, view(0, 200, 0.6, 1), now=3.0)
    decisions = [d for t in range(4, 40) for d in scaler.decide(flow, view(0, 0, 0.0, 1), now=t)]
    assert [(d.before, d.after) for d in decisions] == [(1, 0)], [d.text() for d in decisions]
    assert "idle" in decisions[0].text()


def test_a_target_backlog_per_instance() -> None:
    flow = Flow.loads(SCALED.replace("target_latency: 2s", "target_backlog: 1000"))
    scaler = Autoscaler()
    scaler.decide(flow, view(3500, 10, 1.0, 1), now=0.0)
    [d] = scaler.decide(flow, view(3500, 10, 1.0, 1), now=5.0)
    assert (d.before, d.after) == (1, 4) and "target 1,000 waiting per instance" in d.text()


def test_busy_instances_whose_messages_wait_too_long_grow_on_the_wait() -> None:
    # the queue looks empty (workers hold what they prefetched) while messages wait 6 s
    flow, scaler = Flow.loads(SCALED), Autoscaler()
    scaler.decide(flow, view(0, 100, 0.95, 2, wait=6.0), {"slow": 2}, now=0.0)
    [d] = scaler.decide(flow, view(0, 100, 0.95, 2, wait=6.0), {"slow": 2}, now=5.0)
    assert (d.before, d.after) == (2, 6)  # 2 * 6 s / 2 s
    assert "waited 6s (p90), target 2s, 95% busy" in d.text()
    # the same wait while the instances idle is not theirs to shorten (another host's clock,
    # or a hold-up elsewhere): it holds them
    scaler = Autoscaler()
    scaler.decide(flow, view(0, 100, 0.5, 2, wait=6.0), {"slow": 2}, now=0.0)
    assert scaler.decide(flow, view(0, 100, 0.5, 2, wait=6.0), {"slow": 2}, now=5.0) == []
    # waits within the target, or a target backlog instead, leave the count to the backlog
    scaler = Autoscaler()
    scaler.decide(flow, view(0, 100, 0.95, 2, wait=1.5), {"slow": 2}, now=0.0)
    assert scaler.decide(flow, view(0, 100, 0.95, 2, wait=1.5), {"slow": 2}, now=5.0) == []
    by_backlog = Flow.loads(SCALED.replace("target_latency: 2s", "target_backlog: 1000"))
    scaler = Autoscaler()
    scaler.decide(by_backlog, view(0, 100, 0.95, 2, wait=6.0), {"slow": 2}, now=0.0)
    assert scaler.decide(by_backlog, view(0, 100, 0.95, 2, wait=6.0), {"slow": 2}, now=5.0) == []


def test_a_cpu_bound_processor_grows_only_onto_idle_cores() -> None:
    flow, scaler = Flow.loads(SCALED), Autoscaler()
    scaler.decide(flow, view(48_000, 100, 1.0, 1, cpu=0.98), now=0.0)
    # one busy instance uses a core of the host's 2: room for one more, not the 5 it wants
    [d] = scaler.decide(flow, view(48_000, 100, 1.0, 1, cpu=0.98), now=5.0, cores=_two(0.98))
    assert (d.before, d.after) == (1, 2)
    assert "CPU-bound (0.98 of a core per busy instance), 1.0 of 2 cores busy" in d.text()
    # both cores busy: held, said once
    busy = view(46_000, 200, 1.0, 2, cpu=1.96)
    [d] = scaler.decide(flow, busy, now=10.0, cores=_two(1.96))
    assert (d.before, d.after) == (2, 2) and d.text().startswith("holding slow at 2: backlog")
    assert scaler.decide(flow, busy, now=15.0, cores=_two(1.96)) == []
    assert scaler.decide(flow, busy, now=20.0, cores=_two(1.96)) == []
    # the same backlog for a processor that mostly waits (sleeps, I/O): cores do not limit it
    waits, scaler = view(48_000, 100, 1.0, 1, cpu=0.05), Autoscaler()
    scaler.decide(flow, waits, now=0.0)
    [d] = scaler.decide(flow, waits, now=5.0, cores=_two(0.05))
    assert (d.before, d.after) == (1, 5)


def _two(used: float) -> dict[str, tuple[float, float]]:
    return {"slow": (2.0, used), "sink": (2.0, used)}


def test_host_cores_count_each_host_once_and_share_a_processors_cpu() -> None:
    flow = Flow.loads(
        "name: f\nprocessors:\n"
        '  - {name: slow, code: m:f, labels: {gpu: "true"}, scale: {max: 4}}\n'
        "  - {name: fixed, code: m:f, instances: 2}\n"
    )
    views = [
        {
            "processors": {
                "x": {"cpu": 3.0, "hosts": ["h1", "h2"]},  # 1.5 on each of its hosts
                "y": {"cpu": 1.0, "hosts": ["h2"]},
            }
        }
    ]
    gpu = {"gpu": "true"}
    agents = [("h1", 4, gpu, None), ("h1", 4, gpu, None), ("h2", 8, {}, None), ("h3", 2, gpu, None)]
    # slow may run on h1 (4 cores, however many agents) and h3 (2): 6 cores, 1.5 of them used
    assert host_cores(flow, views, agents) == {"slow": (6.0, 1.5)}
    # what an agent measured busy on its host (other programs too) counts when it is more
    agents[3] = ("h3", 2, gpu, 1.75)
    agents[0] = ("h1", 4, gpu, 0.5)  # less than its workers use: their figure stands
    assert host_cores(flow, views, agents) == {"slow": (6.0, 3.25)}


def test_unknown_depths_decide_nothing() -> None:
    flow, scaler = Flow.loads(SCALED), Autoscaler()
    for t in range(0, 100, 5):
        assert scaler.decide(flow, view(None, 100, 1.0, 1), now=float(t)) == []


@pytest.mark.parametrize(
    "scale, error",
    [
        ("{min: 4, max: 2}", r"scale: min \(4\) is above max \(2\)"),
        ("{max: 4, target_latency: 1s, target_backlog: 10}", "not both"),
        ("{max: 4, target_latency: 0s}", "greater than zero"),
        ("{min: 1}", "max"),
    ],
)
def test_bad_scale_settings_say_what_to_fix(scale: str, error: str) -> None:
    text = f"name: f\nprocessors:\n  - {{name: p, code: m:f, scale: {scale}}}\n"
    with pytest.raises(FlowError, match=error):
        Flow.loads(text)


def test_instances_is_where_scaling_starts_within_its_bounds() -> None:
    ok = "name: f\nprocessors:\n  - {name: p, code: m:f, instances: 3, scale: {max: 4}}\n"
    assert Flow.loads(ok).get("p").instances == 3
    with pytest.raises(FlowError, match=r"instances \(9\) is where scaling starts"):
        Flow.loads(ok.replace("instances: 3", "instances: 9"))
    source = "name: f\nprocessors:\n  - {name: p, code: m:f, source: true, scale: {max: 4}}\n"
    with pytest.raises(FlowError, match="remove scale"):
        Flow.loads(source)


# -- one host ----------------------------------------------------------------------------------
LOCAL_STEPS = """
import time

def gen():
    yield from range(3000)   # a burst
    time.sleep(12)           # then quiet, while the source still runs
    yield from range(3000, 3010)

def slow(payload):
    time.sleep(0.004)
    return payload

def spin(payload):  # CPU-bound: about 4 ms of pure Python per message
    end = time.process_time() + 0.004
    while time.process_time() < end:
        pass
    return payload

def sink(payload, ctx):
    with open("sunk.txt", "a") as f:
        f.write(f"{payload}\\n")
"""


def test_a_run_scales_a_slow_processor_up_for_a_burst_and_down_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "steps.py").write_text(LOCAL_STEPS)
    (tmp_path / "flow.yaml").write_text(
        textwrap.dedent(
            """
            name: burst
            processors:
              - {name: gen, code: steps:gen, source: true}
              - {name: slow, code: steps:slow,
                 scale: {min: 1, max: 4, target_latency: 1s, up_after: 1s, down_after: 4s}}
              - {name: sink, code: steps:sink, instances: 1}
            connections:
              - {from: gen, to: slow}
              - {from: slow, to: sink}
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "flow.yaml", state_dir=tmp_path / "state")
    print("\n".join(result.events))
    assert result.status == "finished"
    scaled = [e for e in result.events if e.startswith("scaled slow")]
    assert any("scaled slow 1 → " in e and "backlog" in e for e in scaled), scaled
    assert any(e.startswith("scaled slow") and e.endswith("over the last 4s") for e in scaled)
    assert any("stopped (scaled down)" in e for e in result.events)
    sunk = [int(line) for line in (tmp_path / "sunk.txt").read_text().split()]
    assert sorted(set(sunk)) == list(range(3010))  # every message, whatever the count did
    assert result.dead_letters == 0


SPIN_COMMAND = """#!/usr/bin/env python3
import json, sys, time

for line in sys.stdin:  # CPU-bound, in a process of its own: about 4 ms per message
    end = time.process_time() + 0.004
    while time.process_time() < end:
        pass
    print(json.dumps({"outputs": [{"payload": json.loads(line)["payload"]}]}), flush=True)
"""


HOG = "while True: pass"


@pytest.mark.parametrize(
    ("how", "hog"),
    [("code: steps:spin", False), ("command: ./spin.py", False), ("code: steps:spin", True)],
    ids=["code", "command", "other-programs"],
)
def test_a_cpu_bound_processor_stops_growing_when_the_cores_are_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, hog: bool
) -> None:
    # a command processor's CPU is spent in the process it runs: that counts too; and with
    # other programs keeping every core busy, it does not grow at all
    (tmp_path / "steps.py").write_text(LOCAL_STEPS)
    (tmp_path / "spin.py").write_text(SPIN_COMMAND)
    (tmp_path / "spin.py").chmod(0o755)
    (tmp_path / "flow.yaml").write_text(
        textwrap.dedent(
            f"""
            name: burst
            processors:
              - {{name: gen, code: steps:gen, source: true}}
              - {{name: spin, {how},
                 scale: {{min: 1, max: {4 * cores()}, target_latency: 1s, up_after: 1s,
                          down_after: 4s}}}}
              - {{name: sink, code: steps:sink, instances: 1}}
            connections:
              - {{from: gen, to: spin}}
              - {{from: spin, to: sink}}
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(cores() if hog else 0)]
    try:
        result = run(tmp_path / "flow.yaml", state_dir=tmp_path / "state")
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print("\n".join(result.events))
    assert result.status == "finished"
    ups = [e for e in result.events if e.startswith("scaled spin") and "CPU-bound" in e]
    held = [e for e in result.events if e.startswith("holding spin")]
    assert held and "cores busy" in held[0], result.events
    peak = max(
        [1]
        + [
            int(e.split(" → ")[1].split(":")[0])
            for e in result.events
            if e.startswith("scaled spin")
        ]
    )
    print(f"peak instances of spin: {peak} on {cores()} cores (max {4 * cores()}); {ups}")
    # the backlog asked for its max; the cores allowed about one each, or none taken by others
    assert peak <= (1 if hog else cores() + 1)
    sunk = [int(line) for line in (tmp_path / "sunk.txt").read_text().split()]
    assert sorted(set(sunk)) == list(range(3010))


def cores() -> int:
    return os.cpu_count() or 1


# -- a network ---------------------------------------------------------------------------------


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    yield from redis_network(tmp_path)


def test_the_leader_scales_a_slow_processor_over_three_agents_without_loss(net: Network) -> None:
    net.start_server()
    for name in ("one", "two", "three"):
        net.start_agent(name, capacity=3)
    net.deploy(
        """
        processors:
          - {name: slow, code: steps:slow, scale: {min: 1, max: 6, target_latency: 2s,
             up_after: 2s, down_after: 8s}}
          - {name: sink, code: steps:sink, instances: 1}
        connections:
          - {from: slow, to: sink}
        """,
        {"slow": 1, "sink": 1},
    )
    sent = range(20_000)
    net.send("slow", sent)
    peak, agents = 1, set()

    def drained() -> bool:
        nonlocal peak
        rows = [r for r in net.workers() if r["processor"] == "slow" and r["state"] == "running"]
        peak = max(peak, len(rows))
        if len(rows) > 1:
            agents.update(r["agent"] for r in rows)
        return len(net.delivered()) >= len(sent)

    net.wait(drained, 180, "the burst at the sink")
    net.account(sent, label="a burst autoscaled over three agents")
    scaled = [e["text"] for e in net.api("GET", "/events") if e["kind"] == "scale"]
    print("during the burst:", *scaled, sep="\n  ")
    print(f"peak instances of slow: {peak}, on agents {sorted(agents)}")
    assert peak >= 3 and len(agents) >= 2, scaled
    assert any("scaled slow 1 → " in e for e in scaled)
    net.wait(lambda: net.running({"slow": 1}), 60, "slow back at its minimum after the burst")
    during, scaled = scaled, [e["text"] for e in net.api("GET", "/events") if e["kind"] == "scale"]
    print("after it:", *scaled[len(during) :], sep="\n  ")
    assert "→ 1: backlog 0" in scaled[-1], scaled
    # by hand: held at 3 until released, then back to the autoscaler's count
    net.cli("processor", "scale", net.flow_name, "slow", "3")
    net.wait(lambda: net.running({"slow": 3}), 60, "slow held at 3")
    net.cli("processor", "scale", net.flow_name, "slow", "release")
    net.wait(lambda: net.running({"slow": 1}), 60, "slow scaled back to 1 after release")
    refused = net.cli("processor", "scale", net.flow_name, "sink", "release", check=False)
    assert refused.returncode != 0 and "does not scale" in refused.stderr + refused.stdout
    asleep = net.flow_file(
        """
        processors:
          - {name: slow, code: steps:slow, scale: {min: 0, max: 6}}
        """
    )
    refused = net.cli("apply", str(asleep), check=False)
    assert refused.returncode != 0 and "min 0" in refused.stderr + refused.stdout


def test_a_joining_agent_takes_a_share_and_an_idle_one_leaving_moves_nothing(
    net: Network,
) -> None:
    net.start_server()
    work = {"role": "work"}
    net.start_agent("one", capacity=4, labels=work)
    net.start_agent("two", capacity=4, labels=work)
    net.deploy(
        """
        processors:
          - {name: a, code: steps:slow, instances: 6, labels: {role: work}}
          - {name: sink, code: steps:sink, instances: 1, labels: {role: work}}
        connections:
          - {from: a, to: sink}
        """,
        {"a": 6, "sink": 1},
    )
    sent = range(12_000)

    def feed() -> None:  # messages keep coming while the instances move
        for part in range(12):
            net.send("a", sent[part * 1000 : (part + 1) * 1000])
            time.sleep(0.5)

    feeder = threading.Thread(target=feed)
    feeder.start()
    # what each agent reports running, sampled: a moved instance must run on both at once
    seen: set[tuple[float, str, int]] = set()  # (sample, agent, instance of a)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            at = time.monotonic()
            for agent in net.api("GET", "/agents"):
                for w in agent["workers"]:
                    running = w.get("state") == "running" and not w.get("retiring")
                    if w["processor"] == "a" and running:
                        seen.add((at, agent["name"], int(w["instance"])))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(1.0)
    net.start_agent("three", capacity=4, labels=work)

    def shared() -> bool:
        rows = [r for r in net.workers() if r["state"] == "running" and r["pid"]]
        per = Counter(r["agent"] for r in rows)
        return len(rows) == 7 and per["three"] >= 2 and max(per.values()) <= 3

    net.wait(shared, 60, "agent three to take a share of the instances")
    feeder.join()
    net.account(sent, label="an agent joins while messages flow")
    moved = [e["text"] for e in net.api("GET", "/events") if "rebalancing" in e["text"]]
    print("rebalancing:", *moved, sep="\n  ")
    assert moved and all("to three" in m for m in moved), moved
    sampling.set()
    sampler.join(10)
    # rolling: each moved instance was seen running on the agent it left and on three at once
    for text in moved:
        instance = int(text.split("[", 1)[1].split("]", 1)[0])
        source = text.split("from agent ", 1)[1].split(" ", 1)[0]
        both = {
            at
            for at, agent, i in seen
            if i == instance and agent == source and (at, "three", instance) in seen
        }
        assert both, f"a[{instance}] stopped on {source} before it ran on three"
    # an agent that may run none of them stays idle, and leaving moves nothing
    before = net.pids()
    four = net.start_agent("four", capacity=4)
    time.sleep(3.0)
    assert net.pids() == before
    four.stop()
    net.wait(
        lambda: all(a["status"] != "up" for a in net.api("GET", "/agents") if a["name"] == "four"),
        30,
        "agent four to leave",
    )
    time.sleep(2.0)
    assert net.pids() == before and net.running({"a": 6, "sink": 1})
    assert [e["text"] for e in net.api("GET", "/events") if "rebalancing" in e["text"]] == moved


def test_a_processor_at_zero_wakes_in_a_network_and_sleeps_again(net: Network) -> None:
    net.start_server()
    net.start_agent("one", capacity=3)
    net.deploy(
        """
        processors:
          - {name: a, code: steps:inc, instances: 1}
          - {name: sink, code: steps:sink,
             scale: {min: 0, max: 2, up_after: 1s, down_after: 4s}}
        connections:
          - {from: a, to: sink}
        """,
        {"a": 1, "sink": 0},
        "a running, sink asleep",
    )
    sent = range(500)
    net.send("a", sent)
    net.account(sent, timeout=60, label="a sleeping processor woken by its upstream")
    net.wait(lambda: net.running({"sink": 0}), 60, "sink asleep again")
    scaled = [e["text"] for e in net.api("GET", "/events") if e["kind"] == "scale"]
    print(*scaled, sep="\n")
    assert scaled[0].startswith("scaled sink 0 → 1: backlog"), scaled
    assert scaled[-1].startswith("scaled sink 1 → 0"), scaled
