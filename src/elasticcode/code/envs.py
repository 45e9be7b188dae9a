"""Isolated Python environments for processors that list requirements.

``requirements: [requests==2.31, ...]`` (or ``requirements: requirements.txt``, a file in the
processor's code folder: the flow's folder, or its git commit's folder) gives the processor a
virtual environment of its own, built once per host and shared by every processor with the
same needs: it lives in the cache (``envs/<key>``), the key a hash of the Python version and
the requirement lines. The engine itself stays importable inside it, behind the processor's
own packages, so two processors that need different versions of one library run side by side,
each in its workers' own interpreter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProcessorError
from .cache import cache_root, locked
from .git import code_folder

if TYPE_CHECKING:
    from ..flow import Flow, Processor

PIP_TIMEOUT = 1800


def requirement_lines(spec: Processor, flow: Flow) -> list[str]:
    """The processor's requirements, one per line ([] for none)."""
    if spec.requirements is None:
        return []
    if isinstance(spec.requirements, list):
        lines = spec.requirements
    else:
        folder = code_folder(spec) if spec.git is not None else flow.base_dir
        path = (folder / spec.requirements).resolve()
        if not path.is_file():
            raise ProcessorError(
                spec.name, f"requirements file {spec.requirements!r} not in {folder}"
            )
        lines = path.read_text().splitlines()
    return sorted({s for line in lines if (s := line.split("#", 1)[0].strip())})


def env_key(lines: list[str]) -> str:
    text = "\n".join([sys.version, sys.prefix, *lines])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def python_for(spec: Processor, flow: Flow, build: bool = True) -> str:
    """The interpreter a processor's workers run: the engine's own, or its environment's."""
    lines = requirement_lines(spec, flow)
    if not lines:
        return sys.executable
    env = cache_root() / "envs" / env_key(lines)
    python = env / "bin" / "python"
    if not python.exists():
        if not build:
            raise ProcessorError(spec.name, "its environment is not built yet")
        with locked(env.with_name(f"{env.name}.lock")):
            if not python.exists():
                _build(spec.name, env, lines)
    return str(python)


def _build(name: str, env: Path, lines: list[str]) -> None:
    tmp = env.with_name(f".{env.name}.{os.getpid()}")
    print(f"processor {name}: building its environment ({', '.join(lines)})", file=sys.stderr)
    _run(name, [sys.executable, "-m", "venv", "--without-pip", str(tmp)], "creating a venv")
    purelib = sysconfig.get_path("purelib", vars={"base": str(tmp), "platbase": str(tmp)})
    # the engine's packages, after the processor's own: imported lazily through site
    engine = [
        p for p in {*site.getsitepackages(), sysconfig.get_path("purelib")} if Path(p).is_dir()
    ]
    Path(purelib).mkdir(parents=True, exist_ok=True)
    lines_pth = "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(engine))
    (Path(purelib) / "zz-elasticcode-engine.pth").write_text(lines_pth)
    reqs = tmp / "requirements.txt"
    reqs.write_text("\n".join(lines) + "\n")
    # the engine's pip installs into the environment's own folder
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--target", purelib, "--no-warn-conflicts", "--upgrade", "-r", str(reqs)]
    try:
        _run(name, pip, "installing its requirements")
    except ProcessorError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, env)


def _run(name: str, cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ProcessorError(name, f"{what} took longer than {PIP_TIMEOUT}s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR:")] or lines[-1:]
        why = errors[0].removeprefix("ERROR: ") if errors else f"exit {done.returncode}"
        raise ProcessorError(name, f"{what} failed: {why}; check its requirements")


CHECK = """
import sys
from pathlib import Path
from elasticcode.errors import ElasticCodeError
from elasticcode.code import load
from elasticcode.flow import Flow

flow = Flow.loads(sys.stdin.read(), base_dir=Path(sys.argv[1]))
try:
    load(flow.get(sys.argv[2]), flow)
except ElasticCodeError as exc:
    sys.exit(str(exc))
"""


def check_in_env(spec: Processor, flow: Flow) -> None:
    """Load a processor in its own environment, as its workers will: raise what is wrong."""
    python = python_for(spec, flow)
    done = subprocess.run(
        [python, "-c", CHECK, str(flow.base_dir), spec.name],
        input=flow.dump(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        text = lines[-1] if lines else f"exit {done.returncode}"
        prefix = f"processor {spec.name!r}: "
        raise ProcessorError(spec.name, text.removeprefix(prefix))
