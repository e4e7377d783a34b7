"""The web UI in a real browser (Debian's Chromium through Playwright) against a real
gateway: what a person sees on `/` and `/deployments/{id}`, fed through the HTTP API.

Every wait is on the DOM (Playwright's auto-waiting `expect` and `wait_for_*`, each with
an explicit timeout); nothing sleeps. Each test uses its own deployment ids, most their
own tenant, so they share one gateway and run in any order.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid

from playwright.sync_api import expect

from conftest import MILLION, unique

T = 10_000  # ms: the UI reacting to a click, a key or a pushed line
T_OPEN = 30_000  # ms: opening or searching a big log (debug build, 2 cores, CI)

HL = re.compile(r"(^|\s)hl(\s|$)")
CURRENT = re.compile(r"(^|\s)match-current(\s|$)")
GROUP = re.compile(r"(^|\s)group(\s|$)")


def row(page, seq: int):
    return page.locator(f'#log .row[data-seq="{seq}"]')


def numbered(n: int, text: str = "line {n}", first: int = 1, **fields):
    return [{**fields, "message": text.format(n=i)} for i in range(first, first + n)]


def shown_seqs(page) -> list[int]:
    return page.evaluate("[...document.querySelectorAll('#log .row')].map(r => Number(r.dataset.seq))")


def expect_rows(page, want: list[int], timeout: int = T) -> None:
    """Waits until the rendered rows are exactly lines `want` (a small log, all on screen)."""
    try:
        page.wait_for_function(
            "want => JSON.stringify([...document.querySelectorAll('#log .row')]"
            ".map(r => Number(r.dataset.seq))) === JSON.stringify(want)",
            arg=want,
            timeout=timeout,
        )
    except Exception as e:
        raise AssertionError(f"rows shown: {shown_seqs(page)}, expected {want}") from e


def set_open(section, want: str) -> None:
    """Folds or opens a section (a step head or a group row: each has `data-open` and a
    `button.fold`) by clicking its button. The rows are re-rendered as the page settles
    (sections pair up when their lines are loaded): a click whose press and release
    land on two renders of the button reaches neither, so the click is tried again, a
    few times at most, until the state is the one wanted."""
    for _ in range(3):
        if section.get_attribute("data-open") == want:
            break
        section.locator("button.fold").click()
        try:
            expect(section).to_have_attribute("data-open", want, timeout=2_000)
        except AssertionError:
            continue
    expect(section).to_have_attribute("data-open", want, timeout=T)


def open_step(page, name: str) -> None:
    """Opens step `name`'s section (the UI folds a step that passed)."""
    head = page.locator(f'.step-head[data-step="{name}"]')
    expect(head).to_be_visible(timeout=T)
    set_open(head, "true")


def blur(page) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")


def sign_in(page, open_ui, token: str) -> None:
    """Opens the list with the token in the fragment, so the tab holds it from then on."""
    open_ui(page, "/", token)
    expect(page.locator("table#deployments")).to_be_visible(timeout=T)
    expect(page.locator("#token-form")).to_be_hidden(timeout=T)


# === The deployments list ===


def test_the_list_shows_a_new_deployment_live_and_then_its_completion(page, gateway, open_ui, screenshot):
    tok = gateway.token(unique("list"))
    done, failed, running = unique("web-build"), unique("api-tests"), unique("etl-nightly")
    gateway.push(tok, done, numbered(120, "compiling unit {n}", step="build") + [{"step": "test", "message": "ok"}])
    gateway.complete(tok, done, "succeeded")
    gateway.push(tok, failed, [{"step": "test", "level": "error", "message": "assertion failed"}] * 3)
    gateway.complete(tok, failed, "failed", 2)
    gateway.push(tok, running, [{"step": "extract", "message": "reading the warehouse"}])

    open_ui(page, "/", tok)
    table = page.locator("table#deployments tbody")
    for dep, status in ((done, "succeeded"), (failed, "failed"), (running, "running")):
        expect(table.locator(f'tr[data-id="{dep}"] td.status')).to_have_text(status, timeout=T)
    expect(table.locator(f'tr[data-id="{done}"] td.lines')).to_have_text("121", timeout=T)
    page.evaluate("window.__sameDocument = true")

    # A deployment that appears after the page is open shows up by itself.
    new = unique("deploy-prod")
    gateway.push(tok, new, [{"step": "deploy", "message": f"rolling out replica {i}"} for i in range(3)])
    tr = table.locator(f'tr[data-id="{new}"]')
    expect(tr).to_be_visible(timeout=T)
    expect(tr.locator("td.status")).to_have_text("running", timeout=T)
    expect(tr.locator("td.id a")).to_have_attribute("href", f"/deployments/{new}")

    gateway.complete(tok, new, "succeeded")
    expect(tr.locator("td.status")).to_have_text("succeeded", timeout=T)
    expect(tr.locator("td.lines")).to_have_text("3", timeout=T)
    expect(tr.locator("td.steps")).to_contain_text("deploy")
    expect(tr.locator("td.age")).not_to_be_empty()
    assert page.evaluate("window.__sameDocument") is True, "the list was reloaded"
    screenshot(page, "ui-list.png")

    # Its id opens its log.
    tr.locator("td.id a").click()
    expect(page).to_have_url(re.compile(rf"/deployments/{re.escape(new)}$"), timeout=T)
    expect(page.locator("#status")).to_contain_text("succeeded", timeout=T)
    expect(row(page, 3)).to_be_in_viewport(timeout=T)


