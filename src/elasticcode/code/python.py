"""Python processors: a callable named ``module:function``, or given inline as source text.

The module is imported from the flow's folder, its ``path`` entries, its git commit's folder,
or ``sys.path``. The callable may be

* a function, sync or async, taking the payload as its first argument;
* a generator (sync or async) that yields any number of outputs;
* a class with a ``process(self, payload, ...)`` method (``generate(self, ...)`` for a
  source) and optional ``setup()`` and ``teardown()``; config keys matching its ``__init__``
  parameters go there.

Its signature is checked against the flow before anything runs: every parameter after the
payload must be filled by ``config`` (or have a default), and every ``config`` key must be
taken, so that a typo is an error at load time, not a surprise per message.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ProcessorError
from ..processor import Loaded
from .git import code_folder

if TYPE_CHECKING:
    from ..flow import Flow, Processor


def load_python(spec: Processor, flow: Flow) -> Loaded:
    """Import and bind a Python processor (``code`` or ``inline``); any problem raises
    ``ProcessorError`` saying what to fix."""
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
    paths = flow.module_paths()
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
