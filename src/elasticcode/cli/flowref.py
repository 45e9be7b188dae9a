"""What a FLOW argument names: a flow file, a Python file defining a flow, or ``module:NAME``.

Every command that takes a flow reads it through ``load_flow``.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

from ..errors import FlowError
from ..flow import Flow

FLOW_HELP = "FLOW is a flow file (.yaml, .yml, .json), a Python file defining `flow` (file.py or file.py:NAME), or module:NAME."


def load_flow(ref: str) -> Flow:
    """A flow from a file, a Python file, or ``module:attribute``."""
    path_part, _, attr = (
        ref.partition(":") if ref.count(":") == 1 and not Path(ref).exists() else (ref, "", "")
    )
    path = Path(path_part)
    if path.suffix in (".yaml", ".yml", ".json"):
        return Flow.load(path)
    if path.suffix == ".py":
        if not path.exists():
            raise FlowError(f"no such file: {path}")
        sys.path.insert(0, str(path.resolve().parent))
        namespace = runpy.run_path(str(path), run_name="__elasticcode__")
        flow = namespace.get(attr or "flow")
        if not isinstance(flow, Flow):
            raise FlowError(f"{path} defines no Flow named {attr or 'flow'!r}")
        if "base_dir" not in flow.model_fields_set:
            flow.base_dir = path.resolve().parent
        return flow
    if attr:
        try:
            obj = getattr(importlib.import_module(path_part), attr)
        except (ImportError, AttributeError) as exc:
            raise FlowError(f"cannot load flow {ref!r}: {exc}") from None
        if not isinstance(obj, Flow):
            raise FlowError(f"{ref} is not a Flow")
        return obj
    raise FlowError(f"cannot tell what {ref!r} is; {FLOW_HELP}")
