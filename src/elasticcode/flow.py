"""The flow model: processors, their ports, and the connections between them.

A flow is declared in YAML or JSON (``Flow.load``) or in Python (``Flow(...)`` with
``processor()`` and ``connect()``); both give the same validated model, and ``Flow.dump``
writes a file that loads back equal. Errors in a flow file name the file, line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import FlowError, FlowFileError
from .flowfile import GraphProblems, located, parse, render
from .message import DEFAULT_MAX_MESSAGE_BYTES
from .units import Duration, Size

NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"
DEFAULT_INPUT = "input"
DEFAULT_OUTPUTS = ("success", "failure")
Name = Annotated[str, Field(pattern=NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class Schedule(_Model):
    """When a source is called: once (iterate what it returns), on an interval, or by cron."""

    #: Call it every interval, e.g. ``5s``.
    interval: Duration | None = None
    #: Call it on a cron schedule (five fields, e.g. ``*/5 * * * *``).
    cron: str | None = None
    #: Stop after this many calls (default: forever for schedules, once otherwise).
    count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if self.interval is not None and self.cron is not None:
            raise ValueError("give either interval or cron, not both")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("interval must be greater than zero")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(
                    f"{self.cron!r} is not a cron expression; write five fields, e.g. '*/5 * * * *'"
                )
        return self

    @property
    def scheduled(self) -> bool:
        return self.interval is not None or self.cron is not None


class Retry(_Model):
    """How often a failing message is retried, and how long to wait in between."""

    #: Retries after the first attempt; then the ``failure`` port or the dead letters.
    max: int = Field(default=3, ge=0)
    #: The wait before the first retry; it doubles each time.
    backoff: Duration = 0.5
    #: The longest wait between two retries.
    max_backoff: Duration = 30.0

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


class Results(_Model):
    """A processor's results kept in the flow's blob store: for each input, what it emitted,
    under the input's ``key`` attribute (an idempotency key given when it was sent, which its
    descendants inherit) or else its message id; read with ``elasticcode result get``."""

    #: How long a result is kept.
    ttl: Duration = 86_400.0
    #: The largest result kept; a larger one fails its message (store the data elsewhere and
    #: return where it is).
    max_bytes: Size = 16 * 2**20


class Scale(_Model):
    """Autoscaling of a processor's instances between ``min`` and ``max`` on its backlog (see
    ``elasticcode.autoscale``): enough instances to clear what waits within
    ``target_latency`` while keeping up with what arrives, or ``target_backlog`` messages
    waiting per instance. More at once when the backlog grows (after ``up_after`` since the
    last change); fewer only when no reading over the last ``down_after`` asked for more."""

    #: The fewest instances (0: asleep until a message waits; in a network, one that came
    #: through a connection).
    min: int = Field(default=1, ge=0, le=100_000)
    #: The most instances.
    max: int = Field(ge=1, le=100_000)
    #: Enough instances to clear what waits within this time.
    target_latency: Duration = 2.0
    #: Or: this many messages waiting per instance.
    target_backlog: int | None = Field(default=None, ge=1)
    #: The least time between two changes up.
    up_after: Duration = 5.0
    #: Fewer only when no reading over this time asked for more.
    down_after: Duration = 60.0

    @model_validator(mode="after")
    def _bounds(self) -> Scale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if {"target_latency", "target_backlog"} <= self.model_fields_set:
            raise ValueError("give target_latency or target_backlog, not both")
        if self.target_latency <= 0:
            raise ValueError("target_latency must be greater than zero, e.g. 2s")
        return self


class GitSource(_Model):
    """Where a processor's code comes from: a git repository at a ref, pinned to a commit."""

    #: The repository: ``https://``, ``ssh://`` or ``file://`` URL.
    repo: str
    #: A branch, tag or commit; pinned to the commit it names when first run.
    ref: str
    #: Folder inside the repository that holds the code (modules, or the command).
    path: str = ""
    #: The secret holding the token (or SSH key path) for the repository: its name (see
    #: ``elasticcode.secret``), not its value.
    credential: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
    #: The commit the ref resolved to; set by the engine (see ``elasticcode.code.pinning``).
    commit: str | None = None

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        if value.startswith("/") or ".." in Path(value).parts:
            raise ValueError(f"path {value!r} must be a folder inside the repository")
        return value


