"""Browser tests of gateway/ui/ansi.js (ANSI parsing, CR overwrite, section markers).

`ui_page` (conftest.py) is a Playwright page on the gateway's `/`, which serves the
module at /ui/ansi.js.
"""

import os
import re

import pytest

E = "\x1b"
UI = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))), "gateway/ui")

CALL = "async ([name, args]) => { const m = await import('/ui/ansi.js'); return m[name](...args); }"

# Renders into a detached <div> and describes what was appended.
RENDER = """async ([t]) => {
  const m = await import('/ui/ansi.js');
  const parent = document.createElement('div');
  m.renderAnsi(t, parent);
  return {
    html: parent.innerHTML,
    text: parent.textContent,
    imgs: parent.querySelectorAll('img').length,
    nodes: [...parent.childNodes].map((n) => n.nodeType === Node.TEXT_NODE
      ? {text: n.data}
      : {tag: n.tagName.toLowerCase(), cls: n.className, text: n.textContent,
         color: n.style.color, bg: n.style.backgroundColor, attrs: n.getAttributeNames()}),
  };
}"""


def call(page, name, *args):
    return page.evaluate(CALL, [name, list(args)])


def render(page, text):
    return page.evaluate(RENDER, [text])


def span(text, fg=None, bg=None, bold=False, dim=False, italic=False, underline=False, inverse=False, strike=False):
    return {"text": text, "fg": fg, "bg": bg, "bold": bold, "dim": dim, "italic": italic,
            "underline": underline, "inverse": inverse, "strike": strike}


def parse(page, text):
    return call(page, "parseAnsi", text)


# --- SGR colours --------------------------------------------------------------------------

def test_16_colour_foreground_and_background_normal_and_bright(ui_page):
    text = f"{E}[31mr{E}[42mg{E}[91mR{E}[102mG{E}[37;40mw{E}[97;107mW"
    assert parse(ui_page, text) == [
        span("r", fg=1), span("g", fg=1, bg=2), span("R", fg=9, bg=2), span("G", fg=9, bg=10),
        span("w", fg=7, bg=0), span("W", fg=15, bg=15),
    ]


def test_default_colour_codes_39_and_49_reset_only_their_colour(ui_page):
    assert parse(ui_page, f"{E}[1;31;44ma{E}[39mb{E}[49mc") == [
        span("a", fg=1, bg=4, bold=True), span("b", bg=4, bold=True), span("c", bold=True),
    ]


def test_256_colours_in_semicolon_and_colon_forms(ui_page):
    text = f"{E}[38;5;196ma{E}[48;5;21mb{E}[38:5:16mc{E}[48:5:255md{E}[38;5;3me"
    assert parse(ui_page, text) == [
        span("a", fg=196), span("b", fg=196, bg=21), span("c", fg=16, bg=21), span("d", fg=16, bg=255),
        span("e", fg=3, bg=255),
    ]


def test_truecolor_in_semicolon_and_both_colon_forms(ui_page):
    text = (f"{E}[38;2;255;128;0ma{E}[48;2;0;0;0mb"
            f"{E}[38:2::1:2:3mc"        # with an empty colour-space id
            f"{E}[38:2:4:5:6md"         # without the id slot
            f"{E}[48:2:0:10:20:30me")   # with an id
    assert parse(ui_page, text) == [
        span("a", fg="#ff8000"), span("b", fg="#ff8000", bg="#000000"), span("c", fg="#010203", bg="#000000"),
        span("d", fg="#040506", bg="#000000"), span("e", fg="#040506", bg="#0a141e"),
    ]


def test_invalid_and_out_of_range_colours_are_ignored(ui_page):
    text = (f"{E}[31m{E}[38;5;256ma{E}[38;2;1;2;300mb{E}[38:5:999mc{E}[48;5mc"
            f"{E}[38;5;1<md{E}[38:2:1:2me{E}[99999999999999999999mf{E}[38mg")
    assert parse(ui_page, text) == [span("abccdefg", fg=1)]


