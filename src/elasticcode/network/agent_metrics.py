"""An agent's own metrics (``elasticcode agent start --metrics-port PORT``): the views of the
workers it runs, made every interval from their reports (read with each flow's own database
credential, as its workers write them) and served on 127.0.0.1 like a run's (``/metrics``
for Prometheus, ``/metrics/stream``). A server's scrape covers every agent; an agent's covers
its host alone, and still answers while every server is down."""

from __future__ import annotations

import logging

from ..flow import Flow
from ..metrics.endpoint import Endpoint
from ..metrics.hub import MetricsHub
from ..store import StateStore, WorkerReport
from ..supervisor import Instance

log = logging.getLogger("elasticcode.agent")


class AgentMetrics:
    def __init__(self, port: int) -> None:
        self.hub = MetricsHub()
        self.endpoint = Endpoint(self.hub, port)
        self._stores: dict[str, StateStore] = {}

    def start(self) -> None:
        self.endpoint.start()
        log.info("metrics at %s/metrics", self.endpoint.url)

    def tick(self, instances: list[Instance]) -> None:
        """One interval of the instances running here (blocking: call it off the loop)."""
        flows: dict[str, tuple[Flow, str, list[str]]] = {}
        for inst in instances:
            if inst.flow is None or not inst.state_url or not inst.consumer:
                continue
            _, _, ids = flows.setdefault(inst.flow_name, (inst.flow, inst.state_url, []))
            ids.append(inst.consumer)
        measured: list[tuple[Flow, list[WorkerReport]]] = []
        for flow, url, ids in flows.values():
            try:
                store = self._stores.get(url)
                if store is None:
                    store = self._stores[url] = StateStore(url, connections=1)
                measured.append((flow, store.reports_of(ids)))
            except Exception as exc:  # the state store away: the next interval tries again
                log.warning("cannot read the reports of flow %s: %s", flow.name, exc)
        self.endpoint.publish(self.hub.tick(measured, record=False))

    def close(self) -> None:
        self.endpoint.stop()
        for store in self._stores.values():
            store.close()