def _source(value: Any) -> Any:
    if value is True:
        return Schedule()
    if value is False or value is None:
        return None
    return value


class Processor(_Model):
    """One processor: its code, configuration, ports and run settings."""

    #: The processor's name, unique in the flow.
    name: Name
    #: Python code as ``module:function`` or ``module:Class``.
    code: str | None = None
    #: Python source of the processor (with ``entry`` naming its function).
    inline: str | None = None
    #: An executable speaking JSON lines on stdin/stdout (see ``elasticcode.code.command``).
    command: str | list[str] | None = None
    #: Working folder of a command, relative to the flow's folder (default: that folder).
    cwd: str | None = None
    #: The code (module or command) comes from this git repository.
    git: GitSource | None = None
    #: Packages the processor needs, or a requirements file in its code folder: its workers
    #: then run in an environment of their own (see ``elasticcode.code.envs``).
    requirements: list[str] | str | None = None
    #: The function of ``inline`` code to call.
    entry: str = "process"
    #: Values for the processor's parameters, by name.
    config: dict[str, Any] = Field(default_factory=dict)
    #: Input ports (default: ``input``; none for a source).
    inputs: list[Name] | None = None
    #: Output ports.
    outputs: list[Name] = Field(default_factory=lambda: list(DEFAULT_OUTPUTS))
    #: ``true`` for a source (takes no input), or when to call it: a schedule.
    source: Annotated[
        Schedule | None,
        BeforeValidator(_source),
        PlainSerializer(lambda s: None if s is None else (s.model_dump(exclude_none=True) or True)),
    ] = None
    #: How many instances run: a number, or ``auto`` (one per core; in a network one per agent that may run it).
    instances: int | Literal["auto"] = "auto"
    #: Autoscaling between a minimum and a maximum (``instances`` is then where it starts).
    scale: Scale | None = None
    #: Distributed mode: run only on agents carrying every one of these labels (e.g. gpu: "true").
    labels: dict[str, str] = Field(default_factory=dict)
    #: Distributed mode: ``spread`` its instances over hosts and the least loaded agents (and
    #: move them there as agents come and go), or ``pack`` them onto the fewest agents.
    placement: Literal["spread", "pack"] = "spread"
    #: The most messages a worker holds at once.
    prefetch: int = Field(default=100, ge=1, le=10_000)
    #: How failures are retried.
    retries: Retry = Field(default_factory=Retry)
    #: Keep what it emits for each input as a result, e.g. ``{ttl: 1h}`` (see ``Results``).
    results: Results | None = None
    #: Longest a processor may take over one message; then that message fails (and is
    #: retried like any error) and the worker goes on with the next.
    timeout: Duration | None = None
    #: A worker whose memory (resident set) grows past this, e.g. through a leak in the
    #: processor, settles its batch and is restarted at once.
    max_memory: Size | None = None
    #: What it does, for people.
    description: str = ""

    @field_validator("code")
    @classmethod
    def _code_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
            raise ValueError(
                f"{value!r} is not of the form module:function (e.g. mypkg.steps:clean)"
            )
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("timeout must be greater than zero, e.g. 30s")
        return value

    @field_validator("instances")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 100_000:
            raise ValueError("instances must be 1 to 100000, or 'auto' (one per CPU core)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Processor:
        if sum(x is not None for x in (self.code, self.inline, self.command)) != 1:
            raise ValueError(
                "give exactly one of code (module:function), inline (source text) or command "
                "(an executable speaking JSON lines)"
            )
        if self.git is not None and self.inline is not None:
            raise ValueError("inline code cannot come from git; give code or command with git")
        if self.source is not None:
            if self.inputs:
                raise ValueError("a source has no inputs; remove inputs or source")
            if self.instances not in ("auto", 1):
                raise ValueError("a source runs as a single instance; remove instances")
            if self.scale is not None:
                raise ValueError("a source runs as a single instance; remove scale")
        scale, start = self.scale, self.instances
        if scale and isinstance(start, int) and not scale.min <= start <= scale.max:
            raise ValueError(
                f"instances ({start}) is where scaling starts: it must be between "
                f"scale min ({scale.min}) and max ({scale.max})"
            )
        for port_list in (self.inputs or [], self.outputs):
            if len(set(port_list)) != len(port_list):
                raise ValueError("port names must be unique")
        return self

    @property
    def input_ports(self) -> list[str]:
        if self.source is not None:
            return []
        return self.inputs if self.inputs is not None else [DEFAULT_INPUT]

    @property
    def is_source(self) -> bool:
        return self.source is not None

    def port(self, name: str) -> str:
        """``processor.port`` reference for ``Flow.connect``."""
        return f"{self.name}.{name}"


class Connection(_Model):
    """An output port wired to an input port through a durable queue."""

    #: The output: ``processor`` (its ``success`` port) or ``processor.port``.
    source: str = Field(alias="from")
    #: The input: ``processor`` (its only input port) or ``processor.port``.
    target: str = Field(alias="to")
    #: Back pressure: upstream stops consuming while the queue holds more messages than this ...
    max_messages: int = Field(default=10_000, ge=1)
    #: ... or more bytes than this.
    max_bytes: Size = 64 * 2**20
    #: Broker URL of this connection's queue, if not the flow's broker.
    broker: str | None = None
    #: Messages larger than this travel through the blob store (the flow's, if not given).
    blob_threshold: Size | None = None

    @field_validator("source", "target")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)?", value):
            raise ValueError(f"{value!r} is not 'processor' or 'processor.port'")
        return value

    def ends(self) -> tuple[str, str, str, str]:
        """(source processor, output port, target processor, input port)."""
        src, _, out = self.source.partition(".")
        dst, _, inp = self.target.partition(".")
        return src, out or "success", dst, inp or ""


