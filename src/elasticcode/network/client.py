"""A small client of a server's REST API, as the command line uses it."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ElasticCodeError

DEFAULT_SERVER = "http://127.0.0.1:8750"


class Api:
    """A small client of the server's REST API."""

    def __init__(self, server: str | None) -> None:
        self.base = (server or os.environ.get("ELASTICCODE_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = os.environ.get("ELASTICCODE_TOKEN")
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        url = f"{self.base}/api/v1{path}"
        try:
            resp = httpx.request(method, url, headers=self.headers, timeout=30.0, **kw)
        except httpx.TransportError as exc:
            raise ElasticCodeError(
                f"cannot reach the server at {self.base} ({exc}); start one with "
                "`elasticcode server start`, or give --server URL"
            ) from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            raise ElasticCodeError(f"the server refused: {detail}")
        return resp.json()
