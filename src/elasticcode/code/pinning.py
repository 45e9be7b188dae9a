"""Pinning git code: each processor's ref resolved to a commit once, then kept.

A flow names a branch, tag or commit; what runs is always a commit, recorded where the flow
runs (the state store of a one-host run, the deployed revision in a network), so that a branch
that moves is not followed until someone asks (``elasticcode code update``, or
``elasticcode processor update --ref``). ``pin`` is the one place that decides, for both modes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..redact import redact_url
from . import git

if TYPE_CHECKING:
    from ..flow import Flow, Processor


@dataclass(frozen=True, slots=True)
class Pin:
    """Where one processor's ref was pinned."""

    processor: str
    repo: str
    ref: str
    commit: str
    #: The commit recorded before, if any.
    was: str | None
    #: Resolved now (True), or kept as recorded (False).
    resolved: bool

    def note(self, moves_it: str) -> str:
        """A line saying where the processor's code is; ``moves_it``: how to move a kept one."""
        where = f"processor {self.processor}: {self.ref} of {redact_url(self.repo)}"
        if self.resolved:
            was = f" (was {self.was[:12]})" if self.was and self.was != self.commit else ""
            return f"{where} resolved to commit {self.commit[:12]}{was}"
        return f"{where} stays at commit {self.commit[:12]} ({moves_it})"


def pin(
    flow: Flow,
    recorded: Callable[[Processor], str | None],
    update: Collection[str] | None = None,
    broken: dict[str, str] | None = None,
    checkout: bool = True,
) -> tuple[Flow, list[Pin]]:
    """The flow with every git processor's ref pinned to a commit, and a ``Pin`` for each.

    ``recorded(processor)``: the commit recorded for its repository and ref, if any. A ref
    with no record is resolved now; one with a record keeps it, except for the processors in
    ``update`` ([] for all), which are resolved again. With ``checkout``, each commit's files
    are written into the host's cache. With ``broken``, a processor whose repository cannot
    be reached is noted there (with what to fix) and left unpinned, instead of raising."""
    processors, pins = [], []
    for p in flow.processors:
        source = p.git
        if source is None or source.commit:
            processors.append(p)
            continue
        was = recorded(p)
        fresh = was is None or (update is not None and (not update or p.name in update))
        try:
            commit = git.resolve(source.repo, source.ref, source.credential) if fresh else was
            assert commit is not None
            if checkout:
                git.checkout(source.repo, commit, source.credential)
        except git.GitError as exc:
            if broken is None:
                raise
            broken[p.name] = f"processor {p.name!r}: {exc}"
            processors.append(p)
            continue
        pins.append(Pin(p.name, source.repo, source.ref, commit, was, fresh))
        processors.append(
            p.model_copy(update={"git": source.model_copy(update={"commit": commit})})
        )
    return flow.model_copy(update={"processors": processors}), pins