class Sampled(_Model):
    """Lineage of a share of the messages: whole trees, chosen where a message enters."""

    sampled: float = Field(gt=0.0, le=1.0)


class Settings(_Model):
    #: The largest message a processor may emit; a larger one fails that message.
    max_message_bytes: Size = DEFAULT_MAX_MESSAGE_BYTES
    #: Broker URL for this flow's queues (``--broker`` and ``ELASTICCODE_BROKER`` override it).
    broker: str | None = None
    #: Lineage records (``elasticcode trace``): ``off``, ``full``, or ``{sampled: 0.01}``.
    lineage: Literal["off", "full"] | Sampled = "off"
    #: Blob store URL for messages above ``blob_threshold`` (the claim check): ``file:///path``,
    #: ``s3://bucket/prefix``, ``redis://``, ``postgresql://``, ``module:Class``. On one host
    #: the default is the ``blobs`` folder of the state directory; a network has none unless
    #: given (its workers need one they share).
    blobs: str | None = None
    #: Messages larger than this (encoded) are kept in the blob store, and their queues carry
    #: a reference; ``max_message_bytes`` still bounds them.
    blob_threshold: Size = 256 * 1024

    def traces(self, message_id: str) -> bool:
        """Whether a message entering the flow with this id has its lineage recorded (the
        messages that descend from it follow it)."""
        if self.lineage == "off":
            return False
        if self.lineage == "full":
            return True
        assert isinstance(self.lineage, Sampled)
        return int(message_id[:8], 16) < self.lineage.sampled * 2**32


