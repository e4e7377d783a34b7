// The page's shell: routes (`/` the deployments list, `/deployments/{id}` a log), the
// token (asked for, or taken once from `#token=`), and how errors are shown.

import { takeTokenFromFragment, token, setToken, clearToken, onRetry } from './api.js';
import { ListView } from './list.js';
import { LogView } from './log.js';

const $ = (sel) => document.querySelector(sel);
let current = null;

/** Shows `err` (an ApiError or any Error) in the alert banner; 401 asks for a token. */
function fail(err) {
  if (err && err.name === 'AbortError') return;
  const box = $('#error');
  const s = err && err.status;
  let text;
  if (s === 401) {
    text = `The token was refused (${err.code}): ${err.message}. Paste a valid token.`;
  } else if (s === 403) {
    text = `Forbidden: the token is missing a scope for this (${err.code}): ${err.message}`;
  } else if (s === 404) {
    text = `Not found: ${err.message}`;
  } else if (s === 429) {
    text = `Too many requests (${err.code}): ${err.message}` +
      (err.retryAfter ? ` Try again in ${err.retryAfter} s.` : '');
  } else if (s === 0) {
    text = `The gateway is unreachable: ${err.message}.`;
  } else if (s) {
    text = `Error ${s} (${err.code}): ${err.message}`;
  } else {
    text = `Error: ${err && err.message || err}`;
    console.error(err);
  }
  box.textContent = text;
  box.hidden = false;
  if (s === 401) askToken();
}

function clearError() {
  const box = $('#error');
  box.hidden = true;
  box.textContent = '';
}

// A read being retried says so in the banner, which goes once it succeeds.
let retrying = false;
onRetry((err, wait) => {
  if (err) {
    fail(err);
    $('#error').textContent += ` Retrying in ${(wait / 1000).toFixed(1)} s.`;
    retrying = true;
  } else if (retrying) {
    retrying = false;
    clearError();
  }
});

function askToken() {
  if (current) current.stop();
  current = null;
  $('#view').replaceChildren();
  $('#signout').hidden = true;
  const form = $('#token-form');
  form.hidden = false;
  $('#token-input').focus();
}

function crumbs(items) {
  const nav = $('#crumbs');
  nav.replaceChildren();
  for (const { text, href } of items) {
    const sep = document.createElement('span');
    sep.className = 'sep';
    sep.textContent = '/';
    const el = document.createElement(href ? 'a' : 'span');
    el.textContent = text;
    if (href) {
      el.href = href;
      el.dataset.nav = '';
    }
    nav.append(sep, el);
  }
}

function navigate(path) {
  history.pushState(null, '', path);
  route();
}

const ctx = { fail, clearError, crumbs, navigate };

function route() {
  if (current) current.stop();
  current = null;
  clearError();
  if (!token()) {
    askToken();
    return;
  }
  $('#token-form').hidden = true;
  $('#signout').hidden = false;
  const view = $('#view');
  view.replaceChildren();
  const m = location.pathname.match(/^\/deployments\/([^/]+)\/?$/);
  let id = null;
  if (m) {
    try {
      id = decodeURIComponent(m[1]);
    } catch (_) {
      fail({ status: 404, message: `${m[1]} is not a deployment id` });
    }
  }
  if (id) {
    current = new LogView(view, id, ctx);
  } else if (!m) {
    current = new ListView(view, ctx);
  }
}

takeTokenFromFragment();

$('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('#token-input').value.trim();
  if (!t) return;
  setToken(t);
  $('#token-input').value = '';
  route();
});

$('#signout').addEventListener('click', () => {
  clearToken();
  clearError();
  askToken();
});

// Links inside the app navigate without reloading (plain links still work without it).
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]');
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const u = new URL(a.href);
  if (u.origin !== location.origin) return;
  e.preventDefault();
  if (u.pathname === location.pathname) {
    if (u.hash !== location.hash) location.hash = u.hash;
    return;
  }
  history.pushState(null, '', u.pathname + u.hash);
  route();
});

window.addEventListener('popstate', () => {
  // Same page, another hash: the log view follows it (a line link); otherwise re-route.
  if (current && current.path === location.pathname && current.onHash) current.onHash();
  else route();
});
window.addEventListener('hashchange', () => {
  takeTokenFromFragment();
  if (current && current.onHash) current.onHash();
});

route();
