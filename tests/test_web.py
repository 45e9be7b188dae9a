"""The web UI in a real browser (Chromium, driven by Playwright) against a real network:
log in, watch a flow's counts move live, pause and resume a processor, trace and replay a dead
letter, export the YAML and deploy an edit of it, read the audit log; a viewer is offered
nothing it may not do."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from elasticcode.flow import Flow
from elasticcode.local import queues as control
from elasticcode.network.server.ui import BUILT

from .network import Network, add_user, redis_network
from .services import unavailable

playwright: Any
try:
    from playwright import sync_api as playwright
except ImportError:  # the browser fixture says so (and fails under CI=true)
    playwright = None

#: Screenshots go here (CI keeps them as artifacts).
ARTIFACTS = Path(os.environ.get("ELASTICCODE_ARTIFACTS", Path(__file__).parents[1] / "build"))
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
#: Chromium as root, headless, and without reaching for Google's hosts (none answer here).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    if playwright is None:
        unavailable("Playwright is not installed: scripts/setup installs it with the dev tools")
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)")
    if not (BUILT / "index.html").is_file():
        unavailable(f"the web UI is not built in {BUILT}: run scripts/setup")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    yield from redis_network(tmp_path)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"))


def log_in(page: Any, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    playwright.expect(page.get_by_test_id("user")).to_have_text(user)


def send(flow: Flow, target: str, numbers: range, broker: str) -> None:
    """Send from a thread of its own: Playwright's loop runs in this one."""
    with ThreadPoolExecutor(1) as pool:
        payloads = [{"n": n} for n in numbers]
        pool.submit(control.send, flow, target, payloads, broker=broker).result()


def number(page: Any, test_id: str) -> int:
    text = page.get_by_test_id(test_id).inner_text()
    return (
        int(text.replace(",", "")) if text.strip() not in ("", "\u2013") else -1
    )  # an en dash: not known yet


