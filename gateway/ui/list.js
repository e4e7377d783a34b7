// The deployments list: the tenant's deployments, newest first, kept current by the
// change feed (opened before the first page is read, so nothing falls between).

import { api, sse, sleep } from './api.js';
import { el, ago, duration, statusBadge, fmtCount } from './lines.js';

const PAGE = 100;

export class ListView {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.path = location.pathname;
    this.abort = new AbortController();
    this.rows = new Map(); // id -> deployment
    this.next = null;
    this.q = '';
    this.status = '';
    ctx.crumbs([{ text: 'deployments' }]);

    this.filter = el('input', { id: 'filter', type: 'search', placeholder: 'Filter by id', 'aria-label': 'Filter deployments by id' });
    this.statusSel = el('select', { id: 'status-filter', 'aria-label': 'Status' });
    for (const [v, t] of [['', 'Any status'], ['running', 'Running'], ['failed', 'Failed'], ['succeeded', 'Succeeded'], ['cancelled,timed_out', 'Cancelled / timed out']]) {
      this.statusSel.append(el('option', { value: v }, t));
    }
    this.live = el('span', { id: 'feed-state', class: 'feed', title: 'Change feed' }, 'connecting');
    this.tbody = el('tbody');
    this.table = el('table', { id: 'deployments' },
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Deployment'), el('th', { scope: 'col' }, 'Status'),
        el('th', { scope: 'col' }, 'Steps'), el('th', { scope: 'col', class: 'num' }, 'Lines'),
        el('th', { scope: 'col' }, 'Duration'), el('th', { scope: 'col' }, 'Updated'))),
      this.tbody);
    this.empty = el('p', { class: 'empty', hidden: '' }, 'No deployments yet. Lines pushed to /v1/deployments/{id}/logs show up here as they arrive.');
    this.more = el('button', { type: 'button', id: 'more', hidden: '' }, 'Load more');
    root.append(
      el('div', { class: 'toolbar' }, this.filter, this.statusSel, el('span', { class: 'spacer' }), this.live),
      el('div', { class: 'table-wrap' }, this.table), this.empty, this.more);

    let t = null;
    this.filter.addEventListener('input', () => {
      clearTimeout(t);
      t = setTimeout(() => { this.q = this.filter.value.trim(); this.reload(); }, 200);
    });
    this.statusSel.addEventListener('change', () => { this.status = this.statusSel.value; this.reload(); });
    this.more.addEventListener('click', () => this.page(this.next));
    this.tick = setInterval(() => this.refreshTimes(), 10_000);
    this.feed();
  }

  stop() {
    this.abort.abort();
    clearInterval(this.tick);
  }

  /** Follows the change feed for ever (reconnecting), listing again at each (re)open. */
  async feed() {
    const signal = this.abort.signal;
    let backoff = 500;
    while (!signal.aborted) {
      try {
        await sse('/v1/deployments/events', {
          signal,
          onOpen: () => {
            backoff = 500;
            this.live.textContent = 'live';
            this.live.classList.add('on');
            this.reload();
          },
          onEvent: (e) => this.event(e),
        });
      } catch (err) {
        if (signal.aborted) return;
        this.live.textContent = 'reconnecting';
        this.live.classList.remove('on');
        if (err.status && err.status !== 429 && err.status < 500) {
          this.ctx.fail(err);
          return;
        }
        if (err.status === 429) this.ctx.fail(err);
      }
      try {
        await sleep(backoff, signal);
      } catch (_) {
        return;
      }
      backoff = Math.min(backoff * 2, 10_000);
    }
  }

  event({ event, data }) {
    if (event === 'resync') return this.reload();
    if (event === 'auth_expired') {
      this.ctx.fail({ status: 401, code: 'auth_expired', message: 'the token expired' });
      return;
    }
    if (!['created', 'updated', 'completed', 'deleted'].includes(event)) return;
    let d;
    try {
      d = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (event === 'deleted') {
      this.rows.delete(d.id);
    } else if (this.matches(d)) {
      this.rows.set(d.id, d);
    } else {
      this.rows.delete(d.id);
    }
    this.render();
  }

  matches(d) {
    if (this.q && !d.id.toLowerCase().includes(this.q.toLowerCase())) return false;
    if (!this.status) return true;
    return this.status.split(',').includes(d.status);
  }

  async reload() {
    this.rows.clear();
    this.next = null;
    await this.page(null, true);
  }

  async page(cursor, fresh = false) {
    // Answers for an older query (the filter changed meanwhile) are dropped.
    if (fresh) this.query = (this.query || 0) + 1;
    const query = this.query;
    try {
      const page = await api('/v1/deployments', {
        params: { limit: PAGE, cursor, q: this.q, status: this.status },
        signal: this.abort.signal,
      });
      if (query !== this.query) return;
      for (const d of page.deployments) {
        if (!this.rows.has(d.id) || this.rows.get(d.id).updated_at <= d.updated_at) this.rows.set(d.id, d);
      }
      this.next = page.next_cursor || null;
      this.ctx.clearError();
      this.render();
    } catch (err) {
      this.ctx.fail(err);
    }
  }

  render() {
    const list = [...this.rows.values()].sort((a, b) =>
      (b.created_at || '').localeCompare(a.created_at || '') || a.id.localeCompare(b.id));
    const keep = new Map();
    for (const tr of this.tbody.children) keep.set(tr.dataset.id, tr);
    const frag = [];
    for (const d of list) {
      let tr = keep.get(d.id);
      if (!tr) tr = el('tr', { 'data-id': d.id });
      this.fill(tr, d);
      frag.push(tr);
    }
    this.tbody.replaceChildren(...frag);
    this.empty.hidden = list.length > 0;
    this.more.hidden = !this.next;
  }

  fill(tr, d) {
    const key = [d.status, d.lines, d.steps.length, d.updated_at, d.completed_at].join('|');
    if (tr.dataset.key === key) return;
    tr.dataset.key = key;
    const link = el('a', { href: '/deployments/' + encodeURIComponent(d.id), 'data-nav': '' }, d.id);
    const steps = d.steps.length <= 3 ? d.steps.join(', ') : `${d.steps.slice(0, 3).join(', ')} +${d.steps.length - 3}`;
    const upd = d.updated_at || d.completed_at || d.created_at;
    tr.replaceChildren(
      el('td', { class: 'id' }, link),
      el('td', { class: 'status' }, statusBadge(d.status, d.exit_code)),
      el('td', { class: 'steps', title: d.steps.join('\n') }, steps),
      el('td', { class: 'lines num' }, fmtCount(d.lines)),
      el('td', { class: 'duration', 'data-from': d.created_at, 'data-to': d.completed_at || '' }, duration(d.created_at, d.completed_at)),
      el('td', { class: 'age', 'data-at': upd, title: upd }, ago(upd)));
  }

  refreshTimes() {
    for (const td of this.tbody.querySelectorAll('td.age')) td.textContent = ago(td.dataset.at);
    for (const td of this.tbody.querySelectorAll('td.duration')) {
      if (!td.dataset.to) td.textContent = duration(td.dataset.from, null);
    }
  }
}