def test_the_filter_narrows_the_list_by_id_substring(page, gateway, open_ui):
    tok = gateway.token(unique("filter"))
    mark = uuid.uuid4().hex[:8]
    alpha, beta = f"alpha-{mark}", f"beta-{mark}"
    for dep in (alpha, beta):
        gateway.push(tok, dep, ["hello"])
    open_ui(page, "/", tok)
    rows = page.locator("table#deployments tbody")
    expect(rows.locator(f'tr[data-id="{alpha}"]')).to_be_visible(timeout=T)
    expect(rows.locator(f'tr[data-id="{beta}"]')).to_be_visible(timeout=T)

    page.locator("input#filter").fill(f"ha-{mark}")
    expect(rows.locator(f'tr[data-id="{beta}"]')).to_have_count(0, timeout=T)
    expect(rows.locator(f'tr[data-id="{alpha}"]')).to_be_visible(timeout=T)

    page.locator("input#filter").fill("")
    expect(rows.locator(f'tr[data-id="{beta}"]')).to_be_visible(timeout=T)


# === Live lines, follow and the end ===


# Resolves `window.__seen` with Date.now() at the first animation frame where line `seq`
# can be seen: the point at the start of its row hits the row itself (not clipped by a
# scroll container, not under another element).
WATCH_ROW = """seq => {
  window.__seen = new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      const r = document.querySelector(`#log .row[data-seq="${seq}"]`);
      if (r) {
        const a = r.getBoundingClientRect();
        const hit = a.height > 0 && document.elementFromPoint(a.left + Math.min(20, a.width / 2), a.top + a.height / 2);
        if (hit && r.contains(hit)) return resolve(Date.now());
      }
      if (Date.now() - t0 > 10000) return reject(new Error(`line ${seq} not shown within 10 s`));
      requestAnimationFrame(tick);
    };
    tick();
  });
}"""


def test_a_live_line_appears_in_the_open_log_within_one_second(page, gateway, open_ui, quiet):
    tok = gateway.token(unique("live"))
    dep = unique("live")
    gateway.push(tok, dep, numbered(3))
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 3)).to_be_in_viewport(timeout=T)
    # The stream is up once a line pushed now arrives by itself.
    gateway.push(tok, dep, ["warm-up"])
    expect(row(page, 4)).to_be_in_viewport(timeout=T)

    with quiet():  # the 1,000,000-line ingest waits: this measures the UI, not a busy CPU
        page.evaluate(WATCH_ROW, 5)
        reply = gateway.push(tok, dep, ["measured"])
        durable_ms = time.time() * 1000
        seen_ms = page.evaluate("window.__seen")
    assert reply["last_seq"] == 5
    latency = seen_ms - durable_ms
    assert latency < 1000, f"the line showed {latency:.0f} ms after the push was answered"
    expect(row(page, 5).locator(".msg")).to_have_text("measured")


def test_scrolling_up_pauses_follow_and_counts_the_new_lines(page, gateway, open_ui):
    tok = gateway.token(unique("follow"))
    dep = unique("follow")
    gateway.push(tok, dep, numbered(300))
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 300)).to_be_in_viewport(timeout=T)
    # While live, the view sticks to the bottom.
    gateway.push(tok, dep, ["line 301"])
    expect(row(page, 301)).to_be_in_viewport(timeout=T)
    expect(page.locator("#follow")).to_be_hidden()

    page.locator("#log").hover()
    page.mouse.wheel(0, -3000)
    expect(row(page, 301)).not_to_be_in_viewport(timeout=T)

    gateway.push(tok, dep, numbered(5, first=302))
    follow = page.locator("#follow")
    expect(follow).to_be_visible(timeout=T)
    expect(follow).to_have_text(re.compile(r"(^|\D)5 new lines?\b"), timeout=T)
    expect(row(page, 306)).not_to_be_in_viewport()

    follow.click()
    expect(row(page, 306)).to_be_in_viewport(timeout=T)
    expect(follow).to_be_hidden(timeout=T)
    # ... and it follows again.
    gateway.push(tok, dep, ["line 307"])
    expect(row(page, 307)).to_be_in_viewport(timeout=T)


