"""Processor code from real git repositories the tests create: over file:// and over git's own
smart-HTTP backend (with a token), refs pinned to commits, updates, history, bad refs."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from elasticcode import Flow
from elasticcode.cli import main
from elasticcode.code import check_code
from elasticcode.code.git import GitError, resolve
from elasticcode.errors import ProcessorError
from elasticcode.local.paths import state_paths
from elasticcode.local.runner import pin_code

from .conftest import FlowDir, json_steps
from .services import unavailable

FLOW = """
name: fromgit
processors:
  - {name: gen, code: "steps:numbers", source: true, config: {count: 20}}
  - name: work
    code: "stage:step"
    git: {repo: "REPO", ref: "REF", path: lib}
  - {name: sink, code: "steps:sink", instances: 1}
connections:
  - {from: gen, to: work}
  - {from: work, to: sink}
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Repo:
    def __init__(self, path: Path) -> None:
        if shutil.which("git") is None:
            unavailable("git is not installed")
        self.path = path
        path.mkdir()
        git(path, "init", "--quiet", "--initial-branch=main")

    def commit(self, version: int, tag: str | None = None, code: str | None = None) -> str:
        (self.path / "lib").mkdir(exist_ok=True)
        code = code or f"def step(p):\n    return {{**p, 'version': {version}}}\n"
        (self.path / "lib" / "stage.py").write_text(code)
        git(self.path, "add", "-A")
        git(self.path, "commit", "--quiet", "-m", f"version {version}")
        if tag:
            git(self.path, "tag", tag)
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ELASTICCODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def versions(fd: FlowDir) -> list[int]:
    import json

    return sorted({json.loads(line)["version"] for line in fd.lines("sink.log")})


def make_flow(fd: FlowDir, url: str, ref: str) -> Flow:
    json_steps(fd)
    return fd.flow(FLOW.replace("REPO", url).replace("REF", ref))


def test_branch_is_pinned_until_updated(fd: FlowDir, repo: Repo, cache: Path) -> None:
    first = repo.commit(1)
    flow = make_flow(fd, f"file://{repo.path}", "main")
    result = fd.run(flow)
    assert result.status == "finished"
    assert any(f"resolved to commit {first[:12]}" in e for e in result.events)
    assert versions(fd) == [1]
    assert (cache / "trees" / first / "lib" / "stage.py").exists()

    second = repo.commit(2)  # the branch moves on; a run does not follow it by itself
    (fd.root / "sink.log").unlink()
    result = fd.run(flow, fresh=True)
    assert any(f"at commit {first[:12]}" in e for e in result.events)
    assert versions(fd) == [1]

    cli = CliRunner()
    out = cli.invoke(
        main, ["code", "update", str(fd.root / "flow.yaml"), "--state-dir", str(fd.state)]
    )
    assert out.exit_code == 0, out.output
    assert f"resolved to commit {second[:12]} (was {first[:12]})" in out.output
    (fd.root / "sink.log").unlink()
    assert fd.run(flow, fresh=True).status == "finished"
    assert versions(fd) == [2]
    out = cli.invoke(
        main, ["code", "history", str(fd.root / "flow.yaml"), "--state-dir", str(fd.state)]
    )
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if "work" in line]
    assert [line.split()[3] for line in lines] == [first[:12], second[:12]]


def test_tags_and_commits_as_refs(fd: FlowDir, repo: Repo, cache: Path) -> None:
    v1 = repo.commit(1, tag="v1")
    v2 = repo.commit(2)
    repo.commit(3)
    url = f"file://{repo.path}"
    assert resolve(url, "v1") == v1
    assert resolve(url, v2) == v2
    assert resolve(url, v2[:10]) == v2
    flow = make_flow(fd, url, "v1")
    assert fd.run(flow).status == "finished"
    assert versions(fd) == [1]


def test_bad_repositories_and_refs_say_what_to_fix(fd: FlowDir, repo: Repo, cache: Path) -> None:
    repo.commit(1)
    url = f"file://{repo.path}"
    with pytest.raises(GitError, match="'nope' is no branch, tag or commit"):
        resolve(url, "nope")
    with pytest.raises(GitError, match="cannot fetch file:///no/such/repo"):
        resolve("file:///no/such/repo", "main")
    _, _, state = state_paths(make_flow(fd, url, "main"), fd.state)
    flow = make_flow(fd, url, "main")
    flow.get("work").code = "stage:missing"
    pinned, _ = pin_code(flow, state)
    with pytest.raises(ProcessorError, match="module 'stage' has no 'missing'"):
        check_code(pinned)
    flow.get("work").git.path = "elsewhere"  # type: ignore[union-attr]
    with pytest.raises(ProcessorError, match="has no folder 'elsewhere'"):
        check_code(pin_code(flow, state)[0])
    # in a run, an unreachable repository leaves that processor in error; the rest runs
    gone = make_flow(fd, "file:///no/such/repo", "main")
    result = fd.run(gone)
    assert result.status == "incomplete"
    assert "cannot fetch file:///no/such/repo" in (result.processors["work"].last_error or "")
    assert result.processors["gen"].emitted == 20 and sum(result.queues.values()) == 20


