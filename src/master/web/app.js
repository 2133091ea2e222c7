// cronmesh web page. Plain JavaScript, no build step, no dependencies: a client of the REST API
// (/api/v1) and of the event feed (/api/v1/events). Data never goes into innerHTML: every node
// is built with el(), so job names, commands and outputs cannot inject markup.
'use strict';

const PAGE_SIZE = 100;          // jobs table rows per page
const RUNS_KEPT = 1000;         // runs held in a runs view (older ones: "Load older")
const STALE_REFRESH_MS = 10000; // a visible job whose next fire times have all passed is re-read this often
const STALE_PARALLEL = 8;       // at most this many such re-reads at once
const RECENT_RUNS = 10;         // the jobs list's recent-runs strip: this many newest records per job
const HEALTH_EVERY_MS = 5000;   // how often the master is asked what is up (GET /api/v1/health)
const API_TIMEOUT_MS = 10000;   // a request unanswered this long counts as the master not answering

const state = {
  token: sessionStorage.getItem('cronmesh.token') || localStorage.getItem('cronmesh.token') || '',
  jobs: new Map(),        // name -> job view (API shape)
  names: null,            // sorted job names, rebuilt lazily after adds and deletes
  jobsLoaded: false,
  jobsLoading: false,
  jobsError: null,
  jobsRevision: 0,        // etcd revision the job list was read at; the feed resumes after it
  feedCursor: '',         // the cursor of the last feed event: a reconnect replays what came after it
  running: new Map(),     // run_id -> RunStarted, runs in progress (feed + workers' lists)
  workers: [],
  workersError: null,
  view: null,             // { name, job? }
  jobsQuery: { search: '', filter: 'all', page: 0, sort: 'attention', dir: 1 },
  runsView: null,         // { job, status, runs: Map, cursor, loading, error }
  ticks: null,            // the job page's tick strip: { job, list, loading, error, at }
  staleAt: new Map(),     // job name -> last refresh attempt (ms)
  staleInFlight: 0,
  pendingJobEvents: [],   // job events seen while the job list is being read
  loadStats: null,        // { jobs, ms } of the last full job load (shown, and read by tests)
  health: null,           // GET /api/v1/health: { status, role, components }, null until read
  role: null,             // what the token may do: 'admin' or 'read' (from the health answer)
  auth: 'ok',             // 'ok', 'missing' (no token and one is needed) or 'refused' (unknown token)
  master: { up: true, downSince: 0, lastOk: 0 }, // does the master answer at all?
  run: null,              // the run page: { id, record, live, loading, error, prev, next }
  channels: null,         // GET /api/v1/notify/channels: { list, default, error, at }, null until read
  graphZoom: 1,           // the dependency graph's scale (#/graph)
  notifs: null,           // a deliveries list (job page, notifications view): { job, status, list, loading, loaded, error }
};
window.cronmesh = state; // for debugging and for the browser tests' measurements

// ---------------------------------------------------------------- small helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (sel) => document.querySelector(sel);
// replaceChildren, skipping the nulls that optional parts leave (the DOM would print "null")
function fill(node, ...kids) {
  node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
function fmtAbs(ms) { return ms ? new Date(ms).toLocaleString() : '—'; }
// a time of today as hh:mm:ss, another day's with its date
function fmtShort(ms) {
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString();
  return d.toLocaleString([], { year: d.getFullYear() === now.getFullYear() ? undefined : 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}
function fmtRel(ms) {
  if (!ms) return '—';
  const d = ms - Date.now();
  const a = Math.abs(d);
  let t;
  if (a < 1000) return d >= 0 ? 'now' : 'just now';
  if (a < 60000) t = `${Math.round(a / 1000)} s`;
  else if (a < 3600000) t = `${Math.round(a / 60000)} min`;
  else if (a < 86400000) t = `${Math.round(a / 3600000)} h`;
  else t = `${Math.round(a / 86400000)} d`;
  return d >= 0 ? `in ${t}` : `${t} ago`;
}
function timeEl(ms) { return el('time', { datetime: ms ? new Date(ms).toISOString() : '', title: fmtAbs(ms) }, fmtRel(ms)); }
function badge(status) { return el('span', { class: `badge ${status}` }, status.replace('_', ' ')); }
function b64url(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
// Run and trace ids are uuid v7 / time-ordered: runs of one tick share their first digits, so
// the page shows their last twelve (the random part; `ctl` shows the same, and
// GET /api/v1/runs/{id} takes them), with the whole id in the title.
function shortId(id) { return id ? `…${id.slice(-12)}` : '—'; }
const SIGNALS = { 1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 4: 'SIGILL', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 9: 'SIGKILL',
  10: 'SIGUSR1', 11: 'SIGSEGV', 12: 'SIGUSR2', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM', 24: 'SIGXCPU', 25: 'SIGXFSZ' };
function signalName(n) { return n === null || n === undefined ? '—' : `${SIGNALS[n] || 'signal'} (${n})`; }
// attempt 1 is the run itself; attempt 2 is the first retry
function triggerLabel(r) {
  if (r.trigger === 'retry' || r.attempt > 1) return `retry ${Math.max(1, (r.attempt || 2) - 1)}`;
  return r.trigger || '—';
}
// A dependency run's root tick: the job whose tick it belongs to, and that tick's planned time.
function rootNodes(r) {
  if (!r.root || !r.root.job) return null;
  return el('span', { class: 'run-root' }, el('a', { href: `#/jobs/${encodeURIComponent(r.root.job)}`, class: 'root-job' }, r.root.job),
    r.root.planned_at ? [' @ ', el('span', { title: fmtAbs(r.root.planned_at) }, fmtShort(r.root.planned_at))] : null);
}
function hasShard(r) { return r.shard !== undefined && r.shard !== null; }
// One readable line: what reaches the page from the API or the network, never a dump.
function oneLine(msg) {
  const first = String(msg || '').split('\n')[0].trim();
  return first.length > 240 ? `${first.slice(0, 239)}…` : first;
}
function toast(msg, isError) {
  const t = el('div', { class: 'toast' + (isError ? ' error' : ''), role: isError ? 'alert' : 'status' }, oneLine(msg));
  $('#toasts').append(t);
  setTimeout(() => t.remove(), isError ? 8000 : 4000);
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status; this.code = code; this.field = field;
  }
}

// `quiet`: a 401 is noted (the indicator says so) without opening the sign-in dialog, for the
// page's own background reads (health), so a dialog someone closed does not come back by itself.
async function api(method, path, body, { quiet = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(API_TIMEOUT_MS) });
  } catch (e) {
    masterAnswered(false);
    throw new ApiError(0, 'unreachable', 'The master does not answer; check that it is running and reachable.');
  }
  masterAnswered(true);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (resp.status === 401) {
    setAuth(state.token ? 'refused' : 'missing');
    if (!quiet) askToken(state.token ? 'That token was not accepted. Enter a valid token.' : null);
    throw new ApiError(401, 'unauthorized', 'A token is needed: sign in.');
  }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    let msg = oneLine(e.message || text || resp.statusText);
    if (resp.status === 403) msg = `Not allowed: ${msg}. Sign in with an admin token to change jobs.`;
    throw new ApiError(resp.status, e.code || `http_${resp.status}`, msg, e.field);
  }
  return data;
}

// ---------------------------------------------------------------- health: what is up, and may we trust what we show

// Called on every answer (or none) from the master: the page turns stale the moment the master
// stops answering and live again on its first answer.
function masterAnswered(ok) {
  const m = state.master;
  if (ok) {
    m.lastOk = Date.now();
    if (!m.up) { m.up = true; m.downSince = 0; healthSoon(0); refreshStatus(); scheduleRender(); }
  } else if (m.up) {
    m.up = false;
    m.downSince = Date.now();
    refreshStatus();
    scheduleRender();
  }
}

function setAuth(a) {
  if (state.auth === a) return;
  state.auth = a;
  refreshStatus();
}

let healthTimer = null;
function healthSoon(ms) {
  clearTimeout(healthTimer);
  healthTimer = setTimeout(loadHealth, ms);
}

async function loadHealth() {
  clearTimeout(healthTimer);
  try {
    const h = await api('GET', '/api/v1/health', undefined, { quiet: true });
    state.health = h;
    if (state.role !== h.role) { state.role = h.role; scheduleRender(); }
    setAuth('ok');
  } catch (e) {
    if (e.status === 401) state.health = null;
    // unreachable: masterAnswered has marked it; other errors leave the last answer
  }
  refreshStatus();
  healthTimer = setTimeout(loadHealth, HEALTH_EVERY_MS);
}

// The parts that are down, as the banner lists them: [{ component, text }].
function outages() {
  const out = [];
  if (!state.master.up) {
    out.push({ component: 'master', text: `The master does not answer (since ${new Date(state.master.downSince).toLocaleTimeString()}). `
      + 'What you see is from then: times are frozen and actions are off until it answers again.' });
    return out;
  }
  for (const c of (state.health && state.health.components) || []) {
    if (!c.ok) out.push({ component: c.name, text: `${oneLine(c.message)}.${c.action ? ` ${oneLine(c.action)}` : ''}` });
  }
  return out;
}

// Whether changes can be made now, and if not, why (the title of a disabled button).
function writeBlock() {
  if (state.auth !== 'ok') return 'Sign in with an admin token to change jobs.';
  if (state.role === 'read') return 'This token may only read: sign in with an admin token to change jobs.';
  if (!state.master.up) return 'The master does not answer.';
  const etcd = state.health && state.health.components.find((c) => c.name === 'etcd');
  if (etcd && !etcd.ok) return 'etcd does not answer: jobs cannot be changed now.';
  return null;
}

// The indicator, the banner, the stale mark and the write buttons, from what is known now.
function refreshStatus() {
  const down = outages();
  const b = $('#banner');
  b.hidden = down.length === 0;
  const sig = JSON.stringify(down);
  // rebuilt only when what it says changed: it is a live region, read out on each change
  if (b.dataset.sig !== sig) { b.dataset.sig = sig; fill(b, down.map((d) => el('p', { dataset: { component: d.component } }, d.text))); }
  document.body.dataset.stale = state.master.up ? 'false' : 'true';
  document.body.dataset.role = state.role || '';
  $('#role-chip').hidden = state.role !== 'read';
  if (!state.master.up) {
    setConn('down', feed.retryIn !== null ? `offline — reconnecting in ${feed.retryIn} s` : 'offline');
  } else if (state.auth !== 'ok') {
    setConn('unauthorized', state.auth === 'missing' ? 'sign in needed' : 'token not accepted');
  } else if (down.length) {
    setConn('degraded', `degraded — ${down.map((d) => d.component.replace('_', ' ')).join(', ')}`);
  } else if (feed.ws && feed.open) {
    setConn('live', 'live');
  } else if (feed.retryIn !== null) {
    setConn('down', `live updates off — reconnecting in ${feed.retryIn} s`);
  } else {
    setConn('connecting', 'connecting…');
  }
  applyPermissions(document);
}

// Write actions: hidden for a read-only token, disabled (with the reason) while they cannot work.
function applyPermissions(root) {
  const why = writeBlock();
  for (const b of root.querySelectorAll('[data-write]')) {
    const off = Boolean(why);
    if (b.disabled !== off) b.disabled = off;
    if (off) b.title = why; else if (b.hasAttribute('title')) b.removeAttribute('title');
  }
}

// ---------------------------------------------------------------- auth

let tokenWaiters = [];
function askToken(why) {
  const d = $('#token-dialog');
  $('#token-error').hidden = !why;
  $('#token-error').textContent = why || '';
  $('#token-remember').checked = !!localStorage.getItem('cronmesh.token');
  if (!d.open) {
    $('#token-input').value = '';
    d.showModal();
    $('#token-input').focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

async function submitToken(ev) {
  ev.preventDefault();
  const t = $('#token-input').value.trim();
  if (!t) return;
  const previous = state.token;
  state.token = t;
  try {
    // a read works with every token the master knows
    await fetch('/api/v1/workers', { headers: { Authorization: `Bearer ${t}` } }).then((r) => {
      if (r.status === 401) throw new Error('unknown');
      if (r.status === 403) throw new Error('worker');
    });
  } catch (e) {
    state.token = previous;
    $('#token-error').hidden = false;
    $('#token-error').textContent = e.message === 'worker'
      ? 'That is a worker token; it may only report runs. Use a read or admin token.'
      : (e.message === 'unknown' ? 'The master does not know that token.' : 'The master did not answer.');
    return;
  }
  sessionStorage.setItem('cronmesh.token', t);
  if ($('#token-remember').checked) localStorage.setItem('cronmesh.token', t);
  else localStorage.removeItem('cronmesh.token');
  $('#token-dialog').close();
  const w = tokenWaiters; tokenWaiters = [];
  w.forEach((r) => r());
  setAuth('ok');
  loadHealth();
  state.jobsLoaded = false;
  loadWorkers();
  if (state.runsView) loadRuns(true);
  loadJobs().then(() => feed.restart());
}

function forgetToken() {
  state.token = '';
  sessionStorage.removeItem('cronmesh.token');
  localStorage.removeItem('cronmesh.token');
  $('#token-input').value = '';
  $('#token-error').hidden = false;
  $('#token-error').textContent = 'Token forgotten on this device.';
  state.role = null;
  // what was read with the token goes with it
  state.jobs = new Map(); state.names = null; state.jobsLoaded = false;
  state.workers = []; state.running = new Map();
  if (state.runsView) { state.runsView.runs = new Map(); state.runsView.loaded = false; }
  scheduleRender();
  loadHealth();
  feed.restart();
}

// ---------------------------------------------------------------- jobs: load and keep in sync

async function loadJobs() {
  if (state.jobsLoading) return;
  state.jobsLoading = true;
  state.jobsError = null;
  const t0 = performance.now();
  const fresh = new Map();
  let cursor = null;
  let revision = 0;
  try {
    do {
      const q = new URLSearchParams({ limit: '1000', recent: String(RECENT_RUNS) });
      if (cursor) q.set('cursor', cursor);
      const page = await api('GET', `/api/v1/jobs?${q}`);
      if (!revision) revision = page.revision;
      for (const j of page.jobs) fresh.set(j.name, j);
      cursor = page.next_cursor;
      if (!state.jobsLoaded) {
        // show the first page while the rest arrives
        state.jobs = fresh; state.names = null; render();
      }
    } while (cursor);
    state.jobs = fresh;
    state.names = null;
    // job events that arrived while the pages were read: apply those after the first page's
    // revision again (applying one twice is harmless)
    for (const ev of state.pendingJobEvents) {
      if (ev.revision <= revision) continue;
      if (ev.type === 'job.saved') jobSaved(ev.job); else jobDeleted(ev.name);
    }
    state.jobsRevision = Math.max(revision, ...state.pendingJobEvents.map((e) => e.revision));
    state.jobsLoaded = true;
    state.loadStats = { jobs: fresh.size, ms: Math.round(performance.now() - t0) };
  } catch (e) {
    state.jobsError = e;
  } finally {
    state.jobsLoading = false;
    state.pendingJobEvents = [];
  }
  render();
}

function sortedNames() {
  if (!state.names) state.names = [...state.jobs.keys()].sort();
  return state.names;
}

// A job.saved event carries the stored job, not the view's computed fields: keep the old ones
// (marked stale) and re-read the job when it is on screen.
function jobSaved(job) {
  const name = job.name;
  const old = state.jobs.get(name);
  if (!old) state.names = null;
  state.jobs.set(name, {
    ...job,
    schedule_description: old && old.schedule === job.schedule ? old.schedule_description : '',
    schedule_warnings: old && old.schedule === job.schedule ? old.schedule_warnings : [],
    next_fire_times: old && old.schedule === job.schedule && old.timezone === job.timezone ? old.next_fire_times : [],
    last_run: old ? old.last_run : null,
    recent_runs: old ? old.recent_runs : [],
    stats_24h: old ? old.stats_24h : null,
    stale: true,
  });
  state.staleAt.delete(name);
}

// A view from a write (PUT, pause, resume) has no recent_runs: keep the strip the page has.
function putView(v) {
  const old = state.jobs.get(v.name);
  if (!v.recent_runs) v.recent_runs = old ? old.recent_runs || [] : [];
  if (!old) state.names = null;
  state.jobs.set(v.name, v);
}

function jobDeleted(name) {
  if (state.jobs.delete(name)) state.names = null;
}

function nextFire(job) {
  const now = Date.now();
  for (const t of job.next_fire_times || []) {
    const ms = Date.parse(t);
    if (ms > now) return ms;
  }
  return null;
}

// Re-read on-screen jobs whose computed fields are out of date (edited, or fire times passed).
function refreshStale(jobs) {
  const now = Date.now();
  for (const j of jobs) {
    if (state.staleInFlight >= STALE_PARALLEL) return;
    const name = j.name;
    // a dependent job has no fire times of its own: it runs after its upstreams
    const needs = j.stale || (!j.paused && !isDependent(j) && nextFire(j) === null);
    if (!needs || now - (state.staleAt.get(name) || 0) < STALE_REFRESH_MS) continue;
    state.staleAt.set(name, now);
    state.staleInFlight++;
    api('GET', `/api/v1/jobs/${encodeURIComponent(name)}?recent=${RECENT_RUNS}`)
      .then((v) => { if (state.jobs.has(name)) state.jobs.set(name, v); scheduleRender(); })
      .catch(() => { /* shown stale; retried later */ })
      .finally(() => { state.staleInFlight--; });
  }
}

// ---------------------------------------------------------------- the event feed

const feed = {
  ws: null,
  open: false,      // the current socket is open
  retryIn: null,    // seconds until the next attempt while it is down
  backoff: 1000,
  timer: null,
  countdown: null,
  everOpen: false,
  failures: 0,

  start() {
    clearTimeout(this.timer);
    clearInterval(this.countdown);
    this.retryIn = null;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams();
    // with a cursor the master replays job and run events missed meanwhile; before the first
    // event, job changes since the list are replayed from its revision
    const resumed = Boolean(state.feedCursor);
    if (resumed) q.set('cursor', state.feedCursor);
    else if (state.jobsRevision) q.set('since_revision', String(state.jobsRevision + 1));
    // notifications are a topic of their own, not sent unless asked for
    q.set('topics', 'jobs,workers,runs,notifications,backfills');
    const url = `${proto}//${location.host}/api/v1/events?${q}`;
    // the token travels as a subprotocol, so it never appears in a URL or an access log
    const protocols = ['cronmesh.v1'];
    if (state.token) protocols.push(`cronmesh.bearer.${b64url(state.token)}`);
    refreshStatus();
    let ws;
    try { ws = new WebSocket(url, protocols); } catch (e) { this.retry(); return; }
    this.ws = ws;
    this.open = false;
    ws.onopen = () => {
      ws.everOpened = true;
      this.open = true;
      this.backoff = 1000;
      this.failures = 0;
      masterAnswered(true);
      refreshStatus();
      // workers are presence, not replayed: read them again; runs too when nothing is replayed
      if (this.everOpen) { if (resumed) loadWorkers(); else resync(false); if (state.notifs) loadNotifs(); }
      this.everOpen = true;
    };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (_) { return; }
      onEvent(ev);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.open = false;
      // the socket closing is the quickest sign the master is gone: ask now
      loadHealth();
      if (!ws.everOpened) {
        this.failures++;
        // a refused upgrade looks like any other failure: ask the API whether it is the token
        if (this.failures >= 2) api('GET', '/api/v1/workers', undefined, { quiet: true }).catch(() => {});
      }
      this.retry();
    };
  },

  retry() {
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 15000);
    this.retryIn = Math.round(wait / 1000);
    refreshStatus();
    clearInterval(this.countdown);
    this.countdown = setInterval(() => {
      this.retryIn = Math.max(0, this.retryIn - 1);
      refreshStatus();
    }, 1000);
    this.timer = setTimeout(() => this.start(), wait);
  },

  restart() {
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    if (ws) ws.close();
    this.backoff = 1000;
    this.start();
  },
};

function setConn(s, text) {
  const c = $('#conn');
  if (c.dataset.state !== s) c.dataset.state = s;
  // the state is read out when it changes; the countdown beside it is not, every second
  const m = /^(.*?)( in \d+ s)$/.exec(text);
  const [stateText, countdown] = m ? [m[1], m[2]] : [text, ''];
  if ($('#conn-text').textContent !== stateText) $('#conn-text').textContent = stateText;
  if ($('#conn-countdown').textContent !== countdown) $('#conn-countdown').textContent = countdown;
  $('#conn-retry').hidden = !(s === 'down' && feed.retryIn !== null);
}

function onEvent(ev) {
  if (typeof ev.cursor === 'string') state.feedCursor = ev.cursor;
  if (state.jobsLoading && (ev.type === 'job.saved' || ev.type === 'job.deleted')) state.pendingJobEvents.push(ev);
  switch (ev.type) {
    case 'job.saved':
      jobSaved(ev.job);
      if (ev.revision > state.jobsRevision) state.jobsRevision = ev.revision;
      break;
    case 'job.deleted':
      jobDeleted(ev.name);
      if (ev.revision > state.jobsRevision) state.jobsRevision = ev.revision;
      break;
    case 'worker.joined':
    case 'worker.left':
      loadWorkers();
      break;
    case 'run.started':
      state.running.set(ev.run.run_id, ev.run);
      addRun({ ...ev.run, status: 'running' });
      break;
    case 'run.finished': {
      state.running.delete(ev.run.run_id);
      addRun(ev.run);
      const j = state.jobs.get(ev.run.job);
      const brief = { run_id: ev.run.run_id, status: ev.run.status, planned_at: ev.run.planned_at,
        ended_at: ev.run.ended_at, exit_code: ev.run.exit_code };
      if (j && (!j.last_run || j.last_run.planned_at <= ev.run.planned_at)) j.last_run = brief;
      if (j) {
        // the strip: newest first, a record replacing its placeholder (lost, missed) in place
        const list = (j.recent_runs || []).filter((r) => r.run_id !== brief.run_id);
        list.push(brief);
        list.sort((a, b) => b.planned_at - a.planned_at || (a.run_id < b.run_id ? 1 : -1));
        j.recent_runs = list.slice(0, RECENT_RUNS);
      }
      if (state.run && runMatches(state.run.id, ev.run.run_id)) { state.run.id = ev.run.run_id; loadRun(); }
      if (j && ev.run.status === 'missed') {
        const d = j.stats_24h || { runs: 0, succeeded: 0, failed: 0, skipped: 0, missed: 0 };
        j.stats_24h = { ...d, runs: d.runs + 1, missed: d.missed + 1 };
      }
      if (state.view && state.view.name === 'job' && state.view.job === ev.run.job) ticksSoon();
      break;
    }
    case 'notification':
      if (ev.delivery) notifSeen(ev.delivery);
      break;
    case 'backfill.progress':
      if (ev.backfill) backfillSeen(ev.backfill);
      break;
    case 'lagged':
      // events were dropped for us: reconnecting from the cursor replays them
      if (state.feedCursor) feed.restart();
      else resync(true);
      return;
    case 'resume_failed':
      // what the master could not replay is read again from the API
      resync(ev.topics !== 'runs');
      return;
    default:
      return;
  }
  scheduleRender();
}

// After a reconnect (or missed events): runs and workers are read again; jobs too when asked
// (the feed replays job changes from the list revision otherwise).
function resync(jobsToo) {
  if (jobsToo) {
    state.jobsLoaded = false;
    loadJobs();
  }
  loadWorkers();
  if (state.runsView) loadRuns(true);
  if (state.notifs) loadNotifs();
}

// ---------------------------------------------------------------- runs

function runsMatch(rv, run) {
  if (rv.job && run.job !== rv.job) return false;
  if (rv.status && run.status !== rv.status) return false;
  return true;
}

function addRun(run) {
  const rv = state.runsView;
  if (!rv || !rv.loaded) return;
  if (!runsMatch(rv, run)) {
    // a finished run may no longer match a status filter its running row matched
    rv.runs.delete(run.run_id);
    return;
  }
  rv.runs.set(run.run_id, { ...run, fresh: Date.now() });
  if (rv.runs.size > RUNS_KEPT) {
    const oldest = [...rv.runs.values()].sort(runOrder).pop();
    rv.runs.delete(oldest.run_id);
    rv.cursor = rv.cursor || `${oldest.planned_at}.${oldest.run_id}`;
  }
}

function runOrder(a, b) {
  return b.planned_at - a.planned_at || (a.run_id < b.run_id ? 1 : a.run_id > b.run_id ? -1 : 0);
}

async function loadRuns(reset) {
  const rv = state.runsView;
  if (!rv || rv.loading) return;
  rv.loading = true;
  rv.error = null;
  scheduleRender();
  if (rv.status === 'running') {
    // runs in progress are not in the store: the live list is the whole answer
    rv.runs = new Map();
    for (const r of state.running.values()) if (!rv.job || r.job === rv.job) rv.runs.set(r.run_id, { ...r, status: 'running' });
    rv.cursor = null;
    rv.loaded = true;
    rv.loading = false;
    scheduleRender();
    return;
  }
  const q = new URLSearchParams({ limit: '100' });
  if (rv.job) q.set('job', rv.job);
  if (rv.status) q.set('status', rv.status);
  if (!reset && rv.cursor) q.set('cursor', rv.cursor);
  try {
    const page = await api('GET', `/api/v1/runs?${q}`);
    if (state.runsView !== rv) return;
    if (reset) rv.runs = new Map();
    for (const r of page.runs) if (!rv.runs.has(r.run_id) || reset) rv.runs.set(r.run_id, r);
    // runs in progress are not in the store yet: show them from the live list
    if (reset && (!rv.status || rv.status === 'running')) {
      for (const r of state.running.values()) if (!rv.job || r.job === rv.job) rv.runs.set(r.run_id, { ...r, status: 'running' });
    }
    rv.cursor = page.next_cursor;
    rv.loaded = true;
  } catch (e) {
    rv.error = e;
  } finally {
    rv.loading = false;
    scheduleRender();
  }
}

async function loadWorkers() {
  try {
    state.workers = await api('GET', '/api/v1/workers');
    state.workersError = null;
    const live = new Map();
    for (const w of state.workers) for (const r of w.running) live.set(r.run_id, r);
    // keep runs the feed announced that the master's list does not know (reported elsewhere)
    for (const [id, r] of state.running) if (!live.has(id) && Date.now() - r.started_at < 60000) live.set(id, r);
    state.running = live;
  } catch (e) {
    state.workersError = e;
  }
  scheduleRender();
}

// ---------------------------------------------------------------- actions

function confirmAction(title, text, okLabel) {
  const d = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  $('#confirm-cancel').focus();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
  });
}

