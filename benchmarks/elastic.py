"""Autoscaling and rebalancing over a simulated fleet: the leader's own code, simulated time.

Every simulated second, as the leading server does each round:

1. each scaled processor's view (what it took in, how busy its instances were, how many
   run, what waits) goes to ``elasticcode.autoscale.Autoscaler.decide``;
2. the counts it decided are placed with ``elasticcode.network.scheduler.place`` (instances
   stay where they run) and evened out with ``rebalance``, a few moves at a time and the next
   only once the moved instances run again (as ``network.leader`` does).

The load: ``--processors`` processors, each instance working through 50 to 500 messages a
second (drawn per processor), a steady flow that keeps ``--busy`` of the fleet's slots at
work (each processor starts with the instances that needs), and bursts
(at random, about one per processor every ``--burst-every`` seconds) of 30 to 300 seconds'
work of one instance arriving over 10 s. The fleet: ``--agents`` agents of ``--capacity``
slots, one per host; at a third of the run a tenth more join, at two thirds a twentieth of
them are lost. An instance that starts (new or moved) takes ``--start`` seconds before it
works.

Printed: the moves (placement and rebalancing), how long the fleet took to even out after
the join and after the loss (until the busiest agent runs at most two instances more than
the idlest, as before the change), how long bursts took to clear, and the leader's time per
round. ``--plot FILE`` draws backlog and instances over time (needs
matplotlib: ``pip install -e '.[bench]'``).

    .venv/bin/python benchmarks/elastic.py
    .venv/bin/python benchmarks/elastic.py --agents 1000 --seconds 900 --plot docs/elastic.png
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import deque
from typing import Any

from elasticcode.autoscale import Autoscaler
from elasticcode.flow import Flow
from elasticcode.network.leader import MOVE_TIMEOUT, moves_at_once
from elasticcode.network.scheduler import AgentSlot, Demand, place, rebalance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--capacity", type=int, default=8)
    ap.add_argument("--processors", type=int, default=200)
    ap.add_argument("--max", type=int, default=64, help="scale max of every processor")
    ap.add_argument("--seconds", type=int, default=900)
    ap.add_argument("--busy", type=float, default=0.4, help="share of slots the steady flow needs")
    ap.add_argument("--burst-every", type=float, default=300.0)
    ap.add_argument("--start", type=float, default=2.0, help="seconds an instance takes to start")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--plot", metavar="FILE", help="draw backlog and instances (PNG)")
    args = ap.parse_args()
    rnd = random.Random(args.seed)

    names = [f"p{j:03d}" for j in range(args.processors)]
    steady = args.busy * args.agents * args.capacity / args.processors  # instances' worth
    warm = max(1, min(args.max, round(steady)))  # each starts with what the steady flow needs
    doc = {
        "name": "sim",
        "processors": [
            {
                "name": n,
                "code": "m:f",
                "instances": warm,
                "scale": {
                    "min": 1,
                    "max": args.max,
                    "target_latency": "2s",
                    "up_after": "5s",
                    "down_after": "60s",
                },
            }
            for n in names
        ],
    }
    flow = Flow.from_document(doc)
    rate = {n: rnd.uniform(50, 500) for n in names}  # per instance, per second
    agents = [AgentSlot(f"a{i:05d}", f"h{i:05d}", args.capacity) for i in range(args.agents)]
    join_at, lose_at = args.seconds // 3, 2 * args.seconds // 3
    joining = [
        AgentSlot(f"a{i:05d}", f"h{i:05d}", args.capacity)
        for i in range(args.agents, args.agents + args.agents // 10)
    ]

    bursts: dict[str, deque[tuple[int, float]]] = {n: deque() for n in names}
    for n in names:  # (start second, messages a second for 10 s)
        t = rnd.expovariate(1 / args.burst_every)
        while t < args.seconds - 120:
            work = rnd.uniform(30, 300) * rate[n]
            bursts[n].append((int(t), work / 10))
            t += rnd.expovariate(1 / args.burst_every)

    scaler = Autoscaler()
    counts = dict.fromkeys(names, warm)
    current: dict[str, list[str | None]] = {}
    ready_at: dict[tuple[str, int], float] = {}  # instance -> when it works (after a start)
    moving: dict[tuple[str, int], float] = {}  # moved by rebalancing, until it runs
    backlog = dict.fromkeys(names, 0.0)
    arriving: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    # t, backlog, instances, moves so far, imbalance (instances on the busiest agent less
    # those on the idlest)
    series: list[tuple[int, float, int, int, int]] = []
    placed_moves = rebalanced = 0
    reasons = {"spread": 0, "load": 0}
    round_ms: list[float] = []
    waits: list[float] = []  # per burst: seconds from its start until its backlog cleared
    open_bursts: dict[str, float] = {}
    for t in range(args.seconds):
        if t == join_at:
            agents = agents + joining
        if t == lose_at:
            lost = set(rnd.sample([a.id for a in agents], len(agents) // 20))
            agents = [a for a in agents if a.id not in lost]
        # the work of this second
        processors: dict[str, Any] = {}
        for n in names:
            while bursts[n] and bursts[n][0][0] <= t:
                start, per_s = bursts[n].popleft()
                arriving[n].append((start + 10, per_s))
                open_bursts.setdefault(n, float(start))
            arriving[n] = [(end, r) for end, r in arriving[n] if end > t]
            came = steady * rate[n] + sum(r for _, r in arriving[n])
            where = current.get(n, [])
            running = sum(
                1 for i, aid in enumerate(where) if aid is not None and ready_at.get((n, i), 0) <= t
            )
            can = running * rate[n]
            done = min(backlog[n] + came, can)
            backlog[n] = backlog[n] + came - done
            if n in open_bursts and backlog[n] < rate[n] * 2 and not arriving[n]:
                waits.append(t - open_bursts.pop(n))
            processors[n] = {
                "rates": {"in": done},
                "busy": done / can if can else 0.0,
                "instances": running,
                "waiting": int(backlog[n]),
            }
        view = {"interval": 1.0, "processors": processors}
        # the leader's round
        began = time.perf_counter()
        for d in scaler.decide(flow, view, now=float(t)):
            counts[d.processor] = d.after
        demands = [Demand(f"sim/{n}", counts[n]) for n in names]
        keyed = {f"sim/{n}": w for n, w in current.items()}
        plan = place(demands, agents, keyed)
        placed_moves += plan.moved
        moving = {
            k: at for k, at in moving.items() if ready_at.get(k, 0) > t and t - at < MOVE_TIMEOUT
        }
        moves = []
        if not moving and not plan.pending:
            total = sum(counts.values())
            moves = rebalance(demands, agents, plan.assign, moves_at_once(total))
        round_ms.append((time.perf_counter() - began) * 1000)
        for m in moves:
            moving[(m.key.split("/", 1)[1], m.instance)] = t
        rebalanced += len(moves)
        for m in moves:
            reasons[m.reason] += 1
        new = {key.split("/", 1)[1]: where for key, where in plan.assign.items()}
        for n, where in new.items():
            old = current.get(n, [])
            for i, aid in enumerate(where):
                if aid is not None and (i >= len(old) or old[i] != aid):
                    ready_at[(n, i)] = t + args.start
        current = new
        per_agent = dict.fromkeys((a.id for a in agents), 0)
        for w in current.values():
            for aid in w:
                if aid is not None:
                    per_agent[aid] += 1
        spread = max(per_agent.values()) - min(per_agent.values())
        instances = sum(per_agent.values())
        series.append((t, sum(backlog.values()), instances, placed_moves + rebalanced, spread))

    peak = max(series, key=lambda s: s[2])
    print(
        f"{args.agents} agents x {args.capacity} slots, {args.processors} processors "
        f"(scale 1..{args.max}), {args.seconds} simulated seconds"
    )
    print(f"instances: peak {peak[2]} at {peak[0]}s, at the end {series[-1][2]}")
    print(
        f"moves: {placed_moves} by placement (lost agents), {rebalanced} by rebalancing "
        f"({reasons['spread']} to spread a processor over hosts, {reasons['load']} for load)"
    )
    for phase, at in (("join", join_at), ("loss", lose_at)):
        even = next((s[0] for s in series[at:] if s[4] <= 2), None)
        took = "not within the run" if even is None else f"evened out {even - at}s after"
        print(f"{phase} of agents at {at}s: busiest less idlest {series[at][4]}, {took}")
    if waits:
        waits.sort()
        print(
            f"bursts: {len(waits)}, cleared in median {statistics.median(waits):.0f}s, "
            f"p90 {waits[int(len(waits) * 0.9)]:.0f}s, max {waits[-1]:.0f}s"
        )
    round_ms.sort()
    print(
        f"leader round (decide + place + rebalance): median {statistics.median(round_ms):.1f} ms, "
        f"p99 {round_ms[int(len(round_ms) * 0.99)]:.1f} ms, max {round_ms[-1]:.1f} ms"
    )
    if args.plot:
        draw(args.plot, series, join_at, lose_at)


def draw(
    path: str, series: list[tuple[int, float, int, int, int]], join_at: int, lose_at: int
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in series]
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    top.plot(t, [s[1] / 1000 for s in series], color="tab:red")
    top.set_ylabel("backlog (k messages)")
    mid.plot(t, [s[2] for s in series], color="tab:blue")
    mid.set_ylabel("instances")
    low.plot(t, [s[4] for s in series], color="tab:gray", label="busiest less idlest agent")
    low.set_ylabel("imbalance (instances)")
    low.legend(loc="upper right")
    low.set_xlabel("seconds")
    for ax in (top, mid, low):
        ax.axvline(join_at, color="green", linestyle=":", label="agents join")
        ax.axvline(lose_at, color="black", linestyle=":", label="agents lost")
        ax.grid(alpha=0.3)
    top.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