def test_the_end_banner_shows_the_status_and_exit_code(page, gateway, open_ui):
    tok = gateway.token(unique("end"))
    dep = unique("end")
    gateway.push(tok, dep, numbered(10))
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 10)).to_be_in_viewport(timeout=T)
    expect(page.locator("#status")).to_contain_text("running", timeout=T)
    expect(page.locator("#end")).to_be_hidden()

    gateway.complete(tok, dep, "failed", 3)
    end = page.locator("#end")
    expect(end).to_be_visible(timeout=T)
    expect(end).to_contain_text("failed")
    expect(end).to_contain_text("exit code 3")
    expect(page.locator("#status")).to_contain_text("failed", timeout=T)


# === Rendering ===


def test_ansi_colours_become_styled_spans(page, gateway, open_ui):
    tok = gateway.token(unique("ansi"))
    dep = unique("ansi")
    gateway.push(tok, dep, [
        "\x1b[31mred\x1b[0m and plain",
        "\x1b[1;4mloud\x1b[0m",
        "\x1b[38;5;208morange256\x1b[0m",
        "\x1b[38;2;10;200;30mtruecolor\x1b[0m",
        "\x1b[42mgreen-bg\x1b[0m",
    ])
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 5)).to_be_in_viewport(timeout=T)

    expect(row(page, 1).locator(".msg")).to_have_text("red and plain")
    expect(row(page, 1).locator(".msg span.fg-1")).to_have_text("red")
    expect(row(page, 2).locator(".msg span.b")).to_have_text("loud")
    expect(row(page, 2).locator(".msg span.u")).to_have_text("loud")
    expect(row(page, 5).locator(".msg span.bg-2")).to_have_text("green-bg")
    colour = """([seq, text]) => {
      const s = [...document.querySelectorAll(`#log .row[data-seq="${seq}"] .msg span`)]
        .find(e => e.textContent === text);
      return s ? getComputedStyle(s).color : null;
    }"""
    assert page.evaluate(colour, [3, "orange256"]) == "rgb(255, 135, 0)"
    assert page.evaluate(colour, [4, "truecolor"]) == "rgb(10, 200, 30)"


def test_a_group_of_a_succeeded_deployment_is_folded_until_clicked(page, gateway, open_ui):
    tok = gateway.token(unique("group"))
    dep = unique("group")
    gateway.push(tok, dep, [
        "checkout done",                                                  # 1
        "::group::Build",                                                 # 2
        "compiling alpha",                                                # 3
        "compiling beta",                                                 # 4
        "::endgroup::",                                                   # 5
        "section_start:1700000000:tests[collapsed=true]\r\x1b[0KRunning tests",  # 6
        "test one ok",                                                    # 7
        "test two ok",                                                    # 8
        "section_end:1700000009:tests\r\x1b[0K",                          # 9
        "all done",                                                       # 10
    ])
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 10)).to_be_in_viewport(timeout=T)

    for head, inner, title in ((2, (3, 4), "Build"), (6, (7, 8), "Running tests")):
        g = row(page, head)
        expect(g).to_have_class(GROUP)
        expect(g).to_contain_text(title)
        expect(g).to_have_attribute("data-open", "false")
        for s in inner:
            expect(row(page, s)).to_have_count(0)

        g.locator("button.fold").click()
        expect(g).to_have_attribute("data-open", "true", timeout=T)
        for s in inner:
            expect(row(page, s)).to_be_in_viewport(timeout=T)
        expect(row(page, inner[0]).locator(".msg")).to_contain_text(("compiling alpha", "test one ok")[head == 6])

        g.locator("button.fold").click()
        expect(g).to_have_attribute("data-open", "false", timeout=T)
        for s in inner:
            expect(row(page, s)).to_have_count(0, timeout=T)
    expect(row(page, 10).locator(".msg")).to_have_text("all done")


