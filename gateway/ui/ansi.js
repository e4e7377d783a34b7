// ANSI terminal output -> styled spans, and CI section markers (GitHub Actions, GitLab).
//
// Everything here is a single left-to-right scan over the input with no regex on
// unbounded text and no recursion, so a hostile line (say 1 MB of "\x1b[") costs linear
// time and constant stack. Text only ever reaches the DOM through createTextNode /
// textContent, and colours through the CSSOM (el.style), which a strict CSP allows.

// The 16 base colours. Must match --ansi-0 .. --ansi-15 in ansi.css.
const BASE16 = [
  '#484f58', '#f47067', '#3fb950', '#d29922', '#539bf5', '#c38aff', '#39c5cf', '#b1bac4',
  '#6e7681', '#ff938a', '#6bdd7c', '#eac55f', '#7cb8ff', '#dcb0ff', '#6fe0e8', '#f0f6fc',
];
const CUBE = [0, 95, 135, 175, 215, 255];

/** xterm 256-colour palette entry as "rgb(r,g,b)"; null when n is not an integer 0..255. */
export function palette256(n) {
  if (!Number.isInteger(n) || n < 0 || n > 255) return null;
  let r, g, b;
  if (n < 16) {
    const v = parseInt(BASE16[n].slice(1), 16);
    [r, g, b] = [v >> 16, (v >> 8) & 255, v & 255];
  } else if (n < 232) {
    n -= 16;
    [r, g, b] = [CUBE[Math.floor(n / 36)], CUBE[Math.floor(n / 6) % 6], CUBE[n % 6]];
  } else {
    r = g = b = 8 + 10 * (n - 232);
  }
  return `rgb(${r},${g},${b})`;
}

// ---------------------------------------------------------------------------------------
// Scanner

const ESC = 0x1b;

// Text characters: printable, plus TAB. C0 controls, DEL and C1 controls are dropped.
function isText(c) {
  return (c >= 0x20 && c !== 0x7f && (c < 0x80 || c >= 0xa0)) || c === 9;
}

// Skips the escape sequence starting with the ESC at `i` (never past `end`) and returns
// the index after it. Calls onSgr(params) for a plain SGR sequence `ESC [ params m`.
function skipEscape(s, i, end, onSgr) {
  const next = i + 1 < end ? s.charCodeAt(i + 1) : -1;
  let j = i + 2, c;
  if (next === 0x5b) { // '[': CSI = params 0x30-0x3F, intermediates 0x20-0x2F, final 0x40-0x7E
    const p = j;
    while (j < end && (c = s.charCodeAt(j)) >= 0x30 && c <= 0x3f) j++;
    const pe = j;
    while (j < end && (c = s.charCodeAt(j)) >= 0x20 && c <= 0x2f) j++;
    if (j >= end) return end; // unterminated: dropped
    c = s.charCodeAt(j);
    if (c < 0x40 || c > 0x7e) return j; // malformed: drop what was read, rescan from j
    // 'm' with no intermediates and no private marker ('<=>?', e.g. xterm's ESC[>4;2m)
    if (c === 0x6d && pe === j && onSgr && !(pe > p && s.charCodeAt(p) >= 0x3c)) {
      onSgr(s.slice(p, pe));
    }
    return j + 1;
  }
  // OSC ']' and the other string sequences (DCS 'P', SOS 'X', PM '^', APC '_'): up to BEL,
  // CAN, SUB, ST (C1) or the next ESC (ESC \ is ST; any other ESC aborts the string and
  // starts a new sequence, as terminals do). Unterminated: dropped to the end.
  if (next === 0x5d || next === 0x50 || next === 0x58 || next === 0x5e || next === 0x5f) {
    for (; j < end; j++) {
      c = s.charCodeAt(j);
      if (c === ESC) return j;
      if (c === 7 || c === 0x18 || c === 0x1a || c === 0x9c) return j + 1;
    }
    return end;
  }
  // Other escapes: ESC, intermediates 0x20-0x2F, one final 0x30-0x7E (ESC 7, ESC ( B ...).
  // Anything else (a lone ESC) drops just what was read.
  for (j = i + 1; j < end && (c = s.charCodeAt(j)) >= 0x20 && c <= 0x2f; j++);
  return j < end && (c = s.charCodeAt(j)) >= 0x30 && c <= 0x7e ? j + 1 : j;
}

