"""The web UI in Chromium against a real server on a fresh PostgreSQL database: how long a
flow of N processors takes to show (login done, from opening its page until every processor
is drawn and the page is live), and how long each pushed metrics view takes to reach the
screen (from the websocket message to the change on the page). No agents run: the views
show every processor pending, which costs the page as much to draw as running ones.

    .venv/bin/python benchmarks/ui.py
    .venv/bin/python benchmarks/ui.py --processors 10 200 1000 --runs 5

The delay from a message's arrival to its count on screen, with workers running, is printed
by tests/test_web.py (a worker reports twice a second, the server pushes a view a second).
It needs PostgreSQL (``--admin-db``), Redis, Chromium (``CHROMIUM``) and the built UI
(``scripts/setup``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import uuid
from typing import Any

import httpx
from bench_server import bench_server  # a sibling script (this folder is on sys.path)
from playwright.sync_api import sync_playwright

from elasticcode.network.server.ui import BUILT

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

#: Notes when each metrics message arrives and when the page's live line changes.
PROBE = """
window.__arrived = []; window.__shown = [];
const Real = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new Real(...args);
  ws.addEventListener("message", () => window.__arrived.push(performance.now()));
  return ws;
};
window.WebSocket.prototype = Real.prototype;
new MutationObserver(() => {
  const live = document.querySelector('[data-testid="live"]');
  if (live && live.textContent.startsWith("live")) window.__shown.push(performance.now());
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def flow(name: str, n: int) -> dict[str, Any]:
    """A chain of ``n`` processors, with a side branch every tenth (so the layout has width)."""
    procs = [{"name": f"p{i}", "code": "steps:inc", "instances": 1} for i in range(n)]
    conns = [{"from": f"p{i - 1}", "to": f"p{i}"} for i in range(1, n) if i % 10]
    conns += [{"from": f"p{i - 10}", "to": f"p{i}"} for i in range(10, n, 10)]
    return {"name": name, "processors": procs, "connections": conns}


def measure(browser: Any, base: str, password: str, name: str, n: int) -> tuple[float, float]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.add_init_script(PROBE)
    page.goto(f"{base}/ui/")
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.get_by_test_id("user").wait_for()
    start = time.perf_counter()
    page.goto(f"{base}/ui/#/flows/{name}")
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid^=processor-]').length === n", arg=n,
        timeout=120_000,
    )  # fmt: skip
    page.wait_for_function(
        "() => document.querySelector('[data-testid=live]')?.textContent.startsWith('live')",
        timeout=60_000,
    )
    shown = time.perf_counter() - start
    page.wait_for_timeout(6000)  # about six views pushed
    arrived, drawn = page.evaluate("[window.__arrived, window.__shown]")
    delays = []
    for a in arrived:
        after = [d - a for d in drawn if d >= a]
        if after and after[0] < 1000:
            delays.append(after[0])
    page.close()
    return shown, statistics.median(delays) if delays else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processors", type=int, nargs="+", default=[10, 200, 1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--admin-db", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--port", type=int, default=8798)
    args = parser.parse_args()
    if not (BUILT / "index.html").is_file():
        sys.exit(f"the web UI is not built in {BUILT}: run scripts/setup")
    password = uuid.uuid4().hex
    with bench_server(args.admin_db, args.port, password) as base:
        token = httpx.post(
            f"{base}/api/v1/auth/login", json={"user": "admin", "password": password}
        ).json()["token"]
        headers = {"authorization": f"Bearer {token}"}
        for n in args.processors:
            doc = flow(f"ui{n}", n)
            httpx.post(f"{base}/api/v1/flows", json={"document": doc}, headers=headers, timeout=60)
        print(f"{'processors':>10} {'to show, s (median of runs)':>28} {'view to screen, ms':>19}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            for n in args.processors:
                runs = [measure(browser, base, password, f"ui{n}", n) for _ in range(args.runs)]
                shown = statistics.median(r[0] for r in runs)
                drawn = statistics.median(r[1] for r in runs)
                print(f"{n:>10} {shown:>28.2f} {drawn:>19.1f}", flush=True)
            browser.close()


if __name__ == "__main__":
    main()