def test_unknown_colour_form_does_not_turn_its_arguments_into_attributes(ui_page):
    # 38;7;1 is no colour form: the 7 and 1 must not become inverse and bold
    assert parse(ui_page, f"{E}[38;7;1ma") == [span("a")]


def test_underline_colour_58_arguments_are_not_read_as_attributes(ui_page):
    # 58;5;1 would otherwise be read as blink + bold
    assert parse(ui_page, f"{E}[58;5;1;3ma{E}[58;2;1;1;1mb{E}[58:5:1mc") == [span("abc", italic=True)]


# --- SGR attributes -----------------------------------------------------------------------

def test_bold_dim_italic_underline_strike_on_and_off(ui_page):
    text = (f"{E}[1ma{E}[2mb{E}[22mc{E}[1;2md{E}[21me"
            f"{E}[3mf{E}[23mg{E}[4mh{E}[24mi{E}[9mj{E}[29mk")
    assert parse(ui_page, text) == [
        span("a", bold=True), span("b", bold=True, dim=True), span("c"), span("d", bold=True, dim=True),
        span("e"), span("f", italic=True), span("g"), span("h", underline=True), span("i"),
        span("j", strike=True), span("k"),
    ]


def test_colon_underline_styles_turn_underline_on_and_4_colon_0_off(ui_page):
    assert parse(ui_page, f"{E}[4:3ma{E}[4:0mb{E}[4:1mc{E}[24md") == [
        span("a", underline=True), span("b"), span("c", underline=True), span("d"),
    ]


def test_reset_by_0_and_by_empty_parameters(ui_page):
    text = f"{E}[1;3;4;7;9;31;42ma{E}[0mb{E}[1;31mc{E}[md{E}[31m{E}[;1me"
    assert parse(ui_page, text) == [
        span("a", fg=1, bg=2, bold=True, italic=True, underline=True, inverse=True, strike=True),
        span("b"), span("c", fg=1, bold=True), span("d"), span("e", bold=True),
    ]


def test_inverse_on_and_off(ui_page):
    assert parse(ui_page, f"{E}[31;7ma{E}[27mb") == [span("a", fg=1, inverse=True), span("b", fg=1)]


def test_adjacent_spans_of_one_style_merge_and_empty_spans_are_dropped(ui_page):
    text = f"{E}[31ma{E}[1m{E}[22mb{E}[32m{E}[31mc{E}[0m{E}[K"
    assert parse(ui_page, text) == [span("abc", fg=1)]
    assert parse(ui_page, "") == []
    assert parse(ui_page, f"{E}[31m{E}[0m") == []


# --- Other sequences and controls ---------------------------------------------------------

def test_non_sgr_csi_sequences_are_removed(ui_page):
    text = f"{E}[Ka{E}[2Kb{E}[0Kc{E}[?25ld{E}[?25he{E}[10;20Hf{E}[3Ag{E}[2Jh{E}[>4;2mi{E}[1 qj"
    assert parse(ui_page, text) == [span("abcdefghij")]


def test_osc_sequences_are_removed_and_hyperlinks_keep_their_text(ui_page):
    st = f"{E}\\"
    text = (f"{E}]8;;https://example.com/{st}link{E}]8;;{st} "
            f"{E}]0;window title\x07x {E}]8;id=1;http://a/\x07y{E}]8;;\x07")
    assert call(ui_page, "stripAnsi", text) == "link x y"
    assert parse(ui_page, f"{E}[32m{E}]8;;http://a/{st}go{E}]8;;{st}") == [span("go", fg=2)]


def test_two_character_escapes_and_charset_designations_are_removed(ui_page):
    # tput sgr0 prints ESC ( B ESC [ m; ESC 7 / ESC 8 save and restore the cursor
    assert parse(ui_page, f"{E}7a{E}8b{E}(B{E}[mc{E}=d{E}>e") == [span("abcde")]


