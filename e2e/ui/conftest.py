"""Fixtures of the web UI suite: one real gateway per session, Debian's Chromium driven
by Playwright, and helpers to put lines in and open the UI.

    gateway      (session)  the `logstream-gateway serve` process ($LOGSTREAM_GATEWAY)
    browser      (session)  headless Chromium (/usr/bin/chromium, never a downloaded one)
    page         (function) a fresh context and page, 1280x800, UTC; fails the test when
                            the page threw or the Content-Security-Policy refused anything;
                            `page.watch` holds console_errors, page_errors, csp, dialogs
    ui_page      (function) `page` on the gateway's `/`
    open_ui      (function) open_ui(page, path, token): the UI with `#token=`
    screenshot   (function) screenshot(page, name): into $LOGSTREAM_UI_SCREENSHOTS or tmp
    million      (session)  a 1,000,000-line deployment ingested by a background thread
                            that starts with the first test, so it overlaps the others
                            (the test that needs it runs last)
    quiet        (function) `with quiet():` holds that ingest while a test measures latency

Only the standard library talks HTTP to the gateway (urllib), so what the tests send is
exactly what the API documents. The process and its HTTP helpers (token, request,
get_json, push, push_ndjson, complete) are e2e/gateway_proc.py's `Gateway`, shared with
the MCP suite and the benchmark scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
from gateway_proc import Gateway, debug_binary, unique  # noqa: E402

CHROMIUM = os.environ.get("LOGSTREAM_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home (component
# updates, variations, sync), which on a machine with no network only burns time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# One ingest request of `gateway.push` carries at most this many lines (and at most
# gateway_proc.PUSH_MAX_BYTES, 4 MiB): small enough that a request in flight does not
# hold the gateway up for the tests running beside it.
PUSH_MAX_LINES = 50_000

MILLION = 1_000_000

# Assertions that name no timeout wait this long for the DOM (Playwright's default is 5 s).
expect.set_options(timeout=10_000)


def _gateway_binary() -> str:
    b = debug_binary("LOGSTREAM_GATEWAY", "logstream-gateway")
    if not os.access(b, os.X_OK):
        pytest.exit(f"no gateway binary at {b}: build it (./e2e/test does) or set LOGSTREAM_GATEWAY", 2)
    return b


_running: list[Gateway] = []  # for failure reports


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    gw = Gateway(_gateway_binary(), root / "data", root / "gateway.log", push_max_lines=PUSH_MAX_LINES)
    gw.start()
    _running.append(gw)
    yield gw
    _running.remove(gw)
    gw.stop()


# === The 1,000,000-line deployment, ingested beside the other tests ===

class BigLog:
    """A background thread that writes `lines` lines to one deployment through the HTTP
    API in large NDJSON batches, then completes it. `quiet()` holds it between two
    batches while a test measures latency; `wait()` returns once all is durable."""

    BATCH = 50_000

    def __init__(self, gw: Gateway, lines: int = MILLION):
        self.gw = gw
        self.lines = lines
        self.tenant = unique("big")
        self.deployment = unique("million")
        self.token = gw.token(self.tenant)
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self.done = threading.Event()
        self._batch = threading.Lock()  # held while a batch is in flight
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="million-ingest", daemon=True)
        self.thread.start()

    def _body(self, first: int, last: int) -> bytes:
        return "".join(
            f'{{"step":"build","level":"{"warn" if n % 997 == 0 else "info"}",'
            f'"message":"line {n} of {self.lines}: \\u001b[32mok\\u001b[0m payload {n * 7919 % 100003:06d}"}}\n'
            for n in range(first, last + 1)
        ).encode()

    def _run(self):
        try:
            n = 1
            while n <= self.lines:
                last = min(self.lines, n + self.BATCH - 1)
                body = self._body(n, last)  # built outside the lock: quiet() gets its turn
                with self._batch:
                    reply = self.gw.push_ndjson(self.token, self.deployment, body)
                if reply.get("accepted") != last - n + 1 or reply.get("last_seq") != last:
                    raise AssertionError(f"batch {n}..{last}: {reply}")
                n = last + 1
            self.gw.complete(self.token, self.deployment, "succeeded", 0)
            self.seconds = time.monotonic() - self.started
        except BaseException as e:  # noqa: BLE001 - reported by wait()
            self.error = e
        finally:
            self.done.set()

    @contextlib.contextmanager
    def quiet(self):
        """Waits for the batch in flight, then holds the next one until the block ends."""
        with self._batch:
            yield

    def wait(self, timeout: float = 600.0) -> "BigLog":
        if not self.done.wait(timeout):
            raise AssertionError(f"the {self.lines}-line ingest did not finish in {timeout} s")
        if self.error:
            raise AssertionError(f"the {self.lines}-line ingest failed: {self.error}") from self.error
        return self


@pytest.fixture(scope="session")
def million(gateway):
    return BigLog(gateway)


@pytest.fixture(scope="session", autouse=True)
def _start_million_early(request):
    """Starts the big ingest with the first test when a selected test needs it."""
    if any("million" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("million")


@pytest.fixture
def quiet(request):
    """`with quiet():` holds the big ingest (when this run has it) during a measurement."""
    if any("million" in getattr(i, "fixturenames", ()) for i in request.session.items):
        return request.getfixturevalue("million").quiet
    return contextlib.nullcontext


def pytest_collection_modifyitems(session, config, items):
    # The test that waits for the big ingest goes last, so the others overlap the ingest.
    items.sort(key=lambda i: "million" in getattr(i, "fixturenames", ()))


# === The browser ===

@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.exit(f"no Chromium at {CHROMIUM}: apt-get install chromium (./e2e/test does)", 2)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


# Pushes every Content-Security-Policy violation to `window.__csp` and reports it to the
# test through a binding, so one that happened before a navigation is not lost.
CSP_WATCH = """
(() => {
  window.__csp = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    const v = {directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample,
               source: e.sourceFile, line: e.lineNumber, page: location.href};
    window.__csp.push(v);
    if (window.__logstreamCsp) window.__logstreamCsp(JSON.stringify(v));
  }, true);
})();
"""


class Watch:
    """What a page did that a test may assert on."""

    def __init__(self):
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.csp: list[str] = []
        self.dialogs: list[str] = []


@pytest.fixture
def page(browser, gateway):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True,
                                  timezone_id="UTC", locale="en-US")
    watch = Watch()
    context.expose_binding("__logstreamCsp", lambda _source, v: watch.csp.append(v))
    context.add_init_script(CSP_WATCH)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.on("console", lambda m: m.type == "error" and watch.console_errors.append(m.text))
    pg.on("pageerror", lambda e: watch.page_errors.append(str(e)))

    def on_dialog(d):
        watch.dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    pg.on("dialog", on_dialog)
    pg.watch = watch
    yield pg
    try:
        if not pg.is_closed():
            with contextlib.suppress(Exception):
                watch.csp.extend(json.dumps(v, separators=(",", ":")) for v in pg.evaluate("window.__csp || []"))
    finally:
        context.close()
    problems = []
    if watch.page_errors:
        problems.append("page errors:\n  " + "\n  ".join(watch.page_errors))
    if watch.csp:
        problems.append("Content-Security-Policy violations:\n  " + "\n  ".join(dict.fromkeys(watch.csp)))
    if problems:
        if watch.console_errors:
            problems.append("console errors:\n  " + "\n  ".join(watch.console_errors))
        pytest.fail("\n".join(problems), pytrace=False)


def _shots_dir(fallback: Path) -> Path:
    target = os.environ.get("LOGSTREAM_UI_SCREENSHOTS")
    return Path(target) if target and os.path.isdir(target) else fallback


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report gets the page as it was (a screenshot), the browser's
    console errors and the end of the gateway's log."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    pg = item.funcargs.get("page") if hasattr(item, "funcargs") else None
    if pg is not None and hasattr(pg, "watch"):
        if pg.watch.console_errors:
            rep.sections.append(("browser console errors", "\n".join(pg.watch.console_errors)))
        with contextlib.suppress(Exception):
            tmp = item.funcargs.get("tmp_path") or Path(item.config._tmp_path_factory.getbasetemp())
            path = _shots_dir(tmp) / f"failed-{item.name}.png"
            pg.screenshot(path=str(path), timeout=5_000)
            rep.sections.append(("screenshot", str(path)))
    for gw in _running:
        rep.sections.append(("gateway log (last lines)", gw.log_tail()))


@pytest.fixture
def ui_page(page, gateway):
    page.goto(gateway.url + "/")
    return page


@pytest.fixture
def open_ui(gateway):
    """open_ui(page, path, token): opens `path` with the token in the fragment, as a link
    a person is handed would (the UI moves it to sessionStorage)."""

    def open_(page, path: str, token: str):
        page.goto(gateway.url + path + "#token=" + urllib.parse.quote(token, safe=""))
        return page

    return open_


@pytest.fixture
def screenshot(tmp_path):
    """screenshot(page, name): a PNG in $LOGSTREAM_UI_SCREENSHOTS when that is a
    directory, else in this test's tmp dir; returns its path."""
    folder = _shots_dir(tmp_path)

    def shot(page, name: str, **kw) -> Path:
        path = folder / name
        page.screenshot(path=str(path), **kw)
        return path

    return shot