def test_a_step_change_shows_a_step_head_above_its_first_line(page, gateway, open_ui):
    tok = gateway.token(unique("steps"))
    dep = unique("steps")
    gateway.push(tok, dep, numbered(3, "build {n}", step="build") + numbered(3, "test {n}", first=4, step="test"))
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 6)).to_be_in_viewport(timeout=T)
    build = page.locator('.step-head[data-step="build"]')
    test = page.locator('.step-head[data-step="test"]')
    expect(build).to_be_in_viewport(timeout=T)
    expect(test).to_be_in_viewport(timeout=T)
    open_step(page, "build")
    for s in range(1, 7):  # all on screen, none clipped by the heads above them
        expect(row(page, s)).to_be_in_viewport(timeout=T)
    box = lambda loc: loc.bounding_box()  # noqa: E731
    assert box(build)["y"] + box(build)["height"] <= box(row(page, 1))["y"] + 1
    assert box(row(page, 3))["y"] + box(row(page, 3))["height"] <= box(test)["y"] + 1
    assert box(test)["y"] + box(test)["height"] <= box(row(page, 4))["y"] + 1


def test_markup_in_a_line_is_shown_as_text(page, gateway, open_ui):
    tok = gateway.token(unique("xss"))
    dep = unique("xss")
    evil = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script><b>bold?</b>", "&lt;not an entity&gt;"]
    gateway.push(tok, dep, evil)
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 3)).to_be_in_viewport(timeout=T)
    for seq, text in enumerate(evil, 1):
        expect(row(page, seq).locator(".msg")).to_have_text(text)
    expect(page.locator("#log img")).to_have_count(0)
    expect(page.locator("#log script")).to_have_count(0)
    expect(page.locator("#log .msg b")).to_have_count(0)
    assert page.watch.dialogs == []


# === Search, links, keyboard ===


def test_search_finds_a_line_far_outside_the_loaded_window(page, gateway, open_ui):
    tok = gateway.token(unique("search"))
    dep = unique("search")
    needle = "needle-" + uuid.uuid4().hex[:12]
    records = numbered(50_000, "line {n}: routine output of a long job")
    records[9] = {"message": f"line 10: here is the {needle} we want"}
    assert gateway.push(tok, dep, records)["last_seq"] == 50_000
    gateway.complete(tok, dep, "succeeded")

    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 50_000)).to_be_in_viewport(timeout=T_OPEN)
    expect(row(page, 10)).to_have_count(0)

    page.locator("input#search").fill(needle)
    page.locator("input#search").press("Enter")
    expect(page.locator("#search-count")).to_have_text(re.compile(r"^\s*1\s*/\s*1\s*$"), timeout=T_OPEN)
    hit = row(page, 10)
    expect(hit).to_be_in_viewport(timeout=T)
    expect(hit).to_have_class(CURRENT)
    expect(hit.locator(".msg mark")).to_have_text(needle)


def test_search_next_and_prev_move_between_matches_in_log_order(page, gateway, open_ui):
    tok = gateway.token(unique("search"))
    dep = unique("search")
    word = "marker" + uuid.uuid4().hex[:8]
    hits = [100, 1000, 1900]
    records = numbered(2000, "line {n}")
    for s in hits:
        records[s - 1] = {"message": f"line {s} carries {word}"}
    gateway.push(tok, dep, records)
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 2000)).to_be_in_viewport(timeout=T_OPEN)

    page.locator("input#search").fill(word)
    page.locator("input#search").press("Enter")
    count = page.locator("#search-count")
    expect(count).to_have_text(re.compile(r"^\s*[123]\s*/\s*3\s*$"), timeout=T_OPEN)

    def at(k: int):
        """Match k (1-based, in log order) is the current one, in view."""
        expect(count).to_have_text(re.compile(rf"^\s*{k}\s*/\s*3\s*$"), timeout=T)
        cur = row(page, hits[k - 1])
        expect(cur).to_be_in_viewport(timeout=T)
        expect(cur).to_have_class(CURRENT)
        expect(cur.locator(".msg mark")).to_have_text(word)
        expect(page.locator("#log .row.match-current")).to_have_count(1)

    k = int(re.search(r"(\d+)\s*/", count.inner_text()).group(1))
    at(k)
    if k < 3:
        page.locator("button#search-next").click()
        at(k + 1)
        page.locator("button#search-prev").click()
        at(k)
    else:
        page.locator("button#search-prev").click()
        at(2)
        page.locator("button#search-next").click()
        at(3)


