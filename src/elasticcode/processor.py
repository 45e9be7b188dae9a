"""Loading a processor's code and calling it.

A processor is a Python callable named ``module:function`` (importable from the flow's folder,
its ``path`` entries, or ``sys.path``) or given inline as source text (or an executable in any
language: see ``elasticcode.command``). It may be

* a function, sync or async, taking the payload as its first argument;
* a generator (sync or async) that yields any number of outputs;
* a class with a ``process(self, payload, ...)`` method and optional ``setup()`` and
  ``teardown()``.

Parameters after the payload are filled by name from the processor's ``config``; a parameter
named ``ctx`` receives the :class:`Context`. A return value goes to ``success`` (``None``
emits nothing); :class:`Output` picks another port or adds attributes; ``ctx.emit`` sends any
number of messages to any declared port. Sources take no payload: they return or yield what
they produce.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ProcessorError

if TYPE_CHECKING:
    from .flow import Flow, Processor
    from .state import KeyValue


@dataclass(slots=True)
class Output:
    """An output with a chosen port, extra attributes, or an idempotency key.

    ``key``: outputs that carry the same key from the same processor and port get the same
    message id, so downstream duplicates are recognisable (effectively-once with a deduplicating
    sink).
    """

    payload: Any
    port: str = "success"
    attributes: dict[str, Any] | None = None
    key: str | None = None


class Context:
    """What a processor can reach while it handles one message."""

    __slots__ = (
        "config",
        "deferred",
        "flow",
        "input_ports",
        "logger",
        "message",
        "outputs",
        "port",
        "processor",
        "state",
    )

    def __init__(
        self,
        flow: str,
        processor: str,
        config: dict[str, Any],
        logger: logging.Logger,
        state: KeyValue | None = None,
        input_ports: tuple[str, ...] = (),
    ) -> None:
        self.flow = flow
        self.processor = processor
        self.config = config
        self.logger = logger
        self.state = state
        self.input_ports = input_ports
        self.message: Any = None
        self.port: str | None = None
        self.outputs: list[Output] = []
        self.deferred: list[Callable[[], Any]] = []

    def emit(
        self,
        payload: Any,
        port: str = "success",
        attributes: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Send a message to an output port (in addition to what the call returns)."""
        self.outputs.append(Output(payload, port, attributes, key))

    def after_settle(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` once this message's outputs are durable and its input acknowledged."""
        self.deferred.append(fn)

    def child(self, message: Any, port: str | None) -> Context:
        """A context for one message, sharing everything but the message and its outputs."""
        ctx = Context(
            self.flow, self.processor, self.config, self.logger, self.state, self.input_ports
        )
        ctx.message = message
        ctx.port = port
        return ctx


@dataclass
class Loaded:
    """A processor's code, bound to its configuration and ready to call."""

    name: str
    target: str
    call: Callable[..., Any]
    is_async: bool
    setup: Callable[[], Any] | None = None
    teardown: Callable[[], Any] | None = None
    instance: Any = field(default=None, repr=False)


def load(spec: Processor, flow: Flow) -> Loaded:
    """Import and bind a processor; any problem raises ``ProcessorError`` saying what to fix."""
    if spec.command is not None:
        from .command import load_command

        return load_command(spec, flow)
    target = spec.code or f"<inline>:{spec.entry}"
    obj = _resolve(spec, flow)
    if inspect.isclass(obj):
        return _load_class(spec, target, obj)
    if not callable(obj):
        raise ProcessorError(
            spec.name, f"{target} is a {type(obj).__name__}, not a function or class"
        )
    call = _bind(spec, target, obj)
    return Loaded(spec.name, target, call, _is_async(obj))


def _resolve(spec: Processor, flow: Flow) -> Any:
    if spec.inline is not None:
        module = types.ModuleType(f"elasticcode_inline_{spec.name}")
        module.__file__ = f"<inline code of processor {spec.name}>"
        try:
            code = compile(spec.inline, module.__file__, "exec")
            exec(code, module.__dict__)
        except SyntaxError as exc:
            raise ProcessorError(
                spec.name, f"inline code has a syntax error at line {exc.lineno}: {exc.msg}"
            ) from None
        except Exception as exc:
            raise ProcessorError(spec.name, f"inline code failed to run: {exc!r}") from None
        if not hasattr(module, spec.entry):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            raise ProcessorError(
                spec.name,
                f"inline code defines no {spec.entry!r}; set entry to one of {', '.join(names) or 'nothing callable'}",
            )
        return getattr(module, spec.entry)

    assert spec.code is not None
    module_name, _, attr = spec.code.partition(":")
    paths = import_paths(flow)
    if spec.git is not None:  # the pinned commit's files come first
        paths = [str(code_folder(spec)), *paths]
    add_import_paths(paths)
    _forget_if_shadowed(module_name, paths)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ProcessorError(
                spec.name,
                f"module {module_name!r} not found; searched the flow folder "
                f"({', '.join(paths)}) and sys.path. Check the spelling of code, "
                "or add the module's folder to the flow's path",
            ) from None
        raise ProcessorError(
            spec.name, f"module {module_name!r} imports {exc.name!r}, which is not installed"
        ) from None
    except SyntaxError as exc:
        raise ProcessorError(
            spec.name,
            f"module {module_name!r} has a syntax error at {exc.filename}:{exc.lineno}: {exc.msg}",
        ) from None
    except Exception as exc:
        raise ProcessorError(
            spec.name, f"importing module {module_name!r} failed: {exc!r}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [
                n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
            ]
            raise ProcessorError(
                spec.name,
                f"module {module_name!r} has no {attr!r}; it defines {', '.join(names) or 'nothing callable'}",
            )
        obj = getattr(obj, part)
    return obj


def import_paths(flow: Flow) -> list[str]:
    return [str((flow.base_dir / p).resolve()) for p in flow.path]


def code_folder(spec: Processor) -> Path:
    """The folder of a git processor's code at its commit (fetched into the cache if needed)."""
    from .gitcode import GitError, tree_of

    git = spec.git
    assert git is not None
    try:
        return tree_of(git.repo, git.ref, git.commit, git.path, git.credential)
    except GitError as exc:
        raise ProcessorError(spec.name, str(exc)) from None


def add_import_paths(paths: list[str]) -> None:
    """Put folders first on sys.path (moving them there if already present)."""
    for path in reversed(paths):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def _forget_if_shadowed(module_name: str, paths: list[str]) -> None:
    """Drop a cached module that came from elsewhere when the flow's folders hold one of that name.

    Several flows in one process (tests, notebooks) may each have their own ``steps.py``.
    """
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    origin = getattr(cached, "__file__", None)
    if cached is None or origin is None:
        return
    if any(origin.startswith(p + "/") for p in paths):
        return
    if any(Path(p, top + ".py").exists() or Path(p, top, "__init__.py").exists() for p in paths):
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _bind(
    spec: Processor, target: str, fn: Callable[..., Any], skip_self: bool = False
) -> Callable[..., Any]:
    """Check a callable's signature against the flow, return ``call(payload, ctx)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ProcessorError(spec.name, f"cannot read the signature of {target}") from None
    params = list(sig.parameters.values())
    if skip_self and params:
        params = params[1:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes_payload = not spec.is_source
    if takes_payload:
        if not params or params[0].kind not in positional or params[0].name == "ctx":
            raise ProcessorError(
                spec.name,
                f"{target} must take the message payload as its first argument, "
                "e.g. def process(payload, ctx): ...",
            )
        params = params[1:]
    wants_ctx = False
    kwargs: dict[str, Any] = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    names = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ProcessorError(spec.name, f"{target}: parameter {p.name!r} must accept a keyword")
        if p.name == "ctx":
            wants_ctx = True
            continue
        names.append(p.name)
        if p.name in spec.config:
            kwargs[p.name] = spec.config[p.name]
        elif p.default is inspect.Parameter.empty:
            raise ProcessorError(
                spec.name, f"{target} needs parameter {p.name!r}; give it under config in the flow"
            )
    extra = [k for k in spec.config if k not in names]
    if extra and not var_kw:
        raise ProcessorError(
            spec.name,
            f"config {', '.join(map(repr, extra))} not accepted by {target}, which takes "
            f"{', '.join(names) or 'no parameters'}; remove it or add **config to the signature",
        )
    if var_kw:
        kwargs.update({k: spec.config[k] for k in extra})

    if takes_payload:
        if wants_ctx:
            return lambda payload, ctx: fn(payload, ctx=ctx, **kwargs)
        if kwargs:
            return lambda payload, ctx: fn(payload, **kwargs)
        return lambda payload, ctx: fn(payload)
    if wants_ctx:
        return lambda ctx: fn(ctx=ctx, **kwargs)
    return lambda ctx: fn(**kwargs)


def _load_class(spec: Processor, target: str, cls: type) -> Loaded:
    method = "generate" if spec.is_source else "process"
    if not callable(getattr(cls, method, None)):
        raise ProcessorError(spec.name, f"class {target} has no {method}() method")
    init = vars(cls).get("__init__") or next(
        (vars(base)["__init__"] for base in cls.__mro__ if "__init__" in vars(base)), None
    )
    init_params = (
        [
            p
            for p in list(inspect.signature(init).parameters.values())[1:]
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if init is not None and init is not object.__init__
        else []
    )
    init_names = {p.name for p in init_params}
    init_kw = {k: v for k, v in spec.config.items() if k in init_names}
    for p in init_params:
        if p.name not in spec.config and p.default is inspect.Parameter.empty:
            raise ProcessorError(
                spec.name, f"{target}() needs {p.name!r}; give it under config in the flow"
            )
    rest = spec.model_copy(
        update={"config": {k: v for k, v in spec.config.items() if k not in init_names}}
    )
    try:
        instance = cls(**init_kw)
    except Exception as exc:
        raise ProcessorError(spec.name, f"creating {target}() failed: {exc!r}") from None
    bound = getattr(instance, method)
    call = _bind(rest, f"{target}.{method}", bound)
    return Loaded(
        spec.name,
        target,
        call,
        _is_async(bound),
        setup=getattr(instance, "setup", None),
        teardown=getattr(instance, "teardown", None),
        instance=instance,
    )


async def collect(result: Any, ctx: Context) -> list[Output]:
    """Turn what a call returned (value, Output, generator, coroutine) into outputs."""
    if inspect.isawaitable(result):
        result = await result
    if inspect.isasyncgen(result):
        async for item in result:
            ctx.outputs.append(item if isinstance(item, Output) else Output(item))
        return ctx.outputs
    return collect_sync(result, ctx)


def collect_sync(result: Any, ctx: Context) -> list[Output]:
    """``collect`` for what a plain (not async) function returned."""
    outputs = ctx.outputs
    if result is None:
        return outputs
    if isinstance(result, Output):
        outputs.append(result)
    elif inspect.isgenerator(result):
        for item in result:
            outputs.append(item if isinstance(item, Output) else Output(item))
    else:
        outputs.append(Output(result))
    return outputs
