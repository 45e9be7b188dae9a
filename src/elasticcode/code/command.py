"""Processors in any language: an executable that speaks JSON lines on stdin and stdout.

Each worker starts the command once (in the flow's folder, or ``cwd`` relative to it) and
keeps it running; the command
reads one request per line on stdin and writes exactly one reply per request, in order, on
stdout. Anything it writes to stderr goes to the worker's log.

Request (one JSON object per line)::

    {"id": "<message id>", "port": "input", "payload": <JSON>, "attributes": {...}}

A bytes payload comes as ``"payload_base64": "<base64>"`` instead of ``"payload"``.

Reply (one JSON object per line)::

    {"outputs": [{"payload": <JSON>, "port": "success", "attributes": {...}}, ...]}
    {"error": "what went wrong"}     # retried with backoff, then failure port / dead letters
    {"reject": "why"}                # no retries

``outputs`` may be empty or left out (nothing emitted); ``port`` defaults to ``success``;
an output may carry ``payload_base64`` for bytes. The command learns its configuration from
the environment: ``ELASTICCODE_CONFIG`` (the processor's ``config`` as JSON),
``ELASTICCODE_PROCESSOR`` and ``ELASTICCODE_FLOW``. If it exits, the message it was handling
fails (and is retried) and the next message starts it again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import ElasticCodeError, ProcessorError, Reject
from ..processor import Context, Loaded, Output
from .git import code_folder

if TYPE_CHECKING:
    from ..flow import Flow, Processor

#: Longest reply line read from a command (a reply carries outputs up to the message limit).
LINE_LIMIT = 64 * 2**20


class CommandError(ElasticCodeError):
    """A command processor failed on one message or broke the line protocol."""


class Command:
    """One long-lived subprocess of a command processor, one exchange at a time."""

    def __init__(self, spec: Processor, flow: Flow) -> None:
        assert spec.command is not None
        argv = shlex.split(spec.command) if isinstance(spec.command, str) else list(spec.command)
        if not argv:
            raise ProcessorError(spec.name, "command is empty; name an executable to run")
        if spec.git is not None:
            cwd = (code_folder(spec) / (spec.cwd or ".")).resolve()
        else:
            cwd = (flow.base_dir / (spec.cwd or ".")).resolve()
        program = argv[0]
        local = cwd / program
        if os.sep in program or local.exists():
            if not local.exists():
                raise ProcessorError(spec.name, f"command {program!r} not found in {cwd}")
            if not os.access(local, os.X_OK):
                raise ProcessorError(
                    spec.name, f"command {program!r} is not executable; chmod +x {local}"
                )
            argv[0] = str(local)
        elif shutil.which(program) is None:
            raise ProcessorError(
                spec.name, f"command {program!r} is not installed (not found on PATH)"
            )
        self.name = spec.name
        self.argv = argv
        self.cwd = str(cwd)
        self.env = {
            **os.environ,
            "ELASTICCODE_CONFIG": json.dumps(spec.config),
            "ELASTICCODE_PROCESSOR": spec.name,
            "ELASTICCODE_FLOW": flow.name,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise ProcessorError(
                self.name, f"cannot start {shlex.join(self.argv)}: {exc}"
            ) from None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # end of input: the command should exit
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        async with self.lock:
            if self.proc is None or self.proc.returncode is not None:
                await self.start()
            proc = self.proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(line)
                await proc.stdin.drain()
                reply = await proc.stdout.readline()
            except (
                asyncio.CancelledError
            ):  # timed out: its late answer must not be read as the next
                self.proc = None
                proc.kill()
                raise
            except (OSError, ValueError) as exc:  # a closed pipe; a line over the limit
                await self.stop()
                raise CommandError(f"command {self.argv[0]}: {exc}") from None
            if not reply.endswith(b"\n"):
                code = await proc.wait()
                self.proc = None
                raise CommandError(
                    f"command {self.argv[0]} exited with code {code} before it answered; its "
                    "stderr is in the worker's log"
                )
        try:
            answer = json.loads(reply)
        except ValueError:
            raise CommandError(
                f"command {self.argv[0]} answered {reply[:200]!r}, which is not JSON; reply "
                'with one JSON object per line, e.g. {"outputs": [{"payload": ...}]}'
            ) from None
        if not isinstance(answer, dict):
            raise CommandError(
                f"command {self.argv[0]} answered {reply[:200]!r}; a reply is a JSON object "
                'with "outputs", "error" or "reject"'
            )
        return answer

    async def call(self, payload: Any, ctx: Context) -> AsyncIterator[Output]:
        msg = ctx.message
        request: dict[str, Any] = {"id": msg.id, "port": ctx.port, "attributes": msg.attributes}
        if isinstance(payload, bytes):
            request["payload_base64"] = base64.b64encode(payload).decode()
        else:
            request["payload"] = payload
        reply = await self.exchange(request)
        if "error" in reply:
            raise CommandError(str(reply["error"]))
        if "reject" in reply:
            raise Reject(str(reply["reject"]))
        outputs = reply.get("outputs", [])
        if not isinstance(outputs, list):
            raise CommandError(f'"outputs" must be a list of objects, not {outputs!r}')
        for out in outputs:
            yield _output(out)


def _output(out: Any) -> Output:
    if not isinstance(out, dict) or not ("payload" in out or "payload_base64" in out):
        raise CommandError(
            f'each output must be an object with "payload" (or "payload_base64"), not {out!r}'
        )
    port = out.get("port", "success")
    attributes = out.get("attributes")
    if not isinstance(port, str) or not (attributes is None or isinstance(attributes, dict)):
        raise CommandError(f'an output\'s "port" is a string, "attributes" an object: {out!r}')
    if "payload_base64" in out:
        try:
            payload: Any = base64.b64decode(out["payload_base64"], validate=True)
        except (ValueError, TypeError):
            raise CommandError(f"payload_base64 is not base64: {out['payload_base64']!r}") from None
    else:
        payload = out["payload"]
    return Output(payload, port, attributes, out.get("key"))


def load_command(spec: Processor, flow: Flow) -> Loaded:
    if spec.is_source:
        raise ProcessorError(
            spec.name, "a command processor cannot be a source yet; feed it from a Python source"
        )
    command = Command(spec, flow)
    return Loaded(
        spec.name,
        shlex.join(command.argv),
        command.call,
        is_async=True,
        concurrent=False,  # one exchange at a time: each message's timeout is its own
        setup=command.start,
        teardown=command.stop,
        instance=command,
    )
