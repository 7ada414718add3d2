// Transport and helpers of the taskd console. The API is Connect: a unary
// call is a JSON POST, a server stream is a POST whose body and reply are
// enveloped JSON messages (1 flag byte, 4 length bytes, the message).
'use strict';

const session = {
  get token() { return sessionStorage.getItem('taskd.token') || ''; },
  get role() { return sessionStorage.getItem('taskd.role') || ''; },
  get id() { return sessionStorage.getItem('taskd.id') || ''; },
  save(token, id, role) {
    sessionStorage.setItem('taskd.token', token);
    sessionStorage.setItem('taskd.id', id);
    sessionStorage.setItem('taskd.role', role);
  },
  clear() { sessionStorage.removeItem('taskd.token'); sessionStorage.removeItem('taskd.id'); sessionStorage.removeItem('taskd.role'); },
};

const ranks = { viewer: 1, operator: 2, admin: 3 };
function may(role) { return (ranks[session.role] || 0) >= ranks[role]; }

class APIError extends Error {
  constructor(code, message) { super(message || code); this.code = code; }
}

function headers(contentType, token) {
  return { 'Content-Type': contentType, 'Connect-Protocol-Version': '1', 'Authorization': 'Bearer ' + (token || session.token) };
}

// call makes one unary call: call('TaskService', 'GetTask', {id}).
async function call(service, method, msg, token) {
  const r = await fetch('/taskd.v1.' + service + '/' + method, {
    method: 'POST', headers: headers('application/json', token), body: JSON.stringify(msg || {}),
  });
  return answer(r);
}

async function answer(r) {
  let body = {};
  try { body = await r.json(); } catch (e) { /* not JSON: keep the status */ }
  if (!r.ok) throw new APIError(body.code || String(r.status), body.message || r.statusText);
  return body;
}

// callEarly is call for a view's first read: when the page's head
// (early.js, inlined in index.html) already sent this very call at page
// load, with this tab's token, it takes that answer instead of asking
// again. The early call is taken once; any other read asks the server.
function callEarly(service, method, msg) {
  const e = window.taskdEarly;
  window.taskdEarly = null;
  if (!e || e.path !== '/taskd.v1.' + service + '/' + method || e.body !== JSON.stringify(msg || {}) || e.token !== session.token) {
    return call(service, method, msg);
  }
  performance.mark('taskd:early-call-used');
  return e.reply.then(answer);
}

// newest wraps a view's read so that only the answer to its latest call
// is shown. Reads overlap (a live refresh is in flight when a filter is
// applied or a runner is cordoned) and their answers can arrive in any
// order; an older answer arriving last would show a page the user has
// already left (what a filtered task table once showed for good).
function newest(read, show) {
  let gen = 0;
  return async () => {
    const mine = ++gen;
    let r;
    try { r = await read(); } catch (e) { if (mine === gen) throw e; return; } // an older read's failure is as stale as its answer
    if (mine === gen) show(r);
  };
}

// stream runs one server stream, calling onMsg per message, until it ends
// (resolves) or fails (rejects). signal aborts it.
async function stream(service, method, msg, onMsg, signal) {
  const json = new TextEncoder().encode(JSON.stringify(msg || {}));
  const env = new Uint8Array(5 + json.length);
  new DataView(env.buffer).setUint32(1, json.length);
  env.set(json, 5);
  const r = await fetch('/taskd.v1.' + service + '/' + method, {
    method: 'POST', headers: headers('application/connect+json'), body: env, signal,
  });
  if (!r.ok) {
    let body = {};
    try { body = await r.json(); } catch (e) { /* keep the status */ }
    throw new APIError(body.code || String(r.status), body.message || r.statusText);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const next = new Uint8Array(buf.length + value.length);
    next.set(buf); next.set(value, buf.length); buf = next;
    while (buf.length >= 5) {
      const n = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
      if (buf.length < 5 + n) break;
      const flags = buf[0];
      const data = JSON.parse(dec.decode(buf.subarray(5, 5 + n)) || '{}');
      buf = buf.slice(5 + n);
      if (flags & 2) {
        if (data.error) throw new APIError(data.error.code, data.error.message);
        return;
      }
      onMsg(data);
    }
  }
}

