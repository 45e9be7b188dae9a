"""How a worker process is launched, and its entry point (``python -m elasticcode.launch``).

A supervisor writes the flow as it runs (``write_flow``: paths absolute, code pinned) where the
workers read it, and starts one process per instance with ``command`` and ``environment``.
URLs may carry credentials, so they reach the worker through its environment, never its
command line. The process builds a ``Consumer`` or a ``Source`` and runs it until it is told
to stop (SIGTERM: finish the batch, then exit) or, for a source, until it is exhausted; its
exit code tells the supervisor what happened (see ``elasticcode.worker``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .brokers import flow_broker
from .claimcheck import with_claim_check
from .errors import DiskFull, StateUnreachable
from .flow import Flow
from .secret import ENV_PREFIX, env_name
from .source import Source
from .store import StateStore
from .worker import EXIT_DISK_FULL, Consumer

log = logging.getLogger("elasticcode.worker")

BROKER_ENV = "ELASTICCODE_WORKER_BROKER"
STATE_ENV = "ELASTICCODE_WORKER_STATE"


def write_flow(flow: Flow, root: Path, name: str = "flow.yaml") -> Path:
    """Write the flow as run (see ``Flow.frozen``) into ``root`` for the workers to load."""
    path = root / name
    tmp = path.with_suffix(".tmp")
    flow.frozen(root).dump(tmp)
    os.replace(tmp, path)
    return path


def command(
    python: str,
    flow_file: Path,
    processor: str,
    instance: int,
    run_id: int,
    consumer: str,
    revision: int | None = None,
) -> list[str]:
    """The command line of one worker process (``revision``: of a deployed flow)."""
    return [
        python,
        "-m",
        "elasticcode.launch",
        "--flow",
        str(flow_file),
        "--processor",
        processor,
        "--instance",
        str(instance),
        "--run",
        str(run_id),
        "--consumer",
        consumer,
        *(["--revision", str(revision)] if revision is not None else []),
    ]


#: What a worker never inherits from its supervisor: the credentials of the control plane.
CONTROL_ENV = (
    "ELASTICCODE_TOKEN",
    "ELASTICCODE_ENROL_TOKEN",
    "ELASTICCODE_DB",
    "ELASTICCODE_SECRET_KEY",
    "ELASTICCODE_ADMIN_PASSWORD",
)


def environment(
    broker_url: str, state_url: str, secrets: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a worker process: the supervisor's, less the control plane's
    credentials, with the URLs it needs. With ``secrets`` (an agent's, for the instance's
    flow), those secrets and no others of the supervisor's environment."""
    env = {k: v for k, v in os.environ.items() if k not in CONTROL_ENV}
    if secrets is not None:
        env = {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}
        env |= {env_name(name): value for name, value in secrets.items()}
    return {**env, BROKER_ENV: broker_url, STATE_ENV: state_url}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elasticcode.launch",
        description="Run one processor instance (started by a supervisor).",
    )
    parser.add_argument("--flow", required=True, help="flow file")
    parser.add_argument("--processor", required=True)
    parser.add_argument("--instance", type=int, default=0)
    parser.add_argument("--run", type=int, required=True, dest="run_id")
    parser.add_argument(
        "--broker", default=os.environ.get(BROKER_ENV), help=f"[default: ${BROKER_ENV}]"
    )
    parser.add_argument(
        "--state", default=os.environ.get(STATE_ENV), help=f"[default: ${STATE_ENV}]"
    )
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--revision", type=int, default=None, help="a deployed flow's revision")
    args = parser.parse_args(argv)
    if not args.broker or not args.state:
        parser.error(f"give --broker and --state, or set {BROKER_ENV} and {STATE_ENV}")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.processor}[{args.instance}] %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    flow = Flow.load(args.flow)
    broker = with_claim_check(flow_broker(args.broker, flow), flow)
    state = _open_state(args.state)
    kind = Source if flow.get(args.processor).is_source else Consumer
    worker = kind(flow, args.processor, broker, state, args.run_id, args.instance, args.consumer)
    if worker.lineage is not None:
        worker.lineage.common["revision"] = args.revision

    async def go() -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
        return await worker.run()

    try:
        return asyncio.run(go())
    except DiskFull as exc:  # nothing more can be written: say so and let the supervisor decide
        log.error("%s", exc)
        return EXIT_DISK_FULL
    finally:
        state.close()


def _open_state(url: str) -> StateStore:
    """The state store; while it does not answer, wait for it (the supervisor stops this worker
    if it should give up)."""
    delay = 0.5
    while True:
        try:
            return StateStore(url)
        except StateUnreachable as exc:
            log.warning("waiting for the state store: %s; retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


if __name__ == "__main__":
    sys.exit(main())
