// A deployment's log: virtualized rows (only what is on screen, plus a margin, is in the
// DOM, whatever the log's length), opened at its end and following it live, history
// loaded by line number as the reader scrolls anywhere, steps and groups as folding
// sections, server-side search, deep links to lines, filters, export and copy.
//
// Scrolling maps the scroll position to a row index, not to pixels, so rows may have
// any height (wrapped lines, step headers) and a log of millions of lines fits in the
// browser's largest element: past MAX_PX the scroll bar is scaled.

import { api, sse, sleep, download } from './api.js';
import { renderAnsi, stripAnsi } from './ansi.js';
import {
  el, clock, spell, duration, statusBadge, Filter, SeqCache, FilteredWindow, Sections, PAGE,
} from './lines.js';

const MAX_PX = 8_000_000;
const MARGIN = 12; // rows rendered beyond each edge of the viewport
const SEARCH_CAP = 10_000; // matches counted before the count says "10000+"

export class LogView {
  constructor(root, id, ctx) {
    this.id = id;
    this.ctx = ctx;
    this.path = location.pathname;
    this.abort = new AbortController();
    this.info = null;
    this.completed = null; // {status, exit_code} once ended
    this.filter = new Filter();
    this.cache = new SeqCache(id, () => this.loaded(), (e) => this.loadFailed(e), this.abort.signal);
    this.window = null; // a FilteredWindow while a filter is on
    this.sections = new Sections();
    this.following = true;
    this.newLines = 0;
    this.highlight = null; // [from, to] seqs
    this.search = { gen: 0, re: null, seqs: [], at: -1, done: true, cursor: null };
    this.rowCache = new Map(); // seq -> {key, el}
    this.incoming = [];
    this.expectScroll = null;
    ctx.crumbs([{ text: 'deployments', href: '/' }, { text: id }]);
    this.build(root);
    this.open();
  }

  stop() {
    this.abort.abort();
    this.stopped = true;
    document.removeEventListener('keydown', this.onKey);
    if (this.resizeObs) this.resizeObs.disconnect();
  }

  // === DOM ===

