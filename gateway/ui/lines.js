// What the log view knows about a deployment's lines, apart from the DOM: a sparse page
// cache addressed by line number (seq), a contiguous window for filtered views, the
// sections (steps and groups) with their fold state, and small formatting helpers.

import { api } from './api.js';
import { parseMarker, stripAnsi } from './ansi.js';

// === DOM and formatting helpers ===

/** `el('a', {href: '/x'}, 'text', child)`: text children become text nodes, never HTML. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === undefined || v === null) continue;
    e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export const fmtCount = (n) => String(n ?? 0);

/** "3m ago" for an RFC 3339 time. */
export function ago(iso) {
  if (!iso) return '';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** "1m 05s" between two RFC 3339 times (or until now). */
export function duration(from, to) {
  if (!from) return '';
  const ms = Math.max(0, (to ? Date.parse(to) : Date.now()) - Date.parse(from));
  return spell(ms);
}

export function spell(ms) {
  const s = Math.round(ms / 1000);
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (s < 60) return `${(ms / 1000).toFixed(s < 10 ? 1 : 0)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

export function statusBadge(status, exitCode) {
  const b = el('span', { class: `badge st-${status}` }, status);
  if (exitCode !== null && exitCode !== undefined && status !== 'running') b.title = `exit code ${exitCode}`;
  return b;
}

/** Local wall-clock time of a line, to the millisecond. */
export function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

// === Filters as the API spells them, applied to live lines too ===

const RANK = { trace: 0, debug: 1, info: 2, warn: 3, error: 4, fatal: 5 };

/** The view's filter: `level` ("" or a floor such as "warn") and `step` ("" or a name). */
export class Filter {
  constructor(level = '', step = '') {
    this.level = level;
    this.step = step;
  }
  get active() {
    return Boolean(this.level || this.step);
  }
  /** Query parameters for the history API. */
  params() {
    return { level: this.level ? this.level + '+' : undefined, step: this.step || undefined };
  }
  matches(line) {
    if (this.step && line.step !== this.step) return false;
    if (this.level) {
      const r = RANK[line.level];
      if (r === undefined || r < RANK[this.level]) return false;
    }
    return true;
  }
}

// === Lines ===

/** A line from the API, with what the view derives from it once. */
export function prepare(line) {
  line.marker = parseMarker(line.message);
  return line;
}

export const visibleText = (line) => stripAnsi(line.message);

// === The sparse cache of the whole log, by seq ===

export const PAGE = 256;
const MAX_PAGES = 600; // about 150k lines kept; pages far from the view are dropped

/** Lines by seq, loaded a page at a time through `GET .../logs?at=`. */
export class SeqCache {
  constructor(id, onLoad, onError, signal) {
    this.id = id;
    this.signal = signal;
    this.retryAt = new Map(); // page number -> time before which a failed page is not asked again
    this.pages = new Map(); // page number -> Array(PAGE) of lines (holes: not stored)
    this.loading = new Set();
    this.complete = new Set(); // pages read whole from the server (live lines add to them)
    this.used = new Map(); // page number -> last use (a counter)
    this.clock = 0;
    this.onLoad = onLoad;
    this.onError = onError;
    this.first = 1;
    this.last = 0; // highest seq known to exist
    this.markers = new Map(); // seq -> line, the group markers seen
  }

  /** Stores `line` at its place in page array `arr`. */
  place(arr, line) {
    arr[(line.seq - 1) % PAGE] = prepare(line);
    if (line.marker) this.markers.set(line.seq, line);
    if (line.seq > this.last) this.last = line.seq;
  }

  get(seq) {
    const p = this.pages.get(Math.floor((seq - 1) / PAGE));
    return p ? p[(seq - 1) % PAGE] : undefined;
  }

  /** Whether seq's page was read whole (a hole there is a line that is not stored). */
  has(seq) {
    return this.complete.has(Math.floor((seq - 1) / PAGE));
  }

  put(line) {
    const n = Math.floor((line.seq - 1) / PAGE);
    let p = this.pages.get(n);
    if (!p) {
      p = new Array(PAGE);
      this.pages.set(n, p);
    }
    this.place(p, line);
  }

  /** Loads every page of seqs `from..=to` not here yet; `onLoad` is called per page. */
  ensure(from, to) {
    from = Math.max(from, this.first);
    to = Math.min(to, this.last);
    if (to < from) return;
    const touch = ++this.clock;
    for (let n = Math.floor((from - 1) / PAGE); n <= Math.floor((to - 1) / PAGE); n++) {
      this.used.set(n, touch);
      if (this.complete.has(n) || this.loading.has(n)) continue;
      if ((this.retryAt.get(n) || 0) > Date.now()) continue;
      this.load(n);
    }
    this.evict();
  }

  async load(n) {
    this.loading.add(n);
    try {
      const page = await api(`/v1/deployments/${encodeURIComponent(this.id)}/logs`, {
        params: { at: n * PAGE + 1, limit: PAGE }, signal: this.signal,
      });
      const arr = this.pages.get(n) || new Array(PAGE);
      for (const l of page.lines) {
        if (Math.floor((l.seq - 1) / PAGE) === n) this.place(arr, l);
      }
      this.pages.set(n, arr);
      this.complete.add(n);
      this.retryAt.delete(n);
      this.onLoad(n, arr);
    } catch (err) {
      if (err.name === 'AbortError') return;
      this.retryAt.set(n, Date.now() + (err.retryAfter ? err.retryAfter * 1000 : 2000));
      this.onError(err);
    } finally {
      this.loading.delete(n);
    }
  }

  evict() {
    if (this.pages.size <= MAX_PAGES) return;
    const tail = Math.floor((this.last - 1) / PAGE);
    const order = [...this.pages.keys()].filter((n) => n !== tail)
      .sort((a, b) => (this.used.get(a) || 0) - (this.used.get(b) || 0));
    for (const n of order.slice(0, this.pages.size - MAX_PAGES)) {
      for (const l of this.pages.get(n)) if (l && l.marker) this.markers.delete(l.seq);
      this.pages.delete(n);
      this.complete.delete(n);
      this.used.delete(n);
    }
  }

}

// === A filtered view: a contiguous window of matching lines, grown at either end ===

const WINDOW_PAGE = 500;
const WINDOW_MAX = 100_000; // lines kept; the end away from the reader is dropped past it
const HELD_MAX = 50_000; // live lines held while a page is in flight

/**
 * Matching lines in seq order, grown at either end by the pages' own `next_cursor`
 * (a page may stop short of `limit` where the server's scan budget ends: only
 * `complete`, or an empty page whose cursor did not move, says an end is reached).
 */
export class FilteredWindow {
  constructor(id, filter, onChange, onError, signal) {
    this.id = id;
    this.filter = filter;
    this.lines = [];
    this.startComplete = false; // nothing matching before lines[0]
    this.endComplete = false; // nothing matching after the last line, up to the live end
    this.backCursor = null;
    this.fwdCursor = null;
    this.busy = { back: false, fwd: false };
    this.opening = false;
    this.held = []; // live lines that arrived while a page was in flight
    this.onChange = onChange; // (lines added before the old first) => void
    this.onError = onError;
    this.signal = signal;
    this.gen = 0;
  }

  async page(params) {
    return api(`/v1/deployments/${encodeURIComponent(this.id)}/logs`, {
      params: { ...this.filter.params(), limit: WINDOW_PAGE, ...params }, signal: this.signal,
    });
  }

  /** Opens the window at the end of the log, or around line `seq`. */
  async open(seq) {
    const gen = ++this.gen;
    this.busy = { back: false, fwd: false };
    this.opening = true;
    this.endComplete = false;
    this.held = [];
    try {
      if (seq) {
        const [before, after] = await Promise.all([
          this.page({ at: seq, direction: 'backward' }),
          this.page({ at: seq + 1 }),
        ]);
        if (gen !== this.gen) return;
        this.lines = before.lines.reverse().concat(after.lines).map(prepare);
        this.startComplete = before.complete;
        this.backCursor = before.next_cursor;
        this.fwdCursor = after.next_cursor;
        this.endComplete = after.complete;
      } else {
        const last = await this.page({ direction: 'backward' });
        if (gen !== this.gen) return;
        this.lines = last.lines.reverse().map(prepare);
        this.startComplete = last.complete;
        this.backCursor = last.next_cursor;
        this.endComplete = true;
      }
      this.opening = false;
      this.release();
      this.onChange(0);
    } catch (err) {
      if (gen === this.gen) this.opening = false;
      this.onError(err);
    }
  }

  /** Grows the window when the view comes within `margin` lines of one of its ends. */
  ensure(i0, i1, margin = 100) {
    if (this.opening) return;
    if (i0 < margin && !this.startComplete && !this.busy.back && this.backCursor) this.grow(true);
    if (i1 > this.lines.length - margin && !this.endComplete && !this.busy.fwd && this.fwdCursor) this.grow(false);
  }

  async grow(back) {
    const gen = this.gen;
    const key = back ? 'back' : 'fwd';
    this.busy[key] = true;
    try {
      const from = back ? this.backCursor : this.fwdCursor;
      const p = await this.page({ cursor: from, direction: back ? 'backward' : 'forward' });
      if (gen !== this.gen) return;
      const got = p.lines.map(prepare);
      const stuck = !got.length && p.next_cursor === from;
      if (back) {
        const first = this.lines.length ? this.lines[0].seq : Infinity;
        const add = got.reverse().filter((l) => l.seq < first);
        this.lines = add.concat(this.lines);
        this.backCursor = p.next_cursor;
        this.startComplete = p.complete || stuck;
        this.trim(false);
        this.onChange(add.length);
      } else {
        const last = this.lines.length ? this.lines[this.lines.length - 1].seq : 0;
        this.lines.push(...got.filter((l) => l.seq > last));
        this.fwdCursor = p.next_cursor;
        this.endComplete = p.complete || stuck;
        this.release();
        this.trim(true);
        this.onChange(0);
      }
    } catch (err) {
      this.onError(err);
    } finally {
      if (gen === this.gen) this.busy[key] = false;
    }
  }

  /** Appends the live lines held while the end was being read, once it is reached. */
  release() {
    if (!this.endComplete) return;
    const last = this.lines.length ? this.lines[this.lines.length - 1].seq : 0;
    for (const l of this.held) if (l.seq > last) this.lines.push(l);
    this.held = [];
  }

  /** Keeps at most WINDOW_MAX lines, dropping the end away from where it grew. */
  trim(grewAtEnd) {
    const extra = this.lines.length - WINDOW_MAX;
    if (extra <= 0) return;
    if (grewAtEnd) {
      this.lines.splice(0, extra);
      this.startComplete = false;
      this.backCursor = this.lines[0].cursor;
      this.onChange(-extra);
    } else {
      this.lines.length = WINDOW_MAX;
      this.endComplete = false;
      this.fwdCursor = this.lines[WINDOW_MAX - 1].cursor;
    }
  }

  /** A live line: kept when it matches and the window reaches the live end. */
  live(line) {
    if (!this.filter.matches(line)) return false;
    if (this.opening || (this.busy.fwd && !this.endComplete)) {
      if (this.held.length < HELD_MAX) this.held.push(prepare(line));
      return false;
    }
    if (!this.endComplete) return false;
    const n = this.lines.length;
    if (n && this.lines[n - 1].seq >= line.seq) return false;
    this.lines.push(prepare(line));
    this.trim(true);
    return true;
  }

  /** Index of the first line with seq >= `seq` (binary search). */
  indexOf(seq) {
    let lo = 0;
    let hi = this.lines.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.lines[mid].seq < seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

// === Sections: steps (from the catalog) and groups (from markers), and folding ===

/**
 * The sections of the log and which are folded, as hidden seq ranges, with the mapping
 * between a visible row index and a seq that folding implies.
 */
export class Sections {
  constructor() {
    this.steps = []; // [{name, first, last, failed, firstTs, lastTs}] in order
    this.sequential = true; // steps do not interleave: each step is one seq range
    this.groups = new Map(); // start seq -> {start, end, title, flavor, failed, open, defaultOpen, ts0, ts1}
    this.userOpen = new Map(); // section key -> open, when the user toggled it
    this.hidden = []; // sorted disjoint [a, b] seq ranges not shown
    this.hiddenTotal = 0;
  }

  stepAt(seq) {
    for (const s of this.steps) if (s.first === seq) return s;
    return null;
  }

  isOpen(key, dflt) {
    return this.userOpen.has(key) ? this.userOpen.get(key) : dflt;
  }

  /** Recomputes the hidden ranges from the steps, groups and fold states. */
  fold(stepDefault) {
    const ranges = [];
    if (this.sequential && this.steps.length > 1) {
      for (const s of this.steps) {
        if (s.last > s.first && !this.isOpen('step:' + s.name, stepDefault(s))) ranges.push([s.first + 1, s.last]);
      }
    }
    for (const g of this.groups.values()) {
      if (g.end !== null && g.end > g.start && !this.isOpen('group:' + g.start, g.defaultOpen)) ranges.push([g.start + 1, g.end]);
    }
    ranges.sort((a, b) => a[0] - b[0]);
    const merged = [];
    for (const r of ranges) {
      const top = merged[merged.length - 1];
      if (top && r[0] <= top[1] + 1) top[1] = Math.max(top[1], r[1]);
      else merged.push([...r]);
    }
    this.hidden = merged;
    this.hiddenTotal = merged.reduce((n, [a, b]) => n + b - a + 1, 0);
  }

  /** The seq shown at visible index `v` (0-based) when the log starts at `first`. */
  seqAt(v, first) {
    let seq = first + v;
    for (const [a, b] of this.hidden) {
      if (seq >= a) seq += b - a + 1;
      else break;
    }
    return seq;
  }

  /** The visible index of `seq` (a hidden seq maps to its section's header row). */
  indexOf(seq, first) {
    let v = seq - first;
    for (const [a, b] of this.hidden) {
      if (seq > b) v -= b - a + 1;
      else if (seq >= a) return a - 1 - first - this.hiddenBefore(a);
      else break;
    }
    return v;
  }

  hiddenBefore(seq) {
    let n = 0;
    for (const [a, b] of this.hidden) {
      if (b < seq) n += b - a + 1;
      else break;
    }
    return n;
  }

  /** The sections holding `seq` (so a jump to it can open them). */
  containing(seq) {
    const keys = [];
    if (this.sequential && this.steps.length > 1) {
      for (const s of this.steps) if (seq > s.first && seq <= s.last) keys.push('step:' + s.name);
    }
    for (const g of this.groups.values()) {
      if (g.end !== null && seq > g.start && seq <= g.end) keys.push('group:' + g.start);
    }
    return keys;
  }

  /**
   * Pairs the group markers found in `cache` into groups. A start is paired with its end
   * only when every line between them is loaded (a marker may hide in an unloaded page).
   * `visible(start, end)` says whether the group is on screen now: a group is never
   * folded under the reader's eyes, so one discovered there opens.
   */
  discover(cache, visible) {
    const marks = [];
    for (const l of cache.markers.values()) if (cache.has(l.seq)) marks.push(l);
    marks.sort((a, b) => a.seq - b.seq);
    let changed = false;
    const stack = [];
    for (const l of marks) {
      const m = l.marker;
      if (m.kind === 'start') {
        stack.push(l);
        continue;
      }
      let i = stack.length - 1;
      if (m.flavor === 'gitlab') while (i >= 0 && stack[i].marker.name !== m.name) i--;
      else while (i >= 0 && stack[i].marker.flavor !== 'github') i--;
      if (i < 0) continue;
      const start = stack[i];
      stack.length = i;
      if (!this.contiguous(cache, start.seq, l.seq)) continue;
      const g = this.groups.get(start.seq);
      if (g && g.end !== null) continue;
      let failed = false;
      for (let s = start.seq + 1; s < l.seq; s++) {
        const x = cache.get(s);
        if (x && (x.level === 'error' || x.level === 'fatal')) {
          failed = true;
          break;
        }
      }
      const dfl = failed || visible(start.seq, l.seq) ||
        (start.marker.flavor === 'gitlab' && !start.marker.collapsed);
      this.groups.set(start.seq, {
        start: start.seq, end: l.seq, title: start.marker.title || start.marker.name || 'group',
        flavor: start.marker.flavor, failed, defaultOpen: dfl,
        ms: groupMillis(start, l),
      });
      changed = true;
    }
    // Starts with no end yet (a live group, or its end not loaded): shown open.
    for (const s of stack) {
      if (!this.groups.has(s.seq)) {
        this.groups.set(s.seq, {
          start: s.seq, end: null, title: s.marker.title || s.marker.name || 'group',
          flavor: s.marker.flavor, failed: false, defaultOpen: true, ms: null,
        });
        changed = true;
      }
    }
    return changed;
  }

  contiguous(cache, a, b) {
    for (let n = Math.floor((a - 1) / PAGE); n <= Math.floor((b - 1) / PAGE); n++) {
      if (!cache.complete.has(n)) return false;
    }
    return true;
  }
}

/** A group's duration: GitLab's markers carry Unix seconds; otherwise the lines' times. */
function groupMillis(start, end) {
  if (start.marker.ts && end.marker.ts) return (end.marker.ts - start.marker.ts) * 1000;
  const a = Date.parse(start.ts);
  const b = Date.parse(end.ts);
  return Number.isFinite(a) && Number.isFinite(b) ? b - a : null;
}