def test_control_characters_other_than_tab_are_removed(ui_page):
    text = "a\x00b\x07c\x08d\te\x7ff\x1b"  # ends with a lone ESC
    assert parse(ui_page, text) == [span("abcd\tef")]


def test_unterminated_sequences_do_not_throw(ui_page):
    for text in [f"a{E}[", f"a{E}[31", f"a{E}]8;;http://x", f"a{E}", f"a{E}[38;2;", f"a{E}(",
                 f"a{E}[{E}[{E}]"]:
        assert call(ui_page, "stripAnsi", text) == "a", text


# --- CR overwrite -------------------------------------------------------------------------

def test_cr_overwrite_keeps_the_last_progress_bar_state(ui_page):
    assert call(ui_page, "overwriteCR", "10%\r50%\r100%") == "100%"
    assert call(ui_page, "overwriteCR", "no carriage return") == "no carriage return"


def test_crlf_ending_is_stripped_before_choosing_a_segment(ui_page):
    assert call(ui_page, "overwriteCR", "10%\r100%\r") == "100%"
    assert call(ui_page, "overwriteCR", "done\r") == "done"


def test_cr_segments_of_only_erase_codes_do_not_count_as_text(ui_page):
    assert call(ui_page, "overwriteCR", f"{E}[2K10%\r{E}[2K100%\r{E}[2K\r") == f"{E}[2K100%"
    assert call(ui_page, "overwriteCR", f"50%\r{E}[0K") == "50%"
    assert call(ui_page, "stripAnsi", f"{E}[2K{E}[32m10%\r{E}[2K{E}[32m100%{E}[0m\r{E}[0K\r") == "100%"


def test_cr_overwrite_with_nothing_visible_is_empty(ui_page):
    assert call(ui_page, "overwriteCR", f"\r{E}[0K\r{E}[2K") == ""
    assert call(ui_page, "overwriteCR", "\r") == ""
    assert call(ui_page, "overwriteCR", "") == ""


def test_strip_ansi_is_the_visible_text_after_cr_overwrite(ui_page):
    assert call(ui_page, "stripAnsi", f"{E}[1;31merror:{E}[0m <b>bad</b>\tx") == "error: <b>bad</b>\tx"
    assert call(ui_page, "stripAnsi", f"Downloading 3%\r{E}[KDownloading 100%\r\n") == "Downloading 100%"


# --- renderAnsi ---------------------------------------------------------------------------

def test_render_plain_text_is_a_text_node(ui_page):
    assert render(ui_page, "hello world")["nodes"] == [{"text": "hello world"}]


def test_render_uses_classes_for_16_colours_and_attributes(ui_page):
    out = render(ui_page, f"a{E}[1;2;3;4;9;31;102mb{E}[0mc")
    assert out["nodes"][0] == {"text": "a"}
    assert out["nodes"][2] == {"text": "c"}
    b = out["nodes"][1]
    assert b["tag"] == "span" and b["text"] == "b"
    assert sorted(b["cls"].split()) == sorted(["fg-1", "bg-10", "b", "d", "i", "u", "s"])
    assert b["color"] == "" and b["bg"] == ""


def test_render_sets_256_and_truecolor_through_the_cssom_not_markup(ui_page):
    out = render(ui_page, f"{E}[38;5;196;48;2;1;2;3mx")
    (x,) = out["nodes"]
    assert x["color"] == "rgb(255, 0, 0)" and x["bg"] == "rgb(1, 2, 3)" and x["cls"] == ""
    # the CSSOM writes a style attribute; it must hold nothing but the two colours
    assert x["attrs"] in (["style"], ["class", "style"])


def test_render_inverse_swaps_colours_and_uses_theme_colours_for_defaults(ui_page):
    nodes = render(ui_page, f"{E}[7ma{E}[31mb{E}[44;39mc{E}[38;5;100;49md")["nodes"]
    assert sorted(nodes[0]["cls"].split()) == ["bg-inv", "fg-inv"]
    assert sorted(nodes[1]["cls"].split()) == ["bg-1", "fg-inv"]
    assert sorted(nodes[2]["cls"].split()) == ["bg-inv", "fg-4"]
    assert nodes[3]["cls"] == "fg-inv" and nodes[3]["bg"] == "rgb(135, 135, 0)"


