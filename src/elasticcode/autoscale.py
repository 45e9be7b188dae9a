"""Autoscaling: how many instances each scaled processor (``scale:`` in the flow) should run.

``Autoscaler.decide`` is called every metrics interval with the flow's view (see
``metrics.view``) and returns the changes to make, each with its reason. The run on one
host applies them to its supervisor; in a network, the leading server records them and
placement follows. The signals, per processor:

- **backlog**: the messages waiting in its input queues, its inbox too (``waiting`` in the
  view);
- **arrival**: how fast messages come in (what it took in the interval plus how much the
  backlog grew, or less what it shrank), smoothed;
- **per instance**: how many messages one instance works through per second while busy
  (messages in ÷ time busy), smoothed;
- **wait**: how long messages waited before they were taken up (p90 of the interval,
  ``wait_ms`` in the view), which also counts what workers hold and have not started yet.

With ``target_latency`` the count wanted is enough instances to keep up with what arrives
and clear the backlog within the target: ``(arrival + backlog / target_latency) / per
instance``; with ``target_backlog``, ``backlog / target_backlog``. With ``target_latency``,
when the instances are busy (at least ``BUSY`` of the time) and messages waited longer than
the target, at least ``instances * wait / target_latency`` are wanted: the backlog misses
what is prefetched and held by workers, the wait does not. Only busy instances are judged by
their wait, since a message's wait is measured against the clock of the host that sent it,
and a wait while instances idle is not theirs to shorten. Then:

- **Up at once** (no sooner than ``up_after`` since the last change), at most doubling (or
  four more) per step, so that one noisy reading cannot jump to the maximum.
- **Down only when stable**: to the largest count any reading asked for over the last
  ``down_after`` seconds, so a bursty source does not make instances come and go.
- Changes within 10 % of the count are ignored (no flapping at large counts).
- A processor at zero instances (``min: 0``) wakes, to one, when anything waits for it.
- **CPU**: a processor whose code spends most of the time it does not wait for a CPU on
  one (``cpu``, ``cpu_wait`` and ``busy`` in the view) is CPU-bound: it grows only by as
  many instances as its hosts have idle cores (``cores``: what its hosts have and what all
  workers there use, its own running instances counted as busy, since their reports lag).
  When none are idle it is held, with one event that says so. Once seen CPU-bound it is
  taken for so while idle, so that a burst after a quiet spell is limited as well.
- A processor with nothing waiting and nothing coming in wants none (then its minimum);
  until one instance has been measured, one with work keeps what it has.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .flow import Flow, Scale

__all__ = ["Autoscaler", "Decision", "HostCPU", "host_cores", "starting_count"]

#: Weight of the newest reading in the smoothed rates.
SMOOTHING = 0.5
#: Relative change too small to act on.
TOLERANCE = 0.1
#: A processor whose CPU time is at least this share of its busy time is CPU-bound.
CPU_BOUND = 0.7
#: Instances busy at least this share of the time are judged by how long messages wait.
BUSY = 0.9


def starting_count(scale: Scale, instances: int | str) -> int:
    """Where a scaled processor starts: ``instances`` if a number, else its minimum."""
    return instances if isinstance(instances, int) else scale.min


class HostCPU:
    """The cores busy on this host, by anything, since the last reading (or since it was
    made); Linux's ``/proc/stat``, None elsewhere."""

    def __init__(self) -> None:
        self._last = self._ticks()

    @staticmethod
    def _ticks() -> tuple[float, float] | None:
        """All the CPU time so far, and the idle part of it (idle or waiting for I/O)."""
        try:
            with open("/proc/stat", "rb") as f:
                ticks = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return float(sum(ticks[:8])), float(sum(ticks[3:5]))  # guest time is in user time

    def busy(self) -> float | None:
        now = self._ticks()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        cores = os.cpu_count() or 1
        return round(cores * (1 - (now[1] - last[1]) / (now[0] - last[0])), 3)


def host_cores(
    flow: Flow,
    views: Iterable[dict[str, Any]],
    agents: Iterable[tuple[str, int, Mapping[str, str], float | None]],
) -> dict[str, tuple[float, float]]:
    """For each scaled processor of ``flow``: the cores of the hosts it may run on (the
    ``agents``, as (host, cores, labels, cores busy there), whose labels it asks for) and the
    cores used there: what all the workers of ``views`` use (a processor's CPU shared evenly
    over its hosts), or what the host's agent measured busy, by anything, when that is more."""
    used: dict[str, float] = {}
    for view in views:
        for p in view.get("processors", {}).values():
            hosts = p.get("hosts") or []
            for h in hosts:
                used[h] = used.get(h, 0.0) + float(p.get("cpu", 0.0)) / len(hosts)
    agents = list(agents)
    for host, _, _, busy in agents:
        if busy is not None:
            used[host] = max(used.get(host, 0.0), busy)
    out = {}
    for p in flow.processors:
        if p.scale is None:
            continue
        cores: dict[str, int] = {}
        for host, n, labels, _ in agents:
            if all(labels.get(k) == v for k, v in p.labels.items()):
                cores[host] = max(cores.get(host, 0), n)
        if cores:
            out[p.name] = (float(sum(cores.values())), sum(used.get(h, 0.0) for h in cores))
    return out


