"""Placement of processor instances on agents: the control plane's scheduling decision.

``place`` takes what is wanted (a ``Demand`` per processor: how many instances, which agent
labels they need), what is there (an ``AgentSlot`` per connected agent: its host, how many
worker processes it may run, its labels) and, optionally, where the instances run now. It
returns, for each demand, the agent of every instance index (``Placement.assign``).

The rules, in the order they apply:

1. **Stability first.** A live change (a processor scaled, an agent added or lost) must not
   disturb workers that can keep running. Instance ``i`` of key ``k`` stays on
   ``current[k][i]`` when that agent is still connected and still carries every label the
   demand asks for. Indices at or above a demand's new ``count`` are dropped; keys of
   ``current`` that are no longer demanded are dropped. If an agent's capacity shrank below
   what it keeps, its excess is placed again: the instances with the highest indices (then
   the greatest keys) go first.
2. **Free slots.** An agent's free slots are its capacity less the instances kept or placed
   on it. No agent ever gets more instances than its capacity.
3. **Choice of agent for an instance to place.** Among the agents that carry the demand's
   labels (every one, with the same value) and have a free slot, the one with, in this
   order, the fewest instances of the same key already on its *host* (a processor's
   instances spread over hosts, so that losing one machine loses as few of them as
   possible), the lowest load fraction (used / capacity), the fewest used slots, and the
   smallest id.
4. **What does not fit waits.** An instance with no eligible agent with a free slot gets
   ``None``, and its key gets a sentence in ``Placement.pending`` saying why and what to do.
5. **Scarce agents to those that need them.** Instances to place are handled demand by
   demand, the demands with the fewest slots on eligible agents first (then in order of
   key), so that a demand whose labels few agents carry gets those agents' slots before a
   demand that could run anywhere takes them.
6. **Determinism.** Instances are placed in order of index and ties are broken by agent id,
   so the same input gives the same output, whatever the order of ``demands`` and
   ``agents``.

7. **Rebalancing** (``rebalance``, after ``place``, a few moves per round): an instance of
   a ``spread`` demand of two or more instances moves when that evens out its hosts (a host
   with two more of it than another eligible host with a free slot), or the agents' load (an
   agent whose load fraction stays ``LOAD_GAP`` above another's after the move, with the
   demand's spread no worse). ``pack`` demands, and demands of one instance, stay where they run.

``Placement.moved`` counts the instances that had an agent in ``current`` (at an index still
wanted) and now have another one, or none: the running workers the change disturbs. Instances
that are new, or that had no agent, are not counted.

The cost is about O(I log H) for I instances to place over H hosts: per label requirement,
the eligible agents are kept in a heap per host and the hosts in a heap by their best agent,
re-validated lazily (an entry whose agent's load changed since it was pushed is recomputed
and pushed back when it reaches the top; loads only grow while placing, so the first valid
top is the true minimum).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["AgentSlot", "Demand", "Move", "Placement", "place", "rebalance"]


@dataclass(frozen=True, slots=True)
class AgentSlot:
    """An agent as the scheduler sees it."""

    id: str
    #: The agent's machine; several agents may share a host.
    host: str
    #: How many worker processes the agent may run.
    capacity: int
    #: The agent's labels (``--label key=value``); copied at construction.
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"agent {self.id!r}: capacity must be 0 or more, not {self.capacity}")
        object.__setattr__(self, "labels", dict(self.labels))


@dataclass(frozen=True, slots=True)
class Demand:
    """A processor's wanted instances."""

    #: The processor, e.g. ``"flow/processor"``.
    key: str
    #: How many instances of it should run.
    count: int
    #: Labels an agent must carry, every one with the same value, to run an instance.
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: ``spread`` (rules 3 and 7) or ``pack``: onto the busiest agent with a free slot.
    strategy: str = "spread"

    def __post_init__(self) -> None:
        if self.strategy not in ("spread", "pack"):
            raise ValueError(f"demand {self.key!r}: strategy is spread or pack")
        if self.count < 0:
            raise ValueError(f"demand {self.key!r}: count must be 0 or more, not {self.count}")
        object.__setattr__(self, "labels", dict(self.labels))


