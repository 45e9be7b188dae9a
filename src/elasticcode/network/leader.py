"""The leader: the one server that turns the desired state into placements.

Each round (``Leader.round``, every ``tick`` seconds) runs in one transaction that first takes
or renews the leader lease (``SELECT ... FOR UPDATE`` on its row), so a server that lost the
lease cannot write placements. In the round, agents silent for longer than the agent timeout
are marked lost; every running flow's processors are placed on the agents that are up (see
``scheduler.place``: instances stay where they are), then evened out a few at a time
(``scheduler.rebalance``: a moved instance starts on its new agent and keeps running on the
old one until it runs where it went; the next moves after that); each agent whose
assignment changed gets a new generation, which wakes its long poll. A round whose inputs
(flow revisions, controls, agents) are those of the last one, with no move under way, writes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..autoscale import starting_count
from ..store.db import insert
from ..store.tables import (
    agents,
    flows,
    leases,
    placements,
    processor_controls,
    sources,
    workers,
)
from .cluster import LEADER, Cluster, Who, record_event
from .scheduler import AgentSlot, Demand, Move, place, rebalance

#: The leader's changes, as the audit log shows them.
LEADING = Who("leader")
#: A placed instance: (flow, processor, instance).
Key = tuple[str, str, int]
#: Rebalancing: at most this many instances move in one round (one per processor; more in
#: a large network, see ``moves_at_once``) ...
MOVES_AT_ONCE = 4
#: ... and the next moves wait until those run on their new agents, or this long.
MOVE_TIMEOUT = 60.0


def moves_at_once(instances: int) -> int:
    """How many instances rebalancing may move in one round: four, or 1 % of them."""
    return max(MOVES_AT_ONCE, instances // 100)


class Leader:
    """A server's bid for the lead, and the rounds it runs while it holds it."""

    def __init__(self, cluster: Cluster, holder: str, ttl: float) -> None:
        self.cluster = cluster
        self.engine = cluster.engine
        #: this server's id, as the lease row holds it
        self.holder = holder
        #: how long the lease lasts unrenewed (``--lease``)
        self.ttl = ttl
        self._pending: set[tuple[str, str]] = set()
        #: what the last round placed from (see ``round``)
        self._inputs: tuple[Any, ...] | None = None
        self._last_round = 0.0
        self._grace_until = 0.0
        #: instances moved by rebalancing, not yet seen running where they went: key ->
        #: (agent it went to, agent it left, when moved)
        self._moving: dict[Key, tuple[str, str, float]] = {}

    def hold_lease(self, db: sa.Connection) -> bool:
        """Take or renew the leader lease inside ``db``'s transaction; True if held."""
        holder, ttl = self.holder, self.ttl
        now = time.time()
        row = db.execute(sa.select(leases).where(leases.c.name == LEADER).with_for_update()).first()
        if row is None:
            db.execute(
                insert(self.engine, leases)
                .values(name=LEADER, holder=holder, expires=now + ttl, term=1)
                .on_conflict_do_nothing()
            )
            row = db.execute(sa.select(leases).where(leases.c.name == LEADER)).first()
            if row is None or row.holder != holder:
                return False
            record_event(db, "leader", None, f"server {holder} leads (term 1)", LEADING)
            return True
        if row.holder != holder and row.expires > now:
            return False
        term = row.term if row.holder == holder else row.term + 1
        db.execute(
            leases.update()
            .where(leases.c.name == LEADER)
            .values(holder=holder, expires=now + ttl, term=term)
        )
        if row.holder != holder:
            record_event(db, "leader", None, f"server {holder} leads (term {term})", LEADING)
        return True

    def release(self) -> None:
        """Give the lease up (a server that stops), so that another leads at once."""
        with self.engine.begin() as db:
            db.execute(
                leases.update()
                .where(leases.c.name == LEADER, leases.c.holder == self.holder)
                .values(expires=0.0)
            )

    def round(self) -> list[str] | None:
        """One round of the leader's work; None if this server does not hold the lease.

        Agents silent for longer than ``agent_timeout`` are marked lost; every running
        flow's processors are placed on the agents that are up (keeping instances where
        they are); each agent whose assignment changed gets a new generation. A round whose
        inputs (flow revisions, controls, agents) are those of the last one places nothing."""
        notes: list[str] = []
        now = time.time()
        if now - self._last_round > self.cluster.agent_timeout / 2:
            # leading anew, or the database was away: heartbeats may not have been recorded
            # meanwhile, so no agent is called lost before it had a whole timeout to send one
            self._grace_until = now + self.cluster.agent_timeout
        with self.engine.begin() as db:
            if not self.hold_lease(db):
                self._inputs = None
                self._last_round = 0.0
                return None
            self._last_round = now
            silent = db.execute(
                sa.select(agents.c.id, agents.c.name).where(
                    agents.c.status == "up", agents.c.heartbeat < now - self.cluster.agent_timeout
                )
            ).all()
            for row in silent if now >= self._grace_until else []:
                db.execute(agents.update().where(agents.c.id == row.id).values(status="lost"))
                text = f"agent {row.name} lost: no heartbeat for {self.cluster.agent_timeout:g}s"
                record_event(db, "agent", None, text, LEADING)
                notes.append(text)
            up = db.execute(
                sa.select(agents.c.id, agents.c.host, agents.c.capacity, agents.c.labels)
                .where(agents.c.status == "up")
                .order_by(agents.c.id)
            ).all()
            names = {r.id: r.name for r in db.execute(sa.select(agents.c.id, agents.c.name))}
            flow_rows = db.execute(sa.select(flows).order_by(flows.c.name)).all()
            control_rows = db.execute(
                sa.select(processor_controls).order_by(
                    processor_controls.c.flow, processor_controls.c.processor
                )
            ).all()
            # a source that is done (or gave up) needs no worker: its slot goes to others
            done = {
                (r.run_id, r.processor)
                for r in db.execute(
                    sa.select(sources.c.run_id, sources.c.processor).where(
                        sources.c.done.is_(True),
                        sources.c.run_id.in_([f.run_id for f in flow_rows]),
                    )
                )
            }
            inputs = (
                tuple(tuple(a) for a in up),
                tuple((f.name, f.revision, f.running) for f in flow_rows),
                tuple(tuple(c) for c in control_rows),
                tuple(sorted(done)),
            )
            if inputs == self._inputs and not self._moving:
                return notes
            controls = {(c.flow, c.processor): c for c in control_rows}
            slots = [AgentSlot(a.id, a.host, a.capacity, json.loads(a.labels)) for a in up]
            demands, specs = self._demands(db, flow_rows, controls, slots, done)
            rows = db.execute(
                sa.select(
                    placements.c.flow,
                    placements.c.processor,
                    placements.c.instance,
                    placements.c.agent_id,
                    placements.c.leaving,
                )
            ).all()
            old: dict[Key, str | None] = {
                (r.flow, r.processor, r.instance): r.agent_id for r in rows
            }
            was_leaving = {(r.flow, r.processor, r.instance): r.leaving for r in rows if r.leaving}
            current: dict[str, list[str | None]] = defaultdict(list)
            for (fname, pname, i), agent in sorted(old.items()):
                where = current[f"{fname}/{pname}"]
                where += [None] * (i - len(where))
                where.append(agent)
            plan = place(demands, slots, current)
            for m in self._rebalance(db, demands, slots, plan.assign, not plan.pending, now):
                why = "its hosts" if m.reason == "spread" else "the agents' load"
                text = (
                    f"{m.key}[{m.instance}] moved from agent {names[m.source]} to "
                    f"{names[m.target]}: rebalancing ({why})"
                )
                record_event(db, "placement", m.key.split("/", 1)[0], text, LEADING)
                notes.append(text)
            new: dict[Key, str | None] = {}
            for key, where in plan.assign.items():
                fname, pname = key.split("/", 1)
                for i, agent in enumerate(where):
                    new[(fname, pname, i)] = agent
            # a moved instance runs on the agent it left, too, until it runs where it went
            leaving = {
                k: source
                for k, (target, source, _) in self._moving.items()
                if new.get(k) == target and source != target
            }
            self._write_placements(db, old, new, now)
            self._write_leaving(db, was_leaving, leaving)
            self._bump_generations(db, new, specs, leaving)
            notes += [f"{key}: {why}" for key, why in plan.pending.items()]
            pending = set(plan.pending.items())
            for key, why in sorted(pending - self._pending):
                record_event(db, "placement", key.split("/", 1)[0], f"{key}: {why}", LEADING)
            if plan.moved:
                text = f"{plan.moved} instance(s) moved to other agents"
                notes.append(text)
                record_event(db, "placement", None, text, LEADING)
        self._pending = pending
        self._inputs = inputs
        return notes

    def _rebalance(
        self,
        db: sa.Connection,
        demands: list[Demand],
        slots: list[AgentSlot],
        assign: dict[str, list[str | None]],
        settled: bool,
        now: float,
    ) -> list[Move]:
        """Rolling rebalancing (scheduler rule 7): a few moves, and the next ones only once
        those run where they went (or ``MOVE_TIMEOUT`` passed), nor while anything waits
        for a slot. ``assign`` is changed to match."""
        if self._moving:
            # up where it went: its process runs (the agent says) and its worker took up its
            # queues (the worker's own report says): only then does the old one stop
            started: dict[tuple[str, str, int, str], str] = {}
            for aid, workers_json in db.execute(
                sa.select(agents.c.id, agents.c.workers).where(agents.c.status == "up")
            ).all():
                for w in json.loads(workers_json or "[]"):
                    if w.get("state") == "running" and not w.get("retiring") and w.get("consumer"):
                        started[(w["flow"], w["processor"], int(w["instance"]), aid)] = w[
                            "consumer"
                        ]
            wanted = [c for k, (aid, _, _) in self._moving.items() if (c := started.get((*k, aid)))]
            ready = set(
                db.execute(
                    sa.select(workers.c.id).where(
                        workers.c.id.in_(wanted), workers.c.status.in_(("running", "back-pressure"))
                    )
                ).scalars()
            )
            running = {k for k, c in started.items() if c in ready}
            self._moving = {
                k: (aid, source, at)
                for k, (aid, source, at) in self._moving.items()
                if (*k, aid) not in running
                and now - at < MOVE_TIMEOUT
                and assign.get(f"{k[0]}/{k[1]}", [])[k[2] : k[2] + 1] == [aid]
            }
        if self._moving or not settled:
            return []
        moves = rebalance(demands, slots, assign, moves_at_once(sum(d.count for d in demands)))
        for m in moves:
            fname, pname = m.key.split("/", 1)
            self._moving[(fname, pname, m.instance)] = (m.target, m.source, now)
        return moves

    def _demands(
        self,
        db: sa.Connection,
        flow_rows: Sequence[Any],
        controls: dict[tuple[str, str], Any],
        slots: list[AgentSlot],
        done: set[tuple[int, str]],
    ) -> tuple[list[Demand], dict[tuple[str, str], str]]:
        """What every processor of every flow wants, and the spec of each processor."""
        demands, specs = [], {}
        for f in flow_rows:
            flow = self.cluster.parsed(
                f.name, f.revision, self.cluster.document(db, f.name, f.revision)
            )
            for p in flow.processors:
                c = controls.get((f.name, p.name))
                specs[(f.name, p.name)] = self.cluster.spec(
                    flow, f.revision, p.name, c.restarts if c else 0
                )
                if not f.running or (c is not None and c.paused):
                    count = 0
                elif p.is_source:
                    count = 0 if (f.run_id, p.name) in done else 1
                elif p.scale is not None:  # held by hand, else as the autoscaler decided
                    held = _held(c)
                    count = starting_count(p.scale, p.instances) if held is None else held
                elif isinstance(p.instances, int):
                    count = p.instances
                else:  # auto: one on every agent that may run it
                    count = sum(
                        all(s.labels.get(k) == v for k, v in p.labels.items()) for s in slots
                    )
                    count = count or 1
                demands.append(Demand(f"{f.name}/{p.name}", count, p.labels, p.placement))
        return demands, specs

    def _write_placements(
        self, db: sa.Connection, old: dict[Key, str | None], new: dict[Key, str | None], now: float
    ) -> None:
        where = sa.and_(
            placements.c.flow == sa.bindparam("f"),
            placements.c.processor == sa.bindparam("p"),
            placements.c.instance == sa.bindparam("i"),
        )
        gone = [{"f": k[0], "p": k[1], "i": k[2]} for k in old.keys() - new.keys()]
        if gone:
            db.execute(placements.delete().where(where), gone)
        added = [
            {"flow": k[0], "processor": k[1], "instance": k[2], "agent_id": a, "placed": now}
            for k, a in new.items()
            if k not in old
        ]
        if added:
            db.execute(placements.insert(), added)
        moved = [
            {"f": k[0], "p": k[1], "i": k[2], "a": a, "t": now}
            for k, a in new.items()
            if k in old and old[k] != a
        ]
        if moved:
            db.execute(
                placements.update()
                .where(where)
                .values(agent_id=sa.bindparam("a"), placed=sa.bindparam("t")),
                moved,
            )

    def _write_leaving(self, db: sa.Connection, was: dict[Key, str], want: dict[Key, str]) -> None:
        """Mark the instances that still run on the agent they left (and only those: what a
        former leader marked and this one does not know of is cleared)."""
        where = sa.and_(
            placements.c.flow == sa.bindparam("f"),
            placements.c.processor == sa.bindparam("p"),
            placements.c.instance == sa.bindparam("i"),
        )
        changed = [
            {"f": k[0], "p": k[1], "i": k[2], "l": want.get(k)}
            for k in was.keys() | want.keys()
            if was.get(k) != want.get(k)
        ]
        if changed:
            db.execute(placements.update().where(where).values(leaving=sa.bindparam("l")), changed)

    def _bump_generations(
        self,
        db: sa.Connection,
        new: dict[Key, str | None],
        specs: dict[tuple[str, str], str],
        leaving: dict[Key, str],
    ) -> None:
        """A new generation for every agent whose instances, or their specs, changed (an
        instance it is leaving counts as its own until then)."""
        by_agent: dict[str, list[Key]] = defaultdict(list)
        for k, agent in new.items():
            if agent is not None:
                by_agent[agent].append(k)
        for k, agent in leaving.items():
            by_agent[agent].append(k)
        changed = []
        for a in db.execute(sa.select(agents.c.id, agents.c.digest)).all():
            parts = [f"{f}/{p}/{i}/{specs[(f, p)]}" for f, p, i in sorted(by_agent.get(a.id, []))]
            digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
            if digest != a.digest:
                changed.append({"x": a.id, "d": digest})
        if changed:
            db.execute(
                agents.update()
                .where(agents.c.id == sa.bindparam("x"))
                .values(digest=sa.bindparam("d"), assigned=agents.c.assigned + 1),
                changed,
            )


def _held(control: Any) -> int | None:
    """A scaling processor's count: set by hand, else decided by the autoscaler (None:
    neither yet)."""
    if control is None:
        return None
    count = control.pinned if control.pinned is not None else control.scaled
    return None if count is None else int(count)