def test_a_line_link_scrolls_to_and_highlights_that_line(page, gateway, open_ui):
    tok = gateway.token(unique("link"))
    dep = unique("link")
    gateway.push(tok, dep, numbered(5000))
    gateway.complete(tok, dep, "succeeded")
    sign_in(page, open_ui, tok)

    page.goto(f"{gateway.url}/deployments/{dep}#L1234")
    line = row(page, 1234)
    expect(line).to_be_in_viewport(timeout=T_OPEN)
    expect(line).to_have_class(HL)
    expect(page.locator("#log .row.hl")).to_have_count(1)
    expect(line.locator("a.ln")).to_have_text("1234")
    expect(line.locator("a.ln")).to_have_attribute("href", "#L1234")

    # A range.
    page.goto(f"{gateway.url}/deployments/{dep}#L10-L20")
    expect(row(page, 10)).to_be_in_viewport(timeout=T)
    expect(page.locator("#log .row.hl")).to_have_count(11, timeout=T)
    for s in (10, 15, 20):
        expect(row(page, s)).to_have_class(HL)

    # A click on a line number links to that line.
    row(page, 15).locator("a.ln").click()
    expect(page).to_have_url(re.compile(r"#L15$"), timeout=T)
    expect(page.locator("#log .row.hl")).to_have_count(1, timeout=T)
    expect(row(page, 15)).to_have_class(HL)


def test_a_line_link_into_a_passed_step_opens_that_step(page, gateway, open_ui):
    # Passed steps of a succeeded deployment start folded; a link to one of their lines
    # must still show it (the step opens), also when the steps arrive after the jump.
    tok = gateway.token(unique("steplink"))
    dep = unique("steplink")
    gateway.push(tok, dep, [{"step": "checkout", "message": f"checkout {i}"} for i in range(1, 2001)])
    gateway.push(tok, dep, [{"step": "build", "message": f"build {i}"} for i in range(1, 2001)])
    gateway.push(tok, dep, [{"step": "test", "message": f"test {i}"} for i in range(1, 2001)])
    gateway.complete(tok, dep, "succeeded")
    sign_in(page, open_ui, tok)

    page.goto(f"{gateway.url}/deployments/{dep}#L1500")
    line = row(page, 1500)
    expect(line).to_be_in_viewport(timeout=T_OPEN)
    expect(line).to_have_class(HL)
    expect(line.locator(".msg")).to_have_text("checkout 1500")
    # At the top: the linked step is open, the other passed steps stay folded.
    page.locator("#log").focus()
    page.keyboard.press("g")
    expect(page.locator('.step-head[data-step="checkout"]')).to_have_attribute("data-open", "true", timeout=T)
    page.keyboard.press("G")
    expect(page.locator('.step-head[data-step="build"]')).to_have_attribute("data-open", "false", timeout=T)


def test_a_line_link_into_a_live_log_stays_on_that_line(page, gateway, open_ui):
    tok = gateway.token(unique("livelink"))
    dep = unique("livelink")
    gateway.push(tok, dep, numbered(3000))
    sign_in(page, open_ui, tok)

    page.goto(f"{gateway.url}/deployments/{dep}#L50")
    expect(row(page, 50)).to_be_in_viewport(timeout=T_OPEN)
    expect(row(page, 50)).to_have_class(HL)
    expect(page.locator("#status")).to_contain_text("running", timeout=T)

    # Lines arriving meanwhile do not pull the reader away from the linked line.
    gateway.push(tok, dep, numbered(20, first=3001))
    expect(page.locator("#follow")).to_contain_text("new line", timeout=T)
    expect(row(page, 50)).to_be_in_viewport()
    page.locator("#follow").click()
    expect(row(page, 3020)).to_be_in_viewport(timeout=T)


def test_keys_g_and_shift_g_jump_to_the_top_and_end_and_slash_focuses_search(page, gateway, open_ui):
    tok = gateway.token(unique("keys"))
    dep = unique("keys")
    gateway.push(tok, dep, numbered(5000))
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 5000)).to_be_in_viewport(timeout=T_OPEN)

    blur(page)
    page.keyboard.press("g")
    expect(row(page, 1)).to_be_in_viewport(timeout=T)
    page.keyboard.press("G")
    expect(row(page, 5000)).to_be_in_viewport(timeout=T)
    page.keyboard.press("/")
    expect(page.locator("input#search")).to_be_focused(timeout=T)
    expect(page.locator("input#search")).to_have_value("")


# === Filters and toggles ===