@dataclass(frozen=True)
class Decision:
    flow: str
    processor: str
    before: int
    after: int
    reason: str

    def text(self) -> str:
        if self.after == self.before:
            return f"holding {self.processor} at {self.after}: {self.reason}"
        return f"scaled {self.processor} {self.before} → {self.after}: {self.reason}"


@dataclass
class _State:
    count: int
    changed_at: float
    since: float
    per_instance: float | None = None
    arrival: float | None = None
    backlog: tuple[float, int] | None = None
    wanted: deque[tuple[float, int]] = field(default_factory=deque)
    #: held back by busy cores (said once, until it can grow again)
    held: bool = False
    #: cores one busy instance uses, once it was seen CPU-bound (None: not, or not yet seen
    #: busy); kept while it is idle, so that a burst after a quiet spell is limited too
    per_core: float | None = None


class Autoscaler:
    """The counts of one or more flows' scaled processors, decided interval by interval."""

    def __init__(self) -> None:
        self._state: dict[tuple[str, str], _State] = {}

    def count(self, flow: str, processor: str) -> int | None:
        st = self._state.get((flow, processor))
        return None if st is None else st.count

    def decide(
        self,
        flow: Flow,
        view: dict[str, Any],
        counts: dict[str, int] | None = None,
        now: float | None = None,
        cores: dict[str, tuple[float, float]] | None = None,
    ) -> list[Decision]:
        """The changes the view calls for. ``counts``: what each processor runs now, where
        the caller knows better (a count recorded by another server, or set by hand); else
        the last decided, or where the processor starts. ``cores``: per processor, the cores
        of the hosts it may run on and how many of them all workers there use (None: not
        known, CPU does not limit growth)."""
        now = time.monotonic() if now is None else now
        counts = counts or {}
        cores = cores or {}
        measured = bool(view.get("interval"))  # the first view has totals, no rates
        out = []
        for p in flow.processors:
            if p.scale is None or p.is_source:
                continue
            key = (flow.name, p.name)
            st = self._state.get(key)
            known = counts.get(p.name)
            if st is None:
                start = known if known is not None else starting_count(p.scale, p.instances)
                st = self._state[key] = _State(start, now, now)
            elif known is not None and known != st.count:
                st.count, st.changed_at = known, now
            seen = view.get("processors", {}).get(p.name) if measured else None
            backlog = None if seen is None else seen.get("waiting")
            decision = self._one(flow.name, p.name, p.scale, st, seen, backlog, now)
            if decision is not None and decision.after > decision.before:
                decision = self._within_cores(decision, st, seen, cores.get(p.name))
            elif decision is not None:  # fewer: if it grows again, say why it cannot
                st.held = False
            if decision is not None:
                st.count, st.changed_at = decision.after, now
                out.append(decision)
        scaled = {p.name for p in flow.processors if p.scale is not None}
        for key in [k for k in self._state if k[0] == flow.name and k[1] not in scaled]:
            del self._state[key]
        return out

    def _within_cores(
        self,
        d: Decision,
        st: _State,
        seen: dict[str, Any] | None,
        cores: tuple[float, float] | None,
    ) -> Decision | None:
        """A CPU-bound processor grows only onto idle cores (see the module docstring)."""
        if seen is None or cores is None or d.before == 0:
            return d
        running = int(seen.get("instances", 0))
        busy_cores = float(seen.get("busy", 0.0)) * running
        cpu = float(seen.get("cpu", 0.0))
        # the time in its code less what it waited for a CPU: on a CPU, or waiting for
        # something else (I/O, sleeps); how busy the host is does not change the share
        own = busy_cores - float(seen.get("cpu_wait", 0.0))
        if own >= 0.05:  # busy enough to judge
            st.per_core = min(1.0, cpu / own) if cpu >= CPU_BOUND * own else None
        if st.per_core is None:
            return d  # mostly waiting for something else: CPU does not limit it
        per = st.per_core  # cores one instance uses when it has them
        total, used = cores
        # with a backlog its instances are all busy: count them so, those decided and still
        # starting too (what they reported lags behind; a new one has reported nothing)
        # (what it measured using is taken out first: no more than that core's worth each,
        # since a rate over an interval that caught one report too many can say more)
        mine = max(running, d.before) * per
        used = max(0.0, used - min(cpu, mine)) + mine
        room = max(0, round((total - used) / per))
        after = min(d.after, d.before + room)
        why = (
            f"CPU-bound ({per:.2f} of a core per busy instance), {used:.1f} of {total:g} cores busy"
        )
        if after > d.before:
            st.held = False
            if after == d.after:
                return d
            return Decision(d.flow, d.processor, d.before, after, f"{d.reason}; {why}")
        if st.held:
            return None  # said already
        st.held = True
        return Decision(d.flow, d.processor, d.before, d.before, f"{d.reason}; {why}")

    def _one(
        self,
        flow: str,
        name: str,
        scale: Scale,
        st: _State,
        seen: dict[str, Any] | None,
        backlog: int | None,
        now: float,
    ) -> Decision | None:
        if seen is None or backlog is None:
            return None  # nothing measured this interval: no decision either way
        rate_in = float(seen["rates"]["in"])
        busy, running = float(seen.get("busy", 0.0)), int(seen.get("instances", 0))
        if busy > 0.02 and rate_in > 0 and running:
            st.per_instance = _smooth(st.per_instance, rate_in / (busy * running))
        growth = 0.0  # what came in = what was taken + how much more waits (or less)
        if st.backlog is not None and now > st.backlog[0]:
            growth = (backlog - st.backlog[1]) / (now - st.backlog[0])
        st.backlog = (now, backlog)
        st.arrival = _smooth(st.arrival, max(0.0, rate_in + growth))
        per, arrival = st.per_instance, st.arrival or 0.0
        if not backlog and not rate_in:  # nothing waits, nothing comes (the smoothed
            need, basis = 0, "idle"  # arrival only fades, it would keep one instance)
        elif scale.target_backlog is not None:
            need = math.ceil(backlog / scale.target_backlog)
            basis = f"target {scale.target_backlog:,} waiting per instance"
        elif per:
            need = math.ceil((arrival + backlog / scale.target_latency) / per)
            basis = (
                f"{_n(per)}/s per instance, {_n(arrival)}/s arriving, "
                f"target {scale.target_latency:g}s"
            )
        else:  # not measured yet: what it has (one if something waits)
            need = max(st.count, 1) if backlog else st.count
            basis = "not measured yet"
        wait = _p90_seconds(seen.get("wait_ms"))
        target = scale.target_latency if scale.target_backlog is None else None
        if target and wait is not None and wait > target and busy >= BUSY and running:
            by_wait = math.ceil(running * wait / target)
            if by_wait > need:
                need = by_wait
                basis = f"waited {wait:.3g}s (p90), target {target:g}s, {busy:.0%} busy"
        need = min(scale.max, max(scale.min, need))
        st.wanted.append((now, need))
        while st.wanted and st.wanted[0][0] < now - scale.down_after:
            st.wanted.popleft()
        count = st.count
        if need > count:
            if count == 0:  # asleep: the first message wakes it at once
                return Decision(flow, name, 0, 1, f"backlog {_n(backlog)}, at 0 instances")
            if now - st.changed_at < scale.up_after or (need - count) / count <= TOLERANCE:
                return None
            after = min(need, max(count * 2, count + 4))
            return Decision(flow, name, count, after, f"backlog {_n(backlog)}, {basis}")
        if need < count and now - st.since >= scale.down_after:
            most = max(n for _, n in st.wanted)  # the most asked for over the window
            if most < count and now - st.changed_at >= scale.down_after:
                if most and (count - most) / count <= TOLERANCE:
                    return None
                why = f"backlog {_n(backlog)}, {basis}; at most {most} asked for over the last"
                return Decision(flow, name, count, most, f"{why} {scale.down_after:g}s")
        return None


def _p90_seconds(timing: Any) -> float | None:
    """The p90 of a view's timing (milliseconds) in seconds; None when nothing was timed."""
    if not isinstance(timing, dict) or not timing.get("count"):
        return None
    p90 = timing.get("p90")
    return None if p90 is None else float(p90) / 1000


def _smooth(old: float | None, new: float) -> float:
    return new if old is None else old + SMOOTHING * (new - old)


def _n(x: float) -> str:
    """48213 -> 48.2k, 3100.5 -> 3.1k, 12.34 -> 12.3."""
    if x >= 10_000:
        return f"{x / 1000:.0f}k"
    if x >= 1000:
        return f"{x / 1000:.1f}k"
    return f"{x:.1f}".removesuffix(".0") if x < 100 else f"{x:.0f}"