// Views own a Scope: its streams and timers end when the view does.
class Scope {
  constructor() { this.ctl = new AbortController(); this.timers = []; }
  get done() { return this.ctl.signal.aborted; }
  close() { this.ctl.abort(); this.timers.forEach(clearTimeout); this.timers.forEach(clearInterval); }
  // every runs f now and then every ms (never below 1 s).
  every(ms, f) { f(); this.timers.push(setInterval(f, Math.max(ms, 1000))); }
  // throttle returns a function that runs f at most once a second.
  throttle(f) {
    let last = 0, pending = false;
    return () => {
      if (pending || this.done) return;
      const wait = Math.max(0, last + 1000 - Date.now());
      pending = true;
      this.timers.push(setTimeout(() => { pending = false; last = Date.now(); if (!this.done) f(); }, wait));
    };
  }
  // live keeps a stream open: on its end or failure it reconnects after a
  // second (onOpen runs before each attempt), until the scope closes.
  live(service, method, msg, onMsg, onOpen) {
    const run = async () => {
      while (!this.done) {
        if (onOpen) onOpen();
        try {
          setLive(true);
          await stream(service, method, typeof msg === 'function' ? msg() : msg, onMsg, this.ctl.signal);
          if (method === 'WatchTask') return; // a final task: nothing more comes
        } catch (e) {
          if (this.done) return;
          setLive(false, e.message);
          if (e.code === 'unauthenticated') { logout(e.message); return; }
        }
        await new Promise((res) => this.timers.push(setTimeout(res, 1000)));
      }
    };
    run();
  }
}

function setLive(ok, why) {
  const l = document.getElementById('live');
  l.textContent = ok ? '● live' : '○ reconnecting';
  l.title = why || '';
}

function showError(e) {
  const b = document.getElementById('error');
  b.textContent = e ? (e.code ? e.code + ': ' : '') + e.message : '';
  if (e) setTimeout(() => { if (b.textContent.endsWith(e.message)) b.textContent = ''; }, 8000);
}

// h builds an element; children are nodes or strings (always text, never
// HTML: the API's values cannot inject markup).
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtTime(t) { return t ? new Date(t).toLocaleString() : ''; }
function fmtAgo(t) {
  if (!t) return '';
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  return fmtDur(s);
}
function fmtDur(s) {
  if (s === undefined || s === null || !isFinite(s)) return '';
  s = Math.round(s);
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd' + Math.floor(s / 3600) % 24 + 'h';
}
function fmtBytes(n) {
  n = Number(n || 0);
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

// progress draws a task's bar with its percentage, rate and ETA.
function progress(t) {
  const p = t.progress || {};
  const done = Number(p.done || 0), total = Number(p.total || 0);
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : (t.state === 'succeeded' ? 100 : 0);
  const bits = [total > 0 ? pct.toFixed(1) + '%' : ''];
  if (p.rate && t.state === 'running') bits.push((Number(p.bytes) > 0 ? fmtBytes(p.rate) : Math.round(p.rate)) + '/s');
  if (p.etaSeconds && t.state === 'running') bits.push('ETA ' + fmtDur(p.etaSeconds));
  const fill = h('span', { class: 'fill' });
  fill.style.width = pct + '%';
  return h('span', { class: 'progress', 'data-pct': pct.toFixed(3), 'data-done': done },
    h('span', { class: 'bar', role: 'progressbar', 'aria-label': 'Progress of task ' + t.id, 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct.toFixed(1) }, fill),
    h('span', { class: 'bartext' }, bits.filter(Boolean).join(' · ')));
}