def test_level_and_step_filters_narrow_the_lines_live_too(page, gateway, open_ui):
    tok = gateway.token(unique("filters"))
    dep = unique("filters")
    gateway.push(tok, dep, [
        {"step": "build", "level": "debug", "message": "b-debug"},  # 1
        {"step": "build", "level": "info", "message": "b-info"},  # 2
        {"step": "build", "level": "warn", "message": "b-warn"},  # 3
        {"step": "build", "level": "error", "message": "b-error"},  # 4
        {"step": "test", "level": "info", "message": "t-info"},  # 5
        {"step": "test", "level": "error", "message": "t-error"},  # 6
        {"step": "test", "level": "warn", "message": "t-warn"},  # 7
    ])
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 7)).to_be_in_viewport(timeout=T)
    open_step(page, "build")
    expect_rows(page, [1, 2, 3, 4, 5, 6, 7])
    expect(row(page, 7)).to_be_in_viewport(timeout=T)
    level, step = page.locator("select#level"), page.locator("select#step")
    expect(step.locator('option[value="test"]')).to_have_count(1, timeout=T)
    expect(step.locator('option[value="build"]')).to_have_count(1, timeout=T)

    for value, want in (("error", [4, 6]), ("warn+", [3, 4, 6, 7]), ("info+", [2, 3, 4, 5, 6, 7]),
                        ("debug+", [1, 2, 3, 4, 5, 6, 7]), ("", [1, 2, 3, 4, 5, 6, 7])):
        level.select_option(value)
        expect_rows(page, want)

    step.select_option("test")
    expect_rows(page, [5, 6, 7])
    level.select_option("error")
    expect_rows(page, [6])
    # A live line is filtered like the others (the info line arrives first).
    gateway.push(tok, dep, [{"step": "test", "level": "info", "message": "t-info-2"},  # 8
                            {"step": "test", "level": "error", "message": "t-error-2"}])  # 9
    expect_rows(page, [6, 9])

    step.select_option("")
    level.select_option("")
    expect_rows(page, [1, 2, 3, 4, 5, 6, 7, 8, 9])


def test_timestamps_and_wrap_toggles(page, gateway, open_ui):
    tok = gateway.token(unique("toggles"))
    dep = unique("toggles")
    gateway.push(tok, dep, [
        {"ts": "2024-05-06T07:08:09.123Z", "message": "short"},
        {"ts": "2024-05-06T07:08:10.456Z", "message": "long " + "word " * 600},
    ])
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 2)).to_be_in_viewport(timeout=T)

    page.locator("input#ts").set_checked(False)
    expect(page.locator("#log .row span.ts")).to_have_count(0, timeout=T)
    page.locator("input#ts").set_checked(True)
    expect(row(page, 1).locator("span.ts")).to_have_count(1, timeout=T)
    expect(row(page, 1).locator("span.ts")).to_contain_text("07:08:09.123")  # the page runs in UTC

    height = "seq => document.querySelector(`#log .row[data-seq=\"${seq}\"]`).getBoundingClientRect().height"
    page.locator("input#wrap").set_checked(False)
    page.wait_for_function(
        f"() => ({height})(2) < 1.5 * ({height})(1)", timeout=T)
    page.locator("input#wrap").set_checked(True)
    page.wait_for_function(
        f"() => ({height})(2) > 3 * ({height})(1)", timeout=T)
    expect(row(page, 2).locator(".msg")).to_contain_text("word word")


# === Download and copy ===


def test_download_saves_the_export_named_after_the_deployment(page, gateway, open_ui, tmp_path):
    tok = gateway.token(unique("dl"), scopes="logs:read,logs:write,logs:export")
    dep = unique("dl")
    msgs = [f"export line {n}" for n in range(1, 6)]
    gateway.push(tok, dep, msgs)
    gateway.complete(tok, dep, "succeeded")
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 5)).to_be_in_viewport(timeout=T)

    with page.expect_download(timeout=T) as info:
        page.locator("button#download").click()
    download = info.value
    assert download.suggested_filename == f"{dep}.log"
    saved = tmp_path / "export.log"
    download.save_as(saved)
    text = saved.read_text()
    positions = [text.find(m) for m in msgs]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), text[:2000]


def test_copy_puts_the_highlighted_lines_on_the_clipboard(page, gateway, open_ui):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    tok = gateway.token(unique("copy"))
    dep = unique("copy")
    gateway.push(tok, dep, numbered(30, "copy-{n:03d}"))
    gateway.complete(tok, dep, "succeeded")
    sign_in(page, open_ui, tok)
    page.goto(f"{gateway.url}/deployments/{dep}#L10-L12")
    expect(page.locator("#log .row.hl")).to_have_count(3, timeout=T)

    page.evaluate("navigator.clipboard.writeText('')")
    page.locator("button#copy").click()
    page.wait_for_function("async () => (await navigator.clipboard.readText()).includes('copy-012')", timeout=T)
    text = page.evaluate("navigator.clipboard.readText()")
    for n in (10, 11, 12):
        assert f"copy-{n:03d}" in text, text
    for n in (9, 13):
        assert f"copy-{n:03d}" not in text, text


# === Tokens and errors ===