class Flow(_Model):
    """A named graph of processors and connections."""

    #: The flow's name: its queues and state are named after it.
    name: Name
    #: What it does, for people.
    description: str = ""
    #: Folders (relative to the flow file) searched for processor modules.
    path: list[str] = Field(default_factory=lambda: ["."])
    #: Settings of the whole flow.
    settings: Settings = Field(default_factory=Settings)
    #: Its processors.
    processors: list[Processor] = Field(default_factory=list)
    #: Its connections.
    connections: list[Connection] = Field(default_factory=list)
    #: Folder of the file the flow came from; module paths are relative to it.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @model_validator(mode="after")
    def _graph(self) -> Flow:
        problems = list(self.problems())
        if problems:
            raise GraphProblems(problems)
        return self

    # -- building in Python ------------------------------------------------------------------
    def processor(self, name: str, code: str | None = None, **fields: Any) -> Processor:
        """Add a processor and return it."""
        proc = _build(Processor, {"name": name, "code": code, **fields})
        self._extend("processors", proc)
        return proc

    def connect(
        self, source: str | Processor, target: str | Processor, **fields: Any
    ) -> Connection:
        """Wire ``source`` (``proc`` or ``proc.port``) to ``target``; return the connection."""
        conn = _build(Connection, {"from": _ref(source), "to": _ref(target), **fields})
        self._extend("connections", conn)
        return conn

    def _extend(self, field: str, item: Any) -> None:
        """Append to a list field; on any problem leave the flow as it was and say why."""
        before = getattr(self, field)
        try:
            setattr(self, field, [*before, item])
        except ValidationError as exc:
            self.__dict__[field] = before
            raise FlowError(str(located(exc, {}, ""))) from None

    # -- queries ----------------------------------------------------------------------------
    def get(self, name: str) -> Processor:
        for proc in self.processors:
            if proc.name == name:
                return proc
        raise FlowError(
            f"flow {self.name!r} has no processor {name!r}; it has "
            f"{', '.join(p.name for p in self.processors) or 'none'}"
        )

    def resolved(self, conn: Connection) -> tuple[str, str, str, str]:
        """A connection's ends with the default input port filled in."""
        src, out, dst, inp = conn.ends()
        if not inp:
            ports = self.get(dst).input_ports
            inp = ports[0] if len(ports) == 1 else ""
        return src, out, dst, inp

    def queue_name(self, conn: Connection) -> str:
        src, out, dst, inp = self.resolved(conn)
        return f"{self.name}.{src}.{out}-{dst}.{inp}"

    def inbox(self, processor: str, port: str) -> str:
        """The queue that ``send`` writes to for a processor's input port."""
        return f"{self.name}.{processor}.{port}.inbox"

    def inputs_of(self, name: str) -> dict[str, str]:
        """queue name -> input port, for every queue a processor consumes."""
        proc = self.get(name)
        out = {self.inbox(name, port): port for port in proc.input_ports}
        for conn in self.connections:
            _, _, dst, inp = self.resolved(conn)
            if dst == name:
                out[self.queue_name(conn)] = inp
        return out

    def outputs_of(self, name: str) -> dict[str, list[Connection]]:
        """output port -> connections leaving it."""
        out: dict[str, list[Connection]] = {p: [] for p in self.get(name).outputs}
        for conn in self.connections:
            src, port, _, _ = self.resolved(conn)
            if src == name:
                out[port].append(conn)
        return out

    def broker_routes(self) -> dict[str, str]:
        """Queue -> broker URL, for the connections that name a broker of their own."""
        return {self.queue_name(c): c.broker for c in self.connections if c.broker}

    def queues(self) -> list[str]:
        names = [self.queue_name(c) for c in self.connections]
        for proc in self.processors:
            names += [self.inbox(proc.name, port) for port in proc.input_ports]
        return names

    def module_paths(self) -> list[str]:
        """The folders processor modules are imported from, absolute."""
        return [str((self.base_dir / p).resolve()) for p in self.path]

    def frozen(self, base_dir: Path | None = None) -> Flow:
        """The flow with module paths and command folders made absolute, so that it runs the
        same from any folder (``base_dir``)."""
        folder = self.base_dir.resolve()
        processors = [
            p.model_copy(update={"cwd": str(folder / (p.cwd or "."))})
            if p.command and p.git is None
            else p
            for p in self.processors
        ]
        return self.model_copy(
            update={
                "path": self.module_paths(),
                "base_dir": base_dir or folder,
                "processors": processors,
            }
        )

    def problems(self) -> Iterator[tuple[tuple[Any, ...], str]]:
        """(location, message) for every inconsistency in the graph."""
        seen: dict[str, Processor] = {}
        for i, proc in enumerate(self.processors):
            if proc.name in seen:
                yield ("processors", i, "name"), f"processor name {proc.name!r} is used twice"
            if proc.results is not None and proc.is_source:
                yield (
                    ("processors", i, "results"),
                    f"processor {proc.name!r} is a source: results are kept per input; keep "
                    "them on a processor it feeds",
                )
            seen[proc.name] = proc
        for i, conn in enumerate(self.connections):
            src, out, dst, inp = conn.ends()
            if src not in seen:
                yield ("connections", i, "from"), _unknown(src, seen)
            elif out not in seen[src].outputs:
                yield (
                    ("connections", i, "from"),
                    (
                        f"processor {src!r} has no output port {out!r}; its outputs are "
                        f"{', '.join(seen[src].outputs)} (declare more under outputs)"
                    ),
                )
            if dst not in seen:
                yield ("connections", i, "to"), _unknown(dst, seen)
            else:
                ports = seen[dst].input_ports
                if not ports:
                    yield (
                        ("connections", i, "to"),
                        f"processor {dst!r} is a source and takes no input",
                    )
                elif inp and inp not in ports:
                    yield (
                        ("connections", i, "to"),
                        (
                            f"processor {dst!r} has no input port {inp!r}; its inputs are {', '.join(ports)}"
                        ),
                    )
                elif not inp and len(ports) > 1:
                    yield (
                        ("connections", i, "to"),
                        (
                            f"processor {dst!r} has several inputs ({', '.join(ports)}); "
                            f"name one, e.g. {dst}.{ports[0]}"
                        ),
                    )

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(
            mode="json", by_alias=True, exclude_defaults=True, exclude={"base_dir"}
        )

    def dump(self, path: str | Path | None = None, fmt: str | None = None) -> str:
        """The flow as YAML (or JSON); written to ``path`` when given."""
        fmt = fmt or ("json" if path and str(path).endswith(".json") else "yaml")
        text = render(self.to_dict(), fmt)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any, base_dir: Path | None = None) -> Flow:
        return cls.model_validate(_with_base(data, base_dir))

    @classmethod
    def from_document(cls, data: Any, source: str = "flow document") -> Flow:
        """A flow from parsed data (e.g. JSON sent to the API); errors name the field."""
        if not isinstance(data, dict):
            raise FlowFileError(
                "a flow must be a mapping with name, processors and connections", source
            )
        try:
            return cls.from_dict(data)
        except ValidationError as exc:
            raise located(exc, {}, source) from None

    @classmethod
    def loads(cls, text: str, source: str = "<flow>", base_dir: Path | None = None) -> Flow:
        """Parse YAML or JSON text; errors point at the line and column at fault."""
        data, marks = parse(text, source)
        try:
            return cls.from_dict(data, base_dir)
        except ValidationError as exc:
            raise located(exc, marks, source) from None

    @classmethod
    def load(cls, path: str | Path) -> Flow:
        """Read a flow file (``.yaml``, ``.yml`` or ``.json``)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise FlowFileError(f"cannot read flow file: {exc.strerror}", str(path)) from None
        return cls.loads(text, str(path), path.resolve().parent)


M = TypeVar("M", bound=BaseModel)


def _build(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FlowError(str(located(exc, {}, ""))) from None


def _ref(end: str | Processor) -> str:
    return end.name if isinstance(end, Processor) else end


def _unknown(name: str, seen: dict[str, Processor]) -> str:
    import difflib

    near = difflib.get_close_matches(name, seen, n=1)
    hint = (
        f"; did you mean {near[0]!r}?" if near else f"; processors are {', '.join(seen) or 'none'}"
    )
    return f"no processor named {name!r}{hint}"


def _with_base(data: Any, base_dir: Path | None) -> Any:
    if isinstance(data, dict) and base_dir is not None:
        return {**data, "base_dir": base_dir}
    return data