def test_render_shows_markup_as_text(ui_page):
    xss = "<img src=x onerror=alert(1)>"
    for text in [xss, f"{E}[31m{xss}{E}[0m", f"{E}[38;2;1;2;3m{xss}"]:
        out = render(ui_page, text)
        assert out["imgs"] == 0
        assert "&lt;img" in out["html"]
        assert out["text"] == xss


def test_render_applies_cr_overwrite_and_keeps_the_colour_set_before_the_cr(ui_page):
    out = render(ui_page, f"{E}[32m10%\r{E}[2K50%\r{E}[2K100%\r\n")
    assert out["nodes"] == [{"tag": "span", "cls": "fg-2", "text": "100%", "color": "", "bg": "", "attrs": ["class"]}]


def test_render_of_nothing_visible_appends_nothing(ui_page):
    assert render(ui_page, f"{E}[31m{E}[0m\r{E}[K")["nodes"] == []


# --- palette ------------------------------------------------------------------------------

def test_palette256_cube_and_grey_ramp(ui_page):
    got = ui_page.evaluate("async (ns) => { const m = await import('/ui/ansi.js'); return ns.map(m.palette256); }",
                           [16, 21, 46, 196, 231, 59, 232, 244, 255])
    assert got == ["rgb(0,0,0)", "rgb(0,0,255)", "rgb(0,255,0)", "rgb(255,0,0)", "rgb(255,255,255)",
                   "rgb(95,95,95)", "rgb(8,8,8)", "rgb(128,128,128)", "rgb(238,238,238)"]


def _css_palette():
    with open(os.path.join(UI, "ansi.css")) as f:
        css = f.read()
    return {int(n): v for n, v in re.findall(r"--ansi-(\d+):\s*(#[0-9a-fA-F]{6})", css)}


def test_palette256_base_colours_match_ansi_css(ui_page):
    css = _css_palette()
    assert sorted(css) == list(range(16))
    got = ui_page.evaluate("async () => { const m = await import('/ui/ansi.js'); "
                           "return [...Array(16).keys()].map(m.palette256); }")
    want = [f"rgb({int(v[1:3], 16)},{int(v[3:5], 16)},{int(v[5:7], 16)})" for _, v in sorted(css.items())]
    assert got == want


def test_base_colours_have_aa_contrast_on_the_log_background():
    def luminance(h):
        def lin(c):
            c /= 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = (lin(int(h[i:i + 2], 16)) for i in (1, 3, 5))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    bg = luminance("#0d1117")
    for n, colour in _css_palette().items():
        ratio = (luminance(colour) + 0.05) / (bg + 0.05)
        assert ratio >= (2 if n in (0, 8) else 4.5), (n, colour, ratio)


# --- section markers ----------------------------------------------------------------------

def marker(page, message):
    return call(page, "parseMarker", message)


def test_github_group_and_endgroup_markers(ui_page):
    assert marker(ui_page, "::group::Run tests") == {
        "kind": "start", "flavor": "github", "name": None, "title": "Run tests", "ts": None, "collapsed": True}
    assert marker(ui_page, "::endgroup::") == {
        "kind": "end", "flavor": "github", "name": None, "title": None, "ts": None, "collapsed": False}


def test_github_raw_log_group_markers(ui_page):
    assert marker(ui_page, "##[group]Run actions/checkout@v4")["title"] == "Run actions/checkout@v4"
    assert marker(ui_page, "##[group]Run actions/checkout@v4")["kind"] == "start"
    assert marker(ui_page, "##[endgroup]")["kind"] == "end"


def test_markers_after_leading_escape_codes_and_whitespace(ui_page):
    assert marker(ui_page, f"{E}[36;1m  ::group::{E}[1mBuild{E}[0m\r")["title"] == "Build"
    assert marker(ui_page, f"\t{E}[0m##[endgroup]")["kind"] == "end"