def test_the_token_moves_from_the_address_bar_to_session_storage(page, gateway, open_ui):
    tok = gateway.token(unique("frag"))
    dep = unique("frag")
    gateway.push(tok, dep, ["hello"])
    open_ui(page, "/", tok)
    tr = page.locator(f'table#deployments tbody tr[data-id="{dep}"]')
    expect(tr).to_be_visible(timeout=T)
    expect(page).not_to_have_url(re.compile("token"), timeout=T)
    assert "token" not in page.evaluate("location.href")
    assert tok in page.evaluate("Object.values(sessionStorage)")

    page.reload()
    expect(tr).to_be_visible(timeout=T)
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()

    # Session storage is the tab's: another tab asks again.
    other = page.context.new_page()
    try:
        other.goto(gateway.url + "/")
        expect(other.locator("#token-form")).to_be_visible(timeout=T)
    finally:
        other.close()


def test_without_a_token_the_form_asks_for_one_and_opens_the_list(ui_page, gateway):
    page = ui_page
    tok = gateway.token(unique("form"))
    dep = unique("form")
    gateway.push(tok, dep, ["hello"])
    form = page.locator("#token-form")
    expect(form).to_be_visible(timeout=T)
    expect(page.locator("#error")).to_be_hidden()

    page.locator("input#token-input").fill(tok)
    form.get_by_role("button").click()
    expect(page.locator(f'table#deployments tbody tr[data-id="{dep}"]')).to_be_visible(timeout=T)
    expect(form).to_be_hidden()


def test_a_refused_token_brings_back_the_form_with_an_error(page, gateway, open_ui):
    open_ui(page, "/", "not-a-valid-token")
    expect(page.locator("#token-form")).to_be_visible(timeout=T)
    expect(page.locator("#error")).to_be_visible(timeout=T)
    expect(page.locator("#error")).to_have_text(re.compile(r"\S"))


def test_a_token_without_the_read_scope_is_told_so(page, gateway, open_ui):
    tok = gateway.token(unique("scope"), scopes="logs:write")
    open_ui(page, "/", tok)
    expect(page.locator("#error")).to_be_visible(timeout=T)
    expect(page.locator("#error")).to_contain_text(re.compile("scope|forbidden", re.I))


def test_another_tenants_deployment_is_not_found(page, gateway, open_ui):
    owner = gateway.token(unique("owner"))
    stranger = gateway.token(unique("stranger"))
    dep = unique("private")
    gateway.push(owner, dep, ["a secret line of the owner"])
    open_ui(page, f"/deployments/{dep}", stranger)
    expect(page.locator("#error")).to_be_visible(timeout=T)
    expect(page.locator("#error")).to_contain_text(re.compile("not found", re.I))
    expect(page.locator("#log .row")).to_have_count(0)
    expect(page.get_by_text("a secret line")).to_have_count(0)


# === What the page is made of ===


def test_the_page_has_a_strict_csp_and_only_external_module_scripts(gateway):
    html = ""
    for path in ("/", "/deployments/any-id"):
        status, headers, body = gateway.request("GET", path)
        assert status == 200, (path, status, body[:300])
        assert headers["Content-Type"].startswith("text/html"), headers["Content-Type"]
        csp = headers["Content-Security-Policy"]
        assert csp, f"{path}: no Content-Security-Policy"
        directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
        assert directives.get("script-src") == ["'self'"], csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
        html = body.decode()
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script\s*>", html, re.S | re.I)
        assert scripts, "no script at all"
        for attrs, inline in scripts:
            assert re.search(r'\bsrc="/ui/[^"]+"', attrs) and not inline.strip(), (attrs, inline[:200])
        assert not re.search(r"\son[a-z]+\s*=", html, re.I), "an inline event handler"

    # Every script the page loads, and every module those import, is JavaScript.
    todo = re.findall(r'<script\b[^>]*\bsrc="(/ui/[^"]+)"', html)
    seen = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        status, headers, body = gateway.request("GET", path)
        assert status == 200, (path, status)
        assert re.match(r"(text|application)/javascript\b", headers["Content-Type"]), (path, headers["Content-Type"])
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        for dep in re.findall(r"""(?:from|import)\s*\(?\s*['"]\./([\w.-]+\.js)['"]""", body.decode()):
            todo.append("/ui/" + dep)
    assert "/ui/app.js" in seen or len(seen) > 1, seen
    for path in re.findall(r'<link\b[^>]*\bhref="(/ui/[^"]+\.css)"', html):
        status, headers, _ = gateway.request("GET", path)
        assert status == 200 and headers["Content-Type"].startswith("text/css"), (path, headers["Content-Type"])


