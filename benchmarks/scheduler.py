"""Time of the control plane's placement (``elasticcode.network.scheduler.place``) on a simulated fleet.

The fleet: ``--agents`` agents of ``--capacity`` slots; half of them alone on their host, the
other half four to a host; every host in one of three zones (label ``zone``), every tenth
agent with ``gpu=true``. The demands: ``--instances`` instances in demands of
``--per-demand`` each; every fifth demand needs ``zone=a``, every twentieth ``gpu=true``, the
rest may run anywhere. Four figures, each the median (and min, max) of ``--rounds`` calls:

- everything placed from scratch;
- placed again after one demand is scaled up by 5 (the rest kept where it is);
- placed again after one agent is lost (its instances move, nothing else);
- placed again after 10% of the agents are lost.

"moved" is how many running instances got another agent; "waiting" how many found none.

    .venv/bin/python benchmarks/scheduler.py
    .venv/bin/python benchmarks/scheduler.py --agents 5000 --instances 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence

from elasticcode.network.scheduler import AgentSlot, Demand, Placement, place


def fleet(agents: int, capacity: int) -> list[AgentSlot]:
    out: list[AgentSlot] = []
    host = 0
    while len(out) < agents:
        per_host = 1 if len(out) < agents // 2 else 4
        zone = "abc"[host % 3]
        for _ in range(min(per_host, agents - len(out))):
            n = len(out)
            labels = {"zone": zone}
            if n % 10 == 0:
                labels["gpu"] = "true"
            out.append(AgentSlot(f"agent-{n:05d}", f"host-{host:05d}", capacity, labels))
        host += 1
    return out


def wanted(instances: int, per_demand: int) -> list[Demand]:
    out: list[Demand] = []
    j = 0
    left = instances
    while left > 0:
        count = min(per_demand, left)
        labels: dict[str, str] = {}
        if j % 20 == 0:
            labels = {"gpu": "true"}
        elif j % 5 == 0:
            labels = {"zone": "a"}
        out.append(Demand(f"flow{j % 7}/p{j:05d}", count, labels))
        left -= count
        j += 1
    return out


def waiting(p: Placement) -> int:
    return sum(slots.count(None) for slots in p.assign.values())


def timed(rounds: int, call: Callable[[], Placement]) -> tuple[list[float], Placement]:
    times: list[float] = []
    result = call()  # a first call to warm up; not counted
    for _ in range(rounds):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000)
    return times, result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--per-demand", type=int, default=20, help="instances per demand")
    ap.add_argument("--capacity", type=int, default=16, help="slots per agent")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1, help="which agents the 10%% loss takes")
    args = ap.parse_args(argv)

    agents = fleet(args.agents, args.capacity)
    demands = wanted(args.instances, args.per_demand)
    hosts = len({a.host for a in agents})
    print(
        f"{len(agents)} agents on {hosts} hosts, {sum(a.capacity for a in agents)} slots; "
        f"{len(demands)} demands, {sum(d.count for d in demands)} instances; "
        f"{platform.python_implementation()} {platform.python_version()}"
    )

    rows: list[tuple[str, list[float], Placement]] = []
    times, base = timed(args.rounds, lambda: place(demands, agents))
    rows.append(("from scratch", times, base))

    plain = next(d for d in demands if not d.labels)
    scaled = [Demand(d.key, d.count + 5, d.labels) if d is plain else d for d in demands]
    times, result = timed(args.rounds, lambda: place(scaled, agents, base.assign))
    rows.append((f"{plain.key} scaled up by 5", times, result))

    loaded: dict[str, int] = {}
    for slots in base.assign.values():
        for aid in slots:
            if aid is not None:
                loaded[aid] = loaded.get(aid, 0) + 1
    victim = max(sorted(loaded), key=lambda aid: loaded[aid]) if loaded else agents[0].id
    rest = [a for a in agents if a.id != victim]
    times, result = timed(args.rounds, lambda: place(demands, rest, base.assign))
    rows.append((f"1 agent lost ({loaded.get(victim, 0)} instances)", times, result))

    lost = set(random.Random(args.seed).sample([a.id for a in agents], len(agents) // 10))
    fewer = [a for a in agents if a.id not in lost]
    times, result = timed(args.rounds, lambda: place(demands, fewer, base.assign))
    rows.append((f"{len(lost)} agents lost (10%)", times, result))

    width = max(len(name) for name, _, _ in rows)
    print(f"\nmilliseconds per call, {args.rounds} rounds:")
    print(f"{'':{width}}  {'median':>8} {'min':>8} {'max':>8}  {'moved':>6} {'waiting':>7}")
    for name, times, result in rows:
        print(
            f"{name:{width}}  {statistics.median(times):8.1f} {min(times):8.1f} "
            f"{max(times):8.1f}  {result.moved:6d} {waiting(result):7d}"
        )


if __name__ == "__main__":
    main()