async function act(label, fn) {
  try {
    await fn();
    toast(label);
  } catch (e) {
    toast(e.message, true);
  }
}

const actions = {
  run: (name) => act(`Run of ${name} requested`, () => api('POST', `/api/v1/jobs/${encodeURIComponent(name)}/run`)),
  pause: (name) => act(`${name} paused`, async () => {
    putView(await api('POST', `/api/v1/jobs/${encodeURIComponent(name)}/pause`)); scheduleRender();
  }),
  resume: (name) => act(`${name} resumed`, async () => {
    putView(await api('POST', `/api/v1/jobs/${encodeURIComponent(name)}/resume`)); scheduleRender();
  }),
  async kill(name, runId) {
    const what = runId ? `run ${shortId(runId)} of ${name}` : `every running run of ${name}`;
    if (!await confirmAction('Kill?', `Kill ${what}? Its process group gets SIGTERM, then SIGKILL.`, 'Kill')) return;
    await act(`Kill of ${what} requested`, () =>
      api('POST', `/api/v1/jobs/${encodeURIComponent(name)}/kill`, runId ? { run_id: runId } : {}));
  },
  async cancelBackfill(b) {
    if (!await confirmAction('Cancel backfill?', `Cancel the backfill of ${b.job}? Ticks running finish; the ${b.pending} not sent yet are recorded skipped.`, 'Cancel backfill')) return;
    await act('Backfill cancel requested', async () => {
      backfillSeen(await api('DELETE', `/api/v1/backfills/${encodeURIComponent(b.id)}`));
    });
  },
  async restore(name, v) {
    const what = `revision ${v.revision} (${v.updated_by || 'unknown'}, ${fmtAbs(v.updated_at)})`;
    if (!await confirmAction('Restore this version?', `Restore ${name} to ${what}? Its spec replaces the current one (as an edit by you); the current one stays in the history.`, 'Restore')) return;
    await act(`${name} restored to revision ${v.revision}`, async () => {
      const j = await api('POST', `/api/v1/jobs/${encodeURIComponent(name)}/rollback`, { revision: v.revision });
      putView(j);
      scheduleRender();
    });
  },
  async remove(name) {
    const downs = [...new Set(downstreamsOf(name).map((d) => d.job))];
    const also = downs.length ? ` ${downs.length === 1 ? 'Job' : 'Jobs'} ${downs.slice(0, 5).join(', ')}${downs.length > 5 ? ` and ${downs.length - 5} more` : ''} ${downs.length === 1 ? 'runs' : 'run'} after it.` : '';
    if (!await confirmAction('Delete job?', `Delete job ${name}? It stops being scheduled; its run history stays in the run log.${also}`, 'Delete')) return;
    const path = `/api/v1/jobs/${encodeURIComponent(name)}`;
    const gone = () => {
      jobDeleted(name);
      if (state.view.name === 'job' && state.view.job === name) location.hash = '#/jobs';
      scheduleRender();
      toast(`${name} deleted`);
    };
    try {
      await api('DELETE', path);
    } catch (e) {
      // other jobs run after it: the master names them, and deletes it anyway only when told to
      if (e.status !== 409) { toast(e.message, true); return; }
      if (!await confirmAction('Other jobs depend on it', `${e.message.replace(/\.$/, '')}. Delete ${name} anyway? The jobs that run after it keep naming it in their After until they are changed.`, 'Delete anyway')) return;
      try {
        await api('DELETE', `${path}?force=true`);
      } catch (e2) { toast(e2.message, true); return; }
    }
    gone();
  },
};

// ---------------------------------------------------------------- the job form

const FORM_FIELDS = ['name', 'schedule', 'timezone', 'after', 'after_timeout', 'command', 'shell', 'timeout', 'retries', 'retry_backoff',
  'concurrency', 'max_buffer', 'misfire', 'catchup_window', 'stderr', 'starting_deadline', 'workdir', 'run_as', 'max_output_bytes', 'env', 'selector',
  'description', 'owner', 'labels', 'paused', 'pause_after_failures', 'shards', 'fanout'];
let formMode = null; // { edit: name } or { create: true }

function mapToLines(m) { return Object.entries(m || {}).map(([k, v]) => `${k}=${v}`).join('\n'); }
function linesToMap(field, text) {
  const out = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new ApiError(400, `invalid_${field}`, `line ${i + 1}: write KEY=value`, field);
    out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return out;
}

// The After field: a line per upstream, `job` (on success) or `job:on`; commas part them too.
function afterToLines(list) {
  return (Array.isArray(list) ? list : []).filter((a) => a && a.job).map((a) => (a.on && a.on !== 'success' ? `${a.job}:${a.on}` : a.job)).join('\n');
}
function linesToAfter(text) {
  const out = [];
  for (const [i, raw] of text.split('\n').entries()) {
    for (const part of raw.split(',')) {
      const item = part.trim();
      if (!item) continue;
      const colon = item.indexOf(':');
      const job = (colon < 0 ? item : item.slice(0, colon)).trim();
      const on = colon < 0 ? 'success' : item.slice(colon + 1).trim();
      if (!job) throw new ApiError(400, 'invalid_after', `line ${i + 1}: write job or job:condition`, 'after');
      if (!DEP_ON.includes(on)) throw new ApiError(400, 'invalid_after', `line ${i + 1}: the condition "${on}" is not one of ${DEP_ON.join(', ')}`, 'after');
      out.push({ job, on });
    }
  }
  return out;
}

function openJobForm(name) {
  const f = $('#job-form');
  f.reset();
  clearFormErrors();
  const job = name ? state.jobs.get(name) : null;
  // the stored `after`, sent back as it is while its field is not changed
  formMode = job ? { edit: name, after: Array.isArray(job.after) ? job.after : null, afterText: afterToLines(job.after) } : { create: true };
  $('#job-title').textContent = job ? `Edit ${name}` : 'New job';
  const nameInput = f.elements.name;
  nameInput.readOnly = !!job;
  if (job) {
    const s = job;
    for (const k of FORM_FIELDS) {
      const input = f.elements[k];
      const v = s[k];
      if (k === 'paused') input.checked = !!v;
      else if (k === 'after') input.value = afterToLines(v);
      else if (k === 'fanout') input.value = v || 'one';
      else if (['env', 'selector', 'labels'].includes(k)) input.value = mapToLines(v);
      else if (v !== undefined && v !== null) input.value = String(v);
    }
  } else {
    f.elements.concurrency.value = 'allow';
    f.elements.fanout.value = 'one';
    f.elements.misfire.value = 'run_once';
    f.elements.stderr.value = 'merged';
  }
  // absent: the fleet default; a list (even empty): exactly these rules
  const rules = job && Array.isArray(job.notify) ? job.notify : null;
  fill($('#notify-rules'), (rules || []).map(ruleRow));
  setNotifyMode(rules ? 'rules' : 'default');
  const why = $('#f-paused-reason');
  why.hidden = !(job && job.paused && job.paused_reason);
  why.textContent = why.hidden ? '' : `Paused by the master${job.paused_at ? ` at ${fmtAbs(job.paused_at)}` : ''}: ${job.paused_reason}. Unticking Paused resumes it.`;
  loadChannels();
  $('#job-dialog').showModal();
  (job ? f.elements.schedule : nameInput).focus();
  runPreview();
}

// ---------------------------------------------------------------- notification rules (the job form)

const NOTIFY_EVENTS = ['failure', 'recovery', 'missed', 'timed_out', 'killed', 'lost', 'paused'];
const NOTIFY_DEFAULT_ON = ['failure', 'recovery'];
const CHANNELS_FRESH_MS = 30000;

// The master's channels and fleet default rules (GET /api/v1/notify/channels), read when the
// form, a job page or the notifications view opens, at most every CHANNELS_FRESH_MS.
async function loadChannels(force) {
  const c = state.channels;
  if (c && (c.loading || (!force && !c.error && Date.now() - c.at < CHANNELS_FRESH_MS))) return;
  const next = { list: c ? c.list : [], default: c ? c.default : [], error: null, at: Date.now(), loading: true, loaded: c ? c.loaded : false };
  state.channels = next;
  try {
    const body = await api('GET', '/api/v1/notify/channels');
    next.list = body.channels || [];
    next.default = body.default || [];
    next.loaded = true;
  } catch (e) {
    next.error = e;
  } finally {
    next.loading = false;
  }
  channelsChanged();
  scheduleRender();
}

// The form's selects and its note, after the channels were read (the form may be open).
function channelsChanged() {
  for (const sel of document.querySelectorAll('#notify-rules .rule-channel')) fillChannelOptions(sel, sel.value);
  const c = state.channels;
  $('#notify-default-text').textContent = c && c.loaded ? `(${rulesText(c.default)})` : '';
  const note = $('#notify-channels-note');
  const msg = !c || c.loading && !c.loaded ? ''
    : c.error ? `The channels could not be read: ${c.error.message}`
      : !c.list.length ? 'No channel is configured on the master ([[master.notify.channels]] in its config file).' : '';
  note.hidden = !msg;
  note.textContent = msg;
}

function fillChannelOptions(sel, value) {
  const list = (state.channels && state.channels.list) || [];
  const names = list.map((c) => c.name);
  const opts = list.map((c) => el('option', { value: c.name }, `${c.name} (${c.kind}${c.target ? `, ${c.target}` : ''})`));
  // a rule naming a channel the master does not (or not yet) list keeps it
  if (value && !names.includes(value)) opts.unshift(el('option', { value }, state.channels && state.channels.loaded ? `${value} (not configured)` : value));
  if (!opts.length) opts.push(el('option', { value: '' }, 'no channel configured'));
  fill(sel, opts);
  sel.value = value || names[0] || '';
}

