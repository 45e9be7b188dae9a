"""The placement of processor instances on agents (``elasticcode.network.scheduler``)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elasticcode.network.scheduler import AgentSlot, Demand, Placement, place, rebalance

Current = Mapping[str, Sequence[str | None]]


def agents_on(
    hosts: dict[str, list[int]], labels: Mapping[str, str] | None = None
) -> list[AgentSlot]:
    """Agents ``<host>-<n>`` with the given capacities, per host."""
    return [
        AgentSlot(f"{host}-{n}", host, cap, labels or {})
        for host, caps in hosts.items()
        for n, cap in enumerate(caps)
    ]


def load(placement: Placement) -> Counter[str]:
    return Counter(aid for slots in placement.assign.values() for aid in slots if aid is not None)


def check_invariants(
    placement: Placement, demands: Sequence[Demand], agents: Sequence[AgentSlot]
) -> None:
    by_id = {a.id: a for a in agents}
    assert set(placement.assign) == {d.key for d in demands}
    for aid, n in load(placement).items():
        assert n <= by_id[aid].capacity, f"{aid} runs {n} > {by_id[aid].capacity}"
    for d in demands:
        slots = placement.assign[d.key]
        assert len(slots) == d.count
        for slot in slots:
            if slot is not None:
                labels = by_id[slot].labels
                assert all(labels.get(k) == v for k, v in d.labels.items())
        assert (d.key in placement.pending) == (None in slots)


def reference(
    demands: Sequence[Demand], agents: Sequence[AgentSlot], current: Current | None = None
) -> tuple[dict[str, list[str | None]], int]:
    """The rules written as plainly as possible: a scan of every agent for every instance."""
    current = current or {}
    by_id = {a.id: a for a in agents}

    def fits(d: Demand, a: AgentSlot) -> bool:
        return all(a.labels.get(k) == v for k, v in d.labels.items())

    assign: dict[str, list[str | None]] = {}
    kept: dict[str, list[tuple[int, str]]] = {}
    for d in sorted(demands, key=lambda d: d.key):
        slots: list[str | None] = [None] * d.count
        for i, aid in enumerate(list(current.get(d.key, []))[: d.count]):
            if aid in by_id and fits(d, by_id[aid]):
                slots[i] = aid
                kept.setdefault(aid, []).append((i, d.key))
        assign[d.key] = slots
    for aid, items in kept.items():
        for i, key in sorted(items)[by_id[aid].capacity :]:
            assign[key][i] = None
    used = load(Placement(assign, {}, 0))
    room = {d.key: sum(a.capacity for a in agents if fits(d, a)) for d in demands}
    for d in sorted(demands, key=lambda d: (room[d.key], d.key)):
        slots = assign[d.key]
        on_host = Counter(by_id[aid].host for aid in slots if aid is not None)
        for i in range(d.count):
            if slots[i] is not None:
                continue
            free = [a for a in agents if fits(d, a) and used[a.id] < a.capacity]
            if not free:
                break
            best = min(
                free,
                key=lambda a: (on_host[a.host], used[a.id] / a.capacity, used[a.id], a.id),
            )
            slots[i] = best.id
            used[best.id] += 1
            on_host[best.host] += 1
    moved = sum(
        1
        for d in demands
        for i, aid in enumerate(list(current.get(d.key, []))[: d.count])
        if aid is not None and assign[d.key][i] != aid
    )
    return assign, moved


# -- capacity and labels --------------------------------------------------------------------


def test_capacity_is_never_exceeded_and_the_rest_waits() -> None:
    agents = agents_on({"h1": [3], "h2": [2]})
    demands = [Demand("f/a", 4), Demand("f/b", 3)]
    result = place(demands, agents)
    check_invariants(result, demands, agents)
    assert load(result) == {"h1-0": 3, "h2-0": 2}
    assert result.assign["f/a"].count(None) == 0
    assert result.assign["f/b"].count(None) == 2
    assert set(result.pending) == {"f/b"}
    reason = result.pending["f/b"]
    assert reason.startswith("2 of 3 instances wait: ")
    assert "start another agent or raise --max-workers" in reason


def test_gpu_demand_lands_only_on_gpu_agents() -> None:
    agents = agents_on({"cpu1": [8], "cpu2": [8]}) + agents_on({"gpu1": [2]}, {"gpu": "true"})
    demands = [Demand("f/train", 2, {"gpu": "true"}), Demand("f/etl", 4)]
    # f/etl sorts first but may run anywhere: f/train, with fewer eligible slots, goes first
    result = place(demands, agents)
    check_invariants(result, demands, agents)
    assert result.assign["f/train"] == ["gpu1-0", "gpu1-0"]
    assert result.pending == {}
    # the gpu agent is full now: a third gpu instance waits, it does not go to a cpu agent
    demands[0] = Demand("f/train", 3, {"gpu": "true"})
    again = place(demands, agents, result.assign)
    assert again.assign["f/train"] == ["gpu1-0", "gpu1-0", None]
    assert "no agent with labels gpu=true has a free slot" in again.pending["f/train"]
    assert "--label gpu=true" in again.pending["f/train"]


def test_labels_must_all_match_with_the_same_value() -> None:
    agents = [
        AgentSlot("a", "h1", 4, {"gpu": "true", "zone": "eu"}),
        AgentSlot("b", "h2", 4, {"gpu": "false", "zone": "us"}),
        AgentSlot("c", "h3", 4, {"zone": "us"}),
    ]
    demands = [Demand("f/x", 3, {"gpu": "true", "zone": "us"}), Demand("f/y", 2, {"zone": "us"})]
    result = place(demands, agents)
    assert result.assign["f/x"] == [None, None, None]
    reason = result.pending["f/x"]
    assert reason.startswith("3 of 3 instances wait: no agent has labels gpu=true, zone=us")
    assert "--label gpu=true --label zone=us" in reason
    assert set(result.assign["f/y"]) == {"b", "c"}


def test_no_agent_at_all() -> None:
    result = place([Demand("f/a", 2)], [])
    assert result.assign == {"f/a": [None, None]}
    assert result.pending["f/a"] == "2 of 2 instances wait: no agent is connected; start an agent"


def test_zero_count_and_zero_capacity() -> None:
    agents = [AgentSlot("idle", "h1", 0), AgentSlot("busy", "h2", 1)]
    result = place([Demand("f/a", 0), Demand("f/b", 2)], agents)
    assert result.assign == {"f/a": [], "f/b": ["busy", None]}
    assert set(result.pending) == {"f/b"}
    assert result.pending["f/b"].startswith("1 of 2 instances waits: ")


# -- spread ---------------------------------------------------------------------------------


def test_instances_spread_over_hosts_before_load() -> None:
    # one host has far more room (a big agent and two more agents), yet each host gets one
    agents = agents_on({"big": [64, 8, 8], "small1": [1], "small2": [1]})
    result = place([Demand("f/a", 3)], agents)
    hosts = sorted(aid.split("-")[0] for aid in result.assign["f/a"] if aid)
    assert hosts == ["big", "small1", "small2"]


def test_spread_counts_instances_kept_on_a_host() -> None:
    agents = agents_on({"h1": [4, 4], "h2": [4]})
    first = place([Demand("f/a", 1)], agents, {"f/a": ["h1-1"]})
    assert first.assign["f/a"] == ["h1-1"]
    # the second instance avoids h1 although h1-0 is empty and the least loaded
    second = place([Demand("f/a", 2)], agents, first.assign)
    assert second.assign["f/a"] == ["h1-1", "h2-0"]
    assert second.moved == 0


def test_spread_is_per_demand_and_load_breaks_ties() -> None:
    agents = agents_on({"h1": [4], "h2": [2]})
    result = place([Demand("f/a", 2), Demand("f/b", 2)], agents)
    # f/a: one per host; f/b: one per host as well, though h2 is then full (2 of 2)
    assert result.assign == {"f/a": ["h1-0", "h2-0"], "f/b": ["h1-0", "h2-0"]}
    more = place([Demand("f/a", 2), Demand("f/b", 2), Demand("f/c", 3)], agents, result.assign)
    assert more.assign["f/c"] == ["h1-0", "h1-0", None]


def test_least_loaded_fraction_first_then_used_then_id() -> None:
    agents = [AgentSlot("b", "h1", 10), AgentSlot("a", "h2", 2), AgentSlot("c", "h3", 10)]
    current = {"f/old": ["b", "a"]}  # b at 1/10, a at 1/2, c empty
    result = place([Demand("f/old", 2), Demand("f/new", 3)], agents, current)
    assert result.assign["f/new"] == ["c", "b", "a"]
    # all equal: the smallest id
    result = place([Demand("f/x", 1)], [AgentSlot("z", "h1", 2), AgentSlot("y", "h2", 2)])
    assert result.assign["f/x"] == ["y"]


# -- stability ------------------------------------------------------------------------------


def cluster() -> tuple[list[AgentSlot], list[Demand]]:
    agents = agents_on({f"h{i}": [4, 4] for i in range(6)}) + agents_on(
        {"g1": [8], "g2": [8]}, {"gpu": "true"}
    )
    demands = [Demand(f"f/p{i}", 3 + i % 4) for i in range(8)]
    demands.append(Demand("f/train", 5, {"gpu": "true"}))
    return agents, demands


def test_scaling_one_demand_leaves_the_others_alone() -> None:
    agents, demands = cluster()
    base = place(demands, agents)
    assert base.pending == {}
    for count in (0, 1, 9, 15):
        changed = [Demand(d.key, count) if d.key == "f/p3" else d for d in demands]
        result = place(changed, agents, base.assign)
        check_invariants(result, changed, agents)
        for d in demands:
            if d.key != "f/p3":
                assert result.assign[d.key] == base.assign[d.key]
        kept = min(count, demands[3].count)
        assert result.assign["f/p3"][:kept] == base.assign["f/p3"][:kept]
        assert result.moved == 0


def test_scaling_down_keeps_the_lower_indices() -> None:
    agents, demands = cluster()
    base = place(demands, agents)
    down = [Demand("f/p6", 2) if d.key == "f/p6" else d for d in demands]
    result = place(down, agents, base.assign)
    assert result.assign["f/p6"] == base.assign["f/p6"][:2]
    assert result.moved == 0


def test_losing_an_agent_moves_only_its_instances() -> None:
    agents, demands = cluster()
    base = place(demands, agents)
    victim = "h2-1"
    on_victim = sum(slots.count(victim) for slots in base.assign.values())
    assert on_victim > 0
    rest = [a for a in agents if a.id != victim]
    result = place(demands, rest, base.assign)
    check_invariants(result, demands, rest)
    assert result.moved == on_victim
    assert result.pending == {}
    for key, slots in base.assign.items():
        for i, aid in enumerate(slots):
            if aid != victim:
                assert result.assign[key][i] == aid
            else:
                assert result.assign[key][i] not in (None, victim)


def test_demands_removed_from_current_free_their_slots() -> None:
    agents = [AgentSlot("a", "h1", 2)]
    base = place([Demand("f/old", 2)], agents)
    result = place([Demand("f/new", 2)], agents, base.assign)
    assert result.assign == {"f/new": ["a", "a"]}
    assert result.moved == 0


def test_label_change_moves_the_instances_that_no_longer_fit() -> None:
    agents = [AgentSlot("a", "h1", 4, {"zone": "eu"}), AgentSlot("b", "h2", 4, {"zone": "us"})]
    base = place([Demand("f/x", 2)], agents)
    assert set(base.assign["f/x"]) == {"a", "b"}
    result = place([Demand("f/x", 2, {"zone": "us"})], agents, base.assign)
    assert result.assign["f/x"] == ["b", "b"]
    assert result.moved == 1


def test_capacity_shrink_replaces_the_highest_indices() -> None:
    current = {"f/x": ["a", "a", "a", "a"], "f/y": ["a"]}  # a had capacity 5
    shrunk = [AgentSlot("a", "h1", 2), AgentSlot("b", "h2", 4)]
    result = place([Demand("f/x", 4), Demand("f/y", 1)], shrunk, current)
    # on a: f/x#0, f/y#0 (index 0 before index 1), then f/x#1 ... are the excess
    assert result.assign == {"f/x": ["a", "b", "b", "b"], "f/y": ["a"]}
    assert result.moved == 3


def test_instances_without_agent_in_current_are_not_moves() -> None:
    agents = [AgentSlot("a", "h1", 4)]
    result = place([Demand("f/x", 3)], agents, {"f/x": [None, "a", "gone"]})
    assert result.assign["f/x"] == ["a", "a", "a"]
    assert result.moved == 1  # only the one that ran on the lost agent "gone"


# -- determinism and validation -------------------------------------------------------------


def test_same_input_same_output_whatever_the_order() -> None:
    agents, demands = cluster()
    base = place(demands, agents)
    rng = random.Random(7)
    for _ in range(5):
        a = agents[:]
        d = demands[:]
        rng.shuffle(a)
        rng.shuffle(d)
        again = place(d, a)
        assert again.assign == base.assign
        assert again.pending == base.pending


def test_validation() -> None:
    with pytest.raises(ValueError, match="count must be 0 or more, not -1"):
        Demand("f/x", -1)
    with pytest.raises(ValueError, match="capacity must be 0 or more, not -2"):
        AgentSlot("a", "h1", -2)
    with pytest.raises(ValueError, match="agent id 'a' appears more than once"):
        place([], [AgentSlot("a", "h1", 1), AgentSlot("a", "h2", 1)])
    with pytest.raises(ValueError, match="demand key 'f/x' appears more than once"):
        place([Demand("f/x", 1), Demand("f/x", 2)], [])


def test_labels_are_copied_and_slots_are_hashable() -> None:
    labels = {"gpu": "true"}
    agent = AgentSlot("a", "h1", 1, labels)
    labels["gpu"] = "false"
    assert agent.labels == {"gpu": "true"}
    assert hash(agent) == hash(AgentSlot("a", "h1", 1, {"gpu": "true"}))
    assert Demand("f/x", 1, {"gpu": "true"}) == Demand("f/x", 1, {"gpu": "true"})


def test_large_cluster_from_scratch_is_fast() -> None:
    import time

    agents = [AgentSlot(f"a{i:04d}", f"h{i // 3}", 16, {"zone": "abc"[i % 3]}) for i in range(1000)]
    demands = [Demand(f"f/p{i:03d}", 20, {"zone": "a"} if i % 5 == 0 else {}) for i in range(500)]
    start = time.perf_counter()
    result = place(demands, agents)
    elapsed = time.perf_counter() - start
    assert result.pending == {}
    check_invariants(result, demands, agents)
    assert elapsed < 1.0, f"{elapsed:.3f} s"


# -- properties -----------------------------------------------------------------------------

LABEL_SETS: list[dict[str, str]] = [
    {},
    {"gpu": "true"},
    {"zone": "a"},
    {"gpu": "true", "zone": "b"},
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Demand], list[AgentSlot], dict[str, list[str | None]]]:
    n_agents = draw(st.integers(0, 8))
    agents = [
        AgentSlot(
            f"a{i}",
            f"h{draw(st.integers(0, 3))}",
            draw(st.integers(0, 5)),
            draw(st.sampled_from(LABEL_SETS)),
        )
        for i in range(n_agents)
    ]
    labelled = draw(st.booleans())
    demands = [
        Demand(
            f"k{j}",
            draw(st.integers(0, 6)),
            draw(st.sampled_from(LABEL_SETS)) if labelled else {},
        )
        for j in range(draw(st.integers(0, 5)))
    ]
    ids: list[str | None] = [None, "gone", *(a.id for a in agents)]
    current = {
        f"k{j}": draw(st.lists(st.sampled_from(ids), max_size=7))
        for j in range(6)
        if draw(st.booleans())
    }
    return demands, agents, current


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_property_matches_the_plain_rules(
    scenario: tuple[list[Demand], list[AgentSlot], dict[str, list[str | None]]],
) -> None:
    demands, agents, current = scenario
    result = place(demands, agents, current)
    check_invariants(result, demands, agents)
    by_id = {a.id: a for a in agents}

    # the same placement as a scan of every agent for every instance
    assign, moved = reference(demands, agents, current)
    assert result.assign == assign
    assert result.moved == moved

    # stability: an agent that keeps no more than its capacity keeps all of it
    valid: dict[str, list[tuple[str, int]]] = {}
    for d in demands:
        for i, aid in enumerate(current.get(d.key, [])[: d.count]):
            if aid in by_id and all(by_id[aid].labels.get(k) == v for k, v in d.labels.items()):
                valid.setdefault(aid, []).append((d.key, i))
    for aid, items in valid.items():
        if len(items) <= by_id[aid].capacity:
            assert all(result.assign[key][i] == aid for key, i in items)

    # everything is placed when no demand has labels and the slots suffice
    if all(not d.labels for d in demands):
        if sum(d.count for d in demands) <= sum(a.capacity for a in agents):
            assert result.pending == {}
        else:
            assert result.pending

    # spread: a host that got a new instance of k holds at most one more of k than any host
    # with an eligible agent that still has a free slot
    used = load(result)
    for d in demands:
        slots = result.assign[d.key]
        before = current.get(d.key, [])
        on_host = Counter(by_id[aid].host for aid in slots if aid is not None)
        new_hosts = {
            by_id[aid].host
            for i, aid in enumerate(slots)
            if aid is not None and (i >= len(before) or before[i] != aid)
        }
        room = [
            a
            for a in agents
            if used[a.id] < a.capacity and all(a.labels.get(k) == v for k, v in d.labels.items())
        ]
        for host in new_hosts:
            for a in room:
                assert on_host[host] - 1 <= on_host[a.host]


# -- pack and rebalancing ---------------------------------------------------------------------


def test_pack_fills_the_busiest_agent_first() -> None:
    agents = agents_on({"h1": [4], "h2": [4], "h3": [4]})
    other = Demand("f/other", 1)
    packed = Demand("f/packed", 5, strategy="pack")
    plan = place([other, packed], agents)
    # other takes h1-0 (the smallest id); packed fills it, then the next agent
    assert Counter(plan.assign["f/packed"]) == {"h1-0": 3, "h2-0": 2}
    assert rebalance([other, packed], agents, plan.assign, limit=10) == []  # pack stays
    with pytest.raises(ValueError, match="spread or pack"):
        Demand("f/x", 1, strategy="fill")


def test_a_new_agent_takes_a_share_a_few_moves_at_a_time() -> None:
    three = agents_on({"h1": [3], "h2": [3], "h3": [3]})
    demands = [Demand("f/a", 6), Demand("f/b", 3)]
    plan = place(demands, three)
    before = {k: list(v) for k, v in plan.assign.items()}
    four = [*three, AgentSlot("h4-0", "h4", 3)]
    again = place(demands, four, before)
    assert again.assign == before and again.moved == 0  # placement alone keeps them all
    moves = rebalance(demands, four, again.assign, limit=1)
    assert len(moves) == 1 and moves[0].target == "h4-0"
    rounds = [moves]
    while moves := rebalance(demands, four, again.assign, limit=1):
        rounds.append(moves)
    spread = Counter(aid for where in again.assign.values() for aid in where)
    assert spread["h4-0"] == 2 and max(spread.values()) - min(spread.values()) <= 1, spread
    assert len(rounds) == 2  # two moves give h4 its share (9 instances over 4 agents)
    assert all(len({m.key for m in r}) == len(r) for r in rounds)
    for d in demands:  # every instance still placed, on agents in capacity
        check_invariants(Placement(again.assign, {}, 0), demands, four)
        assert None not in again.assign[d.key]


def test_rebalancing_evens_a_demand_over_hosts_and_then_stops() -> None:
    agents = agents_on({"h1": [4], "h2": [4]})
    assign: dict[str, list[str | None]] = {"f/a": ["h1-0"] * 4}  # all on one host
    demands = [Demand("f/a", 4)]
    moves = rebalance(demands, agents, assign, limit=10)
    assert [m.reason for m in moves] == ["spread"]  # one instance of a demand at a time
    rebalance(demands, agents, assign, limit=10)
    assert Counter(assign["f/a"]) == {"h1-0": 2, "h2-0": 2}
    assert rebalance(demands, agents, assign, limit=10) == []  # balanced: nothing more


def test_rebalancing_leaves_single_instances_and_labels_alone() -> None:
    agents = [
        AgentSlot("a", "h1", 4),
        AgentSlot("b", "h2", 4, {"gpu": "true"}),
        AgentSlot("c", "h3", 4),
    ]
    demands = [Demand("f/one", 1), Demand("f/gpu", 3, {"gpu": "true"}), Demand("f/x", 3)]
    assign: dict[str, list[str | None]] = {
        "f/one": ["a"],
        "f/gpu": ["b", "b", "b"],
        "f/x": ["a", "a", "a"],
    }
    moves = rebalance(demands, agents, assign, limit=10)
    assert [(m.key, m.target) for m in moves] == [("f/x", "c")]
    assert assign["f/one"] == ["a"] and assign["f/gpu"] == ["b", "b", "b"]
