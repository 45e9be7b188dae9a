"""A client of a server's REST API, as the command line uses it, and the credentials that
``elasticcode login`` keeps.

The credential of a call is ``$ELASTICCODE_TOKEN`` if set, else the token saved by
``elasticcode login`` for that server, in ``credentials.json`` of the configuration folder
(``$ELASTICCODE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/elasticcode``, else
``~/.config/elasticcode``), a file only its owner may read. An HTTPS server is verified
against the system's certificate authorities, or the one ``--ca`` (``$ELASTICCODE_CA``, or
what login saved) names; a server that asks for client certificates gets
``$ELASTICCODE_CLIENT_CERT`` (and ``$ELASTICCODE_CLIENT_KEY``).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import AccessError, AuthError, ElasticCodeError, Forbidden

DEFAULT_SERVER = "http://127.0.0.1:8750"
CA_ENV = "ELASTICCODE_CA"
CERT_ENV = "ELASTICCODE_CLIENT_CERT"
KEY_ENV = "ELASTICCODE_CLIENT_KEY"
TOKEN_ENV = "ELASTICCODE_TOKEN"


def config_dir() -> Path:
    if folder := os.environ.get("ELASTICCODE_CONFIG_DIR"):
        return Path(folder)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "elasticcode"


def _credentials_file() -> Path:
    return config_dir() / "credentials.json"


def _read() -> dict[str, Any]:
    path = _credentials_file()
    if not path.exists():
        return {}
    if path.stat().st_mode & 0o077:
        raise ElasticCodeError(f"{path} may be read by others; chmod 600 {path}")
    data: dict[str, Any] = json.loads(path.read_text() or "{}")
    return data


def _write(data: dict[str, Any]) -> None:
    path = _credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def saved(server: str) -> dict[str, Any] | None:
    """What ``elasticcode login`` saved for ``server`` (its token, user, CA)."""
    found: dict[str, Any] | None = _read().get(server.rstrip("/"))
    return found


def save(server: str, **entry: Any) -> Path:
    data = _read()
    data[server.rstrip("/")] = entry
    _write(data)
    return _credentials_file()


def forget(server: str) -> bool:
    data = _read()
    gone = data.pop(server.rstrip("/"), None) is not None
    if gone:
        _write(data)
    return gone


def verify(ca: str | None) -> ssl.SSLContext | bool:
    """How to check a server's certificate: against ``ca`` (a PEM file), else the system's;
    with ``$ELASTICCODE_CLIENT_CERT`` (and ``$ELASTICCODE_CLIENT_KEY``), showing that
    client certificate to a server that asks for one."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if not ca and not cert:
        return True
    for path in (ca, cert, key):
        if path and not Path(path).is_file():
            raise ElasticCodeError(f"no certificate file {path}; give a PEM file")
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def detail(resp: Any) -> str:
    """What an error answer of the server says (its ``detail``), as text."""
    try:
        said = resp.json().get("detail", resp.text)
    except ValueError:
        said = resp.text
    return said if isinstance(said, str) else json.dumps(said)[:500]


class Api:
    """A small client of the server's REST API."""

    def __init__(self, server: str | None, ca: str | None = None, token: str | None = None):
        self.base = (server or os.environ.get("ELASTICCODE_SERVER") or DEFAULT_SERVER).rstrip("/")
        entry = saved(self.base) or {}
        self.token = token or os.environ.get(TOKEN_ENV) or entry.get("token")
        self.ca = ca or os.environ.get(CA_ENV) or entry.get("ca")
        self.headers = {"authorization": f"Bearer {self.token}"} if self.token else {}

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        url = f"{self.base}/api/v1{path}"
        try:
            resp = httpx.request(
                method, url, headers=self.headers, timeout=30.0, verify=verify(self.ca), **kw
            )
        except httpx.InvalidURL as exc:  # a name with characters no URL may hold
            raise ElasticCodeError(f"cannot ask the server about {path!r}: {exc}") from None
        except httpx.TransportError as exc:
            what = f"cannot reach the server at {self.base} ({exc})"
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                what += "; give the certificate authority that signed its certificate: --ca FILE"
            else:
                what += "; start one with `elasticcode server start`, or give --server URL"
            raise ElasticCodeError(what) from None
        if resp.status_code >= 400:
            said = detail(resp)
            if resp.status_code == 401:
                raise AuthError(
                    f"{self.base} wants a credential: {said}. Log in with `elasticcode "
                    f"login --server {self.base}` (or set {TOKEN_ENV})"
                )
            kind: type[AccessError] | type[ElasticCodeError] = (
                Forbidden if resp.status_code == 403 else ElasticCodeError
            )
            raise kind(f"the server refused: {said}")
        return resp.json()

    def stream(self, path: str, **params: str) -> Iterator[dict[str, Any]]:
        """The JSON messages of one of the server's websockets, as they come."""
        from urllib.parse import urlencode

        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        url = "ws" + self.base[4:] + f"/api/v1{path}"
        if params:
            url += "?" + urlencode(params)
        context = None
        if self.base.startswith("https"):
            checked = verify(self.ca)
            context = (
                checked if isinstance(checked, ssl.SSLContext) else ssl.create_default_context()
            )
        try:
            with connect(url, additional_headers=self.headers, ssl=context, open_timeout=10) as ws:
                for raw in ws:
                    yield json.loads(raw)
                code, reason = ws.close_code, ws.close_reason
        except (OSError, TimeoutError, InvalidStatus) as exc:
            raise ElasticCodeError(
                f"cannot reach the server at {self.base} ({exc}); start one with "
                "`elasticcode server start`, or give --server URL"
            ) from None
        except ConnectionClosed as exc:
            code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
        if code == 4401:
            raise AuthError(
                f"{self.base} wants a credential: {reason}. Log in with `elasticcode login "
                f"--server {self.base}` (or set {TOKEN_ENV})"
            )
        if code in (4403, 4429):
            raise (Forbidden if code == 4403 else ElasticCodeError)(f"the server refused: {reason}")
        raise ElasticCodeError(f"the server closed the stream ({code} {reason})".strip())