let ruleSeq = 0;
// One rule: its channel, the events it is for, after how many consecutive failures. The rule
// it was made from is kept, so saving unchanged stores it unchanged (the order of its events,
// a default left out, keys this page does not know).
function ruleRow(rule) {
  const id = `r${++ruleSeq}`;
  const on = rule.on || NOTIFY_DEFAULT_ON;
  const sel = el('select', { id: `f-${id}-channel`, class: 'rule-channel', 'aria-describedby': `e-${id}` });
  fillChannelOptions(sel, rule.channel);
  const row = el('div', { class: 'rule', role: 'group', 'aria-labelledby': `t-${id}` },
    el('div', { class: 'rule-head' },
      el('strong', { class: 'rule-title', id: `t-${id}` }, 'Rule'),
      el('button', { type: 'button', class: 'link rule-remove', onclick: () => { row.remove(); numberRules(); } }, 'Remove')),
    el('div', { class: 'rule-fields' },
      el('div', { class: 'field' }, el('label', { for: sel.id }, 'Channel'), sel),
      el('div', { class: 'field' }, el('label', { for: `f-${id}-after` }, 'After N failures'),
        el('input', { id: `f-${id}-after`, class: 'rule-after', type: 'number', min: '1', max: '1000', step: '1', placeholder: '1',
          value: rule.after_failures === undefined || rule.after_failures === null ? '' : String(rule.after_failures), 'aria-describedby': `e-${id}` })),
      el('fieldset', { class: 'rule-on', 'aria-describedby': `e-${id}` }, el('legend', {}, 'On'),
        NOTIFY_EVENTS.map((ev) => el('label', { class: 'check' },
          el('input', { type: 'checkbox', value: ev, checked: on.includes(ev), dataset: { event: ev } }), ev.replace('_', ' '))))),
    el('p', { class: 'field-error rule-error', id: `e-${id}`, hidden: true }));
  row.rule = rule;
  return row;
}

function numberRules() {
  const rows = document.querySelectorAll('#notify-rules .rule');
  rows.forEach((r, i) => {
    const t = r.querySelector('.rule-title');
    t.textContent = `Rule ${i + 1}`;
    r.querySelector('.rule-remove').setAttribute('aria-label', `Remove rule ${i + 1}`);
  });
  const none = $('#f-notify-rules').checked && rows.length === 0;
  let p = document.getElementById('notify-none');
  if (none && !p) $('#notify-rules').append(el('p', { class: 'muted small', id: 'notify-none' }, 'No rules: this job sends no notifications.'));
  if (!none && p) p.remove();
}

function setNotifyMode(m) {
  $('#f-notify-default').checked = m === 'default';
  $('#f-notify-rules').checked = m === 'rules';
  $('#notify-rules').hidden = m !== 'rules';
  numberRules();
}

function addRule() {
  if (!$('#f-notify-rules').checked) setNotifyMode('rules');
  const row = ruleRow({});
  const none = document.getElementById('notify-none');
  if (none) none.remove();
  $('#notify-rules').append(row);
  numberRules();
  row.querySelector('.rule-channel').focus();
}

function sameSet(a, b) { return a.length === b.length && a.every((x) => b.includes(x)); }

// undefined: the fleet default (the field left out); otherwise the rules, in their order.
function notifySpec() {
  if (!$('#f-notify-rules').checked) return undefined;
  return [...document.querySelectorAll('#notify-rules .rule')].map((row, i) => {
    const { channel: _c, on: oldOn, after_failures: _a, ...rest } = row.rule || {};
    const rule = { ...rest, channel: row.querySelector('.rule-channel').value };
    const checked = [...row.querySelectorAll('.rule-on input:checked')].map((x) => x.value);
    const on = oldOn ? [...oldOn.filter((e) => checked.includes(e)), ...checked.filter((e) => !oldOn.includes(e))] : checked;
    // a stored rule without `on` stays without it while it has the default events
    if (!(row.rule && row.rule.channel !== undefined && !oldOn && sameSet(on, NOTIFY_DEFAULT_ON))) rule.on = on;
    const a = row.querySelector('.rule-after').value.trim();
    if (a !== '') {
      const n = Number(a);
      if (!Number.isInteger(n)) throw new ApiError(400, 'invalid_job', `notify[${i}].after_failures: must be a whole number`, `notify[${i}].after_failures`);
      rule.after_failures = n;
    }
    return rule;
  });
}

function ruleText(r) {
  const on = (r.on || NOTIFY_DEFAULT_ON).map((e) => e.replace('_', ' ')).join(', ');
  const n = r.after_failures || 1;
  return `${r.channel} on ${on || 'nothing'}${n > 1 ? ` after ${n} consecutive failures` : ''}`;
}
function rulesText(rules) { return rules && rules.length ? rules.map(ruleText).join('; ') : 'none'; }

// What a job's notifications are, in words, for its page.
function jobNotifyText(j) {
  if (!Array.isArray(j.notify)) {
    const c = state.channels;
    return `the fleet default${c && c.loaded ? `: ${rulesText(c.default)}` : ''}`;
  }
  if (!j.notify.length) return 'none (this job opts out of the fleet default)';
  return rulesText(j.notify);
}

// ---------------------------------------------------------------- notifications: deliveries and channels

const NOTIFS_JOB_LIMIT = 20;
const NOTIFS_ALL_LIMIT = 100;

function notifOrder(a, b) {
  return b.created_at - a.created_at || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}
// whether delivery `a` is a later state than `b` of the same delivery
function notifNewer(a, b) {
  return (a.updated_at || 0) > (b.updated_at || 0) || ((a.updated_at || 0) === (b.updated_at || 0) && (a.attempts || 0) > (b.attempts || 0));
}
function notifMatches(nv, d) {
  return (!nv.job || d.job === nv.job) && (!nv.status || d.status === nv.status);
}
function trimNotifs(nv) {
  if (nv.list.size <= nv.limit) return;
  const keep = [...nv.list.values()].sort(notifOrder).slice(0, nv.limit);
  nv.list = new Map(keep.map((d) => [d.id, d]));
}

async function loadNotifs() {
  const nv = state.notifs;
  if (!nv) return;
  if (nv.loading) { nv.again = true; return; }
  nv.loading = true;
  nv.again = false;
  nv.live = new Map();
  const q = new URLSearchParams({ limit: String(nv.limit) });
  if (nv.job) q.set('job', nv.job);
  if (nv.status) q.set('status', nv.status);
  try {
    const body = await api('GET', `/api/v1/notifications?${q}`);
    if (state.notifs !== nv) return;
    const list = new Map(body.notifications.map((d) => [d.id, d]));
    // what the feed brought while the list was read, when it is newer than the list's
    for (const [id, d] of nv.live) {
      const got = list.get(id);
      if (!got || notifNewer(d, got)) list.set(id, d);
    }
    nv.list = list;
    trimNotifs(nv);
    nv.loaded = true;
    nv.error = null;
  } catch (e) {
    if (state.notifs === nv) nv.error = e;
  } finally {
    nv.loading = false;
    nv.live = null;
    scheduleRender();
    if (nv.again && state.notifs === nv) loadNotifs();
  }
}

// A delivery from the feed (created, or its status or attempts changed), or a test's answer.
function notifSeen(d) {
  const nv = state.notifs;
  if (!nv || !d || !d.id) return;
  if (nv.live) { const had = nv.live.get(d.id); if (!had || !notifNewer(had, d)) nv.live.set(d.id, d); }
  const old = nv.list.get(d.id);
  if (old && notifNewer(old, d)) return;
  if (!notifMatches(nv, d)) { nv.list.delete(d.id); return; }
  nv.list.set(d.id, { ...d, fresh: Date.now() });
  trimNotifs(nv);
}

const testing = new Set(); // channels a test is being sent to (it may take the receiver's 10 s)
async function testChannel(name) {
  if (testing.has(name)) return;
  testing.add(name);
  scheduleRender();
  try {
    const r = await api('POST', `/api/v1/notify/test?channel=${encodeURIComponent(name)}`);
    if (r && r.delivery) notifSeen(r.delivery);
    toast(`Test notification sent to ${name}${r && r.delivery ? `: ${r.delivery.status}` : ''}`);
  } catch (e) {
    toast(`Test to ${name} failed: ${e.message}`, true);
  } finally {
    testing.delete(name);
  }
  scheduleRender();
}

function deliveryStatus(d) {
  const bits = [badge(d.status)];
  if (d.status === 'pending' && d.next_attempt_at) {
    bits.push(el('span', { class: 'muted small', title: fmtAbs(d.next_attempt_at) }, d.next_attempt_at > Date.now() + 999 ? ` next try ${fmtRel(d.next_attempt_at)}` : ' trying now'));
  }
  if (d.status === 'delivered' && d.delivered_at) bits.push(el('span', { class: 'muted small', title: fmtAbs(d.delivered_at) }, ` ${fmtShort(d.delivered_at)}`));
  return bits;
}

function deliveryRow(d, withJob, now) {
  const next = d.status === 'pending' && d.next_attempt_at ? (d.next_attempt_at > now + 999 ? fmtRel(d.next_attempt_at) : 'now') : '';
  const cells = [
    [String(d.created_at), () => el('td', { 'data-label': 'Time' }, el('span', { title: fmtAbs(d.created_at) }, fmtShort(d.created_at)))],
    [d.event, () => el('td', { 'data-label': 'Event' }, String(d.event || '—').replace('_', ' '))],
    withJob ? [d.job || '', () => el('td', { 'data-label': 'Job' }, d.job ? el('a', { href: `#/jobs/${encodeURIComponent(d.job)}` }, d.job) : el('span', { class: 'muted' }, '—'))] : null,
    [`${d.channel}|${d.kind}`, () => el('td', { 'data-label': 'Channel' }, d.channel, d.kind ? el('span', { class: 'muted small' }, ` ${d.kind}`) : null)],
    [`${d.status}|${next}|${d.delivered_at || ''}`, () => el('td', { 'data-label': 'Status' }, deliveryStatus(d))],
    [String(d.attempts), () => el('td', { 'data-label': 'Attempts' }, String(d.attempts ?? 0))],
    [d.last_error || '', () => el('td', { 'data-label': 'Last error' }, d.last_error ? el('span', { class: 'bad small', title: d.last_error }, oneLine(d.last_error)) : el('span', { class: 'muted' }, '—'))],
    [d.run_id || '', () => el('td', { 'data-label': 'Run' }, d.run_id ? el('a', { class: 'mono', href: `#/runs/${encodeURIComponent(d.run_id)}`, title: d.run_id }, shortId(d.run_id)) : el('span', { class: 'muted' }, '—'))],
  ].filter(Boolean);
  return { key: d.id, attrs: { 'data-delivery': d.id, 'data-status': d.status, 'data-event': d.event, 'data-channel': d.channel, class: d.fresh && now - d.fresh < 1500 ? 'fresh' : null }, cells };
}