@dataclass(slots=True)
class Placement:
    """The result of ``place``."""

    #: Demand key -> the agent id of each instance index ``0..count-1`` (``None``: not placed).
    assign: dict[str, list[str | None]]
    #: Demand key -> why some of its instances could not be placed, and what to do about it.
    pending: dict[str, str]
    #: Instances that had an agent in ``current`` and now have another one or none.
    moved: int


# Heap entries. An agent: (load fraction, used slots, id, index in ``agents``). A host: the same
# three of its best agent, then the host. A host while one demand is placed: the instances of
# that demand on the host first.
_AgentEntry = tuple[float, int, str, int]
_HostEntry = tuple[float, int, str, str]
_LocalEntry = tuple[int, float, int, str, str]


class _Pool:
    """The agents eligible for one label requirement: a heap per host, a heap of hosts."""

    __slots__ = ("by_host", "caps", "heap", "used")

    def __init__(
        self, members: list[int], agents: Sequence[AgentSlot], used: list[int], caps: list[int]
    ) -> None:
        self.used = used
        self.caps = caps
        self.by_host: dict[str, list[_AgentEntry]] = {}
        for n in members:
            cap = caps[n]
            u = used[n]
            if u < cap:
                agent = agents[n]
                self.by_host.setdefault(agent.host, []).append((u / cap, u, agent.id, n))
        self.heap: list[_HostEntry] = []
        for host, entries in self.by_host.items():
            heapq.heapify(entries)
            best = entries[0]
            self.heap.append((best[0], best[1], best[2], host))
        heapq.heapify(self.heap)

    def top(self, host: str) -> _AgentEntry | None:
        """The best agent of ``host`` with a free slot, its entry brought up to date."""
        entries = self.by_host[host]
        used = self.used
        caps = self.caps
        while entries:
            entry = entries[0]
            n = entry[3]
            u = used[n]
            if u == entry[1]:
                return entry
            if u >= caps[n]:
                heapq.heappop(entries)
            else:
                heapq.heapreplace(entries, (u / caps[n], u, entry[2], n))
        return None

    def fill(
        self, slots: list[str | None], todo: list[int], on_host: dict[str, int], ids: list[str]
    ) -> int:
        """Place instances ``todo`` of one demand into ``slots``; return how many found room.

        ``on_host`` counts the demand's instances per host (those kept included) and is
        updated. Hosts that already hold some of the demand move from the pool's heap to a
        local one keyed by that count first; they go back when the demand is done.
        """
        heap = self.heap
        used = self.used
        local: list[_LocalEntry] = []
        placed = 0
        for i in todo:
            host = ""
            agent = -1
            # The best host that holds none of this demand yet, if there is one.
            while heap:
                _, u, aid, h = heap[0]
                best = self.top(h)
                if best is None:
                    heapq.heappop(heap)
                    continue
                if best[1] != u or best[2] != aid:
                    heapq.heapreplace(heap, (best[0], best[1], best[2], h))
                    continue
                heapq.heappop(heap)
                c = on_host.get(h, 0)
                if c == 0:
                    host, agent = h, best[3]
                    break
                heapq.heappush(local, (c, best[0], best[1], best[2], h))
            # Otherwise the best of the hosts that do.
            while agent < 0 and local:
                c, _, u, aid, h = local[0]
                best = self.top(h)
                if best is None:
                    heapq.heappop(local)
                    continue
                c_now = on_host.get(h, 0)
                if c_now != c or best[1] != u or best[2] != aid:
                    heapq.heapreplace(local, (c_now, best[0], best[1], best[2], h))
                    continue
                heapq.heappop(local)
                host, agent = h, best[3]
            if agent < 0:
                break
            slots[i] = ids[agent]
            used[agent] += 1
            on_host[host] = c = on_host.get(host, 0) + 1
            placed += 1
            best = self.top(host)
            if best is not None:
                heapq.heappush(local, (c, best[0], best[1], best[2], host))
        for _, _, _, _, h in local:
            best = self.top(h)
            if best is not None:
                heapq.heappush(heap, (best[0], best[1], best[2], h))
        return placed