def test_the_ui_watches_and_operates_a_network(net: Network, browser: Any) -> None:
    expect = playwright.expect
    server = net.start_server()
    net.start_agent("one", capacity=4)
    fixed = net.picky()
    flow_file = net.deploy(
        """
        settings: {lineage: full}
        processors:
          - {name: a, code: steps:inc, instances: 1}
          - {name: picky, code: "picky:picky", retries: {max: 0}, instances: 1}
          - {name: sink, code: steps:sink, instances: 1}
        connections:
          - {from: a, to: picky}
          - {from: picky, to: sink}
        """,
        {"a": 1, "picky": 1, "sink": 1},
    )
    flow = Flow.load(flow_file)
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    page.set_default_timeout(30_000)

    # a wrong password says so; the right one shows the flows
    page.goto(f"{server.url}/")
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("wrong user name or password")
    log_in(page, server.url, "admin", net.password)
    page.click(f"text={net.flow_name}")
    for name in ("a", "picky", "sink"):
        expect(page.get_by_test_id(f"processor-{name}")).to_be_visible()
    expect(page.get_by_test_id("live")).to_contain_text("live")
    expect(page.get_by_test_id("agents")).to_contain_text("one")

    # counts move on screen as messages arrive; n == 3 is dead-lettered by picky
    sent = time.monotonic()
    send(flow, "a", range(20), net.broker)
    expect(page.get_by_test_id("in-sink")).to_have_text("19", timeout=60_000)
    print(f"20 sent -> 19 shown at the sink after {time.monotonic() - sent:.2f}s")
    expect(page.get_by_test_id("processor-picky")).to_contain_text("dead 1")
    shot(page, "flow")

    # pause the sink: its queue fills, its count stands; resume: it drains
    pid = net.pids()[("sink", 0)]
    page.get_by_test_id("processor-sink").click()
    page.get_by_test_id("pause").click()
    expect(page.get_by_test_id("status-sink")).to_have_text("paused")
    net.wait(lambda: not Path(f"/proc/{pid}").exists(), 30, "the sink's worker to stop")
    send(flow, "a", range(20, 30), net.broker)
    queue = page.get_by_test_id("queue-picky.success->sink.input")
    expect(queue).to_contain_text("10 ·", timeout=60_000)
    assert number(page, "in-sink") == 19
    shot(page, "paused")
    page.get_by_test_id("resume").click()
    expect(page.get_by_test_id("in-sink")).to_have_text("29", timeout=60_000)
    expect(queue).to_contain_text("0 ·")

    # the dead letter, with its error and payload; replayed once its cause is fixed
    page.get_by_test_id("tab-dead").click()
    letters = page.get_by_test_id("dead-letters")
    expect(letters).to_contain_text("ValueError: three is odd")
    expect(letters.locator("pre.payload")).to_contain_text('"n": 3')
    shot(page, "dead-letters")
    letters.get_by_test_id("trace-letter").click()  # its lineage, from where it entered
    trace = page.get_by_test_id("trace")
    expect(trace).to_contain_text("dead-lettered at picky")
    expect(trace).to_contain_text("ValueError: three is odd")
    shot(page, "trace")
    page.get_by_test_id("tab-dead").click()
    fixed.touch()
    letters.locator("input[type=checkbox]").check()
    page.get_by_test_id("replay-chosen").click()
    expect(page.get_by_test_id("dead-message")).to_have_text("replayed 1")
    net.account(range(30), label="through the UI")
    expect(page.get_by_test_id("in-sink")).to_have_text("30", timeout=60_000)
    audit = net.api("GET", "/audit", params={"flow": net.flow_name})
    assert any("replayed 1 dead letter(s)" in a["text"] for a in audit)

    # the YAML shown and exported is the flow file deployed
    page.get_by_test_id("tab-yaml").click()
    with page.expect_download() as download:
        page.get_by_test_id("export").click()
    exported = yaml.safe_load(Path(download.value.path()).read_text())
    # as deployed: the source file, with where its code is and the broker the server gave it
    source = yaml.safe_load(flow_file.read_text())
    assert exported.pop("path") == [str(net.root)]
    assert exported.pop("settings") == {"lineage": "full", "broker": net.server_broker}
    assert source.pop("settings") == {"lineage": "full"}
    assert exported == source
    shown = yaml.safe_load(page.get_by_test_id("yaml").inner_text())
    settings = {"lineage": "full", "broker": net.server_broker}
    assert shown == {**exported, "path": [str(net.root)], "settings": settings}

    # edit the YAML: a mistake is refused with what to fix; a change shows as a diff, and
    # deploys as a new revision that the network runs
    page.get_by_test_id("edit").click()
    editor = page.get_by_test_id("yaml-editor")
    text = editor.input_value()
    editor.fill(text.replace("code: picky:picky", "code: picky:picky\n    retries: {max: -1}"))
    page.get_by_test_id("deploy").click()
    expect(page.get_by_test_id("deploy-message")).to_contain_text("not deployed")
    expect(page.get_by_test_id("deploy-message")).to_contain_text("retries")
    assert len(net.api("GET", f"/flows/{net.flow_name}/revisions")) == 1
    sink = "code: steps:sink\n    instances: 1"
    assert sink in text, text
    editor.fill(text.replace(sink, "code: steps:sink\n    instances: 2"))
    expect(page.get_by_test_id("diff")).to_contain_text("+     instances: 2")
    expect(page.get_by_test_id("diff")).to_contain_text("-     instances: 1")
    page.get_by_test_id("deploy").click()
    expect(page.get_by_test_id("deploy-message")).to_have_text("deployed as revision 2")
    net.wait(lambda: net.running({"a": 1, "picky": 1, "sink": 2}), 60, "the sink scaled to 2")
    page.get_by_test_id("tab-revisions").click()
    expect(page.locator(".revisions li").first).to_contain_text("deployed from the web UI")
    page.get_by_test_id("tab-audit").click()
    expect(page.get_by_test_id("audit")).to_contain_text("replayed 1 dead letter(s)")

    # a viewer sees the flow live, and is offered no operation
    add_user(net, "watcher", "viewer")
    viewer = browser.new_page()
    log_in(viewer, server.url, "watcher", "pw-watcher-0123456789")
    viewer.click(f"text={net.flow_name}")
    expect(viewer.get_by_test_id("in-sink")).to_have_text("30")
    viewer.get_by_test_id("processor-sink").click()
    expect(viewer.get_by_test_id("processor-panel")).to_be_visible()
    assert viewer.get_by_test_id("pause").count() == 0
    assert viewer.get_by_test_id("tab-dead").count() == 0
    assert viewer.get_by_test_id("tab-audit").count() == 0
    viewer.get_by_test_id("tab-yaml").click()
    assert viewer.get_by_test_id("edit").count() == 0
    viewer.get_by_test_id("logout").click()
    expect(viewer.locator("input[name=user]")).to_be_visible()