// The deliveries of state.notifs into `body`: newest first.
function renderNotifsBody(body) {
  const nv = state.notifs;
  if (!body || !nv) return;
  if (nv.error && !nv.loaded) {
    const msg = nv.error.message;
    mode(body, `error:${msg}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty', id: 'notifications-error' }, `Cannot list notifications: ${msg} `,
      el('button', { type: 'button', class: 'secondary', onclick: () => loadNotifs() }, 'Try again'))));
    return;
  }
  if (!nv.loaded) { mode(body, 'loading', () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, 'Loading notifications…'))); return; }
  const list = [...nv.list.values()].sort(notifOrder);
  if (!list.length) {
    const text = nv.job ? 'No notification for this job yet. They appear here as they are sent.'
      : nv.status ? `No ${nv.status} notifications.` : 'No notification yet. They appear here as they are sent.';
    mode(body, `empty:${text}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty', id: 'notifications-empty' }, text)));
    return;
  }
  const withJob = !nv.job;
  const heads = ['Time', 'Event', withJob ? 'Job' : null, 'Channel', 'Status', 'Attempts', 'Last error', 'Run'].filter(Boolean);
  mode(body, `table:${withJob}`, () => el('div', { class: 'table-wrap' }, el('table', { class: 'cards', id: 'notifications-table' },
    el('thead', {}, el('tr', {}, heads.map((t) => el('th', { scope: 'col' }, t)))), el('tbody', {}))));
  const now = Date.now();
  patchRows(body.querySelector('#notifications-table tbody'), list.map((d) => deliveryRow(d, withJob, now)));
}

// #/notifications: the channels (a test per channel, for admins), the fleet default, and the
// newest deliveries of every job, live.
function renderNotifications() {
  const main = $('#main');
  const nv = state.notifs;
  if (skeleton !== 'notifications') {
    skeleton = 'notifications';
    fill(main,
      el('h1', {}, 'Notifications'),
      el('h2', {}, 'Channels'),
      el('div', { id: 'channels-body' }),
      el('p', { id: 'notify-default', class: 'muted' }),
      el('h2', {}, 'Deliveries'),
      el('div', { class: 'toolbar' },
        el('label', { for: 'notifs-status' }, 'Status'),
        el('select', { id: 'notifs-status', onchange: (e) => { nv.status = e.target.value; nv.list = new Map(); nv.loaded = false; loadNotifs(); scheduleRender(); } },
          ...['', 'pending', 'delivered', 'dead'].map((s) => el('option', { value: s }, s || 'all statuses')))),
      el('div', { id: 'notify-body' }));
  }
  const c = state.channels;
  const cb = document.getElementById('channels-body');
  if (!c || (!c.loaded && !c.error)) {
    mode(cb, 'loading', () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, 'Loading channels…')));
  } else if (c.error && !c.loaded) {
    const msg = c.error.message;
    mode(cb, `error:${msg}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, `Cannot list the channels: ${msg} `,
      el('button', { type: 'button', class: 'secondary', onclick: () => loadChannels(true) }, 'Try again'))));
  } else if (!c.list.length) {
    mode(cb, 'none', () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty', id: 'channels-empty' },
      'No channel is configured. Channels are set in the master\u2019s config file, under [[master.notify.channels]].')));
  } else {
    mode(cb, 'table', () => el('div', { class: 'table-wrap' }, el('table', { class: 'cards', id: 'channels-table' },
      el('thead', {}, el('tr', {}, ['Channel', 'Kind', 'Target', ''].map((t) => el('th', { scope: 'col' }, t)))), el('tbody', {}))));
    keepFocus(cb, () => patchRows(cb.querySelector('tbody'), c.list.map((ch) => ({
      key: ch.name,
      attrs: { 'data-channel': ch.name },
      cells: [
        [ch.name, () => el('td', { 'data-label': 'Channel' }, el('strong', {}, ch.name))],
        [`${ch.kind}|${ch.signed}`, () => el('td', { 'data-label': 'Kind' }, ch.kind,
          ch.signed ? el('span', { class: 'chip', title: 'Each request carries X-Cronmesh-Signature (HMAC-SHA256)' }, 'signed') : null)],
        [ch.target || '', () => el('td', { 'data-label': 'Target' }, ch.target ? el('code', {}, ch.target) : '—')],
        [`test|${testing.has(ch.name)}`, () => el('td', { class: 'actions' }, el('button', { type: 'button', class: 'small secondary',
          dataset: { key: `channel/${ch.name}/test`, write: '' }, 'aria-label': `Send a test notification to ${ch.name}`,
          'aria-busy': testing.has(ch.name) ? 'true' : null, onclick: () => testChannel(ch.name) }, testing.has(ch.name) ? 'Sending…' : 'Send test'))],
      ],
    }))));
  }
  const def = document.getElementById('notify-default');
  const defText = c && c.loaded ? `Fleet default (jobs without rules of their own): ${rulesText(c.default)}.` : '';
  if (def.textContent !== defText) def.textContent = defText;
  renderNotifsBody(document.getElementById('notify-body'));
}

// ---------------------------------------------------------------- the schedule preview

// While someone types a schedule, its next fire times (or why it is invalid) come from
// POST /api/v1/schedules/preview, a quarter of a second after the last key; an older answer
// arriving late is dropped.
const PREVIEW_DELAY_MS = 250;
const preview = { timer: null, seq: 0 };

function previewSoon() {
  clearTimeout(preview.timer);
  preview.timer = setTimeout(runPreview, PREVIEW_DELAY_MS);
}

// "2030-03-10T03:00:00-04:00" as "Sun 2030-03-10 03:00:00 -04:00": the zone's own wall time,
// so a DST change shows in the offset.
function fmtZoned(t) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(.*)$/.exec(t);
  if (!m) return t;
  const wd = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][new Date(Date.UTC(+m[1], +m[2] - 1, +m[3])).getUTCDay()];
  return `${wd} ${m[1]}-${m[2]}-${m[3]} ${m[4]} ${m[5] === '+00:00' ? 'UTC' : m[5]}`;
}

async function runPreview() {
  clearTimeout(preview.timer);
  const f = $('#job-form');
  const box = $('#schedule-preview');
  const seq = ++preview.seq;
  const schedule = f.elements.schedule.value.trim();
  if (!schedule) { box.dataset.state = 'empty'; fill(box); return; }
  const body = { schedule, count: 5 };
  const tz = f.elements.timezone.value.trim();
  if (tz) body.timezone = tz;
  const name = f.elements.name.value.trim();
  if (name) body.name = name;
  let p;
  try {
    p = await api('POST', '/api/v1/schedules/preview', body);
  } catch (e) {
    if (seq !== preview.seq) return;
    box.dataset.state = 'error';
    const msg = e.field === 'name' && !name ? 'This schedule uses H, which is chosen from the job name: enter the name to see its times.'
      : e.message;
    fill(box, el('p', { class: 'preview-error', id: 'preview-error' }, msg));
    return;
  }
  if (seq !== preview.seq) return;
  box.dataset.state = 'ok';
  fill(box,
    el('p', { class: 'muted' }, p.description,
      p.dst_rule === 'fixed_time' && p.timezone !== 'UTC' ? ' Runs once when DST repeats an hour, and at the end of a skipped hour.' : ''),
    el('ol', { id: 'preview-times' }, p.next_fire_times.map((t) => el('li', {}, el('time', { datetime: t }, fmtZoned(t))))),
    (p.warnings || []).map((w) => el('p', { class: 'warning' }, w)));
}

function clearFormErrors() {
  const f = $('#job-form');
  $('#job-form-error').hidden = true;
  for (const k of FORM_FIELDS) {
    const e = document.getElementById(`e-${k}`);
    if (e) { e.hidden = true; e.textContent = ''; }
    f.elements[k].removeAttribute('aria-invalid');
  }
  for (const e of document.querySelectorAll('#e-notify, #notify-rules .rule-error')) { e.hidden = true; e.textContent = ''; }
  for (const e of document.querySelectorAll('#f-notify [aria-invalid]')) e.removeAttribute('aria-invalid');
}

// The field an error is about, and the message without it: the body's `field`, the code
// (invalid_schedule), or the message's own prefix for the notification rules
// ("notify[0].after_failures: must be at least 1"), the most precise of them.
function errorPath(err) {
  let path = err.field || (err.code && err.code.startsWith('invalid_') && err.code !== 'invalid_job' ? err.code.slice(8) : null);
  let text = String(err.message || '').replace(/^invalid job spec: /, '');
  if (path && text.startsWith(`${path}: `)) text = text.slice(path.length + 2);
  const m = /^((?:notify|pause_after_failures|after_timeout|after)(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)?): ([\s\S]*)$/.exec(text);
  if (m && (!path || m[1].startsWith(path))) { path = m[1]; text = m[2]; }
  return { path, text };
}

// notify[1].channel: at that rule's channel; notify[0].on[2]: at its events; notify: the fieldset.
function showNotifyError(path, text) {
  const m = /^notify\[(\d+)\](?:\.([a-z_]+))?/.exec(path);
  const row = m ? document.querySelectorAll('#notify-rules .rule')[Number(m[1])] : null;
  if (!row) {
    const slot = $('#e-notify');
    slot.textContent = path === 'notify' ? text : `${path}: ${text}`;
    slot.hidden = false;
    const first = $('#f-notify-rules');
    first.setAttribute('aria-invalid', 'true');
    first.focus();
    return;
  }
  const part = m[2];
  const target = part === 'after_failures' ? row.querySelector('.rule-after')
    : part === 'on' ? row.querySelector('.rule-on input') : row.querySelector('.rule-channel');
  if (part === 'on') row.querySelector('.rule-on').setAttribute('aria-invalid', 'true');
  const slot = row.querySelector('.rule-error');
  slot.textContent = text;
  slot.hidden = false;
  target.setAttribute('aria-invalid', 'true');
  target.focus();
}

function showFormError(err) {
  const f = $('#job-form');
  const { path, text } = errorPath(err);
  if (path && /^notify(\[|$)/.test(path)) { showNotifyError(path, text); return; }
  let field = path;
  let said = text;
  // after[1].job: at the After field, which says which line
  if (field && /^after[[.]/.test(field)) { said = `${field}: ${text}`; field = 'after'; }
  const slot = field && f.elements[field] && document.getElementById(`e-${field}`);
  if (slot) {
    // next to the field, its name need not be repeated
    slot.textContent = said;
    slot.hidden = false;
    f.elements[field].setAttribute('aria-invalid', 'true');
    f.elements[field].focus();
  } else {
    // a form-wide error is shown at the top of the form and given the focus, so it is seen
    const box = $('#job-form-error');
    box.textContent = err.message;
    box.hidden = false;
    box.focus();
    box.scrollIntoView({ block: 'nearest' });
  }
}

function formSpec() {
  const f = $('#job-form');
  const spec = {};
  for (const k of FORM_FIELDS) {
    const input = f.elements[k];
    if (k === 'paused') { spec.paused = input.checked; continue; }
    if (k === 'after') {
      const after = formMode && formMode.after && input.value.trim() === formMode.afterText ? formMode.after : linesToAfter(input.value);
      if (after.length) spec.after = after;
      continue;
    }
    const v = input.value.trim();
    if (['env', 'selector', 'labels'].includes(k)) {
      const m = linesToMap(k, input.value);
      if (Object.keys(m).length) spec[k] = m;
    } else if (k === 'fanout') {
      if (v && v !== 'one') spec.fanout = v;
    } else if (k === 'retries' || k === 'max_buffer' || k === 'max_output_bytes' || k === 'pause_after_failures' || k === 'shards') {
      if (v !== '') {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0) throw new ApiError(400, `invalid_${k}`, 'must be a whole number, 0 or more', k);
        spec[k] = n;
      }
    } else if (v !== '') {
      spec[k] = k === 'command' ? input.value : v;
    }
  }
  const notify = notifySpec();
  if (notify !== undefined) spec.notify = notify;
  // a job that runs after others has no schedule of its own
  if (spec.after && spec.schedule === undefined) spec.schedule = '';
  return spec;
}

async function saveJob(ev) {
  ev.preventDefault();
  clearFormErrors();
  const btn = $('#job-save');
  let spec;
  try {
    spec = formSpec();
  } catch (e) { showFormError(e); return; }
  const name = spec.name || '';
  if (!name) { showFormError(new ApiError(400, 'invalid_name', 'must not be empty', 'name')); return; }
  if (formMode.create && state.jobs.has(name)) {
    showFormError(new ApiError(409, 'invalid_name', `a job named ${name} exists; edit it instead, or pick another name`, 'name'));
    return;
  }
  btn.disabled = true;
  try {
    putView(await api('PUT', `/api/v1/jobs/${encodeURIComponent(name)}`, spec));
    $('#job-dialog').close();
    toast(`${name} saved`);
    scheduleRender();
  } catch (e) {
    showFormError(e);
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- the run page (#/runs/{id})

// Whether `id` (a whole id, or the end or beginning of one, as tables show them) is `runId`.
function runMatches(id, runId) {
  return id === runId || (id.length >= 6 && (runId.endsWith(id) || runId.startsWith(id)));
}

function liveRun(id) {
  for (const r of state.running.values()) if (runMatches(id, r.run_id)) return r;
  return null;
}

function openRun(runId) {
  location.hash = `#/runs/${encodeURIComponent(runId)}`;
}

async function loadRun() {
  const rv = state.run;
  if (!rv || rv.loading) return;
  rv.loading = true;
  const id = rv.id;
  try {
    const r = await api('GET', `/api/v1/runs/${encodeURIComponent(id)}`);
    if (state.run !== rv) return;
    rv.record = r;
    if (r.run_id !== rv.id) {
      // opened by the end (or beginning) of its id: the page's URL becomes the whole id's
      rv.id = r.run_id;
      state.view.run = r.run_id;
      skeleton = `run:${r.run_id}`;
      history.replaceState(null, '', `#/runs/${encodeURIComponent(r.run_id)}`);
    }
    rv.error = null;
    loadNeighbours(rv);
  } catch (e) {
    if (state.run !== rv) return;
    rv.error = e;
  } finally {
    rv.loading = false;
    scheduleRender();
  }
}

// The job's runs just older and just newer than this one (previous / next). The list is newest
// first, so the next one is looked for in windows after this run that grow until one holds a
// newer run; within that window the oldest newer one is it.
async function loadNeighbours(rv) {
  const r = rv.record;
  const job = encodeURIComponent(r.job);
  const newer = (x) => x.planned_at > r.planned_at || (x.planned_at === r.planned_at && x.run_id > r.run_id);
  try {
    const older = await api('GET', `/api/v1/runs?job=${job}&limit=1&cursor=${encodeURIComponent(`${r.planned_at}.${r.run_id}`)}`);
    if (state.run !== rv) return;
    rv.prev = older.runs[0] || null;
    rv.next = null;
    for (let w = 1000; w <= 400 * 86400e3 && !rv.next; w *= 8) {
      let cursor = null;
      let last = null;
      do {
        const q = new URLSearchParams({ job: r.job, limit: '100', from: String(r.planned_at), to: String(r.planned_at + w) });
        if (cursor) q.set('cursor', cursor);
        const page = await api('GET', `/api/v1/runs?${q}`);
        if (state.run !== rv) return;
        const after = page.runs.filter(newer);
        if (after.length) last = after[after.length - 1];
        cursor = page.next_cursor;
      } while (cursor && last);
      rv.next = last;
      if (!last && w * 8 > 400 * 86400e3) break;
    }
    rv.neighboursKnown = true;
  } catch (_) { /* the buttons stay off */ }
  scheduleRender();
}

function runSummary(r) {
  const ended = r.status !== 'running';
  const exit = r.exit_code !== null && r.exit_code !== undefined ? `exit ${r.exit_code}` : (r.signal ? signalName(r.signal) : null);
  return el('p', { class: 'run-summary', id: 'run-summary' },
    badge(r.status), ' ',
    el('a', { href: `#/jobs/${encodeURIComponent(r.job)}` }, r.job), ' · ',
    triggerLabel(r), r.root && r.root.job ? [' of the tick ', rootNodes(r)] : '', hasShard(r) ? ` · shard ${r.shard}` : '',
    ' · planned ', el('span', { title: fmtAbs(r.planned_at) }, fmtShort(r.planned_at)),
    ended && r.duration_ms !== null && r.duration_ms !== undefined ? ` · took ${fmtDuration(r.duration_ms)}` : '',
    !ended && r.started_at ? el('span', {}, ' · running for ', el('span', { id: 'run-elapsed', dataset: { since: String(r.started_at) } }, fmtDuration(Date.now() - r.started_at))) : '',
    exit ? ` · ${exit}` : '',
    r.worker ? ` · on ${r.worker}` : '');
}

function runDetails(r) {
  const rows = [
    ['Job', el('a', { href: `#/jobs/${encodeURIComponent(r.job)}` }, r.job)],
    ['Status', badge(r.status)],
    ['Trigger', triggerLabel(r)],
    ...(r.root && r.root.job ? [['Root tick', el('span', { id: 'run-root' }, rootNodes(r), r.root.planned_at ? ` (${fmtAbs(r.root.planned_at)})` : '')]] : []),
    ...(hasShard(r) ? [['Shard', String(r.shard)]] : []),
    ['Attempt', r.attempt > 1 ? `${r.attempt} (retry ${r.attempt - 1})` : (r.attempt ?? '—')],
    ['Planned', fmtAbs(r.planned_at)], ['Started', fmtAbs(r.started_at)], ['Ended', fmtAbs(r.ended_at)],
    ['Lag', r.lag_ms !== undefined && r.lag_ms !== null ? fmtDuration(r.lag_ms) : '—'], ['Duration', fmtDuration(r.duration_ms)],
    ['Exit code', r.exit_code ?? '—'], ['Signal', signalName(r.signal)], ['Worker', r.worker || '—'],
    ['CPU', r.cpu_ms !== undefined && r.cpu_ms !== null ? fmtDuration(r.cpu_ms) : '—'],
    ['Max RSS', r.max_rss_kb ? `${r.max_rss_kb} KiB` : '—'],
    ['Trace id', el('code', { class: 'id' }, r.trace_id || '—')], ['Run id', el('code', { class: 'id' }, r.run_id)],
  ];
  if (r.error) rows.splice(2, 0, ['Error', el('span', { class: 'bad' }, r.error)]);
  return el('dl', { class: 'spec', id: 'run-details' }, rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

// Output first: a run is opened to read what it printed. stderr lines are marked where the
// record tells them apart.
function runOutput(r) {
  if (!r.output) return el('p', { class: 'muted', id: 'run-output' }, r.status === 'running' ? 'Still running: its output is stored when it ends.' : 'No output.');
  return el('pre', { class: 'output', tabindex: '0', 'aria-label': 'Output', id: 'run-output' }, outputNodes(r));
}

// The output as text nodes, stderr's spans (byte ranges of the output, when the record has them)
// in their own marked element.
function outputNodes(r) {
  const spans = r.stderr_spans || [];
  if (!spans.length) return [r.output];
  const bytes = new TextEncoder().encode(r.output);
  const dec = new TextDecoder();
  const out = [];
  let at = 0;
  for (const [from, to] of spans) {
    if (from > at) out.push(dec.decode(bytes.slice(at, from)));
    out.push(el('span', { class: 'stderr', title: 'stderr' }, dec.decode(bytes.slice(from, to))));
    at = to;
  }
  if (at < bytes.length) out.push(dec.decode(bytes.slice(at)));
  return out;
}

function renderRun(id) {
  const main = $('#main');
  if (skeleton !== `run:${id}`) {
    skeleton = `run:${id}`;
    fill(main, el('div', { id: 'run-page', class: 'run-page' }));
  }
  const page = document.getElementById('run-page');
  const rv = state.run;
  const r = rv && rv.record;
  const live = liveRun(id);
  const shown = r || (live ? { ...live, status: 'running' } : null);
  // built again only when what it shows changed; a running run's time goes on in place
  const sig = JSON.stringify([shown, rv && rv.error && rv.error.message, rv && rv.prev && rv.prev.run_id, rv && rv.next && rv.next.run_id, state.role]);
  if (page.dataset.sig === sig) {
    const e = document.getElementById('run-elapsed');
    if (e) { const t = fmtDuration(Date.now() - Number(e.dataset.since)); if (e.textContent !== t) e.textContent = t; }
    return;
  }
  page.dataset.sig = sig;
  keepFocus(page, () => {
    if (!shown) {
      fill(page, el('p', { class: 'small' }, el('a', { href: '#/runs' }, '← All runs')),
        el('h1', {}, `Run ${shortId(id)}`),
        rv && rv.error ? el('p', { class: 'form-error', id: 'run-error' }, rv.error.status === 404 ? 'No run with this id is stored (yet).' : rv.error.message)
          : el('p', { class: 'muted' }, 'Loading…'));
      return;
    }
    const running = shown.status === 'running';
    fill(page,
      el('p', { class: 'small' }, el('a', { href: `#/jobs/${encodeURIComponent(shown.job)}` }, `← ${shown.job}`), ' · ', el('a', { href: '#/runs' }, 'All runs')),
      el('h1', {}, `Run ${shortId(shown.run_id)}`, el('code', { class: 'id muted small', title: 'Run id' }, shown.run_id)),
      runSummary(shown),
      shown.error ? el('p', { class: 'form-error', id: 'run-error' }, shown.error) : null,
      el('div', { class: 'toolbar', id: 'run-nav' },
        el('button', { type: 'button', class: 'secondary', id: 'run-prev', disabled: !(rv && rv.prev), dataset: { key: 'run/prev' },
          onclick: () => rv.prev && openRun(rv.prev.run_id) }, '← Previous'),
        el('button', { type: 'button', class: 'secondary', id: 'run-next', disabled: !(rv && rv.next), dataset: { key: 'run/next' },
          onclick: () => rv.next && openRun(rv.next.run_id) }, 'Next →'),
        el('button', { type: 'button', id: 'run-again', class: 'secondary', dataset: { key: 'run/again', write: '' }, onclick: () => actions.run(shown.job) }, 'Run again'),
        running ? el('button', { type: 'button', class: 'danger', id: 'run-kill', dataset: { key: 'run/kill', write: '' }, onclick: () => actions.kill(shown.job, shown.run_id) }, 'Kill this run') : null),
      el('h2', {}, 'Output'),
      runOutput(shown),
      shown.output_truncated_bytes ? el('p', { class: 'muted small' },
        `${shown.output_truncated_bytes} bytes from the middle were left out (head and tail kept).`) : null,
      el('h2', {}, 'Details'),
      runDetails(shown));
  });
}

// ---------------------------------------------------------------- views

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function route() {
  const h = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const [section, ...rest] = h.split('/');
  const arg = rest.join('/');
  if (section === 'jobs' && arg) return { name: 'job', job: arg };
  if (section === 'runs' && arg) return { name: 'run', run: arg };
  if (section === 'runs') return { name: 'runs' };
  if (section === 'workers') return { name: 'workers' };
  if (section === 'notifications') return { name: 'notifications' };
  if (section === 'graph') return { name: 'graph', focus: arg || '' };
  return { name: 'jobs' };
}

function navigate() {
  const v = route();
  const same = state.view && state.view.name === v.name && state.view.job === v.job && state.view.run === v.run && state.view.focus === v.focus;
  state.view = v;
  const section = v.name === 'job' ? 'jobs' : v.name === 'run' ? 'runs' : v.name;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!same) {
    skeleton = null;
    state.runsView = null;
    state.ticks = null;
    state.run = null;
    state.notifs = null;
    clearTimeout(ticksTimer);
    if (v.name === 'job' || v.name === 'runs') {
      state.runsView = { job: v.name === 'job' ? v.job : '', status: '', runs: new Map(), cursor: null, loaded: false };
      loadRuns(true);
    }
    if (v.name === 'run') {
      state.run = { id: v.run, record: null, loading: false, error: null, prev: null, next: null };
      loadRun();
    }
    if (v.name === 'workers') loadWorkers();
    if (v.name === 'job' || v.name === 'notifications') {
      state.notifs = { job: v.name === 'job' ? v.job : '', status: '', list: new Map(), loading: false, loaded: false, error: null,
        limit: v.name === 'job' ? NOTIFS_JOB_LIMIT : NOTIFS_ALL_LIMIT };
      loadNotifs();
      loadChannels(v.name === 'notifications');
    }
    document.title = v.name === 'job' ? `${v.job} — cronmesh` : v.name === 'run' ? `Run ${shortId(v.run)} — cronmesh`
      : v.name === 'graph' ? 'Dependency graph — cronmesh'
      : `${v.name[0].toUpperCase()}${v.name.slice(1)} — cronmesh`;
  }
  render();
  if (!same) { $('#main').focus({ preventScroll: true }); window.scrollTo(0, 0); }
}

// Each view builds its frame (headings, filters, table heads) once and then patches what
// changed: rows are kept by key and each cell is rebuilt only when what it shows changed, so a
// text selection, the focus, an open menu and the scroll position survive live updates.
let skeleton = null;

function render() {
  const v = state.view;
  if (!v) return;
  if (v.name === 'jobs') renderJobs();
  else if (v.name === 'job') renderJob(v.job);
  else if (v.name === 'run') renderRun(v.run);
  else if (v.name === 'runs') renderRuns();
  else if (v.name === 'notifications') renderNotifications();
  else if (v.name === 'graph') renderGraph(v.focus);
  else renderWorkers();
  applyPermissions($('#main'));
}

function keepFocus(container, build) {
  const key = document.activeElement && container.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  build();
  if (key) {
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again && again !== document.activeElement) again.focus();
  }
}

// A container showing one of several states (loading, error, empty, the table): rebuilt only
// when the state changes, so the table underneath is kept.
function mode(container, name, build) {
  if (container.dataset.mode !== name) {
    container.dataset.mode = name;
    fill(container, build());
  }
}

// rows: [{ key, attrs, cells: [[signature, () => td], ...] }]. Rows are matched by key; a cell
// is replaced only when its signature changed; rows are moved only when the order changed.
function patchRows(tbody, rows) {
  const have = new Map();
  for (const tr of tbody.children) have.set(tr.dataset.key, tr);
  const keep = new Set();
  let i = 0;
  for (const row of rows) {
    keep.add(row.key);
    let tr = have.get(row.key);
    if (!tr) {
      tr = el('tr', { dataset: { key: row.key } });
      for (const [sig, make] of row.cells) { const td = make(); td.dataset.sig = sig; tr.append(td); }
    } else {
      row.cells.forEach(([sig, make], c) => {
        const old = tr.children[c];
        if (old && old.dataset.sig === sig) return;
        const td = make(); td.dataset.sig = sig;
        if (old) tr.replaceChild(td, old); else tr.append(td);
      });
      while (tr.children.length > row.cells.length) tr.lastElementChild.remove();
    }
    for (const [k, v] of Object.entries(row.attrs || {})) {
      if (v === null || v === undefined) { if (tr.hasAttribute(k)) tr.removeAttribute(k); } else if (tr.getAttribute(k) !== String(v)) tr.setAttribute(k, v);
    }
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    i++;
  }
  for (const [k, tr] of have) if (!keep.has(k)) tr.remove();
}

function filteredJobs() {
  const q = state.jobsQuery;
  const s = q.search.trim().toLowerCase();
  const out = [];
  for (const name of sortedNames()) {
    const j = state.jobs.get(name);
    if (!j) continue;
    if (s && !name.toLowerCase().includes(s) && !(j.description || '').toLowerCase().includes(s)
      && !j.command.toLowerCase().includes(s) && !(j.owner || '').toLowerCase().includes(s)) continue;
    if (q.filter === 'paused' && !j.paused) continue;
    if (q.filter === 'active' && j.paused) continue;
    if (q.filter === 'failing' && !isFailing(j)) continue;
    if (q.filter === 'running' && !runningOf(name)) continue;
    if (q.filter === 'never' && j.last_run) continue;
    if (q.filter === 'missed' && !((j.stats_24h || {}).missed > 0)) continue;
    out.push(j);
  }
  return sortJobs(out);
}

const FAILED = ['failed', 'timed_out', 'killed', 'lost', 'missed'];
function isFailing(j) { return Boolean(j.last_run && FAILED.includes(j.last_run.status)); }

// Success over the last 24 h: succeeded of the records that ran or should have (skipped ones
// are left out); null with none.
function successRate(j) {
  const d = j.stats_24h;
  if (!d) return null;
  const n = d.runs - d.skipped;
  return n > 0 ? d.succeeded / n : null;
}

// What needs a look first: failing, then with missed ticks, then running, then the rest.
function attention(j) {
  if (isFailing(j)) return 0;
  if ((j.stats_24h || {}).missed > 0) return 1;
  if (runningOf(j.name)) return 2;
  if (j.paused) return 4;
  return 3;
}

const SORTS = {
  attention: (a, b) => attention(a) - attention(b),
  name: () => 0,
  next: (a, b) => (nextFire(a) ?? Infinity) - (nextFire(b) ?? Infinity),
  last: (a, b) => ((b.last_run || {}).planned_at || 0) - ((a.last_run || {}).planned_at || 0),
  success: (a, b) => (successRate(a) ?? (state.jobsQuery.dir > 0 ? 2 : -1)) - (successRate(b) ?? (state.jobsQuery.dir > 0 ? 2 : -1)),
  owner: (a, b) => (a.owner || '\uffff').localeCompare(b.owner || '\uffff'),
};

function sortJobs(list) {
  const q = state.jobsQuery;
  const by = SORTS[q.sort] || SORTS.attention;
  // names are the tie-break, always A→Z; the direction applies to the chosen column
  return list.sort((a, b) => (q.dir * by(a, b)) || (q.sort === 'name' ? q.dir : 1) * (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

function runningOf(name) {
  let n = 0;
  for (const r of state.running.values()) if (r.job === name) n++;
  return n;
}

// One primary action (run now), the rest in a menu; the row's buttons never move.
function jobActions(j, key) {
  const name = j.name;
  const running = runningOf(name);
  // a disclosure of plain buttons; the summary takes the focus back before a dialog opens, so
  // closing the dialog returns there
  const item = (label, k, onclick, cls, write = true) => el('button', { type: 'button', class: cls || 'menu-item',
    dataset: write ? { key: `${key}${k}`, write: '' } : { key: `${key}${k}` },
    onclick: (e) => { const d = e.target.closest('details'); d.open = false; d.querySelector('summary').focus(); onclick(); } }, label);
  return el('div', { class: 'row-actions' },
    el('button', { type: 'button', class: 'small secondary', dataset: { key: `${key}run`, write: '' }, onclick: () => actions.run(name), 'aria-label': `Run ${name} now` }, 'Run now'),
    el('details', { class: 'menu' },
      el('summary', { class: 'small', 'aria-label': `More actions for ${name}`, dataset: { key: `${key}menu` } }, '⋯'),
      el('div', { class: 'menu-items' },
        // always there (shown while something runs, see renderJobsBody), so the cell is not
        // rebuilt, nor the menu closed, when a run starts or ends
        item('Kill the running run', 'kill', () => actions.kill(name), 'menu-item danger'),
        j.paused ? item('Resume', 'resume', () => actions.resume(name)) : item('Pause', 'pause', () => actions.pause(name)),
        item('Edit', 'edit', () => openJobForm(name)),
        item('Runs', 'runs', () => { location.hash = `#/jobs/${encodeURIComponent(name)}`; }, null, false),
        item('Delete…', 'delete', () => actions.remove(name), 'menu-item danger'))));
}

function lastRunCell(j) {
  const running = runningOf(j.name);
  if (running) return el('span', {}, badge('running'), running > 1 ? ` ×${running}` : '');
  if (!j.last_run) return el('span', { class: 'muted' }, 'never run');
  return el('span', {}, el('a', { href: `#/runs/${encodeURIComponent(j.last_run.run_id)}`, 'aria-label': `Open the last run of ${j.name}` },
    badge(j.last_run.status)), ' ', el('span', { class: 'muted small' }, timeEl(j.last_run.ended_at || j.last_run.planned_at)));
}

// The last RECENT_RUNS records, oldest on the left, each a link to its run.
function recentStrip(j) {
  const list = (j.recent_runs || []).slice().reverse();
  if (!list.length) return el('span', { class: 'muted small' }, '—');
  return el('span', { class: 'recent', 'aria-label': `Last ${list.length} runs of ${j.name}, oldest first` },
    list.map((r) => el('a', { class: `cell ${r.status}`, href: `#/runs/${encodeURIComponent(r.run_id)}`,
      title: `${fmtAbs(r.planned_at)} — ${r.status.replace('_', ' ')}`, 'aria-label': `${r.status.replace('_', ' ')}, planned ${fmtAbs(r.planned_at)}` })));
}

function dayCell(j) {
  const d = j.stats_24h;
  if (!d || !d.runs) return el('span', { class: 'muted small' }, 'no runs');
  const rate = successRate(j);
  return el('span', { class: 'small', title: `last 24 h: ${d.runs} records, ${d.succeeded} succeeded, ${d.failed} failed, ${d.skipped} skipped, ${d.missed} missed` },
    rate === null ? `${d.runs} skipped` : el('span', { class: rate < 1 ? 'rate bad' : 'rate' }, `${Math.floor(rate * 1000) / 10} %`),
    ` of ${d.runs}`,
    d.failed ? el('span', { class: 'badge failed' }, `${d.failed} failed`) : null,
    d.missed ? el('span', { class: 'badge missed' }, `${d.missed} missed`) : null);
}

const JOB_COLUMNS = [
  ['Name', 'name'], ['Schedule', null], ['Next run', 'next'], ['Last run', 'last'], ['Recent runs', null],
  ['24 h success', 'success'], ['Owner', 'owner'], ['State', null], ['', null],
];

function renderJobs() {
  const main = $('#main');
  const q = state.jobsQuery;
  if (skeleton !== 'jobs') {
    skeleton = 'jobs';
    fill(main,
      el('h1', {}, 'Jobs'),
      el('div', { id: 'fleet-summary', class: 'summary', role: 'group', 'aria-label': 'What needs a look' }),
      el('div', { class: 'toolbar' },
        el('label', { for: 'job-search', class: 'visually-hidden' }, 'Search'),
        el('input', { id: 'job-search', class: 'grow', type: 'search', placeholder: 'Search name, command, description, owner  ( / )', value: q.search,
          oninput: (e) => { q.search = e.target.value; q.page = 0; renderJobsBody(); } }),
        el('label', { for: 'job-filter' }, 'Show'),
        el('select', { id: 'job-filter', onchange: (e) => { q.filter = e.target.value; q.page = 0; renderJobsBody(); } },
          ...[['all', 'all jobs'], ['failing', 'failing (last run failed)'], ['missed', 'missed ticks (24 h)'], ['running', 'running'],
            ['active', 'active'], ['paused', 'paused'], ['never', 'never run']]
            .map(([v, t]) => el('option', { value: v, selected: q.filter === v }, t))),
        el('label', { for: 'job-sort' }, 'Sort'),
        el('select', { id: 'job-sort', onchange: (e) => { q.sort = e.target.value; q.dir = 1; q.page = 0; resortJobs(); } },
          ...[['attention', 'needs attention first'], ['name', 'name'], ['next', 'next run'], ['last', 'last run'], ['success', '24 h success'], ['owner', 'owner']]
            .map(([v, t]) => el('option', { value: v, selected: q.sort === v }, t))),
        el('button', { type: 'button', id: 'new-job', dataset: { write: '' }, onclick: () => openJobForm(null) }, 'New job')),
      el('div', { id: 'jobs-body' }));
  }
  renderJobsBody();
}

// The counts at the top: what needs a look first. Each one filters the list.
function renderSummary() {
  const line = document.getElementById('fleet-summary');
  if (!line) return;
  let failing = 0; let missed = 0; let paused = 0;
  for (const j of state.jobs.values()) {
    if (isFailing(j)) failing++;
    if ((j.stats_24h || {}).missed > 0) missed++;
    if (j.paused) paused++;
  }
  const running = new Set([...state.running.values()].map((r) => r.job)).size;
  const q = state.jobsQuery;
  const sig = JSON.stringify([state.jobsLoaded, state.jobs.size, failing, missed, running, paused, q.filter]);
  if (line.dataset.sig === sig) return;
  line.dataset.sig = sig;
  if (!state.jobsLoaded) { fill(line); return; }
  const pick = (filter) => () => {
    q.filter = q.filter === filter ? 'all' : filter; q.page = 0;
    const f = document.getElementById('job-filter'); if (f) f.value = q.filter;
    renderJobsBody();
  };
  const card = (n, label, cls, filter) => el('button', { type: 'button', class: `count ${n ? cls : 'zero'}`, 'aria-pressed': q.filter === filter ? 'true' : 'false',
    dataset: { key: `summary/${filter}`, count: filter }, onclick: pick(filter) }, el('strong', {}, String(n)), ` ${label}`);
  keepFocus(line, () => fill(line,
    card(failing, 'failing', 'bad', 'failing'),
    card(missed, 'with missed ticks (24 h)', 'bad', 'missed'),
    card(running, 'running', 'info', 'running'),
    card(paused, 'paused', 'warn', 'paused'),
    card(state.jobs.size, state.jobs.size === 1 ? 'job' : 'jobs', '', 'all')));
}

function jobsHead() {
  const q = state.jobsQuery;
  return el('thead', {}, el('tr', {}, JOB_COLUMNS.map(([label, key]) => {
    if (!key) return el('th', { scope: 'col' }, label);
    const on = q.sort === key;
    return el('th', { scope: 'col', 'aria-sort': on ? (q.dir > 0 ? 'ascending' : 'descending') : 'none', dataset: { sort: key } },
      el('button', { type: 'button', class: 'sort', dataset: { key: `sort/${key}` }, onclick: () => {
        if (q.sort === key) q.dir = -q.dir; else { q.sort = key; q.dir = 1; }
        q.page = 0;
        resortJobs();
      } }, label, el('span', { class: 'arrow', 'aria-hidden': 'true' }, on ? (q.dir > 0 ? ' ▲' : ' ▼') : '')));
  })));
}

// A new sort: the table (and its head's arrows) is built again, the focus kept where it was.
function resortJobs() {
  const body = document.getElementById('jobs-body');
  if (!body) return;
  const sel = document.getElementById('job-sort');
  if (sel && sel.value !== state.jobsQuery.sort) sel.value = state.jobsQuery.sort;
  keepFocus(body, () => { body.dataset.mode = ''; renderJobsBody(); });
}

// Active or paused; paused by the master (after failures) says so, its reason in the title.
function stateCell(j) {
  if (!j.paused) return el('span', { class: 'badge' }, 'active');
  if (!j.paused_reason) return el('span', { class: 'badge paused' }, 'paused');
  const why = `Paused by the master${j.paused_at ? ` at ${fmtAbs(j.paused_at)}` : ''}: ${j.paused_reason}`;
  return el('span', { class: 'paused-by-master', title: why },
    el('span', { class: 'badge paused' }, 'paused'), el('div', { class: 'muted small' }, 'by the master'),
    el('span', { class: 'visually-hidden' }, `: ${j.paused_reason}`));
}

// "paused after 3 consecutive failures (last run 01a2…: failed)": a whole run id in it becomes a
// link, shown by its end like the tables show it.
function reasonNodes(text) {
  const out = [];
  const re = /\b(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b/gi;
  let at = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > at) out.push(text.slice(at, m.index));
    out.push(el('a', { href: `#/runs/${encodeURIComponent(m[0])}`, class: 'mono', title: m[0] }, shortId(m[0])));
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

function jobRow(j) {
  const name = j.name;
  const nf = nextFire(j);
  const running = runningOf(name);
  const dependent = isDependent(j);
  const nextText = j.paused ? '' : dependent ? 'after' : nf ? `${fmtRel(nf)}|${(j.next_fire_times || []).filter((t) => Date.parse(t) >= nf).slice(0, 3).join(',')}` : 'due';
  const last = j.last_run ? `${j.last_run.run_id}|${j.last_run.status}|${fmtRel(j.last_run.ended_at || j.last_run.planned_at)}` : '';
  return {
    key: name,
    attrs: { 'data-job': name, 'data-attention': String(attention(j)) },
    cells: [
      [`${name}|${j.description || ''}`, () => el('td', { 'data-label': 'Name' },
        el('a', { href: `#/jobs/${encodeURIComponent(name)}`, dataset: { key: `${name}/link` } }, name),
        j.description ? el('div', { class: 'muted small' }, j.description) : null)],
      dependent ? [`after|${JSON.stringify(afterOf(j))}|${j.after_timeout || ''}`, () => el('td', { 'data-label': 'Schedule' },
        el('span', { class: 'sched after', title: afterText(j, Infinity) }, `after ${afterText(j)}`),
        j.after_timeout ? el('div', { class: 'muted small' }, `within ${j.after_timeout}`) : null)]
        : [`${j.schedule}|${j.schedule_description}|${j.timezone}|${(j.schedule_warnings || []).length}`, () => el('td', { 'data-label': 'Schedule' },
        el('span', { class: 'sched' }, j.schedule),
        el('div', { class: 'muted small' }, j.schedule_description || ''), j.timezone !== 'UTC' ? el('div', { class: 'muted small' }, j.timezone) : null,
        (j.schedule_warnings || []).length ? el('div', { class: 'warning small', title: j.schedule_warnings[0] }, 'meaning changed: see the job') : null)],
      [nextText, () => el('td', { 'data-label': 'Next run' }, j.paused ? el('span', { class: 'muted' }, '—')
        : dependent ? el('span', { class: 'muted', title: 'Runs once per tick of its root job, after its upstreams' }, 'after upstream')
        : nf ? el('span', {}, timeEl(nf), el('div', { class: 'muted small' }, (j.next_fire_times || []).filter((t) => Date.parse(t) >= nf).slice(0, 3).map((t) => fmtShort(Date.parse(t))).join(', ')))
          : el('span', { class: 'muted' }, 'due'))],
      [`${running}|${last}`, () => el('td', { 'data-label': 'Last run' }, lastRunCell(j))],
      [(j.recent_runs || []).map((r) => `${r.run_id}:${r.status}`).join(','), () => el('td', { 'data-label': 'Recent runs' }, recentStrip(j))],
      [JSON.stringify(j.stats_24h), () => el('td', { 'data-label': '24 h success' }, dayCell(j))],
      [j.owner || '', () => el('td', { 'data-label': 'Owner' }, j.owner || el('span', { class: 'muted' }, '—'))],
      [`${j.paused}|${j.paused_reason || ''}|${j.paused_at || ''}`, () => el('td', { 'data-label': 'State' }, stateCell(j))],
      [String(j.paused), () => el('td', { class: 'actions' }, jobActions(j, `${name}/`))],
    ],
  };
}

function renderJobsBody() {
  renderSummary();
  const body = document.getElementById('jobs-body');
  if (!body) return;
  if (state.jobsError && !state.jobsLoaded) {
    const msg = state.jobsError.message;
    mode(body, `error:${msg}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty', id: 'jobs-error' }, `Cannot list jobs: ${msg} `,
      el('button', { type: 'button', class: 'secondary', onclick: () => loadJobs() }, 'Try again'))));
    return;
  }
  if (!state.jobsLoaded && state.jobs.size === 0) {
    mode(body, 'loading', () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, 'Loading jobs…')));
    return;
  }
  if (state.jobs.size === 0) {
    mode(body, 'none', () => el('div', { class: 'table-wrap' }, el('div', { class: 'empty' },
      el('p', {}, 'No jobs yet.'), el('button', { type: 'button', dataset: { write: '' }, onclick: () => openJobForm(null) }, 'Create the first job'))));
    return;
  }
  const q = state.jobsQuery;
  const all = filteredJobs();
  const pages = Math.max(1, Math.ceil(all.length / PAGE_SIZE));
  q.page = Math.min(q.page, pages - 1);
  const shown = all.slice(q.page * PAGE_SIZE, (q.page + 1) * PAGE_SIZE);
  refreshStale(shown);
  mode(body, 'table', () => [
    el('p', { class: 'empty', id: 'jobs-nomatch', hidden: true }, 'No job matches this search.'),
    el('div', { class: 'table-wrap' }, el('table', { class: 'cards', id: 'jobs-table' }, jobsHead(), el('tbody', {}))),
    el('div', { class: 'pager' },
      el('span', { class: 'muted', id: 'jobs-count' }),
      el('button', { type: 'button', class: 'secondary', dataset: { key: 'prev' }, onclick: () => { q.page--; renderJobsBody(); } }, 'Previous'),
      el('span', { id: 'jobs-page' }),
      el('button', { type: 'button', class: 'secondary', dataset: { key: 'next' }, onclick: () => { q.page++; renderJobsBody(); } }, 'Next')),
  ]);
  document.getElementById('jobs-nomatch').hidden = all.length !== 0;
  keepFocus(body, () => patchRows(body.querySelector('#jobs-table tbody'), shown.map(jobRow)));
  for (const j of shown) {
    const k = body.querySelector(`[data-key="${CSS.escape(`${j.name}/kill`)}"]`);
    if (!k) continue;
    const n = runningOf(j.name);
    if (k.hidden !== !n) k.hidden = !n;
    const label = n > 1 ? `Kill ${n} runs` : 'Kill the running run';
    if (k.textContent !== label) k.textContent = label;
  }
  const count = all.length === state.jobs.size ? `${state.jobs.size} jobs` : `${all.length} of ${state.jobs.size} jobs`;
  const countText = count + (state.jobsLoading ? ' (loading…)' : '');
  const c = document.getElementById('jobs-count');
  if (c.textContent !== countText) c.textContent = countText;
  const p = document.getElementById('jobs-page');
  const pageText = `Page ${q.page + 1} of ${pages}`;
  if (p.textContent !== pageText) p.textContent = pageText;
  body.querySelector('[data-key="prev"]').disabled = q.page === 0;
  body.querySelector('[data-key="next"]').disabled = q.page >= pages - 1;
}

function renderJob(name) {
  const main = $('#main');
  const j = state.jobs.get(name);
  if (skeleton !== `job:${name}`) {
    skeleton = `job:${name}`;
    fill(main, el('div', { id: 'job-head' }),
      el('h2', {}, 'Ticks'), el('div', { id: 'tick-strip', class: 'tick-strip', role: 'list', 'aria-label': 'Recent expected ticks, oldest first' }),
      el('h2', { id: 'backfills-title' }, 'Backfills'), el('div', { id: 'backfills-body' }),
      el('h2', { id: 'history-title' }, 'History'),
      el('p', { class: 'small muted' }, 'Who changed this job, and when: each kept version against the one before it.'),
      el('div', { id: 'history-body' }),
      el('h2', {}, 'Runs'), runsToolbar(), el('div', { id: 'runs-body' }),
      el('h2', { id: 'notifications-title' }, 'Notifications'),
      el('p', { class: 'small muted' }, 'The newest deliveries for this job, live. ', el('a', { href: '#/notifications' }, 'Channels and every job’s notifications')),
      el('div', { id: 'notify-body' }));
    state.ticks = { job: name, list: null, loading: false, at: 0 };
    loadTicks();
    loadBackfills(name);
    state.history = null;
  }
  // read again when the job's revision moves (an edit, here or anywhere: job.saved)
  const rev = j ? j.revision : null;
  if (!state.history || (state.history.rev !== rev && !state.history.loading)) loadHistory(name, rev);
  const head = document.getElementById('job-head');
  const running = runningOf(name);
  const sig = JSON.stringify([j, running, state.jobsLoaded, j && !j.paused ? (j.next_fire_times || []).filter((t) => Date.parse(t) > Date.now()).length : 0,
    state.channels && state.channels.loaded ? state.channels.default : null, jobDepsSig(j)]);
  if (head.dataset.sig !== sig) {
    head.dataset.sig = sig;
    keepFocus(head, () => {
      if (!j) {
        fill(head, el('h1', {}, name), el('p', { class: 'muted' },
          state.jobsLoaded ? 'This job does not exist (any more). Its past runs are listed below.' : 'Loading…'),
          el('p', {}, el('a', { href: '#/jobs' }, 'All jobs')));
        return;
      }
      refreshStale([j]);
      const s = j;
      const dependent = isDependent(s);
      const spec = [
        dependent ? ['Schedule', el('span', { id: 'job-after' }, `after ${afterText(s)}`)]
          : ['Schedule', el('span', {}, el('code', {}, s.schedule), ' — ', j.schedule_description || '')],
        dependent ? (s.after_timeout ? ['After timeout', s.after_timeout] : null) : ['Time zone', s.timezone],
        ['Next runs', s.paused ? 'paused' : dependent ? 'after its upstreams, once per root tick'
          : (j.next_fire_times || []).map((t) => fmtAbs(Date.parse(t))).join(' · ') || '—'],
        ['Command', el('pre', { class: 'mono command' }, s.command)],
        ['Shell', s.shell], ['Runs as', s.run_as ? el('span', { id: 'job-run-as' }, `user ${s.run_as}`) : 'the worker\'s user'],
        ['Concurrency', s.concurrency || 'allow'],
        ['Runs on', s.shards ? `${s.shards} shards, each on its owner (CRONMESH_SHARD_INDEX of CRONMESH_SHARD_TOTAL)`
          : s.fanout === 'all' ? 'every eligible worker, once each' : 'one worker (the job\'s owner)'],
        ['Missed ticks', `${s.misfire || 'run_once'}, within ${s.starting_deadline || '30s'}`],
        ['Output', s.stderr === 'separate' ? 'stdout and stderr apart (stderr marked)' : 'stdout and stderr merged, in the order written'],
        ['Timeout', s.timeout || 'none'], ['Retries', s.retries ? `${s.retries}, backoff ${s.retry_backoff || '1s'}` : 'none'],
        ['Selector', Object.keys(s.selector || {}).length ? Object.entries(s.selector).map(([k, v]) => el('span', { class: 'chip' }, `${k}=${v}`)) : 'any worker'],
        ['Owner', s.owner || '—'],
        ['Labels', Object.keys(s.labels || {}).length ? Object.entries(s.labels).map(([k, v]) => el('span', { class: 'chip' }, `${k}=${v}`)) : '—'],
        ['Notifications', el('span', { id: 'job-notify' }, jobNotifyText(s))],
        ['Pause after', s.pause_after_failures ? `${s.pause_after_failures} consecutive failure${s.pause_after_failures > 1 ? 's' : ''}` : 'never'],
        ['Revision', `${j.revision}, updated ${fmtAbs(j.updated_at)}${j.updated_by ? ` by ${j.updated_by}` : ''}`],
      ].filter(Boolean);
      const btn = (label, k, onclick, cls) => el('button', { type: 'button', class: cls || 'secondary', dataset: { key: `head/${k}`, write: '' }, onclick }, label);
      fill(head,
        el('p', { class: 'small' }, el('a', { href: '#/jobs' }, '← All jobs')),
        el('h1', {}, s.name, s.paused ? el('span', { class: 'badge paused' }, 'paused') : null, running ? badge('running') : null),
        s.description ? el('p', { class: 'muted' }, s.description) : null,
        s.paused && s.paused_reason ? el('p', { class: 'warning paused-reason', id: 'paused-reason', role: 'note' },
          el('strong', {}, 'Paused'), s.paused_at ? [' ', el('time', { datetime: new Date(s.paused_at).toISOString(), title: fmtAbs(s.paused_at) }, fmtShort(s.paused_at))] : null,
          ' — ', reasonNodes(s.paused_reason), '. Resume to schedule it again.') : null,
        (j.schedule_warnings || []).map((w) => el('p', { class: 'warning', role: 'note' }, w)),
        el('div', { class: 'toolbar job-actions' },
          btn('Run now', 'run', () => actions.run(name), 'primary'),
          j.paused ? btn('Resume', 'resume', () => actions.resume(name)) : btn('Pause', 'pause', () => actions.pause(name)),
          btn('Edit', 'edit', () => openJobForm(name)),
          btn('Backfill…', 'backfill', () => openBackfill(name)),
          btn('Delete…', 'delete', () => actions.remove(name), 'secondary danger-text'),
          // always there, so the others never move; off while nothing runs
          el('button', { type: 'button', class: 'danger', dataset: { key: 'head/kill', write: '' }, hidden: !running, onclick: () => actions.kill(name) },
            running > 1 ? `Kill ${running} runs` : 'Kill')),
        el('dl', { class: 'spec' }, spec.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
        jobDeps(j));
    });
  }
  renderRunsBody();
  renderNotifsBody(document.getElementById('notify-body'));
  renderBackfills();
  renderHistory();
}

// ---------------------------------------------------------------- history

// The job page's versions (GET .../history), read when the page opens and when the job's
// revision changes.
async function loadHistory(name, rev) {
  // the list shown stays while it is read again
  const prev = state.history && state.history.job === name ? state.history : null;
  const hv = { job: name, rev, list: prev ? prev.list : null, current: prev ? prev.current : null, loading: true, error: null };
  state.history = hv;
  try {
    const body = await api('GET', `/api/v1/jobs/${encodeURIComponent(name)}/history`, undefined, { quiet: true });
    hv.list = body.versions;
    hv.current = body.current_revision;
  } catch (e) {
    if (e.status === 404) hv.list = []; else hv.error = e;
  }
  hv.loading = false;
  scheduleRender();
}

// A spec as the lines the diff compares: pretty JSON with its keys in order.
function specLines(spec) {
  const sorted = (v) => Array.isArray(v) ? v.map(sorted)
    : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])])) : v;
  return JSON.stringify(sorted(spec), null, 2).split('\n');
}

// A line diff (longest common subsequence): [[' ' | '-' | '+', line], ...]. Specs are short.
function lineDiff(a, b) {
  const n = a.length; const m = b.length;
  const L = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let k = m - 1; k >= 0; k--) L[i][k] = a[i] === b[k] ? L[i + 1][k + 1] + 1 : Math.max(L[i + 1][k], L[i][k + 1]);
  const out = [];
  let i = 0; let k = 0;
  while (i < n || k < m) {
    if (i < n && k < m && a[i] === b[k]) { out.push([' ', a[i]]); i++; k++; }
    else if (i < n && (k === m || L[i + 1][k] >= L[i][k + 1])) { out.push(['-', a[i]]); i++; }
    else { out.push(['+', b[k]]); k++; }
  }
  return out;
}

// The changed lines with two lines of context; a run of unchanged ones in between is elided.
function diffView(older, newer) {
  const d = lineDiff(older ? specLines(older) : [], specLines(newer));
  const near = d.map((_, i) => d.slice(Math.max(0, i - 2), i + 3).some(([t]) => t !== ' '));
  const lines = [];
  let gap = false;
  d.forEach(([t, line], i) => {
    if (!near[i]) { if (!gap) lines.push(el('span', { class: 'diff-gap' }, '…')); gap = true; return; }
    gap = false;
    lines.push(el('span', { class: t === '+' ? 'diff-add' : t === '-' ? 'diff-del' : 'diff-same' }, `${t} ${line}`));
  });
  if (!d.some(([t]) => t !== ' ')) return el('p', { class: 'muted small' }, 'The same spec as the version before.');
  return el('pre', { class: 'mono diff' }, lines.flatMap((x) => [x, '\n']));
}

function renderHistory() {
  const body = document.getElementById('history-body');
  const hv = state.history;
  if (!body || !hv) return;
  if (hv.error) { mode(body, `error:${hv.error.message}`, () => el('p', { class: 'muted small' }, `Cannot read the history: ${hv.error.message}`)); return; }
  if (!hv.list) { mode(body, 'loading', () => el('p', { class: 'muted small' }, 'Loading the history…')); return; }
  if (!hv.list.length) { mode(body, 'empty', () => el('p', { class: 'muted small', id: 'history-empty' }, 'No version of this job is kept.')); return; }
  const sig = JSON.stringify([hv.list, hv.current]);
  if (body.dataset.sig === sig) return;
  body.dataset.sig = sig;
  body.dataset.mode = 'list';
  keepFocus(body, () => fill(body, el('ol', { id: 'history-list', class: 'history' }, hv.list.map((v, i) => {
    const older = hv.list[i + 1];
    return el('li', { class: 'history-item', dataset: { revision: String(v.revision), current: String(v.current) } },
      el('div', { class: 'history-head' },
        el('strong', {}, `Revision ${v.revision}`),
        ' · ', el('span', { class: 'history-by' }, v.updated_by || 'unknown'),
        ' · ', timeEl(v.updated_at),
        v.current ? el('span', { class: 'badge succeeded history-current' }, 'current') : null,
        v.current ? null : el('button', { type: 'button', class: 'small secondary history-restore',
          dataset: { key: `history/${v.revision}/restore`, write: '' }, onclick: () => actions.restore(hv.job, v) }, 'Restore…')),
      el('details', { class: 'history-diff', open: i === 0 ? '' : null },
        el('summary', { class: 'small' }, older ? `Changes from revision ${older.revision}` : 'The first kept version'),
        diffView(older && older.spec, v.spec)));
  }))));
}

// ---------------------------------------------------------------- backfills

// The job page's backfills: listed when the page opens, then kept live by backfill.progress.
async function loadBackfills(name) {
  state.backfills = { job: name, list: new Map(), loaded: false, error: null };
  const bv = state.backfills;
  try {
    const body = await api('GET', `/api/v1/backfills?job=${encodeURIComponent(name)}`, undefined, { quiet: true });
    for (const b of body.backfills) if (!bv.list.has(b.id) || bv.list.get(b.id).updated_at <= b.updated_at) bv.list.set(b.id, b);
    bv.loaded = true;
  } catch (e) {
    bv.error = e;
  }
  scheduleRender();
}

function backfillSeen(b) {
  const bv = state.backfills;
  if (!bv || bv.job !== b.job) return;
  const old = bv.list.get(b.id);
  if (!old || old.updated_at <= b.updated_at) bv.list.set(b.id, b);
  scheduleRender();
}

function renderBackfills() {
  const body = document.getElementById('backfills-body');
  const bv = state.backfills;
  if (!body || !bv) return;
  if (bv.error) { mode(body, `error:${bv.error.message}`, () => el('p', { class: 'muted small' }, `Cannot list backfills: ${bv.error.message}`)); return; }
  if (!bv.loaded) { mode(body, 'loading', () => el('p', { class: 'muted small' }, 'Loading backfills…')); return; }
  const list = [...bv.list.values()].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
  if (!list.length) { mode(body, 'empty', () => el('p', { class: 'muted small', id: 'backfills-empty' }, 'No backfill. “Backfill…” runs the past ticks of a range.')); return; }
  const sig = JSON.stringify(list);
  if (body.dataset.sig === sig) return;
  body.dataset.sig = sig;
  keepFocus(body, () => fill(body, el('div', { class: 'table-wrap' }, el('table', { class: 'cards', id: 'backfills-table' },
    el('thead', {}, el('tr', {}, ['Range', 'State', 'Progress', 'Done', 'Running', 'Failed', 'Skipped', ''].map((t) => el('th', { scope: 'col' }, t)))),
    el('tbody', {}, list.map((b) => {
      const settled = b.done + b.failed + b.skipped;
      return el('tr', { dataset: { id: b.id, state: b.state }, class: 'backfill-row' },
        el('td', { 'data-label': 'Range' }, `${fmtAbs(b.from)} – ${fmtAbs(b.to)}`),
        el('td', { 'data-label': 'State', class: 'backfill-state' }, b.state),
        el('td', { 'data-label': 'Progress' }, el('progress', { max: String(Math.max(b.total, 1)), value: String(b.total ? settled : 1),
          'aria-label': `${settled} of ${b.total} ticks settled` }), ` ${settled}/${b.total}`),
        el('td', { 'data-label': 'Done', class: 'backfill-done' }, String(b.done)),
        el('td', { 'data-label': 'Running' }, String(b.running)),
        el('td', { 'data-label': 'Failed' }, String(b.failed)),
        el('td', { 'data-label': 'Skipped' }, String(b.skipped)),
        el('td', {}, b.state === 'running'
          ? el('button', { type: 'button', class: 'small secondary', dataset: { key: `backfill/${b.id}/cancel`, write: '' }, onclick: () => actions.cancelBackfill(b) }, 'Cancel')
          : null));
    }))))));
}

// The range picker: datetime-local inputs in the browser's zone, sent as RFC 3339 instants.
function openBackfill(name) {
  const d = $('#backfill-dialog');
  const local = (ms) => { const t = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return t.toISOString().slice(0, 19); };
  const now = Math.floor(Date.now() / 1000) * 1000;
  $('#backfill-title').textContent = `Backfill ${name}`;
  $('#bf-from').value = local(now - 3600e3);
  $('#bf-to').value = local(now);
  $('#bf-max_parallel').value = '1';
  for (const id of ['e-bf-from', 'e-bf-to', 'e-bf-max_parallel', 'backfill-error']) $(`#${id}`).textContent = '';
  d.dataset.job = name;
  d.showModal();
  $('#bf-from').focus();
}

function initBackfillDialog() {
  const d = $('#backfill-dialog');
  if (!d) return;
  $('#backfill-cancel').addEventListener('click', () => d.close());
  $('#backfill-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = d.dataset.job;
    for (const id of ['e-bf-from', 'e-bf-to', 'e-bf-max_parallel', 'backfill-error']) $(`#${id}`).textContent = '';
    const instant = (id) => { const v = $(`#${id}`).value; const t = v ? new Date(v) : null; return t && !Number.isNaN(t.getTime()) ? t.toISOString() : null; };
    const from = instant('bf-from');
    const to = instant('bf-to');
    if (!from) { $('#e-bf-from').textContent = 'Give the start of the range.'; return; }
    if (!to) { $('#e-bf-to').textContent = 'Give the end of the range.'; return; }
    const mp = Number($('#bf-max_parallel').value);
    try {
      const r = await api('POST', `/api/v1/jobs/${encodeURIComponent(name)}/backfill`, { from, to, max_parallel: mp });
      d.close();
      if (r.backfill) backfillSeen(r.backfill);
      toast(r.ticks ? `Backfill of ${name}: ${r.ticks} ticks to run` : `Backfill of ${name}: every tick of the range ran already`);
    } catch (err) {
      const where = { invalid_from: 'e-bf-from', invalid_to: 'e-bf-to', range_in_future: 'e-bf-to', invalid_range: 'e-bf-to', invalid_max_parallel: 'e-bf-max_parallel' }[err.code] || 'backfill-error';
      $(`#${where}`).textContent = err.message;
    }
  });
}

// ---------------------------------------------------------------- the tick strip

const STRIP_CELLS = 60;
const STRIP_RANGES = [3600e3, 600e3, 60e3];
let ticksTimer = null;

// One cell per expected tick (newest STRIP_CELLS), coloured by outcome: the question "did each
// tick it should have run, run?" at a glance. Read from GET /jobs/{name}/ticks; the range
// shrinks for jobs that tick so often that an hour holds more than the API answers.
async function loadTicks() {
  const t = state.ticks;
  if (!t || t.loading) return;
  t.loading = true;
  try {
    for (const range of STRIP_RANGES) {
      const to = Date.now();
      try {
        const body = await api('GET', `/api/v1/jobs/${encodeURIComponent(t.job)}/ticks?from=${Math.floor(to - range)}&to=${to}`);
        t.list = body.ticks.slice(0, STRIP_CELLS).reverse();
        t.error = null;
        break;
      } catch (e) {
        if (e.code !== 'range_too_wide') { t.error = e; break; }
      }
    }
  } finally {
    t.loading = false;
    t.at = Date.now();
  }
  renderTicks();
  clearTimeout(ticksTimer);
  ticksTimer = setTimeout(() => { if (state.ticks === t) loadTicks(); }, 10000);
}

function ticksSoon() {
  const t = state.ticks;
  if (!t || t.soon) return;
  t.soon = true;
  setTimeout(() => { t.soon = false; if (state.ticks === t) loadTicks(); }, Math.max(0, 2000 - (Date.now() - t.at)));
}

function renderTicks() {
  const strip = document.getElementById('tick-strip');
  const t = state.ticks;
  if (!strip || !t) return;
  if (t.error) { fill(strip, el('p', { class: 'muted small' }, `Cannot read the ticks: ${t.error.message}`)); return; }
  if (!t.list) { fill(strip, el('p', { class: 'muted small' }, 'Loading ticks…')); return; }
  if (!t.list.length) { fill(strip, el('p', { class: 'muted small' }, 'No expected tick in the last hour.')); return; }
  keepFocus(strip, () => fill(strip, t.list.map((k) => {
    const text = `${fmtAbs(k.planned_at)} — ${k.outcome.replace('_', ' ')}${k.reason ? `: ${k.reason}` : ''}`;
    return el('button', {
      type: 'button', role: 'listitem', class: `tick ${k.outcome}`, title: text, 'aria-label': text,
      dataset: { key: `tick/${k.planned_at}`, outcome: k.outcome },
      disabled: !k.run_id, onclick: k.run_id ? () => openRun(k.run_id) : null,
    });
  })));
}

function runsToolbar(withJob) {
  const rv = state.runsView;
  return el('div', { class: 'toolbar' },
    withJob ? el('label', { for: 'runs-job' }, 'Job') : null,
    withJob ? el('input', { id: 'runs-job', placeholder: 'all jobs (exact name)', value: rv.job, onchange: (e) => { rv.job = e.target.value.trim(); loadRuns(true); } }) : null,
    el('label', { for: 'runs-status' }, 'Status'),
    el('select', { id: 'runs-status', onchange: (e) => { rv.status = e.target.value; loadRuns(true); } },
      ...['', 'running', 'succeeded', 'failed', 'timed_out', 'killed', 'skipped', 'lost', 'missed']
        .map((s) => el('option', { value: s }, s ? s.replace('_', ' ') : 'all statuses'))));
}

function renderRuns() {
  const main = $('#main');
  if (skeleton !== 'runs') {
    skeleton = 'runs';
    fill(main, el('h1', {}, 'Runs'), runsToolbar(true), el('div', { id: 'runs-body' }));
  }
  renderRunsBody();
}

function renderRunsBody() {
  const body = document.getElementById('runs-body');
  const rv = state.runsView;
  if (!body || !rv) return;
  if (rv.error && !rv.loaded) {
    const msg = rv.error.message;
    mode(body, `error:${msg}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, `Cannot list runs: ${msg} `,
      el('button', { type: 'button', class: 'secondary', onclick: () => loadRuns(true) }, 'Try again'))));
    return;
  }
  if (!rv.loaded) { mode(body, 'loading', () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, 'Loading runs…'))); return; }
  let runs = [...rv.runs.values()];
  if (rv.status === 'running') runs = runs.filter((r) => state.running.has(r.run_id));
  runs.sort(runOrder);
  if (runs.length === 0) {
    const text = rv.status ? `No ${rv.status.replace('_', ' ')} runs.` : 'No runs yet. They appear here as they start.';
    mode(body, `empty:${text}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, text)));
    return;
  }
  const heads = ['Status', rv.job ? null : 'Job', 'Run', 'Trigger', 'Planned', 'Lag', 'Duration', 'Exit', 'Worker', 'Trace', ''].filter((x) => x !== null);
  mode(body, `table:${rv.job ? 'job' : 'all'}`, () => [
    el('div', { class: 'table-wrap' }, el('table', { class: 'cards', id: 'runs-table' },
      el('thead', {}, el('tr', {}, heads.map((t) => el('th', { scope: 'col' }, t)))),
      el('tbody', {}))),
    el('div', { class: 'pager' }, el('span', { class: 'muted', id: 'runs-count' }),
      el('button', { type: 'button', class: 'secondary', id: 'runs-older', dataset: { key: 'older' }, onclick: () => loadRuns(false) }, 'Load older')),
  ]);
  const now = Date.now();
  patchRows(body.querySelector('#runs-table tbody'), runs.map((r) => {
    const running = r.status === 'running';
    const lag = r.lag_ms !== undefined && r.lag_ms !== null ? fmtDuration(r.lag_ms) : (r.started_at ? fmtDuration(r.started_at - r.planned_at) : '—');
    const dur = running ? fmtDuration(now - r.started_at) : fmtDuration(r.duration_ms);
    const exit = r.exit_code ?? (r.signal ? (SIGNALS[r.signal] || `signal ${r.signal}`) : '—');
    const cells = [
      [`${r.status}|${r.status === 'skipped' ? r.error || '' : ''}`, () => el('td', { 'data-label': 'Status' }, badge(r.status),
        r.status === 'skipped' && r.error ? el('div', { class: 'muted small run-why', title: r.error }, oneLine(r.error)) : null)],
      rv.job ? null : [r.job, () => el('td', { 'data-label': 'Job' }, el('a', { href: `#/jobs/${encodeURIComponent(r.job)}` }, r.job))],
      [r.run_id, () => el('td', { 'data-label': 'Run' }, el('a', { class: 'mono', href: `#/runs/${encodeURIComponent(r.run_id)}`, title: r.run_id, dataset: { key: `${r.run_id}/open` }, 'aria-label': `Open run ${r.run_id}` }, shortId(r.run_id)))],
      [`${triggerLabel(r)}|${JSON.stringify(r.root || null)}|${hasShard(r) ? r.shard : ''}`, () => el('td', { 'data-label': 'Trigger' }, triggerLabel(r),
        hasShard(r) ? [' ', el('span', { class: 'chip shard' }, `shard ${r.shard}`)] : null,
        r.root && r.root.job ? el('div', { class: 'muted small' }, 'root ', rootNodes(r)) : null)],
      [String(r.planned_at), () => el('td', { 'data-label': 'Planned' }, el('span', { title: fmtAbs(r.planned_at) }, new Date(r.planned_at).toLocaleString()))],
      [lag, () => el('td', { 'data-label': 'Lag' }, lag)],
      [dur, () => el('td', { 'data-label': 'Duration' }, dur)],
      [String(exit), () => el('td', { 'data-label': 'Exit' }, String(exit))],
      [r.worker || '', () => el('td', { 'data-label': 'Worker' }, r.worker || '—')],
      [r.trace_id || '', () => el('td', { 'data-label': 'Trace' }, r.trace_id ? el('code', { title: r.trace_id }, shortId(r.trace_id)) : '—')],
      [String(running), () => el('td', { class: 'actions' }, running ? el('button', { type: 'button', class: 'small danger', dataset: { key: `${r.run_id}/kill`, write: '' }, onclick: () => actions.kill(r.job, r.run_id), 'aria-label': `Kill run ${r.run_id}` }, 'Kill') : null)],
    ].filter(Boolean);
    return { key: r.run_id, attrs: { 'data-run': r.run_id, 'data-status': r.status, class: r.fresh && now - r.fresh < 1500 ? 'fresh' : null }, cells };
  }));
  const countText = `${runs.length} runs shown`;
  const c = document.getElementById('runs-count');
  if (c.textContent !== countText) c.textContent = countText;
  const older = document.getElementById('runs-older');
  older.hidden = !rv.cursor;
  older.disabled = rv.loading;
  older.textContent = rv.loading ? 'Loading…' : 'Load older';
}

function renderWorkers() {
  const main = $('#main');
  if (skeleton !== 'workers') {
    skeleton = 'workers';
    fill(main, el('h1', {}, 'Workers'), el('div', { id: 'workers-body' }));
  }
  const body = document.getElementById('workers-body');
  if (state.workersError && !state.workers.length) {
    const msg = state.workersError.message;
    mode(body, `error:${msg}`, () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' }, `Cannot list workers: ${msg}`)));
    return;
  }
  if (!state.workers.length) {
    mode(body, 'none', () => el('div', { class: 'table-wrap' }, el('p', { class: 'empty' },
      'No worker is registered. Start one: cronmesh worker --etcd URL --id w1')));
    return;
  }
  mode(body, 'table', () => el('div', { class: 'table-wrap' }, el('table', { class: 'cards', id: 'workers-table' },
    el('thead', {}, el('tr', {}, ['Worker', 'Labels', 'State', 'Clock', 'Owned jobs', 'Running', 'Last heartbeat', 'Host'].map((t) => el('th', { scope: 'col' }, t)))),
    el('tbody', {}))));
  const ws = [...state.workers].sort((a, b) => (a.id < b.id ? -1 : 1));
  patchRows(body.querySelector('#workers-table tbody'), ws.map((w) => {
    const running = [...state.running.values()].filter((r) => r.worker === w.id);
    return {
      key: w.id,
      attrs: { 'data-worker': w.id },
      cells: [
        [`${w.id}|${w.version}`, () => el('td', { 'data-label': 'Worker' }, el('strong', {}, w.id), el('div', { class: 'muted small' }, `v${w.version}`))],
        [JSON.stringify(w.labels || {}), () => el('td', { 'data-label': 'Labels' }, Object.keys(w.labels || {}).length ? Object.entries(w.labels).map(([k, v]) => el('span', { class: 'chip' }, `${k}=${v}`)) : el('span', { class: 'muted' }, 'none'))],
        [`${w.draining}|${w.clock_skewed}|${w.at_capacity}|${w.dispatch}`, () => el('td', { 'data-label': 'State' }, workerState(w),
          w.dispatch === 'race' ? el('span', { class: 'chip', title: 'dispatch = race: tries every tick it may run' }, 'race') : null)],
        [String(w.clock_offset_ms), () => el('td', { 'data-label': 'Clock', title: 'How far its clock is ahead of the masters\' (negative: behind), as it last measured' },
          w.clock_offset_ms == null ? '—' : `${w.clock_offset_ms > 0 ? '+' : ''}${w.clock_offset_ms} ms`)],
        [String(w.owned_jobs), () => el('td', { 'data-label': 'Owned jobs' }, String(w.owned_jobs))],
        [running.map((r) => r.run_id).join(','), () => el('td', { 'data-label': 'Running' }, running.length ? running.map((r) => el('div', {}, el('a', { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.job))) : '0')],
        [fmtRel(w.last_heartbeat), () => el('td', { 'data-label': 'Last heartbeat' }, w.last_heartbeat ? timeEl(w.last_heartbeat) : '—')],
        [`${w.hostname}|${w.pid}|${w.started_at}`, () => el('td', { 'data-label': 'Host' }, `${w.hostname} (pid ${w.pid})`, el('div', { class: 'muted small' }, `up since ${fmtAbs(w.started_at)}`))],
      ],
    };
  }));
}

// A worker's state: draining, off clock (it claims nothing while a worker with a right clock can),
// full (every run slot taken), or active.
function workerState(w) {
  const badges = [];
  if (w.draining) badges.push(el('span', { class: 'badge paused' }, 'draining'));
  if (w.clock_skewed) badges.push(el('span', { class: 'badge failed', title: 'Its clock is off from the masters\' by more than worker.max_clock_skew: its jobs run on workers whose clocks are right' }, 'clock off'));
  if (w.at_capacity) badges.push(el('span', { class: 'badge paused', title: 'Every run slot is taken: its jobs run on workers with room' }, 'full'));
  return badges.length ? badges : el('span', { class: 'badge succeeded' }, 'active');
}

// ---------------------------------------------------------------- job dependencies: the graph

// A job with `after` runs once per root tick, when its upstreams' runs of that tick meet their
// conditions; these are the page's views of those edges: the job page's upstreams and
// downstreams, and #/graph, the whole fleet's dependency graph drawn as SVG.
const DEP_ON = ['success', 'failure', 'finished'];
const GRAPH = { nodeW: 168, nodeH: 28, colGap: 64, rowGap: 12, compGap: 32, pad: 16, maxWidth: 1240 };
const GRAPH_LABEL_CHARS = 20; // a node's name is cut to this many characters (the whole in its <title>)

function afterOf(j) { return j && Array.isArray(j.after) ? j.after.filter((a) => a && typeof a.job === 'string' && a.job) : []; }
function isDependent(j) { return afterOf(j).length > 0; }
// "extract, load (on failure)": a dependent job's upstreams in words, the first few of them.
function afterText(j, most = 3) {
  const list = afterOf(j).map((a) => (a.on && a.on !== 'success' ? `${a.job} (on ${a.on})` : a.job));
  return list.length > most ? `${list.slice(0, most).join(', ')} +${list.length - most}` : list.join(', ');
}

// Every edge of the fleet, upstream to downstream: [{ from, to, on }], in name order.
function depEdges() {
  const out = [];
  for (const name of sortedNames()) {
    for (const a of afterOf(state.jobs.get(name))) out.push({ from: a.job, to: name, on: a.on || 'success' });
  }
  return out;
}

// The jobs whose `after` names `name`: [{ job, on }].
function downstreamsOf(name) {
  const out = [];
  for (const n of sortedNames()) {
    for (const a of afterOf(state.jobs.get(n))) if (a.job === name) out.push({ job: n, on: a.on || 'success' });
  }
  return out;
}

// The layout of a dependency graph, with no DOM in it (a plain function of its arguments, so it
// can be checked in node): nodes are names, edges { from, to, on }. Each connected part is laid
// out on its own: layers by the longest path from its roots, left to right (a cycle, which the
// master refuses, is broken rather than looped on); an edge spanning layers passes through
// invisible slots of the layers between; a few barycenter sweeps order each layer to reduce
// crossings; then nodes move towards their neighbours' heights, keeping their order and a
// slot's distance. The parts are packed in shelves up to maxWidth. Every node has the same
// size and its own slot, so no two overlap. Returns { nodes: Map name -> { x, y, w, h, layer },
// edges: [{ from, to, on, points: [[x, y], ...] }], width, height }.
function layoutGraph(nodeList, edgeList, opts) {
  const o = Object.assign({}, GRAPH, opts || {});
  const names = [...new Set(nodeList)].sort();
  const idx = new Map(names.map((n, i) => [n, i]));
  const n = names.length;
  const edges = edgeList.filter((e) => idx.has(e.from) && idx.has(e.to) && e.from !== e.to);
  // connected parts (union-find)
  const parent = names.map((_, i) => i);
  const find = (i) => { while (parent[i] !== i) { parent[i] = parent[parent[i]]; i = parent[i]; } return i; };
  for (const e of edges) { const a = find(idx.get(e.from)); const b = find(idx.get(e.to)); if (a !== b) parent[Math.max(a, b)] = Math.min(a, b); }
  const parts = new Map();
  for (let i = 0; i < n; i++) { const r = find(i); if (!parts.has(r)) parts.set(r, { nodes: [], edges: [] }); parts.get(r).nodes.push(i); }
  for (const e of edges) parts.get(find(idx.get(e.from))).edges.push(e);
  const pitch = o.nodeH + o.rowGap;
  const colW = o.nodeW + o.colGap;
  const outNodes = new Map();
  const outEdges = [];
  const boxes = [];
  for (const part of parts.values()) {
    const local = new Map(part.nodes.map((g, k) => [g, k]));
    const m = part.nodes.length;
    const succ = part.nodes.map(() => []);
    const indeg = part.nodes.map(() => 0);
    const es = part.edges.map((e) => ({ e, a: local.get(idx.get(e.from)), b: local.get(idx.get(e.to)) }));
    for (const x of es) { succ[x.a].push(x.b); indeg[x.b]++; }
    // longest-path layering (Kahn); what a cycle leaves is freed one node at a time, by name
    const layer = part.nodes.map(() => 0);
    const done = part.nodes.map(() => false);
    const queue = [];
    for (let k = 0; k < m; k++) if (indeg[k] === 0) queue.push(k);
    let left = m;
    for (;;) {
      while (queue.length) {
        const k = queue.shift();
        if (done[k]) continue;
        done[k] = true; left--;
        for (const s of succ[k]) {
          if (done[s]) continue;
          if (layer[s] < layer[k] + 1) layer[s] = layer[k] + 1;
          if (--indeg[s] === 0) queue.push(s);
        }
      }
      if (!left) break;
      for (let k = 0; k < m; k++) if (!done[k]) { queue.push(k); break; }
    }
    // vertices: the part's nodes, then a slot per layer an edge passes through
    const vLayer = layer.slice();
    const up = part.nodes.map(() => []);
    const down = part.nodes.map(() => []);
    const chains = [];
    for (const x of es) {
      const chain = [x.a];
      if (layer[x.b] > layer[x.a]) {
        let prev = x.a;
        for (let l = layer[x.a] + 1; l < layer[x.b]; l++) {
          const v = vLayer.length;
          vLayer.push(l); up.push([]); down.push([]);
          down[prev].push(v); up[v].push(prev);
          chain.push(v); prev = v;
        }
        down[prev].push(x.b); up[x.b].push(prev);
      }
      chain.push(x.b);
      chains.push({ e: x.e, chain });
    }
    const depth = Math.max(...vLayer) + 1;
    const layers = Array.from({ length: depth }, () => []);
    // first order: names in the first layer, then by the first upstream's place
    const pos = new Array(vLayer.length).fill(0);
    for (let k = 0; k < m; k++) if (vLayer[k] === 0) layers[0].push(k);
    layers[0].sort((p, q) => part.nodes[p] - part.nodes[q]);
    layers[0].forEach((v, i) => { pos[v] = i; });
    const rest = [];
    for (let v = 0; v < vLayer.length; v++) if (vLayer[v] > 0) rest.push(v);
    for (let l = 1; l < depth; l++) {
      const row = rest.filter((v) => vLayer[v] === l);
      const key = (v) => (up[v].length ? Math.min(...up[v].map((u) => pos[u])) : Infinity);
      row.sort((p, q) => key(p) - key(q) || (p < m && q < m ? part.nodes[p] - part.nodes[q] : p - q));
      row.forEach((v, i) => { pos[v] = i; });
      layers[l] = row;
    }
    const sweep = (l, nb) => {
      const row = layers[l];
      const bary = new Map(row.map((v) => [v, nb[v].length ? nb[v].reduce((s, u) => s + pos[u], 0) / nb[v].length : pos[v]]));
      row.sort((p, q) => bary.get(p) - bary.get(q) || pos[p] - pos[q]);
      row.forEach((v, i) => { pos[v] = i; });
    };
    for (let it = 0; it < 4; it++) {
      for (let l = 1; l < depth; l++) sweep(l, up);
      for (let l = depth - 2; l >= 0; l--) sweep(l, down);
    }
    // heights (in slots): as near the neighbours' mean as the order and a slot's distance
    // allow, in the least-squares sense (pool adjacent violators on want - index), so a row
    // is not pushed one way only
    const slot = new Array(vLayer.length).fill(0);
    for (const row of layers) row.forEach((v, i) => { slot[v] = i; });
    const place = (row, nb) => {
      const blocks = []; // [sum, count] of want - index, non-decreasing means
      row.forEach((v, i) => {
        const want = nb[v].length ? nb[v].reduce((s, u) => s + slot[u], 0) / nb[v].length : slot[v];
        blocks.push([want - i, 1]);
        while (blocks.length > 1) {
          const [s2, c2] = blocks[blocks.length - 1];
          const [s1, c1] = blocks[blocks.length - 2];
          if (s1 / c1 <= s2 / c2) break;
          blocks.splice(-2, 2, [s1 + s2, c1 + c2]);
        }
      });
      let i = 0;
      for (const [sum, count] of blocks) {
        for (let k = 0; k < count; k++, i++) slot[row[i]] = sum / count + i;
      }
    };
    for (let l = 1; l < depth; l++) place(layers[l], up);
    for (let l = depth - 2; l >= 0; l--) place(layers[l], down);
    let min = Infinity; let max = -Infinity;
    for (const s of slot) { if (s < min) min = s; if (s > max) max = s; }
    boxes.push({
      w: depth * colW - o.colGap, h: (max - min) * pitch + o.nodeH, size: m, first: part.nodes[0],
      place(ox, oy) {
        const at = (v) => [ox + vLayer[v] * colW, oy + (slot[v] - min) * pitch];
        for (let k = 0; k < m; k++) {
          const [x, y] = at(k);
          outNodes.set(names[part.nodes[k]], { x, y, w: o.nodeW, h: o.nodeH, layer: vLayer[k] });
        }
        for (const { e, chain } of chains) {
          const points = [];
          chain.forEach((v, i) => {
            const [x, y] = at(v);
            const cy = y + o.nodeH / 2;
            if (i === 0) points.push([x + o.nodeW, cy]);
            else if (i === chain.length - 1) points.push([x, cy]);
            else points.push([x, cy], [x + o.nodeW, cy]);
          });
          outEdges.push({ from: e.from, to: e.to, on: e.on || 'success', points });
        }
      },
    });
  }
  // the big parts first, then by name; packed left to right in shelves
  boxes.sort((a, b) => b.size - a.size || a.first - b.first);
  let x = 0; let y = 0; let shelf = 0; let width = 0;
  for (const b of boxes) {
    if (x > 0 && x + b.w > o.maxWidth) { x = 0; y += shelf + o.compGap; shelf = 0; }
    b.place(o.pad + x, o.pad + y);
    x += b.w + o.compGap;
    if (b.h > shelf) shelf = b.h;
    if (x - o.compGap > width) width = x - o.compGap;
  }
  return { nodes: outNodes, edges: outEdges, width: width + 2 * o.pad, height: (boxes.length ? y + shelf : 0) + 2 * o.pad };
}
// end of layoutGraph

const SVG_NS = 'http://www.w3.org/2000/svg';
function svgEl(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// What colours a node: its job's run in progress, else its last run's status; "missing" for a
// name that some job's `after` gives but no job has.
function graphStatus(name) {
  const j = state.jobs.get(name);
  if (!j) return 'missing';
  if (runningOf(name)) return 'running';
  if (j.paused) return 'paused';
  return j.last_run ? j.last_run.status : 'never';
}
function cutName(s) { return s.length > GRAPH_LABEL_CHARS ? `${s.slice(0, GRAPH_LABEL_CHARS - 1)}…` : s; }
function edgePath(points) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [ax, ay] = points[i - 1];
    const [bx, by] = points[i];
    if (ay === by) { d += ` L${bx},${by}`; continue; }
    const dx = Math.max(16, (bx - ax) / 2);
    d += ` C${ax + dx},${ay} ${bx - dx},${by} ${bx},${by}`;
  }
  return d;
}

// The SVG of a layout: an edge per dependency (coloured, dashed and arrowed by its condition,
// the conditions other than success written at its end), a node per job, each a link to its
// page. `prefix` keeps the arrowheads' ids apart; `self`: the job whose neighbourhood it is.
function drawGraph(layout, { prefix, self, focus, label }) {
  const markers = DEP_ON.map((on) => svgEl('marker', { id: `${prefix}-arrow-${on}`, viewBox: '0 0 10 10', refX: '9', refY: '5',
    markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse', class: `garrow on-${on}` }, svgEl('path', { d: 'M0,0 L10,5 L0,10 z' })));
  const near = (e) => focus && (e.from === focus || e.to === focus);
  const edges = layout.edges.map((e) => {
    const on = DEP_ON.includes(e.on) ? e.on : 'success';
    const last = e.points[e.points.length - 1];
    return svgEl('g', { class: `gedge on-${on}${near(e) ? ' near' : ''}`, dataset: { from: e.from, to: e.to, on } },
      svgEl('title', {}, `${e.to} runs after ${e.from} on ${on}`),
      svgEl('path', { d: edgePath(e.points), 'marker-end': `url(#${prefix}-arrow-${on})` }),
      on !== 'success' ? svgEl('text', { x: last[0] - 6, y: last[1] - 4, 'text-anchor': 'end', class: 'gedge-label' }, on) : null);
  });
  const nodes = [...layout.nodes.entries()].map(([name, p]) => {
    const status = graphStatus(name);
    const cls = `gnode status-${status}${name === self ? ' self' : ''}${name === focus ? ' focus' : ''}`;
    const kids = [
      svgEl('title', {}, `${name} — ${status.replace('_', ' ')}`),
      svgEl('rect', { class: 'gnode-box', x: p.x, y: p.y, width: p.w, height: p.h, rx: '5' }),
      svgEl('text', { x: p.x + 9, y: p.y + p.h / 2 + 4, class: 'gnode-label' }, cutName(name)),
    ];
    if (status === 'missing') return svgEl('g', { class: cls, dataset: { job: name, status } }, kids);
    return svgEl('a', { class: cls, href: `#/jobs/${encodeURIComponent(name)}`, dataset: { job: name, status }, 'aria-label': `${name}, ${status.replace('_', ' ')}` }, kids);
  });
  return svgEl('svg', { class: 'dep-graph', viewBox: `0 0 ${layout.width} ${layout.height}`, width: layout.width, height: layout.height,
    role: 'group', 'aria-label': label, dataset: { width: String(layout.width), height: String(layout.height) } },
  svgEl('defs', {}, markers), svgEl('g', { class: 'gedges' }, edges), svgEl('g', { class: 'gnodes' }, nodes));
}

// The nodes' colours follow their jobs' runs without drawing the graph again.
function recolourGraph(svg) {
  for (const g of svg.querySelectorAll('.gnode')) {
    const s = graphStatus(g.dataset.job);
    if (g.dataset.status === s) continue;
    g.dataset.status = s;
    g.classList.remove(...[...g.classList].filter((c) => c.startsWith('status-')));
    g.classList.add(`status-${s}`);
    const t = g.querySelector('title');
    if (t) t.textContent = `${g.dataset.job} — ${s.replace('_', ' ')}`;
  }
}

function legend() {
  return el('span', { class: 'graph-legend small', id: 'graph-legend' },
    DEP_ON.map((on) => el('span', { class: `legend-item on-${on}` }, el('span', { class: 'legend-line', 'aria-hidden': 'true' }), ` on ${on}`)));
}

// #/graph (#/graph/NAME: that job marked, and scrolled to): the jobs that take part in some
// dependency, laid out by layoutGraph; scrolls, and zooms with its buttons.
function renderGraph(focus) {
  const main = $('#main');
  if (skeleton !== `graph:${focus || ''}`) {
    skeleton = `graph:${focus || ''}`;
    const zoom = (f) => () => { state.graphZoom = f === 0 ? fitZoom() : Math.min(4, Math.max(0.1, (state.graphZoom || 1) * f)); zoomGraph(); };
    fill(main,
      el('h1', {}, 'Dependency graph'),
      el('div', { class: 'toolbar' },
        el('span', { class: 'muted', id: 'graph-count' }),
        legend(),
        el('span', { class: 'spacer' }),
        el('button', { type: 'button', class: 'secondary small', id: 'graph-zoom-out', 'aria-label': 'Zoom out', onclick: zoom(1 / 1.25) }, '−'),
        el('button', { type: 'button', class: 'secondary small', id: 'graph-zoom-in', 'aria-label': 'Zoom in', onclick: zoom(1.25) }, '+'),
        el('button', { type: 'button', class: 'secondary small', id: 'graph-fit', onclick: zoom(0) }, 'Fit'),
        el('button', { type: 'button', class: 'secondary small', id: 'graph-actual', onclick: () => { state.graphZoom = 1; zoomGraph(); } }, '100 %')),
      el('div', { id: 'graph-wrap', class: 'graph-wrap', tabindex: '0', 'aria-label': 'Dependency graph, scrolls' }));
  }
  const wrap = document.getElementById('graph-wrap');
  const count = document.getElementById('graph-count');
  if (!state.jobsLoaded) {
    if (state.jobsError) mode(wrap, `error:${state.jobsError.message}`, () => el('p', { class: 'empty' }, `Cannot list jobs: ${state.jobsError.message}`));
    else mode(wrap, 'loading', () => el('p', { class: 'empty' }, 'Loading jobs…'));
    return;
  }
  const edges = depEdges();
  if (!edges.length) {
    mode(wrap, 'none', () => el('p', { class: 'empty', id: 'graph-empty' }, 'No job depends on another. A job with After runs when its upstream jobs have run.'));
    if (count.textContent) count.textContent = '';
    return;
  }
  const sig = JSON.stringify(edges);
  if (wrap.dataset.mode !== 'graph' || wrap.dataset.sig !== sig) {
    const nodes = [...new Set(edges.flatMap((e) => [e.from, e.to]))];
    const layout = layoutGraph(nodes, edges, { maxWidth: Math.max(600, wrap.clientWidth - 2 * GRAPH.pad - 4) });
    wrap.dataset.mode = 'graph';
    wrap.dataset.sig = sig;
    const svg = drawGraph(layout, { prefix: 'g', focus, label: `Dependency graph: ${layout.nodes.size} jobs, ${layout.edges.length} dependencies` });
    svg.id = 'dep-graph';
    fill(wrap, svg);
    const text = `${layout.nodes.size} jobs, ${layout.edges.length} dependencies`;
    if (count.textContent !== text) count.textContent = text;
    zoomGraph();
    if (focus && !wrap.dataset.scrolled) {
      wrap.dataset.scrolled = 'true';
      const p = layout.nodes.get(focus);
      if (p) {
        const z = state.graphZoom || 1;
        wrap.scrollTo({ left: Math.max(0, p.x * z - wrap.clientWidth / 2), top: Math.max(0, p.y * z - wrap.clientHeight / 2) });
        wrap.scrollIntoView({ block: 'nearest' });
      }
    }
  } else {
    recolourGraph(wrap.querySelector('svg'));
  }
}

function fitZoom() {
  const wrap = document.getElementById('graph-wrap');
  const svg = wrap && wrap.querySelector('svg');
  if (!svg) return 1;
  const w = Number(svg.dataset.width); const h = Number(svg.dataset.height);
  return Math.max(0.1, Math.min(1, (wrap.clientWidth - 4) / w, (wrap.clientHeight - 4) / h));
}

function zoomGraph() {
  const svg = document.querySelector('#graph-wrap svg');
  if (!svg) return;
  const z = state.graphZoom || 1;
  svg.setAttribute('width', String(Math.round(Number(svg.dataset.width) * z)));
  svg.setAttribute('height', String(Math.round(Number(svg.dataset.height) * z)));
  const b = document.getElementById('graph-actual');
  if (b) b.textContent = `${Math.round(z * 100)} %`;
}

// The job page's part: what it runs after, what runs after it, and the two as a small graph.
function jobDeps(j) {
  const ups = afterOf(j).map((a) => ({ job: a.job, on: a.on || 'success' }));
  const downs = downstreamsOf(j.name);
  if (!ups.length && !downs.length) return null;
  const item = (d, dir) => el('li', { dataset: { job: d.job, on: d.on } },
    el('a', { href: `#/jobs/${encodeURIComponent(d.job)}`, class: 'dep-link', dataset: { key: `dep/${dir}/${d.job}` } }, d.job),
    ' ', el('span', { class: `chip dep-on on-${d.on}` }, `on ${d.on}`),
    state.jobs.has(d.job) ? null : el('span', { class: 'muted small' }, ' (no such job)'));
  const nodes = [j.name, ...ups.map((u) => u.job), ...downs.map((d) => d.job)];
  const edges = [...ups.map((u) => ({ from: u.job, to: j.name, on: u.on })), ...downs.map((d) => ({ from: j.name, to: d.job, on: d.on }))];
  const layout = layoutGraph(nodes, edges, { maxWidth: 100000 });
  const mini = drawGraph(layout, { prefix: 'mini', self: j.name, label: `${j.name}, its upstreams and downstreams` });
  mini.id = 'job-dep-graph';
  return el('section', { id: 'job-deps', class: 'job-deps', 'aria-labelledby': 'job-deps-title' },
    el('h2', { id: 'job-deps-title' }, 'Dependencies'),
    el('div', { class: 'deps-lists' },
      ups.length ? el('div', { id: 'job-upstreams' }, el('h3', {}, 'Runs after'),
        el('ul', { class: 'dep-list' }, ups.map((u) => item(u, 'up'))),
        el('p', { class: 'muted small' }, `Once per tick of its root job, when these runs of that tick meet their conditions${j.after_timeout ? `; skipped if they have not within ${j.after_timeout}` : ''}.`)) : null,
      downs.length ? el('div', { id: 'job-downstreams' }, el('h3', {}, 'Then runs'),
        el('ul', { class: 'dep-list' }, downs.map((d) => item(d, 'down')))) : null),
    el('div', { class: 'graph-wrap mini' }, mini),
    el('p', { class: 'small' }, el('a', { href: `#/graph/${encodeURIComponent(j.name)}`, id: 'job-graph-link' }, 'Show in the dependency graph')));
}

// What the job page's dependency part shows, to tell when it must be built again.
function jobDepsSig(j) {
  if (!j) return null;
  const ups = afterOf(j);
  const downs = downstreamsOf(j.name);
  if (!ups.length && !downs.length) return null;
  return [ups, downs, [...ups.map((u) => u.job), ...downs.map((d) => d.job)].map(graphStatus)];
}

// ---------------------------------------------------------------- start

function start() {
  $('#token-form').addEventListener('submit', submitToken);
  $('#token-cancel').addEventListener('click', () => $('#token-dialog').close());
  $('#token-signout').addEventListener('click', forgetToken);
  $('#token-button').addEventListener('click', () => askToken(null));
  $('#job-form').addEventListener('submit', saveJob);
  for (const k of ['schedule', 'timezone', 'name']) $('#job-form').elements[k].addEventListener('input', previewSoon);
  // editing a field takes its old error away (the preview speaks for the schedule meanwhile)
  $('#job-form').addEventListener('input', (ev) => {
    const slot = ev.target.name && document.getElementById(`e-${ev.target.name}`);
    if (slot && !slot.hidden) { slot.hidden = true; slot.textContent = ''; ev.target.removeAttribute('aria-invalid'); }
  });
  $('#job-cancel').addEventListener('click', () => $('#job-dialog').close());
  initBackfillDialog();
  $('#notify-add').addEventListener('click', addRule);
  for (const r of document.querySelectorAll('input[name="notify_mode"]')) {
    r.addEventListener('change', () => {
      setNotifyMode(r.value);
      const e = $('#e-notify'); e.hidden = true; e.textContent = '';
      $('#f-notify-rules').removeAttribute('aria-invalid');
    });
  }
  // a changed rule takes its error away
  $('#notify-rules').addEventListener('input', (ev) => {
    const row = ev.target.closest('.rule');
    if (!row) return;
    const slot = row.querySelector('.rule-error');
    if (!slot.hidden) { slot.hidden = true; slot.textContent = ''; }
    for (const x of row.querySelectorAll('[aria-invalid]')) x.removeAttribute('aria-invalid');
  });
  // a click outside an open row menu closes it; Escape too
  document.addEventListener('click', (e) => {
    for (const m of document.querySelectorAll('details.menu[open]')) if (!m.contains(e.target)) m.open = false;
  });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    for (const m of document.querySelectorAll('details.menu[open]')) { m.open = false; m.querySelector('summary').focus(); }
  });
  $('#conn-retry').addEventListener('click', () => feed.restart());
  window.addEventListener('hashchange', navigate);
  document.addEventListener('keydown', (e) => {
    if (e.key === '/' && !e.ctrlKey && !e.metaKey && !document.querySelector('dialog[open]')
      && !['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName)) {
      const s = document.getElementById('job-search');
      if (s) { e.preventDefault(); s.focus(); }
    }
  });
  // relative times, running durations and stale next-fire times move on by themselves; while
  // the master does not answer they stand still (what is shown is from when it last did)
  setInterval(() => { if (!document.hidden && state.master.up) render(); }, 1000);
  // heartbeats and owned-job counts are not events: the workers view re-reads them
  setInterval(() => { if (!document.hidden && state.view && state.view.name === 'workers') loadWorkers(); }, 5000);
  navigate();
  loadHealth();
  loadWorkers();
  loadJobs().then(() => feed.start());
}

start();