// Scans s[begin, end): onText(chunk) for each run of visible text (never empty),
// onSgr(params) for each SGR sequence (either may be null).
function scan(s, begin, end, onText, onSgr) {
  let run = begin;
  for (let i = begin; i < end;) {
    const c = s.charCodeAt(i);
    if (isText(c)) { i++; continue; }
    if (run < i && onText) onText(s.slice(run, i));
    i = c === ESC ? skipEscape(s, i, end, onSgr) : i + 1;
    run = i;
  }
  if (run < end && onText) onText(s.slice(run, end));
}

// ---------------------------------------------------------------------------------------
// SGR

const plainStyle = () => ({
  fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false, strike: false,
});

// A parameter as a number: '' is 0, anything but digits (or a missing one) is -1.
function num(p) {
  if (p === undefined) return -1;
  if (p === '') return 0;
  for (let k = 0; k < p.length; k++) {
    const c = p.charCodeAt(k);
    if (c < 0x30 || c > 0x39) return -1;
  }
  return p.length > 9 ? -1 : +p; // longer than any valid value
}

const byte = (n) => n >= 0 && n <= 255;
const index = (p) => (byte(num(p)) ? num(p) : null);
function rgb(r, g, b) {
  [r, g, b] = [num(r), num(g), num(b)];
  return byte(r) && byte(g) && byte(b) ? '#' + ((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1) : null;
}

function setColour(st, code, colour) {
  if (colour === null) return; // invalid: ignored
  if (code === 38) st.fg = colour;
  else if (code === 48) st.bg = colour;
  // 58 (underline colour) is parsed only so its arguments are not read as attributes
}

// Applies the parameter string of one SGR sequence to the style `st`.
function applySgr(st, params) {
  const ps = params.split(';');
  for (let k = 0; k < ps.length; k++) {
    if (ps[k].includes(':')) { // ITU T.416 form: 38:5:n, 38:2::r:g:b, 38:2:r:g:b, 4:x
      const sub = ps[k].split(':');
      const code = num(sub[0]), sel = num(sub[1]);
      if (code === 38 || code === 48 || code === 58) {
        if (sel === 5) setColour(st, code, index(sub[2]));
        // 38:2:<colour space id>:r:g:b, or without the id slot
        else if (sel === 2) setColour(st, code, sub.length >= 6 ? rgb(sub[3], sub[4], sub[5]) : rgb(sub[2], sub[3], sub[4]));
      } else if (code === 4 && sel >= 0 && sel <= 5) {
        st.underline = sel > 0; // 4:0 off; 4:1..4:5 single, double, curly, dotted, dashed
      }
      continue;
    }
    const n = num(ps[k]);
    if (n === 38 || n === 48 || n === 58) {
      const sel = num(ps[k + 1]);
      if (sel === 5) { setColour(st, n, index(ps[k + 2])); k += 2; }
      else if (sel === 2) { setColour(st, n, rgb(ps[k + 2], ps[k + 3], ps[k + 4])); k += 4; }
      else break; // unknown colour form: the rest cannot be told apart from its arguments
    } else if (n === 0) Object.assign(st, plainStyle());
    else if (n === 1) st.bold = true;
    else if (n === 2) st.dim = true;
    else if (n === 3) st.italic = true;
    else if (n === 4) st.underline = true;
    else if (n === 7) st.inverse = true;
    else if (n === 9) st.strike = true;
    else if (n === 21 || n === 22) st.bold = st.dim = false;
    else if (n === 23) st.italic = false;
    else if (n === 24) st.underline = false;
    else if (n === 27) st.inverse = false;
    else if (n === 29) st.strike = false;
    else if (n >= 30 && n <= 37) st.fg = n - 30;
    else if (n === 39) st.fg = null;
    else if (n >= 40 && n <= 47) st.bg = n - 40;
    else if (n === 49) st.bg = null;
    else if (n >= 90 && n <= 97) st.fg = n - 82;
    else if (n >= 100 && n <= 107) st.bg = n - 92;
    // anything else (blink, conceal, fonts, overline, invalid) is ignored
  }
}

const KEYS = Object.keys(plainStyle());
const sameStyle = (a, b) => KEYS.every((key) => a[key] === b[key]);
const PLAIN = plainStyle();

// Parses s[begin, end) with the style `st` (updated in place), appending merged spans to
// `spans`; with spans null only the style is followed.
function parseInto(s, begin, end, st, spans) {
  const onText = spans && ((text) => {
    const last = spans[spans.length - 1];
    if (last && sameStyle(last, st)) last.text += text;
    else spans.push({ text, ...st });
  });
  scan(s, begin, end, onText, (params) => applySgr(st, params));
}

/**
 * Styled spans of `text`: {text, fg, bg, bold, dim, italic, underline, inverse, strike}, fg/bg
 * null, a palette index 0..255 or "#rrggbb". No CR overwrite here (CR is dropped like any
 * control); renderAnsi and stripAnsi apply it first.
 */
export function parseAnsi(text) {
  const spans = [];
  parseInto(text, 0, text.length, plainStyle(), spans);
  return spans;
}

// ---------------------------------------------------------------------------------------
// Carriage returns

function hasVisible(s, begin, end) {
  let seen = false;
  scan(s, begin, end, () => { seen = true; }, null);
  return seen;
}

// [begin, end) of the segment a terminal would show: one trailing CR is dropped, then
// the last CR-separated segment with visible text; [end, end) when there is none.
function crSegment(s) {
  let end = s.length;
  if (end > 0 && s.charCodeAt(end - 1) === 13) end--;
  // lastIndexOf treats a negative fromIndex as 0, hence the guards
  let cr = end > 0 ? s.lastIndexOf('\r', end - 1) : -1;
  if (cr < 0) return [0, end];
  for (let segEnd = end; ; segEnd = cr, cr = cr > 0 ? s.lastIndexOf('\r', cr - 1) : -1) {
    if (hasVisible(s, cr + 1, segEnd)) return [cr + 1, segEnd];
    if (cr < 0) return [end, end];
  }
}

/** The CR-overwritten form of a line: "10%\r50%\r100%" -> "100%" (escape codes kept). */
export function overwriteCR(text) {
  const [begin, end] = crSegment(text);
  return text.slice(begin, end);
}

/** The visible text of a line, as a user would copy it. */
export function stripAnsi(text) {
  const [begin, end] = crSegment(text);
  const parts = [];
  scan(text, begin, end, (t) => parts.push(t), null);
  return parts.join('');
}

// ---------------------------------------------------------------------------------------
// DOM

function setFg(el, cls, c) {
  if (c === null) cls.push('fg-inv'); // only reached for inverse: theme background
  else if (typeof c === 'string') el.style.color = c;
  else if (c < 16) cls.push(`fg-${c}`);
  else el.style.color = palette256(c);
}

function setBg(el, cls, c) {
  if (c === null) cls.push('bg-inv'); // only reached for inverse: theme foreground
  else if (typeof c === 'string') el.style.backgroundColor = c;
  else if (c < 16) cls.push(`bg-${c}`);
  else el.style.backgroundColor = palette256(c);
}

/**
 * Appends the visible text of overwriteCR(text) to `parent`: a text node when unstyled,
 * else a <span> with classes (fg-N, bg-N, fg-inv, bg-inv, b, d, i, u, s) and CSSOM colours.
 * The style set by segments overwritten by a CR carries over, as in a terminal.
 */
export function renderAnsi(text, parent) {
  const doc = parent.ownerDocument;
  const [begin, end] = crSegment(text);
  const st = plainStyle();
  parseInto(text, 0, begin, st, null);
  const spans = [];
  parseInto(text, begin, end, st, spans);
  for (const sp of spans) {
    if (sameStyle(sp, PLAIN)) {
      parent.appendChild(doc.createTextNode(sp.text));
      continue;
    }
    const el = doc.createElement('span');
    const cls = [];
    let { fg, bg } = sp;
    if (sp.inverse) [fg, bg] = [bg, fg];
    if (fg !== null || sp.inverse) setFg(el, cls, fg);
    if (bg !== null || sp.inverse) setBg(el, cls, bg);
    if (sp.bold) cls.push('b');
    if (sp.dim) cls.push('d');
    if (sp.italic) cls.push('i');
    if (sp.underline) cls.push('u');
    if (sp.strike) cls.push('s');
    if (cls.length) el.className = cls.join(' ');
    el.textContent = sp.text;
    parent.appendChild(el);
  }
}

// ---------------------------------------------------------------------------------------
// Section markers

// GitLab section name characters: [A-Za-z0-9_.-]
function isNameChar(c) {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) ||
    c === 0x5f || c === 0x2e || c === 0x2d;
}