class GitHTTP(BaseHTTPRequestHandler):
    """git's smart-HTTP backend (``git http-backend`` as CGI), asking for a bearer of TOKEN."""

    root = ""
    token = ""

    def do_GET(self) -> None:
        self.backend()

    def do_POST(self) -> None:
        self.backend()

    def log_message(self, *args: object) -> None:
        pass

    def backend(self) -> None:
        expected = "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        self.send_response(int(headers.pop("Status", "200").split()[0]))
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def http_repo(repo: Repo) -> Iterator[Callable[[], str]]:
    GitHTTP.root, GitHTTP.token = str(repo.path.parent), "s3cr3t-t0ken"
    server = ThreadingHTTPServer(("127.0.0.1", 0), GitHTTP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield lambda: f"http://127.0.0.1:{server.server_address[1]}/{repo.path.name}"
    server.shutdown()
    server.server_close()


def test_private_repository_over_smart_http(
    fd: FlowDir,
    repo: Repo,
    cache: Path,
    http_repo: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commit = repo.commit(7)
    url = http_repo()
    with pytest.raises(GitError, match="cannot fetch") as refused:
        resolve(url, "main")  # no credential: the server says 401
    monkeypatch.setenv("ELASTICCODE_SECRET_REPO_TOKEN", "wrong-token")
    with pytest.raises(GitError) as wrong:
        resolve(url, "main", "REPO_TOKEN")
    assert "wrong-token" not in str(wrong.value) and "wrong-token" not in str(refused.value)
    # a credential names a secret: a plain environment variable of that name is not read
    monkeypatch.setenv("REPO_TOKEN", "s3cr3t-t0ken")
    with pytest.raises(GitError):
        resolve(url, "main", "REPO_TOKEN")
    monkeypatch.setenv("ELASTICCODE_SECRET_REPO_TOKEN", "s3cr3t-t0ken")
    assert resolve(url, "main", "REPO_TOKEN") == commit
    flow = make_flow(fd, url, "main")
    flow.get("work").git.credential = "REPO_TOKEN"  # type: ignore[union-attr]
    assert fd.run(flow).status == "finished"
    assert versions(fd) == [7]
    monkeypatch.delenv("ELASTICCODE_SECRET_REPO_TOKEN")
    with pytest.raises(GitError, match=r"secret 'REPO_TOKEN' .* is not set"):
        resolve(url, "main", "REPO_TOKEN")


def test_only_safe_transports_reach_git(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ext:: would run a command, git:// and a remote http:// could be changed on the way."""
    for repo in ("ext::sh -c touch% /tmp/pwned", "git://example.com/r.git", "ftp://h/r"):
        with pytest.raises(GitError, match="reached over https://"):
            resolve(repo, "main")
    with pytest.raises(GitError, match="plain http://"):
        resolve("http://example.com/r.git", "main")
    monkeypatch.setenv("ELASTICCODE_GIT_PLAIN_HTTP", "1")
    with pytest.raises(GitError, match="cannot fetch"):  # allowed now; nothing answers there
        resolve("http://example.invalid/r.git", "main")


SLOW = "import os, time\n\ndef step(p):\n    time.sleep(0.002)\n    return {**p, 'version': VERSION, 'pid': os.getpid(), 't': time.time()}\n"


def test_switching_commits_under_load_loses_nothing(fd: FlowDir, repo: Repo, cache: Path) -> None:
    """code update while the flow runs: the processor's workers are replaced (new ones first),
    the others keep running, and every message arrives."""
    import json

    first = repo.commit(1, code=SLOW.replace("VERSION", "1"))
    url = f"file://{repo.path}"
    flow = make_flow(fd, url, "main")
    flow.get("gen").config = {"count": 5000}
    _, _, state = state_paths(flow, fd.state)
    switched: list[str] = []

    def hook(agent: object) -> None:
        def go() -> None:
            time.sleep(1.0)
            switched.append(repo.commit(2, code=SLOW.replace("VERSION", "2")))
            pin_code(flow, state, update=["work"])  # as `elasticcode code update` does

        threading.Thread(target=go, daemon=True).start()

    result = fd.run(flow, on_start=hook)
    assert result.status == "finished"
    assert any(f"from commit {first[:12]} to {switched[0][:12]}" in e for e in result.events)
    assert result.processors["work"].instances == 2  # the replaced ones are not counted
    rows = [json.loads(line) for line in fd.lines("sink.log")]
    assert {r["n"] for r in rows} == set(range(5000)), "messages lost in the switch"
    assert {r["version"] for r in rows} == {1, 2}
    late = [r["version"] for r in rows[-100:]]
    assert set(late) == {2}, "the old commit still ran at the end"
    print(f"sent=5000 delivered={len(rows)} duplicates={len(rows) - 5000} lost=0")


def test_a_commit_that_does_not_load_keeps_the_old_one(
    fd: FlowDir, repo: Repo, cache: Path
) -> None:
    first = repo.commit(1, code=SLOW.replace("VERSION", "1"))
    url = f"file://{repo.path}"
    flow = make_flow(fd, url, "main")
    flow.get("gen").config = {"count": 1500}
    _, _, state = state_paths(flow, fd.state)

    def hook(agent: object) -> None:
        def go() -> None:
            time.sleep(1.0)
            repo.commit(2, code="def step(p):\n    return undefined_name +\n")
            pin_code(flow, state, update=["work"])

        threading.Thread(target=go, daemon=True).start()

    result = fd.run(flow, on_start=hook)
    assert result.status == "finished"
    assert any(f"stays at commit {first[:12]}" in e and "syntax error" in e for e in result.events)
    assert versions(fd) == [1]
