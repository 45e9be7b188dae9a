"""Live progress of a run: per processor in, out, errors and rate; per connection depth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from ..flow import Flow
    from .result import ProcessorTotals, RunResult

#: Plain-text progress lines (no terminal) are printed this often, in seconds.
PLAIN_EVERY = 2.0


class Progress:
    """Renders progress to a console; ``Progress(None)`` renders nothing."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.live: Live | None = None
        self.flow: Flow | None = None
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}
        self._printed = 0.0
        self._started = time.monotonic()

    def begin(self, flow: Flow, run_id: int, resumed: bool, root: Path) -> None:
        self.flow = flow
        self._started = time.monotonic()
        if self.console is None:
            return
        how = "resuming" if resumed else "starting"
        self.console.print(f"[bold]{flow.name}[/]: {how} run {run_id} (state in {root})")
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def event(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]{text}[/]")

    def update(
        self, totals: dict[str, ProcessorTotals], depths: dict[str, tuple[int, int]]
    ) -> None:
        now = time.monotonic()
        for name, t in totals.items():
            count = t.received or t.emitted
            then, before = self._last.get(name, (now, count))
            if now - then >= 1.0:
                self._rates[name] = (count - before) / (now - then)
                self._last[name] = (now, count)
            elif name not in self._last:
                self._last[name] = (now, count)
        if self.console is None:
            return
        if self.live is not None:
            self.live.update(self._render(totals, depths))
        elif now - self._printed >= PLAIN_EVERY:
            self._printed = now
            parts = [
                f"{n} in={t.received} out={t.emitted} err={t.errors}" for n, t in totals.items()
            ]
            queued = sum(n for n, _ in depths.values())
            self.console.print(
                f"[{now - self._started:6.1f}s] " + " | ".join(parts) + f" | queued={queued}"
            )

    def _render(
        self, totals: dict[str, ProcessorTotals], depths: dict[str, tuple[int, int]]
    ) -> Group:
        procs = Table(
            title=f"{self.flow.name if self.flow else ''} — {time.monotonic() - self._started:.1f}s",
            title_justify="left",
        )
        for col in ("processor", "workers", "in", "out", "errors", "rate/s", "status"):
            procs.add_column(col, justify="left" if col in ("processor", "status") else "right")
        for name, t in totals.items():
            status = t.status or "starting"
            if t.status in ("error", "failed") and t.last_error:
                status = f"[red]{t.status}: {t.last_error[:60]}[/]"
            procs.add_row(
                name,
                str(t.instances),
                f"{t.received:,}",
                f"{t.emitted:,}",
                f"{t.errors:,}",
                f"{self._rates.get(name, 0.0):,.0f}",
                status,
            )
        conns = Table()
        for col in ("queue", "depth", "bytes"):
            conns.add_column(col, justify="left" if col == "queue" else "right")
        for q, (n, size) in depths.items():
            if n or not q.endswith(".inbox"):
                conns.add_row(q, f"{n:,}", f"{size:,}")
        return Group(procs, conns)

    def stopping(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.console is not None:
            self.console.print("stopping workers…")

    def end(self, result: RunResult) -> None:
        if self.console is None:
            return
        table = Table(
            title=f"{result.flow}: run {result.run_id} {result.status} in {result.seconds:.1f}s",
            title_justify="left",
        )
        for col in ("processor", "in", "out", "errors", "retried", "dead-lettered"):
            table.add_column(col, justify="left" if col == "processor" else "right")
        for name, t in result.processors.items():
            table.add_row(
                name,
                f"{t.received:,}",
                f"{t.emitted:,}",
                f"{t.errors:,}",
                f"{t.retried:,}",
                f"{t.dead:,}",
            )
        self.console.print(table)
        queued = sum(result.queues.values())
        if queued:
            self.console.print(f"{queued:,} message(s) still queued; run again to resume.")
        dead = sum(t.dead for t in result.processors.values())
        if dead:
            self.console.print(f"[yellow]{dead:,} message(s) dead-lettered in this run[/]")
        if result.dead_letters:
            self.console.print(
                f"{result.dead_letters:,} dead letter(s) stored: see `elasticcode dead-letters "
                f"list {result.flow}`; worker logs in {result.state_dir / 'logs'}"
            )
        for name, t in result.processors.items():
            if t.last_error and (t.dead or t.status in ("error", "failed")):
                self.console.print(f"[red]{name}[/]: last error: {t.last_error}")