  build(root) {
    const check = (id, label, checked = false) => {
      const input = el('input', { type: 'checkbox', id, checked });
      return [input, el('label', { for: id, class: 'toggle' }, input, label)];
    };
    this.statusEl = el('span', { id: 'status', class: 'badge' }, 'loading');
    this.metaEl = el('span', { class: 'meta' });
    this.liveEl = el('span', { id: 'live', class: 'feed' });
    this.searchIn = el('input', { id: 'search', type: 'search', placeholder: 'Search the whole log ( / )', 'aria-label': 'Search the log; Enter to search, /regex/ for a regular expression', spellcheck: 'false' });
    this.countEl = el('span', { id: 'search-count', 'aria-live': 'polite' });
    this.prevBtn = el('button', { type: 'button', id: 'search-prev', title: 'Previous match (N)', 'aria-label': 'Previous match' }, '↑');
    this.nextBtn = el('button', { type: 'button', id: 'search-next', title: 'Next match (n)', 'aria-label': 'Next match' }, '↓');
    this.levelSel = el('select', { id: 'level', 'aria-label': 'Level' });
    for (const [v, t] of [['', 'All levels'], ['error', 'Errors'], ['warn', 'Warnings+'], ['info', 'Info+'], ['debug', 'Debug+']]) {
      this.levelSel.append(el('option', { value: v === 'error' ? 'error' : v ? v + '+' : '' }, t));
    }
    this.stepSel = el('select', { id: 'step', 'aria-label': 'Step' }, el('option', { value: '' }, 'All steps'));
    const [ts, tsLabel] = check('ts', 'Timestamps');
    const [wrap, wrapLabel] = check('wrap', 'Wrap');
    this.tsIn = ts;
    this.wrapIn = wrap;
    this.formatSel = el('select', { id: 'format', 'aria-label': 'Download format' },
      el('option', { value: 'text' }, 'text'), el('option', { value: 'ndjson' }, 'ndjson'), el('option', { value: 'csv' }, 'csv'));
    this.downloadBtn = el('button', { type: 'button', id: 'download', title: 'Download the whole log' }, 'Download');
    this.copyBtn = el('button', { type: 'button', id: 'copy', title: 'Copy the highlighted lines (or the selection) as text' }, 'Copy');
    this.followBtn = el('button', { type: 'button', id: 'follow', hidden: true });
    this.endEl = el('div', { id: 'end', hidden: true, role: 'status' });
    this.waitEl = el('div', { id: 'waiting', hidden: true, role: 'status' });
    this.toast = el('div', { id: 'toast', role: 'status', hidden: true });

    this.sizer = el('div', { class: 'sizer' });
    this.rowsEl = el('div', { class: 'rows' });
    this.sizer.append(this.rowsEl);
    this.scroller = el('div', { id: 'log', role: 'log', tabindex: '0', 'aria-label': `Log of ${this.id}` }, this.sizer);

    root.append(
      el('div', { class: 'loghead' },
        el('h1', {}, this.id), this.statusEl, this.metaEl, el('span', { class: 'spacer' }), this.liveEl),
      el('div', { class: 'toolbar' },
        el('div', { class: 'search' }, this.searchIn, this.countEl, this.prevBtn, this.nextBtn),
        this.levelSel, this.stepSel, tsLabel, wrapLabel, el('span', { class: 'spacer' }),
        this.copyBtn, this.formatSel, this.downloadBtn),
      this.waitEl,
      el('div', { class: 'logwrap' }, this.scroller, this.followBtn),
      this.endEl, this.toast);

    this.scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.resizeObs = new ResizeObserver(() => this.schedule());
    this.resizeObs.observe(this.scroller);
    this.followBtn.addEventListener('click', () => this.toBottom());
    this.searchIn.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') {
        e.preventDefault();
        if (this.search.text === this.searchIn.value && this.search.seqs.length) this.step(e.shiftKey ? -1 : 1);
        else this.runSearch(this.searchIn.value);
      } else if (e.key === 'Escape') {
        this.searchIn.blur();
        this.scroller.focus();
      }
    });
    this.nextBtn.addEventListener('click', () => this.step(1));
    this.prevBtn.addEventListener('click', () => this.step(-1));
    this.levelSel.addEventListener('change', () => this.setFilter());
    this.stepSel.addEventListener('change', () => this.setFilter());
    ts.addEventListener('change', () => this.restyle());
    wrap.addEventListener('change', () => this.restyle());
    this.downloadBtn.addEventListener('click', () => this.download());
    this.copyBtn.addEventListener('click', () => this.copy());
    this.rowsEl.addEventListener('click', (e) => this.onRowClick(e));
    this.onKey = (e) => this.key(e);
    document.addEventListener('keydown', this.onKey);
  }

  restyle() {
    this.scroller.classList.toggle('wrap', this.wrapIn.checked);
    this.rowCache.clear();
    this.schedule();
  }

  // === Loading ===

  async open() {
    try {
      this.info = await api(`/v1/deployments/${encodeURIComponent(this.id)}`, { signal: this.abort.signal });
    } catch (err) {
      if (err.status !== 404) return this.ctx.fail(err);
      // Not there (yet, or not for this token): say so, and wait for a first line, as a
      // queued pipeline's link should; the server never tells a foreign id apart.
      this.ctx.fail(err);
      this.waitEl.textContent = 'Waiting for this deployment\'s first line…';
      this.waitEl.hidden = false;
      this.live(null);
      return;
    }
    this.describe();
    const target = this.hashLines();
    try {
      const tail = await api(`/v1/deployments/${encodeURIComponent(this.id)}/logs`, {
        params: { direction: 'backward', limit: PAGE }, signal: this.abort.signal,
      });
      this.cache.first = Math.max(1, this.info.first_seq || 1);
      for (const l of tail.lines) this.cache.put(l);
      this.cache.last = Math.max(this.cache.last, this.info.last_seq || 0);
      this.tailCursor = tail.lines.length ? tail.lines[0].cursor : null;
    } catch (err) {
      return this.ctx.fail(err);
    }
    this.loadSteps();
    this.refold();
    if (target) {
      this.highlight = target;
      this.jump(target[0]);
    } else {
      this.toBottom();
    }
    if (this.info.status === 'running') this.live(this.tailCursor);
    else this.ended({ status: this.info.status, exit_code: this.info.exit_code });
  }

  describe() {
    const d = this.info;
    const status = this.completed ? this.completed.status : d.status;
    this.statusEl.textContent = status;
    this.statusEl.className = `badge st-${status}`;
    this.metaEl.textContent = `${this.lastSeq().toLocaleString('en-US')} lines · ${d.steps.length} step${d.steps.length === 1 ? '' : 's'} · ${duration(d.created_at, d.completed_at)}`;
    const have = new Set([...this.stepSel.options].map((o) => o.value));
    for (const s of d.steps) if (!have.has(s)) this.stepSel.append(el('option', { value: s }, s));
  }

  lastSeq() {
    return Math.max(this.cache.last, this.info ? this.info.last_seq || 0 : 0);
  }

  /**
   * Each step's range of lines, for step sections: its first line (a one-line query per
   * step), its end (the line before the next step's first), and whether the steps
   * interleave (then each row carries its step's name instead of a section header).
   */
  async loadSteps() {
    // Lines sent without a step have the step "": they get no header.
    const names = this.info.steps.filter(Boolean);
    if (!names.length) return;
    const base = `/v1/deployments/${encodeURIComponent(this.id)}/logs`;
    if (names.length > 64) {
      this.sections.sequential = false;
      return this.refold();
    }
    try {
      const firsts = await Promise.all(names.map((step) =>
        api(base, { params: { step, limit: 1 }, signal: this.abort.signal }).then((p) => p.lines[0])));
      const steps = names.map((name, i) => ({ name, first: firsts[i] ? firsts[i].seq : Infinity, ts: firsts[i] && firsts[i].ts }))
        .filter((s) => s.first !== Infinity).sort((a, b) => a.first - b.first);
      // A step with a line after the next step's first line interleaves with it.
      const later = await Promise.all(steps.slice(0, -1).map((s, i) =>
        api(base, { params: { step: s.name, at: steps[i + 1].first, limit: 1 }, signal: this.abort.signal })
          .then((p) => p.lines.length > 0)));
      if (this.stopped) return;
      // Steps that started live while these queries ran come after the ones found.
      const seen = new Set(steps.map((s) => s.name));
      const lastFirst = steps.length ? steps[steps.length - 1].first : 0;
      const newer = this.sections.steps.filter((s) => !seen.has(s.name) && s.first > lastFirst);
      const wasSequential = this.sections.sequential;
      this.sections.sequential = wasSequential && !later.some(Boolean);
      this.sections.steps = steps.map((s, i) => ({
        name: s.name, first: s.first, firstTs: s.ts,
        last: i + 1 < steps.length ? steps[i + 1].first - 1 : (newer.length ? newer[0].first - 1 : this.lastSeq()),
        lastTs: i + 1 < steps.length ? steps[i + 1].ts : null,
      })).concat(newer);
      // A linked line stays in sight: the sections holding it open.
      if (this.highlight) for (const k of this.sections.containing(this.highlight[0])) this.sections.userOpen.set(k, true);
      this.refold();
    } catch (err) {
      if (err.name !== 'AbortError') this.ctx.fail(err);
    }
  }

  /** A step's state: the step holding the last line of a failed deployment failed; the
   * last step of a running deployment runs; the others passed. */
  stepState(s) {
    const steps = this.sections.steps;
    const isLast = steps[steps.length - 1] === s;
    const status = this.completed ? this.completed.status : this.info.status;
    if (isLast && status === 'running') return 'running';
    if (isLast && status !== 'succeeded') return 'failed';
    return 'passed';
  }

  refold() {
    const anchor = this.anchorSeq();
    this.sections.fold((s) => this.stepState(s) !== 'passed');
    this.rowCache.clear();
    if (anchor !== null && !this.following) this.scrollToIndex(this.indexOfSeq(anchor), 0);
    this.schedule();
  }

  loadFailed(err) {
    this.pageError = true;
    this.ctx.fail(err);
  }

  loaded() {
    if (this.pageError) {
      this.pageError = false;
      this.ctx.clearError();
    }
    if (!this.window && this.sections.discover(this.cache, (a, b) => this.onScreen(a, b))) this.refold();
    this.schedule();
  }

  /** Follows the live stream from `cursor` (reconnecting with backoff) until the end. */
  async live(cursor) {
    const signal = this.abort.signal;
    let backoff = 500;
    this.liveEl.textContent = 'connecting';
    while (!signal.aborted && !this.completed) {
      try {
        await sse(`/v1/deployments/${encodeURIComponent(this.id)}/stream`, {
          signal,
          params: cursor ? { cursor } : { wait: 'true' },
          onOpen: () => {
            backoff = 500;
            this.liveEl.textContent = 'live';
            this.liveEl.classList.add('on');
          },
          onEvent: ({ event, data, id }) => {
            if (event === 'line') {
              const line = JSON.parse(data);
              cursor = id || line.cursor;
              this.incoming.push(line);
              // Animation frames stop in a hidden tab: apply big backlogs at once.
              if (this.incoming.length > 2000) this.flush();
              this.schedule();
            } else if (event === 'end') {
              this.flush();
              this.ended(JSON.parse(data));
            } else if (event === 'waiting') {
              this.waitEl.textContent = 'Waiting for this deployment\'s first line…';
              this.waitEl.hidden = false;
            } else if (event === 'auth_expired') {
              this.ctx.fail({ status: 401, code: 'auth_expired', message: 'the token expired' });
            }
          },
        });
      } catch (err) {
        if (signal.aborted) return;
        if (err.status && err.status !== 429 && err.status < 500 && err.status !== 404) {
          this.ctx.fail(err);
          return;
        }
        if (err.retryAfter) backoff = Math.max(backoff, err.retryAfter * 1000);
      }
      if (this.completed) break;
      this.liveEl.textContent = 'reconnecting';
      this.liveEl.classList.remove('on');
      try {
        await sleep(backoff, signal);
      } catch (_) {
        return;
      }
      backoff = Math.min(backoff * 2, 10_000);
    }
  }

  /** Applies the lines that arrived since the last frame. */
  flush() {
    if (!this.incoming.length) return;
    const batch = this.incoming;
    this.incoming = [];
    if (!this.info) {
      // The first line of a deployment that did not exist when the page opened.
      this.waitEl.hidden = true;
      this.ctx.clearError();
      this.info = { id: this.id, status: 'running', steps: [], first_seq: batch[0].seq, last_seq: 0, created_at: batch[0].ts };
      this.cache.first = batch[0].seq;
    }
    this.waitEl.hidden = true;
    let shown = 0;
    let marker = false;
    for (const l of batch) {
      this.cache.put(l);
      if (l.seq > this.info.last_seq) this.info.last_seq = l.seq;
      this.stepOf(l);
      marker = marker || Boolean(this.cache.get(l.seq) && this.cache.get(l.seq).marker);
      if (this.window) {
        if (this.window.live(l)) shown++;
      } else if (!this.sections.hidden.some(([a, b]) => l.seq >= a && l.seq <= b)) {
        shown++;
      }
    }
    this.cache.evict();
    if (marker) this.sections.discover(this.cache, (a, b) => this.onScreen(a, b)) && this.refold();
    if (!this.following) {
      this.newLines += shown;
      this.showFollow();
    }
    this.describe();
  }

  /** Keeps the step sections current as live lines arrive. */
  stepOf(l) {
    if (!l.step) return;
    const steps = this.sections.steps;
    const last = steps[steps.length - 1];
    if (last && last.name === l.step) {
      last.last = l.seq;
      last.lastTs = l.ts;
      return;
    }
    if (steps.some((s) => s.name === l.step)) {
      if (this.sections.sequential) {
        this.sections.sequential = false;
        this.refold();
      }
      return;
    }
    if (!this.info.steps.includes(l.step)) this.info.steps.push(l.step);
    steps.push({ name: l.step, first: l.seq, last: l.seq, firstTs: l.ts, lastTs: l.ts });
    if (last) {
      last.last = l.seq - 1;
      last.lastTs = l.ts;
      this.keepOpen(last);
    }
    this.refold();
  }

  /** A step about to fold by default (it passed) stays open while the reader is in it. */
  keepOpen(step) {
    const key = 'step:' + step.name;
    if (!this.sections.userOpen.has(key) && this.onScreen(step.first, step.last)) this.sections.userOpen.set(key, true);
  }

  ended(end) {
    const steps = this.sections.steps;
    if (steps.length) this.keepOpen(steps[steps.length - 1]);
    this.completed = end;
    this.liveEl.textContent = 'completed';
    this.liveEl.classList.remove('on');
    if (this.info) {
      this.info.status = end.status;
      this.describe();
    }
    const code = end.exit_code === null || end.exit_code === undefined ? '' : ` · exit code ${end.exit_code}`;
    this.endEl.replaceChildren(statusBadge(end.status, end.exit_code),
      el('span', {}, ` Deployment ${end.status}${code}`));
    this.endEl.className = `end st-${end.status}`;
    this.endEl.hidden = false;
    this.followBtn.hidden = true;
    this.refold();
  }

  // === Filters ===

  setFilter() {
    const level = this.levelSel.value.replace(/\+$/, '');
    this.filter = new Filter(level, this.stepSel.value);
    this.rowCache.clear();
    if (!this.filter.active) {
      this.window = null;
      this.toBottom();
      return;
    }
    const w = new FilteredWindow(this.id, this.filter,
      (prepended) => this.window === w && this.windowChanged(prepended),
      (e) => this.window === w && e.name !== 'AbortError' && this.ctx.fail(e), this.abort.signal);
    this.window = w;
    this.following = !this.completed;
    this.window.open(null);
  }

  windowChanged(prepended) {
    if (prepended && !this.following) this.scroller.scrollTop += prepended * this.rowH;
    this.rowCache.clear();
    if (this.following) this.toBottom();
    else this.schedule();
  }

  // === Index space: rows of the unfiltered (folded) log, or of the filtered window ===

  count() {
    if (this.window) return this.window.lines.length;
    const last = this.lastSeq();
    return Math.max(0, last - this.cache.first + 1 - this.sections.hiddenTotal);
  }

  seqAt(i) {
    return this.window ? (this.window.lines[i] || {}).seq : this.sections.seqAt(i, this.cache.first);
  }

  lineAt(i) {
    return this.window ? this.window.lines[i] : this.cache.get(this.seqAt(i));
  }

  indexOfSeq(seq) {
    return this.window ? this.window.indexOf(seq) : this.sections.indexOf(seq, this.cache.first);
  }

  // === Scrolling ===

  get rowH() {
    if (!this._rowH) {
      this._rowH = parseFloat(getComputedStyle(this.scroller).getPropertyValue('--row')) || 20;
    }
    return this._rowH;
  }

  geometry() {
    const n = this.count();
    const view = this.scroller.clientHeight;
    const full = n * this.rowH;
    const height = Math.min(full, MAX_PX);
    return { n, view, height, scaled: full > MAX_PX, maxScroll: Math.max(0, height - view), rows: view / this.rowH };
  }

  /** The (fractional) row index at the top of the viewport. */
  topIndex(g) {
    const st = this.scroller.scrollTop;
    if (!g.scaled) return st / this.rowH;
    return g.maxScroll ? (st / g.maxScroll) * Math.max(0, g.n - g.rows) : 0;
  }

  scrollToIndex(i, fraction = 1 / 3) {
    const g = this.geometry();
    this.sizer.style.height = g.height + 'px';
    const top = Math.max(0, i - g.rows * fraction);
    const st = g.scaled ? (top / Math.max(1, g.n - g.rows)) * g.maxScroll : top * this.rowH;
    this.setScroll(Math.min(st, g.maxScroll));
  }

  setScroll(v) {
    this.expectScroll = Math.round(v);
    this.scroller.scrollTop = v;
    this.schedule();
  }

  atBottom(g) {
    return this.scroller.scrollTop >= g.maxScroll - 2;
  }

  onScroll() {
    const g = this.geometry();
    const expected = this.expectScroll !== null && Math.abs(this.scroller.scrollTop - this.expectScroll) <= 2;
    this.expectScroll = null;
    if (!expected) {
      if (this.atBottom(g)) {
        if (!this.following && !this.completed) this.resume();
      } else if (this.following) {
        this.following = false;
        this.newLines = 0;
        this.showFollow();
      }
    }
    this.schedule();
  }

  toBottom() {
    this.resume();
    const g = this.geometry();
    this.sizer.style.height = g.height + 'px';
    this.setScroll(g.maxScroll);
  }

  resume() {
    this.following = true;
    this.newLines = 0;
    this.followBtn.hidden = true;
    this.liveEl.textContent = this.completed ? 'completed' : 'live';
    this.liveEl.classList.toggle('on', !this.completed);
  }

  showFollow() {
    if (this.completed || this.following) {
      this.followBtn.hidden = true;
      return;
    }
    const n = this.newLines;
    this.followBtn.textContent = `Paused · ${n.toLocaleString('en-US')} new line${n === 1 ? '' : 's'} · resume ↓`;
    this.followBtn.hidden = false;
    this.liveEl.textContent = 'paused';
    this.liveEl.classList.remove('on');
  }

  /** The seq at the top of the screen, to keep in place when sections fold above it. */
  anchorSeq() {
    if (!this.info || this.window) return null;
    const g = this.geometry();
    return g.n ? this.seqAt(Math.min(g.n - 1, Math.floor(this.topIndex(g)))) : null;
  }

  onScreen(a, b) {
    if (this.following) return false;
    const g = this.geometry();
    const top = this.seqAt(Math.floor(this.topIndex(g)));
    const bottom = this.seqAt(Math.min(g.n - 1, Math.ceil(this.topIndex(g) + g.rows)));
    return a <= bottom && b >= top;
  }

  schedule() {
    if (this.frame || this.stopped) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.flush();
      this.render();
    });
  }

  // === Rendering ===

  render() {
    if (!this.info) return;
    const g = this.geometry();
    this.sizer.style.height = g.height + 'px';
    if (this.following) {
      if (this.scroller.scrollTop < g.maxScroll - 1) this.setScroll(g.maxScroll);
    }
    const bottom = this.following || (this.atBottom(g) && g.maxScroll > 0);
    const top = this.topIndex(g);
    const want = Math.ceil(g.rows) + MARGIN;
    let from, to;
    if (bottom) {
      to = g.n - 1;
      from = Math.max(0, to - want);
    } else {
      from = Math.max(0, Math.floor(top) - MARGIN);
      to = Math.min(g.n - 1, Math.floor(top) + want);
    }
    // Ask for what is missing around the screen (the cache loads whole pages).
    if (this.window) this.window.ensure(from, to);
    else if (g.n) this.cache.ensure(this.seqAt(from) - PAGE, this.seqAt(to) + PAGE);

    const rows = [];
    for (let i = from; i <= to; i++) rows.push(this.row(i));
    this.rowsEl.replaceChildren(...rows);
    if (this.rowCache.size > 4 * rows.length + 100) {
      const keep = new Set(rows.map((r) => Number(r.dataset.seq)));
      for (const seq of this.rowCache.keys()) if (!keep.has(seq)) this.rowCache.delete(seq);
    }
    const h = this.rowsEl.offsetHeight;
    if (from === 0 && to === g.n - 1 && h > g.height) {
      // Everything is rendered and taller than its rows' nominal height (step headers,
      // wrapped lines): the sizer grows to it, so nothing is clipped.
      g.height = h;
      g.maxScroll = Math.max(0, h - g.view);
      this.sizer.style.height = h + 'px';
      if (this.following) this.setScroll(g.maxScroll);
    }
    let y;
    if (g.n === 0) {
      y = 0;
    } else if (bottom) {
      y = Math.max(0, g.height - h);
      if (h < g.view) y = Math.max(0, Math.min(this.scroller.scrollTop, g.height - h));
    } else {
      const i0 = Math.floor(top);
      const first = rows[i0 - from];
      const above = first ? first.offsetTop : 0;
      const frac = (top - i0) * (first ? first.offsetHeight : this.rowH);
      y = this.scroller.scrollTop - above - frac;
    }
    this.rowsEl.style.transform = `translateY(${Math.round(y)}px)`;
  }

  /** The row element for index `i`, from the cache when nothing about it changed. */
  row(i) {
    const seq = this.seqAt(i);
    const line = this.lineAt(i);
    const hl = this.highlight && seq >= this.highlight[0] && seq <= this.highlight[1];
    const cur = this.search.seqs[this.search.at] === seq;
    const step = !this.window && this.sections.sequential ? this.sections.stepAt(seq) : null;
    const group = !this.window && line && line.marker ? this.sections.groups.get(seq) : null;
    const key = [line ? 1 : 0, hl, cur, this.search.gen, this.tsIn.checked,
      step && [step.last, this.sections.isOpen('step:' + step.name, this.stepState(step) !== 'passed'), this.completed && this.completed.status].join(','),
      group && [group.end, this.sections.isOpen('group:' + seq, group.defaultOpen)].join(',')].join('|');
    const hit = this.rowCache.get(seq);
    if (hit && hit.key === key) return hit.el;
    const r = this.buildRow(seq, line, step, group, hl, cur);
    this.rowCache.set(seq, { key, el: r });
    return r;
  }

  /** One index's element: the line's row, after its step's header when it starts one. */
  buildRow(seq, line, step, group, hl, cur) {
    const item = el('div', { class: 'item', 'data-seq': seq });
    const r = el('div', { class: 'row', 'data-seq': seq });
    if (hl) r.classList.add('hl');
    if (cur) r.classList.add('match-current');
    let stepFolded = false;
    if (step) {
      const dflt = this.stepState(step) !== 'passed';
      const open = this.sections.isOpen('step:' + step.name, dflt);
      const foldable = this.sections.steps.length > 1 && step.last > step.first;
      stepFolded = foldable && !open;
      const state = this.stepState(step);
      const lines = step.last - step.first + 1;
      const ms = step.firstTs && step.lastTs ? Date.parse(step.lastTs) - Date.parse(step.firstTs) : null;
      const head = el('div', { class: `step-head st-${state}`, 'data-step': step.name, 'data-open': String(open || !foldable) },
        foldable ? el('button', { type: 'button', class: 'fold', 'data-key': 'step:' + step.name, 'aria-expanded': String(open), 'aria-label': `${open ? 'Fold' : 'Open'} step ${step.name}` }, open ? '▾' : '▸') : el('span', { class: 'fold-space' }),
        el('span', { class: 'step-name' }, step.name),
        el('span', { class: 'step-state' }, state),
        el('span', { class: 'step-lines' }, `${lines.toLocaleString('en-US')} line${lines === 1 ? '' : 's'}`),
        ms > 0 && Number.isFinite(ms) ? el('span', { class: 'dur' }, spell(ms)) : null);
      item.append(head);
    }
    const ln = el('a', { class: 'ln', href: `#L${seq}`, tabindex: '-1', 'aria-label': `Line ${seq}` }, String(seq));
    const body = el('div', { class: 'line' }, ln);
    if (this.tsIn.checked && line) body.append(el('span', { class: 'ts', title: line.ts }, clock(line.ts)));
    if (line && !this.sections.sequential && !this.window) body.append(el('span', { class: 'step-tag', title: 'step' }, line.step));
    const msg = el('span', { class: 'msg' });
    if (!line) {
      r.classList.add('pending');
      msg.textContent = this.cache.has(seq) || this.window ? '' : '…';
    } else if (group) {
      const open = this.sections.isOpen('group:' + seq, group.defaultOpen);
      r.classList.add('group');
      r.dataset.open = String(open || group.end === null);
      if (group.failed) r.classList.add('failed');
      if (group.end !== null) {
        body.insertBefore(el('button', { type: 'button', class: 'fold', 'data-key': 'group:' + seq, 'aria-expanded': String(open), 'aria-label': `${open ? 'Fold' : 'Open'} group ${group.title}` }, open ? '▾' : '▸'), ln.nextSibling);
      } else {
        body.insertBefore(el('span', { class: 'fold-space' }, '▾'), ln.nextSibling);
      }
      msg.append(group.title);
      if (group.ms > 0) body.append(el('span', { class: 'dur' }, spell(group.ms)));
    } else if (line.marker && line.marker.kind === 'end' && !this.window) {
      r.classList.add('group-end');
    } else {
      renderAnsi(line.message, msg);
      if (this.search.re) mark(msg, this.search.re);
    }
    if (line) {
      if (line.level === 'error' || line.level === 'fatal') r.classList.add('lv-error');
      else if (line.level === 'warn') r.classList.add('lv-warn');
      if (line.stream === 'stderr') r.classList.add('stderr');
    }
    if (!line || !group) body.append(msg);
    else body.insertBefore(msg, body.lastChild && body.lastChild.classList.contains('dur') ? body.lastChild : null);
    r.append(body);
    if (!stepFolded) item.append(r);
    return item;
  }

  onRowClick(e) {
    const head = e.target.closest('.step-head');
    const fold = e.target.closest('button.fold') || (head && head.querySelector('button.fold'));
    if (fold) {
      // The reader asks for the opposite of what the button shows, not of the state now:
      // a step can pass (fold by default) or the keep-open rule can act between the
      // render and the click, and a toggle of that newer state would undo the click.
      this.sections.userOpen.set(fold.dataset.key, fold.getAttribute('aria-expanded') !== 'true');
      this.refold();
      return;
    }
    const ln = e.target.closest('a.ln');
    if (!ln) return;
    e.preventDefault();
    const seq = Number(ln.closest('.row').dataset.seq);
    let range = [seq, seq];
    if (e.shiftKey && this.highlight) range = [Math.min(this.highlight[0], seq), Math.max(this.highlight[1], seq)];
    this.select(range, true);
  }

  /** Highlights lines `range` and puts them in the URL (`#L5` or `#L5-L9`). */
  select(range, push) {
    this.highlight = range;
    const hash = range[0] === range[1] ? `#L${range[0]}` : `#L${range[0]}-L${range[1]}`;
    if (push) history.pushState(null, '', location.pathname + hash);
    else history.replaceState(null, '', location.pathname + hash);
    this.lastHash = hash;
    this.following = false;
    this.showFollow();
    this.rowCache.clear();
    this.schedule();
  }

  hashLines() {
    const m = location.hash.match(/^#L(\d+)(?:-L?(\d+))?$/);
    if (!m) return null;
    const a = Number(m[1]);
    const b = m[2] ? Number(m[2]) : a;
    return [Math.min(a, b), Math.max(a, b)];
  }

  /** The address bar's `#L` changed (a pasted link, back/forward). */
  onHash() {
    if (location.hash === this.lastHash) return;
    const t = this.hashLines();
    if (!t || !this.info) return;
    this.lastHash = location.hash;
    this.highlight = t;
    this.rowCache.clear();
    this.jump(t[0]);
  }

  /** Scrolls line `seq` into view (opening the sections that hide it), pausing follow. */
  async jump(seq) {
    this.following = false;
    this.showFollow();
    if (this.window) {
      const i = this.window.indexOf(seq);
      const w = this.window.lines;
      if (!w.length || i >= w.length || (i === 0 && w[0].seq > seq && !this.window.startComplete)) {
        await this.window.open(seq);
        this.following = false;
      }
      this.scrollToIndex(this.window.indexOf(seq));
      return;
    }
    const keys = this.sections.containing(seq);
    if (keys.length) {
      for (const k of keys) this.sections.userOpen.set(k, true);
      this.sections.fold((s) => this.stepState(s) !== 'passed');
      this.rowCache.clear();
    }
    this.cache.ensure(seq - PAGE, seq + PAGE);
    this.scrollToIndex(this.indexOfSeq(seq));
  }

  // === Search: over the whole log on the server, highlighted here ===

  async runSearch(text) {
    const s = (this.search = { gen: this.search.gen + 1, text, re: null, seqs: [], at: -1, done: false });
    this.rowCache.clear();
    if (!text) {
      this.countEl.textContent = '';
      this.schedule();
      return;
    }
    const regex = text.length > 2 && text.startsWith('/') && text.endsWith('/');
    const pattern = regex ? text.slice(1, -1) : text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    try {
      s.re = new RegExp(pattern, 'gi');
    } catch (_) {
      s.re = null;
    }
    this.countEl.textContent = 'searching…';
    let cursor;
    try {
      for (;;) {
        const page = await api(`/v1/deployments/${encodeURIComponent(this.id)}/logs`, {
          params: { ...this.filter.params(), q: '(?i)' + pattern, limit: 5000, cursor }, signal: this.abort.signal,
        });
        if (this.search !== s) return;
        for (const l of page.lines) s.seqs.push(l.seq);
        // A page may stop short where the server's scan budget ends: the end is
        // `complete`, or (a live log) an empty page whose cursor did not move.
        const end = page.complete || s.seqs.length >= SEARCH_CAP ||
          (!page.lines.length && page.next_cursor === cursor);
        cursor = page.next_cursor;
        if (s.at < 0 && s.seqs.length) this.step(1);
        this.showCount(end);
        if (end) break;
      }
    } catch (err) {
      if (this.search !== s) return;
      this.countEl.textContent = '';
      this.ctx.fail(err);
      return;
    }
    s.done = true;
    this.showCount(true);
  }

  showCount(end) {
    const s = this.search;
    if (!s.seqs.length) {
      this.countEl.textContent = end ? 'no match' : 'searching…';
      return;
    }
    this.countEl.textContent = `${s.at + 1} / ${s.seqs.length}${end && s.seqs.length < SEARCH_CAP ? '' : '+'}`;
  }

  step(dir) {
    const s = this.search;
    if (!s.seqs.length) return;
    s.at = (s.at + dir + s.seqs.length) % s.seqs.length;
    this.showCount(s.done || s.seqs.length >= SEARCH_CAP);
    this.rowCache.clear();
    this.jump(s.seqs[s.at]);
  }

  // === Export and copy ===

  async download() {
    const format = this.formatSel.value;
    const ext = { text: 'log', ndjson: 'ndjson', csv: 'csv' }[format];
    this.notify('Downloading…');
    try {
      await download(`/v1/deployments/${encodeURIComponent(this.id)}/export`, { format }, `${this.id}.${ext}`);
      this.notify('Downloaded');
    } catch (err) {
      this.ctx.fail(err);
    }
  }

  async copy() {
    let text = String(document.getSelection() || '');
    let what = 'selection';
    if (this.highlight) {
      const [a, b] = this.highlight;
      const page = await api(`/v1/deployments/${encodeURIComponent(this.id)}/logs`, {
        params: { at: a, limit: Math.min(5000, b - a + 1) },
      }).catch((e) => this.ctx.fail(e));
      if (!page) return;
      text = page.lines.filter((l) => l.seq <= b).map((l) => stripAnsi(l.message)).join('\n') + '\n';
      what = `${page.lines.length} line${page.lines.length === 1 ? '' : 's'}`;
    }
    if (!text) return this.notify('Select lines first: click a line number, shift-click another');
    try {
      await navigator.clipboard.writeText(text);
      this.notify(`Copied ${what}`);
    } catch (_) {
      this.notify('The browser refused the clipboard');
    }
  }

  notify(text) {
    this.toast.textContent = text;
    this.toast.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => { this.toast.hidden = true; }, 2500);
  }

  // === Keyboard: j/k line, g/G top/bottom, / search, n/N matches ===

  key(e) {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA')) return;
    const g = this.geometry();
    switch (e.key) {
      case '/':
        e.preventDefault();
        this.searchIn.focus();
        this.searchIn.select();
        break;
      case 'n':
        this.step(1);
        break;
      case 'N':
        this.step(-1);
        break;
      case 'g':
        this.following = false;
        this.showFollow();
        this.setScroll(0);
        break;
      case 'G':
        this.toBottom();
        break;
      case 'j':
      case 'k': {
        if (!g.n) break;
        const cur = this.highlight ? this.indexOfSeq(this.highlight[0]) : Math.floor(this.topIndex(g));
        const next = Math.max(0, Math.min(g.n - 1, cur + (e.key === 'j' ? 1 : -1)));
        const seq = this.seqAt(next);
        this.select([seq, seq], false);
        const top = this.topIndex(g);
        if (next < top || next > top + g.rows - 2) this.scrollToIndex(next, e.key === 'j' ? 0.9 : 0.1);
        break;
      }
      default:
        return;
    }
  }
}

/** Wraps the matches of `re` in the text nodes under `root` in `<mark>`. */
function mark(root, re) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
  for (const node of nodes) {
    const text = node.nodeValue;
    re.lastIndex = 0;
    let m;
    let last = 0;
    const parts = [];
    while ((m = re.exec(text)) && m[0].length) {
      if (m.index > last) parts.push(document.createTextNode(text.slice(last, m.index)));
      parts.push(el('mark', {}, m[0]));
      last = m.index + m[0].length;
    }
    if (!parts.length) continue;
    if (last < text.length) parts.push(document.createTextNode(text.slice(last)));
    node.replaceWith(...parts);
  }
}