const github = (kind, rest) => ({
  kind, flavor: 'github', name: null,
  // GitHub shows groups collapsed
  title: kind === 'start' ? stripAnsi(rest).trim() : null, ts: null, collapsed: kind === 'start',
});

// `section_start:<ts>:<name>[k=v,...]\r<header>` / `section_end:<ts>:<name>\r...`, the
// text after "section_" starting at i.
function gitlab(s, i) {
  const kind = s.startsWith('start:', i) ? 'start' : s.startsWith('end:', i) ? 'end' : null;
  if (!kind) return null;
  let j = i + kind.length + 1;
  const tsAt = j;
  while (j < s.length && s.charCodeAt(j) >= 0x30 && s.charCodeAt(j) <= 0x39) j++;
  if (j === tsAt || s.charCodeAt(j) !== 0x3a) return null;
  const ts = Number(s.slice(tsAt, j));
  const nameAt = ++j;
  while (j < s.length && isNameChar(s.charCodeAt(j))) j++;
  if (j === nameAt) return null;
  const name = s.slice(nameAt, j);
  let collapsed = false;
  if (s.charCodeAt(j) === 0x5b) { // '[' options ']'
    const close = s.indexOf(']', j);
    if (close < 0) return null;
    for (const opt of s.slice(j + 1, close).split(',')) {
      const [key, value] = opt.split('=');
      if (key.trim() === 'collapsed') collapsed = (value || '').trim() === 'true';
    }
    j = close + 1;
  }
  // the marker ends the line or is followed by CR (which hides it) or an escape
  if (j < s.length && s.charCodeAt(j) !== 13 && s.charCodeAt(j) !== ESC) return null;
  if (kind === 'end') return { kind, flavor: 'gitlab', name, title: null, ts, collapsed: false };
  return { kind, flavor: 'gitlab', name, title: stripAnsi(s.slice(j)).trim() || name, ts, collapsed };
}

/**
 * A section marker at the start of a log message (leading escape codes and whitespace
 * ignored), or null: {kind: 'start'|'end', flavor: 'github'|'gitlab', name, title, ts,
 * collapsed}. GitHub markers have name and ts null; end markers have title null.
 */
export function parseMarker(message) {
  const s = message, n = s.length;
  let i = 0;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === ESC) i = skipEscape(s, i, n, null);
    else if (c <= 0x20) i++;
    else break;
  }
  const c = s.charCodeAt(i);
  if (c === 0x3a) { // ':'
    if (s.startsWith('::group::', i)) return github('start', s.slice(i + 9));
    if (s.startsWith('::endgroup::', i)) return github('end');
  } else if (c === 0x23) { // '#'
    if (s.startsWith('##[group]', i)) return github('start', s.slice(i + 9));
    if (s.startsWith('##[endgroup]', i)) return github('end');
  } else if (c === 0x73 && s.startsWith('section_', i)) {
    return gitlab(s, i + 8);
  }
  return null;
}