def test_the_pages_are_served_safely(net: Network) -> None:
    if not (BUILT / "index.html").is_file():
        unavailable(f"the web UI is not built in {BUILT}: run scripts/setup")
    server = net.start_server()
    home = httpx.get(f"{server.url}/", follow_redirects=True)
    assert home.status_code == 200 and '<div id="root">' in home.text
    policy = home.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert home.headers["cache-control"] == "no-cache"
    asset = next(p.name for p in (BUILT / "assets").glob("*.js"))
    got = httpx.get(f"{server.url}/ui/assets/{asset}")
    assert got.status_code == 200 and "immutable" in got.headers["cache-control"]
    # the pages hold no data: the API behind them still wants a credential
    assert httpx.get(f"{server.url}/api/v1/flows").status_code == 401
    # a browser's websocket brings its token as a subprotocol, and gets only "elasticcode" back
    ws_url = server.url.replace("http", "ws", 1) + "/api/v1/metrics/stream"
    protocols: Any = ["elasticcode", f"bearer.{net.token}"]
    with connect(ws_url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "elasticcode"
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    wrong: Any = ["elasticcode", "bearer.ec_u1_wrong"]
    with connect(ws_url, subprotocols=wrong) as ws, pytest.raises(ConnectionClosed) as refused:
        ws.recv(timeout=10)
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 4401


def test_a_flow_drawn_by_drag_and_drop_deploys_and_runs(net: Network, browser: Any) -> None:
    expect = playwright.expect
    server = net.start_server()
    net.start_agent("one", capacity=4)
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    page.set_default_timeout(30_000)
    log_in(page, server.url, "admin", net.password)
    page.get_by_test_id("new-flow").click()
    page.get_by_test_id("flow-name").fill(net.flow_name)

    # three processors dragged from the palette, connected port to port
    canvas = page.get_by_test_id("design-canvas")
    for x in (80, 420, 760):
        page.get_by_test_id("palette-inline").drag_to(canvas, target_position={"x": x, "y": 300})
    for name in ("inline", "inline-2", "inline-3"):
        expect(page.get_by_test_id(f"processor-{name}")).to_be_visible()

    def port(processor: str, kind: str, name: str) -> Any:
        node = page.get_by_test_id(f"processor-{processor}")
        return node.locator(f".react-flow__handle.{kind}[data-handleid='{name}']")

    def drag(source: Any, target: Any) -> None:
        a, b = source.bounding_box(), target.bounding_box()
        page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
        page.mouse.down()
        page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=10)
        page.mouse.up()

    drag(port("inline", "source", "success"), port("inline-2", "target", "input"))
    drag(port("inline-2", "source", "success"), port("inline-3", "target", "input"))
    expect(page.locator(".react-flow__edge")).to_have_count(2)

    # the first renamed in its editor (its connection follows); a bad name says why
    page.get_by_test_id("processor-inline").click()
    editor = page.get_by_test_id("element-editor")
    editor.fill(editor.input_value().replace("name: inline", "name: first"))
    page.get_by_test_id("element-apply").click()
    expect(page.get_by_test_id("processor-first")).to_be_visible()
    page.get_by_test_id("processor-inline-3").click()
    editor.fill(editor.input_value().replace("name: inline-3", "name: inline-2"))
    page.get_by_test_id("element-apply").click()
    expect(page.get_by_test_id("design-problem")).to_contain_text("inline-2 already")

    # reviewed as a flow file, deployed, and it runs
    page.get_by_test_id("review").click()
    expect(page.get_by_test_id("diff")).to_contain_text("from: first")
    shot(page, "design")
    page.get_by_test_id("deploy-drawn").click()
    expect(page.get_by_test_id("live")).to_contain_text("live")
    doc = net.api("GET", f"/flows/{net.flow_name}/export")
    assert [p["name"] for p in doc["processors"]] == ["first", "inline-2", "inline-3"]
    assert doc["connections"] == [
        {"from": "first", "to": "inline-2"},
        {"from": "inline-2", "to": "inline-3"},
    ]
    exported = net.cli("export", net.flow_name, "--server", server.url).stdout
    assert yaml.safe_load(exported) == doc  # the file `elasticcode apply` takes
    net.wait(lambda: net.running({"first": 1, "inline-2": 1, "inline-3": 1}), 90, "it to run")
    send(Flow.from_dict(doc), "first", range(25), net.broker)
    expect(page.get_by_test_id("in-inline-3")).to_have_text("25", timeout=60_000)

    # the exported file imported into a new design: laid out again; a bad file says why
    (net.root / "exported.yaml").write_text(exported)
    (net.root / "bad.yaml").write_text("- not\n- a flow\n")
    page.goto(f"{server.url}/ui/#/design/")
    page.get_by_test_id("import").set_input_files(str(net.root / "bad.yaml"))
    expect(page.get_by_test_id("design-problem")).to_contain_text("bad.yaml: a flow file is")
    page.get_by_test_id("import").set_input_files(str(net.root / "exported.yaml"))
    for name in ("first", "inline-2", "inline-3"):
        expect(page.get_by_test_id(f"processor-{name}")).to_be_visible()
    expect(page.get_by_test_id("flow-name")).to_have_value(net.flow_name)
    expect(page.locator(".react-flow__edge")).to_have_count(2)
