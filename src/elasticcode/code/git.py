"""Processor code from git repositories, pinned to a commit.

A processor names a repository and a ref (``git: {repo: URL, ref: main, path: subdir}``) beside
its ``code`` (``module:function``) or ``command``. The first run resolves the ref to a commit
and records it in the state store; later runs use the recorded commit, so a branch that moves
is not followed until ``elasticcode code update`` resolves it again (every resolution stays in
the history, ``elasticcode code history``).

Each host keeps one cache (``$ELASTICCODE_CACHE``, else ``~/.cache/elasticcode``): a bare
clone per repository URL, fetched once and shared by every worker and flow, and one checked-out
tree per commit (``trees/<commit>``), written once and read-only after.

Private repositories: ``credential: NAME`` names a secret (see ``elasticcode.secret``: the
environment variable ``ELASTICCODE_SECRET_NAME`` where the code is fetched) holding an HTTPS
token (sent as basic auth, user ``x-access-token`` unless it holds ``user:token``) or, for
``ssh://`` and ``user@host:path`` URLs, the path of a private key. The secret reaches git
through its environment, never its command line, and is masked in every error.

Repositories are reached over ``https://``, ``ssh://`` (or ``user@host:path``) and
``file://`` only: git itself is told to refuse every other transport (``ext::`` would run a
command). Plain ``http://`` is taken on loopback, and elsewhere only with
``ELASTICCODE_GIT_PLAIN_HTTP=1`` set, as code fetched over it could be changed on the way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import ElasticCodeError, ProcessorError
from ..redact import redact_url as shown
from ..secret import SecretMissing, lookup
from .cache import cache_root, locked

if TYPE_CHECKING:
    from ..flow import Processor

TIMEOUT = 600  # seconds for one git command (a first clone of a big repository)
PLAIN_HTTP_ENV = "ELASTICCODE_GIT_PLAIN_HTTP"
_SCP = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:[^/].*")


class GitError(ElasticCodeError):
    """A repository cannot be fetched, or a ref or commit is not in it."""


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def check_repo(repo: str) -> str:
    """``repo`` if git may fetch it (see the module docstring); else ``GitError`` saying why."""
    parts = urlsplit(repo)
    scheme = parts.scheme.lower()
    if scheme in ("https", "ssh", "file") or (not scheme and _SCP.fullmatch(repo)):
        return repo
    if scheme == "http":
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if local or os.environ.get(PLAIN_HTTP_ENV) == "1":
            return repo
        raise GitError(
            f"{shown(repo)}: code over plain http:// could be changed on the way; use https://, "
            f"or set {PLAIN_HTTP_ENV}=1 where it is fetched to take it anyway"
        )
    raise GitError(
        f"{shown(repo)}: a repository is reached over https://, ssh://, user@host:path or "
        "file:// only"
    )


def _secret_env(repo: str, credential: str | None) -> tuple[dict[str, str], list[str]]:
    """Environment for git that carries the credential, and the strings to mask."""
    protocols = "file:https:ssh" + (":http" if urlsplit(repo).scheme == "http" else "")
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "GIT_ALLOW_PROTOCOL": protocols}
    if not credential:
        return env, []
    try:
        value = lookup(credential, where=f"the git repository {shown(repo)}")
    except SecretMissing as exc:
        raise GitError(str(exc)) from None
    if repo.startswith(("http://", "https://")):
        user_token = value if ":" in value else f"x-access-token:{value}"
        header = "Authorization: Basic " + base64.b64encode(user_token.encode()).decode()
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader"}
        env["GIT_CONFIG_VALUE_0"] = header
        return env, [value, user_token, header.split()[-1]]
    env["GIT_SSH_COMMAND"] = f"ssh -i {value!s} -o IdentitiesOnly=yes -o BatchMode=yes"
    return env, [value]


def _git(args: list[str], repo: str, credential: str | None, what: str) -> bytes:
    extra, secrets = _secret_env(repo, credential)
    try:
        done = subprocess.run(
            ["git", *args],
            capture_output=True,
            timeout=TIMEOUT,
            env={**os.environ, **extra},
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed; install git to run processors from git") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"{what}: git took longer than {TIMEOUT}s") from None
    if done.returncode != 0:
        text = done.stderr.decode(errors="replace").strip()
        for secret in secrets:
            text = text.replace(secret, "***")
        raise GitError(
            f"{what}: {text.splitlines()[-1] if text else f'git exit {done.returncode}'}"
        )
    return done.stdout


def _bare(repo: str) -> Path:
    return cache_root() / "git" / f"{_key(repo)}.git"


def fetch(repo: str, credential: str | None = None) -> Path:
    """Fetch every branch and tag of ``repo`` into its bare clone in the cache; return it."""
    check_repo(repo)
    bare = _bare(repo)
    with locked(bare.with_suffix(".lock")):
        if not (bare / "HEAD").exists():
            _git(["init", "--quiet", "--bare", str(bare)], repo, None, "creating the cache")
        refs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
        _git(
            ["--git-dir", str(bare), "fetch", "--quiet", "--prune", "--force", "--", repo, *refs],
            repo,
            credential,
            f"cannot fetch {shown(repo)}",
        )
    return bare


def resolve(repo: str, ref: str, credential: str | None = None) -> str:
    """The commit that ``ref`` (branch, tag or commit) names in ``repo`` now."""
    bare = fetch(repo, credential)
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
        try:
            out = _git(
                [
                    "--git-dir",
                    str(bare),
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    f"{candidate}^{{commit}}",
                ],
                repo,
                None,
                "resolve",
            )
        except GitError:
            continue
        return out.decode().strip()
    raise GitError(
        f"ref {ref!r} is no branch, tag or commit of {shown(repo)}; check the ref, or push it"
    )


def checkout(repo: str, commit: str, credential: str | None = None) -> Path:
    """The files of ``commit``, written once into the cache (``trees/<commit>``)."""
    if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
        raise GitError(f"{commit!r} is not a full commit id")
    tree = cache_root() / "trees" / commit
    if tree.is_dir():
        return tree
    bare = _bare(repo)
    with locked(tree.with_name(f"{commit}.lock")):
        if tree.is_dir():
            return tree
        have = (bare / "HEAD").exists()
        if have:
            try:
                _git(
                    ["--git-dir", str(bare), "cat-file", "-e", f"{commit}^{{commit}}"],
                    repo,
                    None,
                    "",
                )
            except GitError:
                have = False
        if not have:
            fetch(repo, credential)
        archive = _git(
            ["--git-dir", str(bare), "archive", "--format=tar", commit],
            repo,
            None,
            f"commit {commit[:12]} is not in {shown(repo)}",
        )
        tmp = tree.with_name(f".{commit}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, tree)
    return tree


def tree_of(repo: str, ref: str, commit: str | None, path: str, credential: str | None) -> Path:
    """The folder holding a processor's code: its pinned commit's tree (resolving the ref if
    it has no commit yet, as ``elasticcode validate`` does), and ``path`` inside it."""
    commit = commit or resolve(repo, ref, credential)
    folder = checkout(repo, commit, credential) / path
    if not folder.is_dir():
        raise GitError(f"commit {commit[:12]} of {shown(repo)} has no folder {path!r}")
    return folder


def code_folder(spec: Processor) -> Path:
    """The folder of a git processor's code at its commit (fetched into the cache if needed)."""
    git = spec.git
    assert git is not None
    try:
        return tree_of(git.repo, git.ref, git.commit, git.path, git.credential)
    except GitError as exc:
        raise ProcessorError(spec.name, str(exc)) from None
