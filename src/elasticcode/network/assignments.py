"""Every agent's assignment from one read of the state store.

A change reaches hundreds of agents at once (a flow placed over a network wakes every
agent), and each then asks for its assignment. Reading the placements once for all of them
(``Cluster.assignments``) and answering each agent from that read costs a handful of
queries per change instead of a handful per agent.

The read is one snapshot (``REPEATABLE READ`` on PostgreSQL): an agent's generation and its
placements in it belong together, as the leader writes both in one transaction.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import NotFound

#: (flow name, revision, processor, restarts) -> the spec of its instances
Spec = Callable[[str, int, str, int], str]


class Assignments:
    """What each agent should run, as of one read (``made``, a monotonic time)."""

    def __init__(
        self,
        generations: dict[str, int],
        placed: Sequence[Any],
        flows: dict[str, Any],
        documents: dict[str, dict[str, Any]],
        restarts: dict[tuple[str, str], int],
        gone_workers: list[str],
        spec: Spec,
    ) -> None:
        self.made = time.monotonic()
        #: agent id -> the generation of its assignment in this read
        self.generations = generations
        self._flows = flows
        self._documents = documents
        self._restarts = restarts
        self._spec = spec
        #: agent id -> its placement rows (an instance moving away from an agent is its own
        #: until it runs where it went)
        self._rows: dict[str, list[Any]] = defaultdict(list)
        for r in placed:
            if r.agent_id is not None:
                self._rows[r.agent_id].append(r)
            if r.leaving is not None and r.leaving != r.agent_id:
                self._rows[r.leaving].append(r)
        # what workers of lost agents held goes to other consumers when their stand-ins start
        self._lost: dict[tuple[str, str], list[str]] = defaultdict(list)
        for workers_json in gone_workers:
            for w in json.loads(workers_json):
                if w.get("consumer"):
                    self._lost[(w["flow"], w["processor"])].append(w["consumer"])
        #: the values of the secrets a set of flows needs, read once for this read's agents
        self.secrets: dict[frozenset[str], dict[str, str]] = {}
        self._encoded: dict[str, str] = {}

    def encoded(self, key: str) -> str:
        """A flow document of this read (``NAME@REVISION``, as ``of`` names it) as JSON,
        encoded once for all the agents that get it (a large flow's is tens of KB)."""
        text = self._encoded.get(key)
        if text is None:
            doc = self._documents[key.rpartition("@")[0]]
            text = self._encoded[key] = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        return text

    def of(self, agent_id: str) -> dict[str, Any]:
        """One agent's assignment: its generation, its instances and their flows' documents
        (a new dict each time: callers may change it)."""
        if agent_id not in self.generations:
            raise NotFound(f"no agent {agent_id}; it registers again")
        items, documents = [], {}
        for r in self._rows.get(agent_id, ()):
            f = self._flows.get(r.flow)
            if f is None:  # removed since
                continue
            restarts = self._restarts.get((r.flow, r.processor), 0)
            items.append(
                {
                    "flow": r.flow,
                    "processor": r.processor,
                    "instance": r.instance,
                    "revision": f.revision,
                    "run_id": f.run_id,
                    "spec": self._spec(f.name, f.revision, r.processor, restarts),
                    "release": list(self._lost.get((r.flow, r.processor), ())),
                }
            )
            documents[f"{f.name}@{f.revision}"] = self._documents[f.name]
        items.sort(key=lambda i: (i["flow"], i["processor"], i["instance"]))
        return {"generation": self.generations[agent_id], "instances": items, "flows": documents}