def _labels_text(labels: frozenset[tuple[str, str]]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _pending_reason(
    waiting: int,
    count: int,
    need: frozenset[tuple[str, str]],
    members: list[int],
    agents: Sequence[AgentSlot],
) -> str:
    head = f"{waiting} of {_plural(count, 'instance')} wait"
    head += "s: " if waiting == 1 else ": "
    flags = " ".join(f"--label {k}={v}" for k, v in sorted(need))
    if not agents:
        return head + "no agent is connected; start an agent"
    if not members:
        return (
            head
            + f"no agent has labels {_labels_text(need)}; start an agent with {flags} "
            + "(or add those labels to one)"
        )
    slots = sum(agents[n].capacity for n in members)
    which = f"with labels {_labels_text(need)} " if need else ""
    start = f"start an agent with {flags}" if need else "start another agent"
    return (
        head
        + f"no agent {which}has a free slot ({_plural(slots, 'slot')} on"
        + f" {_plural(len(members), 'agent')}, all in use);"
        + f" {start} or raise --max-workers on one of them"
    )


def place(
    demands: Sequence[Demand],
    agents: Sequence[AgentSlot],
    current: Mapping[str, Sequence[str | None]] | None = None,
) -> Placement:
    """Assign every wanted instance an agent; see the module's docstring for the rules.

    ``current`` maps demand keys to the agent id of each instance index as it runs now
    (``None`` where an instance has none); ids of agents no longer in ``agents`` are allowed.
    Raises ``ValueError`` when two agents share an id or two demands share a key.
    """
    index: dict[str, int] = {}
    for n, agent in enumerate(agents):
        if agent.id in index:
            raise ValueError(f"agent id {agent.id!r} appears more than once")
        index[agent.id] = n
    ordered = sorted(demands, key=lambda d: d.key)
    for before, after in itertools.pairwise(ordered):
        if before.key == after.key:
            raise ValueError(f"demand key {before.key!r} appears more than once")
    if current is None:
        current = {}

    ids = [a.id for a in agents]
    hosts = [a.host for a in agents]
    caps = [a.capacity for a in agents]
    used = [0] * len(agents)
    groups: dict[frozenset[tuple[str, str]], list[int]] = {}
    signature: list[frozenset[tuple[str, str]]] = []
    for n, agent in enumerate(agents):
        sig = frozenset(agent.labels.items())
        signature.append(sig)
        groups.setdefault(sig, []).append(n)
    needs = [frozenset(d.labels.items()) for d in ordered]

    # 1. Keep what still may run where it runs.
    assign = _keep(ordered, needs, current, index, signature, caps, used)

    # 2. Place the rest, demand by demand: the fewest eligible slots first, then by key.
    members_of: dict[frozenset[tuple[str, str]], list[int]] = {}
    room: dict[frozenset[tuple[str, str]], int] = {}
    for need in needs:
        if need not in members_of:
            members = [n for sig, group in groups.items() if need <= sig for n in group]
            members.sort()
            members_of[need] = members
            room[need] = sum(caps[n] for n in members)
    pools: dict[frozenset[tuple[str, str]], _Pool] = {}
    pending: dict[str, str] = {}
    turn = sorted(range(len(ordered)), key=lambda j: (room[needs[j]], ordered[j].key))
    for j in turn:
        demand = ordered[j]
        need = needs[j]
        slots = assign[demand.key]
        todo = [i for i, aid in enumerate(slots) if aid is None]
        if not todo:
            continue
        members = members_of[need]
        if demand.strategy == "pack":
            placed = _pack(slots, todo, members, used, caps, ids)
            if placed < len(todo):
                pending[demand.key] = _pending_reason(
                    len(todo) - placed, demand.count, need, members, agents
                )
            continue
        pool = pools.get(need)
        if pool is None:
            pool = pools[need] = _Pool(members, agents, used, caps)
        on_host: dict[str, int] = {}
        for aid in slots:
            if aid is not None:
                h = hosts[index[aid]]
                on_host[h] = on_host.get(h, 0) + 1
        placed = pool.fill(slots, todo, on_host, ids)
        if placed < len(todo):
            pending[demand.key] = _pending_reason(
                len(todo) - placed, demand.count, need, members, agents
            )

    return Placement(assign=assign, pending=pending, moved=_moved(ordered, current, assign))


def _pack(
    slots: list[str | None],
    todo: list[int],
    members: list[int],
    used: list[int],
    caps: list[int],
    ids: list[str],
) -> int:
    """Rule 3 for ``pack``: each instance onto the eligible agent with a free slot that is
    the most loaded (then has the most used slots, then the smallest id). O(A) per instance,
    and the pools see the slots it takes (their entries are checked when they come up)."""
    placed = 0
    for i in todo:
        free = [n for n in members if used[n] < caps[n]]
        if not free:
            break
        n = min(free, key=lambda n: (-used[n] / caps[n], -used[n], ids[n]))
        slots[i] = ids[n]
        used[n] += 1
        placed += 1
    return placed


def _keep(
    ordered: list[Demand],
    needs: list[frozenset[tuple[str, str]]],
    current: Mapping[str, Sequence[str | None]],
    index: dict[str, int],
    signature: list[frozenset[tuple[str, str]]],
    caps: list[int],
    used: list[int],
) -> dict[str, list[str | None]]:
    """Rule 1: every instance that may stay on its agent stays (``used`` counts them); an
    agent's excess over its capacity goes, highest indices first. The rest is None."""
    assign: dict[str, list[str | None]] = {}
    kept: dict[int, list[tuple[int, str]]] = {}
    for demand, need in zip(ordered, needs, strict=True):
        slots: list[str | None] = [None] * demand.count
        assign[demand.key] = slots
        now = current.get(demand.key)
        if not now:
            continue
        for i in range(min(demand.count, len(now))):
            aid = now[i]
            if aid is None:
                continue
            n = index.get(aid, -1)
            if n < 0 or not need <= signature[n]:
                continue
            slots[i] = aid
            kept.setdefault(n, []).append((i, demand.key))
    for n, on_agent in kept.items():
        cap = caps[n]
        if len(on_agent) > cap:
            on_agent.sort()
            for i, key in on_agent[cap:]:
                assign[key][i] = None
        used[n] = min(len(on_agent), cap)
    return assign


def _moved(
    ordered: list[Demand],
    current: Mapping[str, Sequence[str | None]],
    assign: dict[str, list[str | None]],
) -> int:
    """How many instances that had an agent (at an index still wanted) now have another."""
    moved = 0
    for demand in ordered:
        now = current.get(demand.key)
        if not now:
            continue
        slots = assign[demand.key]
        for i in range(min(demand.count, len(now))):
            if now[i] is not None and slots[i] != now[i]:
                moved += 1
    return moved


#: Rule 7: a load move only when the target stays this far (in load fraction) below the
#: source after it; smaller differences are not worth restarting a worker for.
LOAD_GAP = 0.25


@dataclass(frozen=True, slots=True)
class Move:
    """One instance to move (rule 7): demand key, instance index, from and to agent ids."""

    key: str
    instance: int
    source: str
    target: str
    #: Why: ``spread`` (its hosts evened out) or ``load`` (the agents' load).
    reason: str


def rebalance(
    demands: Sequence[Demand],
    agents: Sequence[AgentSlot],
    assign: Mapping[str, list[str | None]],
    limit: int = 1,
) -> list[Move]:
    """Up to ``limit`` moves that even out a placement (rule 7), at most one per demand (the
    rest of its instances keep running); ``assign`` (as ``place`` returns it) is changed to
    match. Spread moves first, the demands with the largest gap between their hosts first;
    then load moves, from the most loaded agent. Ties are broken by key, index and agent id,
    so that the same input gives the same moves. About O(limit x A) for A agents, plus one
    pass over the instances."""
    by_id = {a.id: a for a in agents}
    used: dict[str, int] = dict.fromkeys(by_id, 0)
    for where in assign.values():
        for aid in where:
            if aid is not None and aid in used:
                used[aid] += 1
    movable = [
        d
        for d in sorted(demands, key=lambda d: d.key)
        if d.strategy == "spread" and d.count >= 2 and d.key in assign
    ]
    pools: dict[frozenset[tuple[str, str]], list[AgentSlot]] = {}

    def eligible(d: Demand) -> list[AgentSlot]:
        need = frozenset(d.labels.items())
        if need not in pools:
            pools[need] = [a for a in agents if a.capacity and need <= a.labels.items()]
        return pools[need]

    moves: list[Move] = []
    moved: set[str] = set()

    def apply(move: Move) -> None:
        assign[move.key][move.instance] = move.target
        used[move.source] -= 1
        used[move.target] += 1
        moved.add(move.key)
        moves.append(move)

    # spread: a demand's hosts, the fullest against the emptiest with a free slot
    gaps = []
    for d in movable:
        hosts = _on_hosts(assign[d.key], by_id)
        if hosts and max(hosts.values()) >= 2:
            gaps.append((-max(hosts.values()), d.key, d, hosts))
    for _, _, d, hosts in sorted(gaps, key=lambda g: (g[0], g[1])):
        if len(moves) >= limit:
            return moves
        full = max(hosts.values())
        free = sorted(
            (a for a in eligible(d) if used[a.id] < a.capacity),
            key=lambda a: (hosts.get(a.host, 0), _load(a, used), a.id),
        )
        if not free or full - hosts.get(free[0].host, 0) < 2:
            continue
        where = assign[d.key]
        i = min(
            (
                i
                for i, aid in enumerate(where)
                if aid is not None and aid in by_id and hosts[by_id[aid].host] == full
            ),
            key=lambda i: (-_load(by_id[str(where[i])], used), -i),
        )
        apply(Move(d.key, i, str(where[i]), free[0].id, "spread"))

    # load: from the most loaded agent to one that stays below it after the move
    holders: dict[str, list[tuple[int, str, int]]] = {}
    for d in movable:
        if d.key not in moved:
            for i, aid in enumerate(assign[d.key]):
                if aid is not None and aid in by_id:
                    holders.setdefault(aid, []).append((-d.count, d.key, i))
    demand = {d.key: d for d in movable}
    while len(moves) < limit and holders:
        move = None
        lowest = min(
            (_load(a, used, 1) for a in agents if a.capacity and used[a.id] < a.capacity),
            default=None,
        )
        for source in sorted(holders, key=lambda aid: (-_load(by_id[aid], used), aid)):
            src = by_id[source]
            if lowest is None or lowest + LOAD_GAP > _load(src, used):
                return moves  # no agent is enough below the busiest: balanced
            for _, key, i in sorted(holders[source]):
                if key in moved:
                    continue
                hosts = _on_hosts(assign[key], by_id)
                room = [
                    a
                    for a in eligible(demand[key])
                    if used[a.id] < a.capacity
                    and _load(a, used, 1) + LOAD_GAP <= _load(src, used)
                    and (a.host == src.host or hosts.get(a.host, 0) < hosts[src.host])
                ]
                if room:
                    best = min(room, key=lambda a: (_load(a, used), hosts.get(a.host, 0), a.id))
                    move = Move(key, i, source, best.id, "load")
                    break
            if move is not None:
                break
        if move is None:
            break
        apply(move)
        holders[move.source] = [h for h in holders[move.source] if h[1] != move.key]
    return moves


def _load(a: AgentSlot, used: Mapping[str, int], extra: int = 0) -> float:
    return (used[a.id] + extra) / a.capacity


def _on_hosts(where: Sequence[str | None], by_id: Mapping[str, AgentSlot]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for aid in where:
        if aid is not None and aid in by_id:
            h = by_id[aid].host
            counts[h] = counts.get(h, 0) + 1
    return counts
