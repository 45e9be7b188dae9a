"""The web UI: the built pages of ``web/`` (``scripts/setup`` builds them into this package's
``web`` folder), served at ``/ui/``; ``/`` leads there.

The pages need no credential: they hold no data, and every call they make is an API call with
the user's own token. They may load nothing from elsewhere and may not be framed
(``Content-Security-Policy``), so that a page of another site can neither inject code into
them nor overlay them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

#: Where the build of ``web/`` goes (``web/vite.config.ts``).
BUILT = Path(__file__).with_name("web")

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

HOW_TO_BUILD = (
    "from a checkout of ElasticCode, run scripts/setup (it needs Node.js 20 or newer and npm), "
    "then start the server again"
)
NOT_BUILT = f"""<!doctype html><meta charset="utf-8"><title>ElasticCode</title>
<p>The web UI is not built in this installation: {HOW_TO_BUILD}. The API answers meanwhile
(<a href="/docs">/docs</a>).</p>
"""


def built() -> bool:
    return (BUILT / "index.html").is_file()


class _Pages(StaticFiles):
    """The built files, with the headers above; hashed assets kept by browsers for a year,
    the page itself asked for again each time (so a new version is seen at once)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        hashed = path.startswith("assets/")
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if hashed else "no-cache"
        )
        return response


def mount(app: FastAPI) -> None:
    """Serve the UI at ``/ui/`` (a page that says how to build it, where it is not built)."""

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    if built():
        app.mount("/ui", _Pages(directory=BUILT, html=True), name="ui")
        return

    @app.get("/ui/{rest:path}", include_in_schema=False)
    async def not_built(rest: str) -> HTMLResponse:
        return HTMLResponse(NOT_BUILT, status_code=503, headers=HEADERS)