def test_gitlab_section_start_with_collapsed_option_and_header(ui_page):
    msg = f"{E}[0Ksection_start:1560896352:my_first_section[collapsed=true]\r{E}[0KHeader of the 1st collapsible section"
    assert marker(ui_page, msg) == {
        "kind": "start", "flavor": "gitlab", "name": "my_first_section",
        "title": "Header of the 1st collapsible section", "ts": 1560896352, "collapsed": True}


def test_gitlab_section_end(ui_page):
    assert marker(ui_page, f"section_end:1560896353:my_first_section\r{E}[0K") == {
        "kind": "end", "flavor": "gitlab", "name": "my_first_section", "title": None, "ts": 1560896353,
        "collapsed": False}
    assert marker(ui_page, f"{E}[0Ksection_end:1:a\r{E}[0K")["name"] == "a"


def test_gitlab_collapsed_is_false_unless_set_true(ui_page):
    assert marker(ui_page, f"section_start:1:s\r{E}[0Kh")["collapsed"] is False
    assert marker(ui_page, f"section_start:1:s[collapsed=false]\r{E}[0Kh")["collapsed"] is False
    got = marker(ui_page, f"section_start:1:s[hide_duration=true,collapsed=true]\r{E}[0Kh")
    assert got["collapsed"] is True and got["name"] == "s"


def test_gitlab_title_is_the_visible_header_or_the_name(ui_page):
    got = marker(ui_page, f"section_start:7:build.step-1_x\r{E}[0K{E}[36;1mCompiling{E}[0;m")
    assert (got["name"], got["title"], got["ts"]) == ("build.step-1_x", "Compiling", 7)
    assert marker(ui_page, f"section_start:7:build.step-1_x\r{E}[0K")["title"] == "build.step-1_x"
    assert marker(ui_page, "section_start:7:only_name")["title"] == "only_name"


@pytest.mark.parametrize("message", [
    "echo ::group::Title",
    "say ##[group]x",
    "hello section_start:1:x\r",
    "::warning::not a group",
    ":: group::x",
    "#[group]x",
    "section_start:x:name\r",
    "section_start::name\r",
    "section_start:1:\r",
    "section_start:1:bad name\r",
    "section_start:1:name[collapsed=true\r",
    "section_middle:1:name\r",
    "section_",
    "",
    "   ",
    f"{E}[31m",
])
def test_non_markers(ui_page, message):
    assert marker(ui_page, message) is None


# --- hostile input ------------------------------------------------------------------------

HOSTILE = """async () => {
  const m = await import('/ui/ansi.js');
  const E = '\\x1b', N = 1 << 20;
  const inputs = [
    `${E}[`.repeat(N / 2), `${E}]`.repeat(N / 2), E.repeat(N), `${E}[` + ';'.repeat(N) + 'm',
    `${E}[` + '9'.repeat(N) + 'm', `${E}[38:2:` + ':'.repeat(N) + 'm', '\\r'.repeat(N),
    `${E}[0K\\r`.repeat(N / 5), `a${E}[1mb${E}[0m`.repeat(N / 10), '::group::' + `${E}[`.repeat(N / 2),
    'section_start:' + '1'.repeat(N), 'section_start:1:' + 'a'.repeat(N) + '[' + 'x'.repeat(N),
    ' '.repeat(N) + `${E}[`.repeat(N / 2),
  ];
  const times = [];
  for (const t of inputs) {
    const t0 = performance.now();
    m.parseAnsi(t);
    m.stripAnsi(t);
    m.overwriteCR(t);
    m.parseMarker(t);
    m.renderAnsi(t, document.createElement('div'));
    times.push(performance.now() - t0);
  }
  return times;
}"""


def test_megabyte_hostile_lines_finish_quickly(ui_page):
    times = ui_page.evaluate(HOSTILE)
    assert len(times) == 13
    # linear work is well under a second each; a backtracking or quadratic parser takes minutes
    assert max(times) < 10_000, times
