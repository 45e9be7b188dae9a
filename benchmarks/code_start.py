"""Time to first message of a processor whose code comes from git with requirements, cold and warm.

Cold: an empty cache, so the run clones the repository, writes the commit's tree and builds
the processor's environment (pip install from the package index) before its workers start.
Warm: the same again with everything cached. A local processor without git or requirements
is the baseline. Each figure is from calling ``elasticcode.run`` to the sink receiving the one
message; the repository is made by this script in a temporary folder.

    python benchmarks/code_start.py [--requirement six==1.16.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import elasticcode

STEPS = """
import time

def one():
    yield {"t": time.time()}

def sink(payload, out):
    with open(out, "w") as f:
        f.write(repr(time.time()))
"""


def make_repo(root: Path, requirement: str) -> str:
    repo = root / "repo"
    (repo / "lib").mkdir(parents=True)
    (repo / "lib" / "stage.py").write_text("import six\n\ndef step(p):\n    return p\n")
    (repo / "lib" / "requirements.txt").write_text(requirement + "\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com"}
    env |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "stage"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    return f"file://{repo}"


def flow_for(root: Path, repo: str | None) -> elasticcode.Flow:
    flow = elasticcode.Flow(name="start", base_dir=root)
    flow.processor("gen", "steps:one", source=True)
    if repo is None:
        flow.processor("work", inline="def process(p):\n    return p\n", instances=1)
    else:
        git = {"repo": repo, "ref": "main", "path": "lib"}
        flow.processor("work", "stage:step", git=git, requirements="requirements.txt", instances=1)
    flow.processor("sink", "steps:sink", config={"out": str(root / "arrived")}, instances=1)
    flow.connect("gen", "work")
    flow.connect("work", "sink")
    return flow


def first_message(root: Path, flow: elasticcode.Flow, n: int) -> float:
    arrived = root / "arrived"
    arrived.unlink(missing_ok=True)
    started = time.time()
    result = elasticcode.run(flow, state_dir=root / f"state-{n}", progress=None)
    if result.status != "finished" or not arrived.exists():
        raise SystemExit(f"run {n} did not deliver its message: {result.status} {result.events}")
    return float(arrived.read_text()) - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirement", default="six==1.16.0", help="the processor's one need")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {"local": [], "cold": [], "warm": []}
    for round_no in range(args.rounds):
        root = Path(tempfile.mkdtemp(prefix="ec-start-"))
        try:
            (root / "steps.py").write_text(STEPS)
            repo = make_repo(root, args.requirement)
            os.environ["ELASTICCODE_CACHE"] = str(root / "cache")
            figures["local"].append(first_message(root, flow_for(root, None), 0))
            figures["cold"].append(first_message(root, flow_for(root, repo), 1))
            figures["warm"].append(first_message(root, flow_for(root, repo), 2))
            print(
                f"round {round_no + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()),
                flush=True,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print("\ntime to first message, median of", args.rounds, "rounds:")
    for name, values in figures.items():
        print(
            f"  {name:<6} {statistics.median(values):6.2f} s  ({min(values):.2f}-{max(values):.2f})"
        )
    print(f"(git repository with {args.requirement}; cold = empty cache, warm = cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