def test_the_ui_requests_nothing_but_the_gateway(page, gateway, open_ui):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda w: requests.append(w.url))
    tok = gateway.token(unique("origin"))
    dep = unique("origin")
    gateway.push(tok, dep, ["::group::Setup", "\x1b[36mcyan\x1b[0m", "::endgroup::", "done"])
    gateway.complete(tok, dep, "succeeded")

    open_ui(page, "/", tok)
    page.locator(f'table#deployments tbody tr[data-id="{dep}"] td.id a').click()
    expect(row(page, 4)).to_be_in_viewport(timeout=T)
    page.locator("input#search").fill("done")
    page.locator("input#search").press("Enter")
    expect(page.locator("#search-count")).to_contain_text("1", timeout=T)
    page.locator("input#ts").set_checked(True)
    page.reload()
    expect(row(page, 4)).to_be_in_viewport(timeout=T)

    mine = urllib.parse.urlsplit(gateway.url)
    foreign = [u for u in requests
               if urllib.parse.urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urllib.parse.urlsplit(u).netloc != mine.netloc]
    assert not foreign, foreign
    assert any(u.startswith(gateway.url + "/v1/") for u in requests), requests


# === Screenshots and size ===


def test_a_live_log_with_steps_groups_and_colours_looks_right(page, gateway, open_ui, screenshot):
    tok = gateway.token(unique("shot"))
    dep = unique("shot")
    gateway.push(tok, dep, [
        {"step": "checkout", "message": "Cloning into 'app'..."},  # 1
        {"step": "checkout", "message": "\x1b[32m✓\x1b[0m checked out \x1b[1m4f2a9c1\x1b[0m"},  # 2
        {"step": "build", "message": "::group::Install dependencies"},  # 3
        {"step": "build", "message": "added 312 packages in 4.2s"},  # 4
        {"step": "build", "message": "::endgroup::"},  # 5
        {"step": "build", "message": "::group::Compile"},  # 6
        {"step": "build", "message": "\x1b[1;32m   Compiling\x1b[0m app v0.3.1"},  # 7
        {"step": "build", "level": "warn", "message": "\x1b[33mwarning\x1b[0m: unused variable `x`"},  # 8
        {"step": "build", "message": "\x1b[1;32m    Finished\x1b[0m release in 41.7s"},  # 9
        {"step": "build", "message": "::endgroup::"},  # 10
        {"step": "build", "message": "bundle \x1b[38;5;208m1.2 MB\x1b[0m, assets \x1b[38;2;120;180;255m312 kB\x1b[0m"},  # 11
        {"step": "test", "message": "running 24 tests"},  # 12
        {"step": "test", "message": "test auth::login ... \x1b[32mok\x1b[0m"},  # 13
        {"step": "test", "level": "error", "message": "test api::rate_limit ... \x1b[31;1mFAILED\x1b[0m"},  # 14
        {"step": "test", "message": "\x1b[2mwaiting for the retry...\x1b[0m"},  # 15
    ])
    open_ui(page, f"/deployments/{dep}", tok)
    expect(row(page, 15)).to_be_in_viewport(timeout=T)
    open_step(page, "build")
    for head, want in ((3, "false"), (6, "true")):  # one group folded, one open
        g = row(page, head)
        expect(g).to_have_class(GROUP, timeout=T)
        set_open(g, want)
    expect(row(page, 4)).to_have_count(0)
    expect(row(page, 7)).to_be_in_viewport()
    expect(page.locator('.step-head[data-step="test"]')).to_be_in_viewport()
    expect(row(page, 14).locator(".msg span.fg-1")).to_have_text("FAILED")
    # What the picture must show is on screen, not clipped.
    expect(page.locator('.step-head[data-step="checkout"]')).to_be_in_viewport(timeout=T)
    for s in (3, 6, 7, 11, 14, 15):
        expect(row(page, s)).to_be_in_viewport(timeout=T)
    screenshot(page, "ui-log.png")


def test_a_million_line_log_opens_at_its_end_with_few_rows(page, gateway, open_ui, million):
    big = million.wait()
    open_ui(page, f"/deployments/{big.deployment}", big.token)
    last = row(page, MILLION)
    expect(last).to_be_in_viewport(timeout=T_OPEN)
    expect(last.locator(".msg")).to_contain_text(f"line {MILLION} of {MILLION}")
    expect(page.locator("#status")).to_contain_text("succeeded", timeout=T)
    n = page.locator("#log .row").count()
    assert 0 < n < 300, f"{n} rows in the DOM"

    blur(page)
    page.keyboard.press("g")
    expect(row(page, 1)).to_be_in_viewport(timeout=T_OPEN)
    n = page.locator("#log .row").count()
    assert 0 < n < 300, f"{n} rows in the DOM at the top"
    page.keyboard.press("G")
    expect(last).to_be_in_viewport(timeout=T_OPEN)
    print(f"\n1,000,000 lines ingested over HTTP in {big.seconds:.1f} s")
