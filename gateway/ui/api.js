// The HTTP API as the UI uses it: the token (session storage, always sent as a header,
// never put in a URL), JSON calls with the API's error bodies turned into ApiError, and
// server-sent events read through fetch streaming (EventSource cannot send headers).

const TOKEN_KEY = 'logstream.token';

/** Takes `token=...` out of the URL fragment (on any route) into session storage and
 * removes it from the address bar; the rest of the fragment (`L12`) is kept. */
export function takeTokenFromFragment() {
  const hash = location.hash.replace(/^#/, '');
  if (!hash) return;
  const parts = hash.split('&');
  const rest = [];
  let found = null;
  for (const p of parts) {
    if (p.startsWith('token=')) {
      try {
        found = decodeURIComponent(p.slice(6));
      } catch (_) {
        found = p.slice(6); // not percent-encoded after all: taken as it is
      }
    }
    else if (p) rest.push(p);
  }
  if (found === null) return;
  if (found) sessionStorage.setItem(TOKEN_KEY, found);
  const url = location.pathname + location.search + (rest.length ? '#' + rest.join('&') : '');
  history.replaceState(history.state, '', url);
}

export const token = () => sessionStorage.getItem(TOKEN_KEY);
export const setToken = (t) => sessionStorage.setItem(TOKEN_KEY, t.trim());
export const clearToken = () => sessionStorage.removeItem(TOKEN_KEY);

/** An answer that was not 2xx, with the API's `{"error":{"code","message"}}`. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
  }
  return u;
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set('Authorization', 'Bearer ' + t);
  return h;
}

async function failure(resp) {
  let code = 'http_' + resp.status;
  let message = resp.statusText || 'request failed';
  try {
    const body = await resp.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON: keep the status line */ }
  const ra = Number(resp.headers.get('Retry-After'));
  return new ApiError(resp.status, code, message, Number.isFinite(ra) && ra > 0 ? ra : undefined);
}

/** A network failure (the gateway did not answer), as an ApiError with status 0. */
function unreachable(e) {
  if (e && e.name === 'AbortError') throw e;
  return new ApiError(0, 'unreachable', 'the gateway did not answer (' + (e && e.message || e) + ')');
}

// The contract's retryable error codes (ARCHITECTURE.md, the retry rule;
// `logstream_model::retry::RETRYABLE_CODES`): any other code is final.
const RETRYABLE = new Set([
  'quota_exceeded', 'unavailable', 'storage_unavailable', 'audit_unavailable', 'shutting_down',
  'internal', 'kafka_unavailable', 'kafka_unreachable', 'not_owner', 'moved', 'not_applied_yet',
  'object_store_unavailable', 'store_unreachable',
]);

/** Whether `err` may be retried: a retryable code, or the gateway did not answer. */
export const retryable = (err) => !!err && (err.status === 0 || RETRYABLE.has(err.code));

let retryNotice = () => {};
/** `fn(err)` is told when a read is retried (`err`) and when it then succeeded (`null`). */
export function onRetry(fn) {
  retryNotice = fn;
}

/**
 * GET (or `method`) `path` with query `params`; resolves to the JSON body. A GET that
 * fails retryably (a store restarting, a Kafka partition moving between replicas, the
 * gateway not answering) is tried again, backing off from 0.5 s to 10 s and never sooner
 * than Retry-After, until it succeeds, fails for good, or `signal` aborts (found by
 * e2e/local: the log page stopped at its first `not_owner`).
 */
export async function api(path, opts = {}) {
  const { signal, method = 'GET' } = opts;
  let backoff = 500;
  let retried = false;
  for (;;) {
    try {
      const body = await call(path, opts);
      if (retried) retryNotice(null);
      return body;
    } catch (err) {
      if (method !== 'GET' || !retryable(err) || (signal && signal.aborted)) throw err;
      retried = true;
      const wait = Math.max(backoff, (err.retryAfter || 0) * 1000);
      retryNotice(err, wait);
      await sleep(wait, signal);
      backoff = Math.min(backoff * 2, 10_000);
    }
  }
}

async function call(path, { params, signal, method = 'GET', body } = {}) {
  let resp;
  try {
    resp = await fetch(url(path, params), {
      method,
      signal,
      headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw unreachable(e);
  }
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

/**
 * Reads a server-sent event stream at `path`, calling `onEvent({event, data, id})` for
 * each event, until the stream ends (resolves) or fails (rejects with ApiError).
 * `lastEventId` resumes it. Comments (heartbeats) are skipped.
 */
export async function sse(path, { params, signal, lastEventId, onOpen, onEvent }) {
  const h = headers({ Accept: 'text/event-stream' });
  if (lastEventId) h.set('Last-Event-ID', lastEventId);
  let resp;
  try {
    resp = await fetch(url(path, params), { headers: h, signal, cache: 'no-store' });
  } catch (e) {
    throw unreachable(e);
  }
  if (!resp.ok) throw await failure(resp);
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = 'message';
  let data = [];
  let id = null;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw unreachable(e);
    }
    if (chunk.done) return;
    buf += chunk.value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) onEvent({ event, data: data.join('\n'), id });
        event = 'message';
        data = [];
        id = null;
        continue;
      }
      if (line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? '' : line.slice(c + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
  }
}

/** Downloads `path` (with the token in a header) as a file named `filename`. */
export async function download(path, params, filename) {
  let resp;
  try {
    resp = await fetch(url(path, params), { headers: headers(), cache: 'no-store' });
  } catch (e) {
    throw unreachable(e);
  }
  if (!resp.ok) throw await failure(resp);
  const blob = await resp.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}

/** Waits `ms`, or rejects when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(t); reject(new DOMException('aborted', 'AbortError')); }, { once: true });
  });
}
