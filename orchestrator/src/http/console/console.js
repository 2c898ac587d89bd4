// Operator console. Plain ES2022, no framework, no build step.
// Rule of the file: server data reaches the DOM only through textContent / attributes
// (the h() helper below), never through innerHTML, so nothing a customer types can run.

const TOKEN_KEY = 'console_token';
const token = sessionStorage.getItem(TOKEN_KEY);
const $ = (sel) => document.querySelector(sel);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- DOM helpers

/** Creates an element; strings among the children become text nodes (escaped by construction). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...children.flat().filter((c) => c != null && c !== false).map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** Coalesces many updates into one render per frame. */
function scheduler(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

const pad = (n) => String(n).padStart(2, '0');
/** HH:MM:SS for today, "Mon 6 12:01" otherwise; the full ISO string goes in the title. */
function shortTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
const timeEl = (iso) => h('time', { datetime: iso, title: iso }, shortTime(iso));
const ts = (iso) => Date.parse(iso) || 0;

// ---------------------------------------------------------------- errors and status line

const recentNotes = new Map();
let toastTimer;
/** Shows a short message in the header; the same text is not repeated within 10 s (pollers fail every 2 s). */
function notify(message, kind = 'error') {
  const now = Date.now();
  if ((recentNotes.get(message) ?? 0) > now - 10_000) return;
  recentNotes.set(message, now);
  const toast = $('#toast');
  toast.textContent = message;
  toast.title = message;
  toast.dataset.kind = kind;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, kind === 'error' ? 8000 : 4000);
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function report(error) {
  if (error?.status === 401 || error?.name === 'AbortError') return; // already on the way to the login page
  console.warn(error);
  notify(error?.message || String(error));
}

/** Wraps an event handler so that a failure shows in the status line instead of escaping. */
const guard = (fn) => (...args) => { Promise.resolve().then(() => fn(...args)).catch(report); };

window.addEventListener('unhandledrejection', (e) => { e.preventDefault(); report(e.reason); });
window.addEventListener('error', (e) => report(e.error ?? e.message));

// ---------------------------------------------------------------- API

let leaving = false;
function toLogin() {
  if (leaving) return;
  leaving = true;
  sessionStorage.removeItem(TOKEN_KEY);
  location.replace('/console/login');
}

/** Query string from an object, leaving out empty values (the API reads `tenant=` as a filter). */
function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) p.set(k, String(v));
  const text = p.toString();
  return text ? `?${text}` : '';
}

/**
 * fetch with the bearer token. A 401 signs out. Statuses in `accept` are not errors
 * (/health answers 503 with a JSON body when unhealthy). `raw` returns the text.
 */
async function api(path, { method = 'GET', body, accept = [], raw = false } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch {
    throw new Error(`${method} ${path.split('?')[0]}: server unreachable`);
  }
  if (res.status === 401) { toLogin(); throw new HttpError(401, 'signed out'); }
  const text = await res.text();
  let data = text;
  if (!raw) { try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ } }
  if (!res.ok && !accept.includes(res.status)) {
    const detail = (data && typeof data === 'object' && data.error) || `HTTP ${res.status}`;
    throw new HttpError(res.status, `${method} ${path.split('?')[0]}: ${detail}`);
  }
  return data;
}

/** Runs `fn` now and then `ms` after each run ends (never two at once, unlike setInterval). */
function every(ms, fn) {
  const tick = async () => {
    try { await fn(); } catch (e) { report(e); }
    setTimeout(tick, ms);
  };
  tick();
}

// ---------------------------------------------------------------- state

const state = {
  org: '',               // organisation filter; '' = all (admin token)
  convs: new Map(),      // `${tenant}\n${phone}` -> conversation row
  convCursor: null,      // next_before of the conversation list
  thread: null,          // the open conversation, see openThread()
  tab: 'thread',
};
const convKey = (tenant, phone) => `${tenant}\n${phone}`;

// Inbound message ids already counted as unread: a retried message is announced more than once.
const counted = new Set();
function countOnce(id) {
  if (!id || counted.has(id)) return false;
  counted.add(id);
  if (counted.size > 5000) counted.delete(counted.values().next().value);
  return true;
}

// ---------------------------------------------------------------- live stream (SSE over fetch)

const stream = { lastId: null, abort: null, generation: 0 };
const IDLE_MS = 45_000; // no bytes (not even a heartbeat) for this long: assume a dead connection

function setStreamState(value) {
  const el = $('#stream-state');
  if (el.textContent !== value) { el.textContent = value; el.dataset.state = value; }
}

/** Parses text/event-stream chunks; calls `dispatch({event, data, id})` at each blank line. */
function sseParser(dispatch) {
  let buffer = '';
  let data = [];
  let event = '';
  return (chunk) => {
    buffer += chunk;
    const lines = buffer.split('\n');
    buffer = lines.pop(); // an unfinished line waits for the next chunk
    for (let line of lines) {
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) dispatch({ event: event || 'message', data: data.join('\n'), id: stream.lastId });
        data = [];
        event = '';
        continue;
      }
      if (line.startsWith(':')) continue; // comment / heartbeat
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') event = value;
      else if (field === 'id' && !value.includes('\0')) stream.lastId = value;
    }
  };
}

function onSse({ event, data }) {
  if (event === 'ready') {
    // Its id (the cursor) is kept as the last id already. After a reconnect, re-read the list too,
    // in case the server could not replay everything since our cursor.
    if (stream.wasReady) loadConversations().catch(report);
    stream.wasReady = true;
    return;
  }
  if (event !== 'message_processed') return;
  let payload;
  try { payload = JSON.parse(data); } catch { console.warn('unreadable event', data); return; }
  applyEvent(payload);
}

async function readStream(ctrl) {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' };
  if (stream.lastId != null) headers['Last-Event-ID'] = stream.lastId; // resume: the server replays what we missed
  const res = await fetch(`/api/v1/stream${qs({ organisation: state.org })}`, { headers, signal: ctrl.signal, cache: 'no-store' });
  if (res.status === 401) { toLogin(); return; }
  if (!res.ok || !res.body) throw new Error(`stream: HTTP ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parse = sseParser(onSse);
  let idle = setTimeout(() => ctrl.abort(), IDLE_MS);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      clearTimeout(idle);
      idle = setTimeout(() => ctrl.abort(), IDLE_MS);
      setStreamState('live'); // any bytes (ready, an event, a heartbeat) prove the stream is up
      parse(value);
    }
  } finally {
    clearTimeout(idle);
  }
}

/** (Re)starts the stream loop; an older loop notices the new generation and stops. */
async function startStream({ fresh = false } = {}) {
  const generation = ++stream.generation;
  stream.abort?.abort();
  if (fresh) { stream.lastId = null; stream.wasReady = false; } // a new organisation filter: a new subscription, not a resume
  while (generation === stream.generation && !leaving) {
    const ctrl = new AbortController();
    stream.abort = ctrl;
    try {
      await readStream(ctrl);
    } catch (e) {
      if (!ctrl.signal.aborted) console.warn('stream ended:', e.message);
    }
    if (generation !== stream.generation || leaving) return;
    setStreamState('reconnecting');
    await sleep(1000);
  }
}

// ---------------------------------------------------------------- conversations feed

const renderFeedSoon = scheduler(renderFeed);
const rowEls = new Map();   // conversation key -> <button.conversation>
const groupEls = new Map(); // tenant -> <section.org-group>

async function loadConversations({ more = false } = {}) {
  const data = await api(`/api/v1/conversations${qs({ organisation: state.org, limit: 50, before: more ? state.convCursor : '' })}`);
  for (const item of data?.items ?? []) {
    const key = convKey(item.tenant_id, item.phone);
    const known = state.convs.get(key);
    if (known && ts(known.last_message_at) > ts(item.last_message_at)) {
      // The stream already told us newer things (it may have created the row from a bare status event):
      // keep them, and take the rest from the page.
      state.convs.set(key, { ...item, ...known, last_preview: known.last_preview || item.last_preview,
        unread: Math.max(known.unread ?? 0, item.unread ?? 0), message_count: Math.max(known.message_count ?? 0, item.message_count ?? 0) });
    } else {
      state.convs.set(key, { ...known, ...item });
    }
  }
  state.convCursor = data?.next_before ?? null;
  renderFeedSoon();
}

/** One stream event: update (or create) its conversation row, and the thread if it is open. */
function applyEvent(ev) {
  if (!ev || !ev.phone) return;
  const tenant = ev.tenant_id ?? 'default';
  if (state.org && tenant !== state.org) return;
  const key = convKey(tenant, ev.phone);
  let conv = state.convs.get(key);
  if (!conv) {
    conv = { tenant_id: tenant, phone: ev.phone, last_message_at: ev.occurred_at, unread: 0, message_count: 0, last_preview: '', last_direction: ev.direction };
    state.convs.set(key, conv);
  }
  const open = state.thread?.key === key;
  if (ev.kind === 'status') {
    conv.last_status = ev.status;
  } else {
    if (ev.direction === 'inbound' && countOnce(ev.message_id)) {
      conv.message_count = (conv.message_count ?? 0) + 1;
      if (!open) conv.unread = (conv.unread ?? 0) + 1;
    }
    const outbound = ev.reply != null || ev.direction === 'outbound';
    conv.last_preview = ev.reply ?? ev.text ?? conv.last_preview;
    conv.last_direction = outbound ? 'outbound' : 'inbound';
    if (ev.intent) conv.intent = ev.intent;
    conv.alert = ev.kind === 'dead_lettered' || ev.kind === 'retried' ? ev.kind : null;
  }
  if (ts(ev.occurred_at) >= ts(conv.last_message_at)) conv.last_message_at = ev.occurred_at;
  conv.fresh = true; // flash the row once
  renderFeedSoon();
  if (open) threadEvent(ev);
}

function feedRow(conv) {
  const key = convKey(conv.tenant_id, conv.phone);
  let el = rowEls.get(key);
  if (!el) {
    el = h('button', { type: 'button', class: 'conversation', dataset: { phone: conv.phone, tenant: conv.tenant_id } });
    el.addEventListener('click', guard(() => openThread(conv.tenant_id, conv.phone)));
    el.addEventListener('animationend', () => el.classList.remove('flash'));
    rowEls.set(key, el);
  }
  el.classList.toggle('selected', state.thread?.key === key);
  if (conv.fresh) { conv.fresh = false; el.classList.remove('flash'); void el.offsetWidth; el.classList.add('flash'); }
  const sig = JSON.stringify([conv.last_message_at, conv.last_preview, conv.last_direction, conv.intent, conv.unread, conv.alert, conv.last_status]);
  if (el.dataset.sig !== sig) {
    el.dataset.sig = sig;
    el.replaceChildren(
      h('span', { class: 'line' }, h('span', { class: 'phone mono' }, conv.phone), timeEl(conv.last_message_at)),
      h('span', { class: 'line' },
        h('span', { class: 'dir', title: conv.last_direction }, conv.last_direction === 'outbound' ? '↗' : '↙'),
        h('span', { class: 'preview' }, conv.last_preview || '—'),
        conv.alert && h('span', { class: `badge ${conv.alert}` }, conv.alert === 'dead_lettered' ? 'DLQ' : 'retry'),
        conv.intent && h('span', { class: 'badge intent' }, conv.intent),
        conv.unread > 0 && h('span', { class: 'unread', title: 'unread' }, conv.unread)),
    );
  }
  return el;
}

/** Keyed render: rows keep their element (and focus); only order and changed rows touch the DOM. */
function renderFeed() {
  const feed = $('#feed');
  const byTenant = new Map();
  for (const conv of state.convs.values()) {
    if (state.org && conv.tenant_id !== state.org) continue;
    if (!byTenant.has(conv.tenant_id)) byTenant.set(conv.tenant_id, []);
    byTenant.get(conv.tenant_id).push(conv);
  }
  const newest = (list) => ts(list[0].last_message_at);
  for (const list of byTenant.values()) list.sort((a, b) => ts(b.last_message_at) - ts(a.last_message_at));
  const groups = [...byTenant.entries()].sort((a, b) => newest(b[1]) - newest(a[1]));

  $('#feed-count').textContent = `${state.convs.size} · ${byTenant.size} org${byTenant.size === 1 ? '' : 's'}`;
  const wanted = groups.map(([tenant, list]) => {
    let group = groupEls.get(tenant);
    if (!group) {
      group = h('section', { class: 'org-group', dataset: { tenant } }, h('h3', {}, h('span', {}, tenant), h('span', { class: 'n' })), h('div', { class: 'rows' }));
      groupEls.set(tenant, group);
    }
    group.querySelector('.n').textContent = list.length;
    placeChildren(group.querySelector('.rows'), list.map(feedRow));
    return group;
  });
  if (!wanted.length) {
    feed.replaceChildren(h('p', { class: 'empty' }, state.org ? `No conversations for ${state.org} yet.` : 'No conversations yet.'));
  } else {
    placeChildren(feed, wanted);
  }
  $('#feed-more').hidden = !state.convCursor;
}

/** Makes `parent`'s children exactly `nodes`, in order, moving only what is out of place. */
function placeChildren(parent, nodes) {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] ?? null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

// ---------------------------------------------------------------- thread

const renderThreadSoon = scheduler(renderThread);

async function openThread(tenant, phone) {
  const key = convKey(tenant, phone);
  state.thread = { key, tenant, phone, msgs: new Map(), before: null, loaded: false };
  const conv = state.convs.get(key);
  if (conv) conv.unread = 0;
  showTab('thread');
  renderFeedSoon();
  renderThread();
  await Promise.all([fetchMessages(state.thread), markRead(state.thread)]);
}

// A reply carries the id of the message it answers: direction (and, for replies, the row id) tells them apart.
const msgKey = (m) => (m.direction === 'outbound' ? `out:${m.id ?? m.message_id}` : `in:${m.message_id}`);

async function fetchMessages(thread, { older = false } = {}) {
  const path = `/api/v1/conversations/${encodeURIComponent(thread.phone)}/messages`;
  const data = await api(path + qs({ organisation: thread.tenant, limit: 50, before: older ? thread.before : '' }));
  if (state.thread !== thread) return; // the operator opened another conversation meanwhile
  for (const m of data?.items ?? []) thread.msgs.set(msgKey(m), m);
  const conv = state.convs.get(thread.key);
  if (conv && thread.msgs.size > (conv.message_count ?? 0)) conv.message_count = thread.msgs.size;
  // The cursor walks back through older pages; a re-read of the newest page must not reset it.
  if (older || !thread.loaded) thread.before = data?.next_before ?? null;
  renderThread(older ? 'keep' : thread.loaded ? 'auto' : 'bottom');
  thread.loaded = true;
}

async function markRead(thread) {
  const data = await api(`/api/v1/conversations/${encodeURIComponent(thread.phone)}/read${qs({ organisation: thread.tenant })}`, { method: 'POST' });
  const conv = state.convs.get(thread.key);
  if (conv) { conv.unread = data?.unread ?? 0; renderFeedSoon(); }
}
const markReadSoon = debounce((thread) => { if (state.thread === thread) markRead(thread).catch(report); }, 800);
// Events say little about replies (their wamid, their stored text): re-read the thread shortly after.
const refetchSoon = debounce((thread) => { if (state.thread === thread) fetchMessages(thread).catch(report); }, 700);

/** A stream event for the open thread: an inbound message shows at once; replies and statuses come with the re-read. */
function threadEvent(ev) {
  const t = state.thread;
  if (ev.kind !== 'status' && ev.direction === 'inbound') {
    const key = `in:${ev.message_id}`;
    const known = t.msgs.get(key);
    const status = { dead_lettered: 'dead_lettered', retried: 'retrying' }[ev.kind] ?? known?.status ?? 'received';
    t.msgs.set(key, { created_at: ev.occurred_at, ...known, direction: 'inbound', message_id: ev.message_id,
      text: ev.text ?? known?.text ?? null, intent: ev.intent ?? known?.intent ?? null, status });
    markReadSoon(t);
  } else if (ev.status) {
    for (const m of t.msgs.values()) if (m.direction === 'outbound' && m.message_id === ev.message_id) m.status = ev.status;
  }
  renderThreadSoon();
  refetchSoon(t);
}

const STATUS_MARK = { pending: '◷ pending', sent: '✓ sent', delivered: '✓✓ delivered', read: '✓✓ read', failed: '✗ failed', dead_lettered: '✗ dead-lettered', retrying: '↻ retrying' };

function messageEl(m) {
  const showStatus = m.status && (m.direction === 'outbound' || m.status === 'dead_lettered' || m.status === 'retrying');
  return h('div', { class: `message ${m.direction === 'outbound' ? 'outbound' : 'inbound'}`, 'data-message-id': m.message_id ?? '' },
    h('div', { class: 'bubble', title: m.error || m.message_id || '' },
      m.text != null && m.text !== '' ? h('p', { class: 'text' }, m.text) : h('p', { class: 'text none' }, '(no text)'),
      h('div', { class: 'meta' },
        m.intent && h('span', { class: 'badge intent' }, m.intent),
        timeEl(m.created_at),
        showStatus && h('span', { class: `status ${m.status}` }, STATUS_MARK[m.status] ?? m.status))));
}

function renderThread(scroll = 'auto') {
  const t = state.thread;
  const head = $('#thread-head');
  const box = $('#thread-messages');
  const older = $('#thread-older');
  $('#tab-thread').textContent = t ? `Conversation · ${t.phone}` : 'Conversation';
  if (!t) return;
  const conv = state.convs.get(t.key);
  head.replaceChildren(
    h('span', { class: 'phone mono' }, t.phone),
    h('span', { class: 'badge' }, t.tenant),
    h('span', { class: 'muted' }, conv?.message_count != null ? `${conv.message_count} message${conv.message_count === 1 ? '' : 's'}` : ''));
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const prevHeight = box.scrollHeight;
  const msgs = [...t.msgs.values()].sort((a, b) => ts(a.created_at) - ts(b.created_at) || (a.id ?? 0) - (b.id ?? 0));
  older.hidden = t.before == null;
  box.replaceChildren(older, ...(msgs.length ? msgs.map(messageEl) : [h('p', { class: 'empty' }, t.loaded ? 'No messages.' : 'Loading…')]));
  if (scroll === 'bottom' || (scroll === 'auto' && atBottom)) box.scrollTop = box.scrollHeight;
  else if (scroll === 'keep') box.scrollTop += box.scrollHeight - prevHeight; // older messages went above
}

// ---------------------------------------------------------------- tabs

function showTab(name) {
  state.tab = name;
  for (const tab of ['thread', 'dlq']) {
    $(`#${tab}`).hidden = tab !== name;
    $(`#tab-${tab}`).setAttribute('aria-selected', String(tab === name));
  }
  if (name === 'dlq') refreshDlq().catch(report);
}

// ---------------------------------------------------------------- dead letters

const dlq = {
  rows: new Map(),     // id -> <tr>
  settled: new Map(),  // id -> {entry, until}: rows just replayed/discarded stay visible a while
  dryRun: null,        // {filters, matched} of the last dry run: what the confirm button will replay
  inFlight: null,
};

function dlqFilters() {
  return {
    status: $('#dlq-status').value,
    tenant: $('#dlq-tenant').value.trim(),
    failure_type: $('#dlq-failure-type').value,
    fingerprint: $('#dlq-fingerprint').value.trim(),
  };
}

/** One refresh at a time; a call during one waits for it and then runs again (fresh filters). */
function refreshDlq() {
  if (dlq.inFlight) { dlq.again = true; return dlq.inFlight; }
  dlq.inFlight = (async () => {
    try {
      do {
        dlq.again = false;
        const f = dlqFilters();
        const [list, groups] = await Promise.all([
          api(`/admin/dlq${qs({ ...f, limit: 100, offset: 0 })}`),
          api(`/admin/dlq/groups${qs(f)}`),
        ]);
        renderDlqRows(list?.items ?? [], f);
        renderGroups(groups?.groups ?? [], f);
      } while (dlq.again);
    } finally {
      dlq.inFlight = null;
    }
  })();
  return dlq.inFlight;
}

function renderDlqRows(items, filters) {
  const now = Date.now();
  const shown = new Map(items.map((e) => [e.id, e]));
  for (const [id, { entry, until }] of dlq.settled) {
    if (until < now) dlq.settled.delete(id);
    else if (!shown.has(id)) shown.set(id, entry); // keep the outcome in sight though the filter no longer matches it
  }
  const entries = [...shown.values()].sort((a, b) => b.id - a.id);
  const body = $('#dlq-rows');
  if (!entries.length) {
    dlq.rows.clear();
    body.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No dead letters match these filters.')));
  } else {
    placeChildren(body, entries.map(dlqRow));
    for (const id of dlq.rows.keys()) if (!shown.has(id)) dlq.rows.delete(id);
  }
  $('#dlq-count').textContent = filters.status === 'failed' && !filters.tenant && !filters.failure_type && !filters.fingerprint && items.length ? String(items.length) : '';
}

function dlqRow(entry) {
  let tr = dlq.rows.get(entry.id);
  if (!tr) {
    tr = h('tr', { class: 'dlq-row', 'data-id': entry.id });
    dlq.rows.set(entry.id, tr);
  }
  tr.classList.toggle('settled', dlq.settled.has(entry.id));
  const sig = JSON.stringify(entry);
  if (tr.dataset.sig === sig) return tr; // unchanged: keep its buttons (and a pending click) as they are
  tr.dataset.sig = sig;
  tr.replaceChildren(
    h('td', {}, h('button', { type: 'button', class: 'id-link', title: 'Show payload', onclick: guard(() => showPayload(entry.id)) }, `#${entry.id}`)),
    h('td', {}, timeEl(entry.created_at)),
    h('td', { class: 'mono two', title: `${entry.topic ?? ''} [partition ${entry.partition ?? '-'}, offset ${entry.offset ?? '-'}]\nkey ${entry.key ?? '—'}` },
      h('span', { class: 'topic' }, entry.topic ?? '—'), h('span', { class: 'key' }, entry.key ?? '—')),
    h('td', { class: 'two', title: entry.error ?? '' },
      h('span', {}, h('span', { class: 'badge' }, entry.failure_type)), h('span', { class: 'error' }, entry.error ?? '')),
    h('td', { class: 'mono' }, entry.attempt_count),
    h('td', { class: 'dlq-status', 'data-status': entry.status, title: `replayed ${entry.replay_count ?? 0}×` }, entry.status),
    h('td', {}, h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'btn replay', onclick: guard(() => rowAction(entry, 'replay')) }, 'Replay'),
      h('button', { type: 'button', class: 'btn danger discard', disabled: entry.status === 'discarded', onclick: guard(() => rowAction(entry, 'discard')) }, 'Discard'))),
  );
  return tr;
}

async function rowAction(entry, action) {
  if (action === 'discard' && !confirm(`Discard dead letter #${entry.id}? It will not be replayed.`)) return;
  const tr = dlq.rows.get(entry.id);
  tr?.querySelectorAll('button.replay, button.discard').forEach((b) => { b.disabled = true; });
  try {
    const updated = await api(`/admin/dlq/${entry.id}/${action}`, { method: 'POST' });
    const next = { ...entry, ...updated };
    dlq.settled.set(entry.id, { entry: next, until: Date.now() + 20_000 });
    dlqRow(next);
    tr?.classList.add('settled');
    notify(`#${entry.id} ${next.status}`, 'info');
  } catch (e) {
    if (tr) tr.dataset.sig = ''; // re-enable its buttons on the next render
    dlqRow(entry);
    throw e;
  }
  refreshDlq().catch(report);
}

function renderGroups(groups, filters) {
  const list = $('#dlq-groups');
  if (!groups.length) { list.replaceChildren(h('li', { class: 'muted' }, 'No groups.')); return; }
  list.replaceChildren(...groups.map((g) => h('li', {},
    h('button', {
      type: 'button', class: `group${filters.fingerprint === g.fingerprint ? ' active' : ''}`,
      title: `${g.pattern}\nfirst ${g.first_at}\nlast ${g.last_at}\nclick: filter by this fingerprint (again: clear)`,
      onclick: guard(() => {
        const input = $('#dlq-fingerprint');
        input.value = input.value === g.fingerprint ? '' : g.fingerprint;
        filtersChanged();
      }),
    },
    h('span', { class: 'n' }, g.count),
    h('span', { class: 'badge' }, g.failure_type),
    h('span', { class: 'mono' }, String(g.fingerprint).slice(0, 10)),
    h('span', { class: 'pattern' }, g.pattern)))));
}

function filtersChanged() {
  // A dry run answers for the filters it ran with; new filters need a new one before a real replay.
  if (dlq.dryRun) { dlq.dryRun = null; setBulk('Filters changed: dry run again before replaying.'); }
  $('#bulk-confirm').disabled = true;
  refreshDlq().catch(report);
}

function setBulk(text, kind = '') {
  const el = $('#bulk-result');
  el.textContent = text;
  el.dataset.kind = kind;
}

/** Filters for a bulk replay: sent as JSON body (what /admin/dlq/replay reads) and mirrored in the query. */
function bulkRequest(filters, dryRun) {
  const body = Object.fromEntries(Object.entries(filters).filter(([, v]) => v !== ''));
  const unfiltered = Object.keys(body).length === 0;
  body.dry_run = dryRun;
  if (unfiltered && !dryRun) body.all = true; // the API wants an explicit "all" to replay with no filter
  return api(`/admin/dlq/replay${qs(body)}`, { method: 'POST', body });
}

async function bulkDryRun() {
  const filters = dlqFilters();
  $('#bulk-confirm').disabled = true;
  setBulk('Counting…');
  try {
    const res = await bulkRequest(filters, true);
    const matched = Number(res?.matched ?? 0);
    dlq.dryRun = { filters, matched };
    setBulk(`${matched} ${matched === 1 ? 'entry matches' : 'entries match'} (dry run)`);
    $('#bulk-confirm').disabled = matched === 0;
  } catch (e) {
    setBulk(e.message, 'error');
    throw e;
  }
}

async function bulkConfirm() {
  const run = dlq.dryRun;
  if (!run) return;
  if (!confirm(`Replay ${run.matched} dead letter${run.matched === 1 ? '' : 's'} now?`)) return;
  $('#bulk-confirm').disabled = true;
  dlq.dryRun = null;
  setBulk('Replaying…');
  try {
    const res = await bulkRequest(run.filters, false);
    const failed = res?.failed ?? [];
    setBulk(`Replayed ${res?.replayed ?? 0} of ${res?.matched ?? run.matched}${failed.length ? `; ${failed.length} failed (first: #${failed[0].id} ${failed[0].error})` : ''}`, failed.length ? 'error' : '');
  } catch (e) {
    setBulk(e.message, 'error');
    throw e;
  }
  await refreshDlq();
}

async function showPayload(id) {
  const e = await api(`/admin/dlq/${id}`);
  let body = e.payload ?? '';
  let note = e.payload_encoding ?? 'utf8';
  if (note === 'utf8') {
    try { body = JSON.stringify(JSON.parse(body), null, 2); note = 'utf8 (JSON)'; } catch { /* not JSON: show as is */ }
  }
  $('#payload-title').textContent = `Dead letter #${e.id}`;
  const rows = [
    ['message_id', e.message_id], ['tenant', e.tenant_id], ['source', `${e.topic ?? '—'} [partition ${e.partition ?? '-'}, offset ${e.offset ?? '-'}]`],
    ['key', e.key], ['failure', e.failure_type], ['fingerprint', e.fingerprint], ['error', e.error],
    ['attempts / replays', `${e.attempt_count} / ${e.replay_count}`], ['status', e.status], ['created / updated', `${e.created_at} / ${e.updated_at}`],
    ['payload', note],
  ];
  $('#payload-meta').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, v ?? '—')]));
  $('#payload-body').textContent = body;
  $('#payload-dialog').showModal();
}

// ---------------------------------------------------------------- health and circuit breakers

async function pollHealth() {
  const pill = $('#health-status');
  // 503 = unhealthy: still a JSON body worth showing.
  const data = await api('/health', { accept: [503] }).catch((e) => {
    pill.textContent = 'health unreachable';
    pill.dataset.status = 'unreachable';
    throw e;
  });
  pill.textContent = `health ${data?.status ?? 'unknown'}`;
  pill.dataset.status = data?.status ?? 'unknown';
  $('#health-age').textContent = shortTime(new Date().toISOString());

  const breakers = Object.entries(data?.circuit_breakers ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const list = $('#breaker-list');
  if (!breakers.length) list.replaceChildren(h('li', { class: 'muted' }, 'No circuit breakers reported.'));
  else {
    list.replaceChildren(...breakers.map(([name, st]) => h('li', { class: 'breaker', 'data-name': name, 'data-state': st },
      h('span', { class: 'name mono' }, name),
      h('span', { class: 'state' }, String(st).replace('_', ' ')))));
  }
  const m = data?.worker?.metrics;
  $('#worker-metrics').replaceChildren(...(m ? [['processed', m.processed], ['failed', m.failed], ['retried', m.retried], ['DLQ', m.deadLettered], ['dupes', m.duplicates]]
    .map(([label, v]) => h('div', {}, h('b', {}, v ?? '–'), h('span', {}, label))) : []));
}

// ---------------------------------------------------------------- metrics and charts

/** Prometheus text -> [{name, labels, value}]; `#` lines don't match. Label values may hold commas and braces. */
const SAMPLE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
function parseProm(text) {
  const out = [];
  for (const line of text.split('\n')) {
    const m = SAMPLE.exec(line.trim());
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(LABEL)) labels[k] = v.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const value = m[3] === '+Inf' ? Infinity : Number(m[3]);
    if (!Number.isNaN(value)) out.push({ name: m[1], labels, value });
  }
  return out;
}

/** The few numbers the charts need, summed over all label sets. */
function snapshot(samples) {
  const snap = { msgs: 0, lag: 0, sum: 0, count: 0, buckets: new Map(), hasLag: false };
  for (const { name, labels, value } of samples) {
    switch (name) {
      case 'orchestrator_messages_total': snap.msgs += value; break;
      case 'kafka_consumer_lag': snap.lag += value; snap.hasLag = true; break;
      case 'ai_processing_duration_seconds_sum': snap.sum += value; break;
      case 'ai_processing_duration_seconds_count': snap.count += value; break;
      case 'ai_processing_duration_seconds_bucket': {
        const le = labels.le === '+Inf' ? Infinity : Number(labels.le);
        if (!Number.isNaN(le)) snap.buckets.set(le, (snap.buckets.get(le) ?? 0) + value);
        break;
      }
      default:
    }
  }
  return snap;
}

/** histogram_quantile over cumulative bucket deltas [[le, count]] (sorted), linear inside a bucket. */
function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lower; // past the last finite bound: its bound is all we know
      return lower + (le - lower) * ((rank - below) / Math.max(count - below, 1e-9));
    }
    lower = le;
    below = count;
  }
  return lower;
}

const WINDOW_MS = 5 * 60_000;
const series = { tput: [], p50: [], p95: [], lag: [] }; // [{t, v}] with v null for "no data"
let lastSnap = null;

async function pollMetrics() {
  const text = await api('/metrics', { raw: true });
  const snap = snapshot(parseProm(text));
  snap.t = Date.now();
  const prev = lastSnap;
  lastSnap = snap;
  const push = (name, v) => {
    const list = series[name];
    list.push({ t: snap.t, v });
    while (list.length && list[0].t < snap.t - WINDOW_MS) list.shift();
  };
  push('lag', snap.hasLag ? snap.lag : null);
  if (prev) {
    const dt = (snap.t - prev.t) / 1000;
    const dMsgs = snap.msgs - prev.msgs;
    push('tput', dMsgs >= 0 && dt > 0 ? dMsgs / dt : null); // a negative delta is a restart: skip it
    const deltas = [...snap.buckets.entries()].sort((a, b) => a[0] - b[0]).map(([le, c]) => [le, c - (prev.buckets.get(le) ?? 0)]);
    const ok = deltas.every(([, c]) => c >= 0);
    const p50 = ok ? quantile(0.5, deltas) : null;
    const p95 = ok ? quantile(0.95, deltas) : null;
    push('p50', p50 == null ? null : p50 * 1000);
    push('p95', p95 == null ? null : p95 * 1000);
    const dCount = snap.count - prev.count;
    const mean = dCount > 0 ? ((snap.sum - prev.sum) / dCount) * 1000 : null;

    const last = series.tput.at(-1).v;
    $('#tput-now').textContent = last == null ? '–' : `${fmt(last)} msg/s`;
    $('#latency-now').textContent = p50 == null ? 'idle' : `p50 ${fmt(p50 * 1000)} · p95 ${fmt(p95 * 1000)} ms`;
    $('#latency-now').title = mean == null ? '' : `mean ${fmt(mean)} ms over the last ${dt.toFixed(1)} s`;
  }
  $('#lag-now').textContent = snap.hasLag ? fmt(snap.lag) : 'n/a';
  drawCharts();
}

const fmt = (v) => (Number.isInteger(v) || v >= 100 ? Math.round(v).toLocaleString()
  : v >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/\.?0+$/, '') || '0');

/** A "nice" upper bound for the y axis (1, 2, 5 × 10^n). */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((n) => n >= v);
}

const W = 300;
const H = 74;
const charts = {};
function chart(id, names, unit) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const grid = [0.5, 1].map((f) => s('line', { class: 'grid', x1: 0, x2: W, y1: H - (H - 6) * f, y2: H - (H - 6) * f }));
  const area = s('path', { class: 'area s0' });
  const lines = names.map((_, i) => s('path', { class: `s${i}` }));
  const label = s('text', { class: 'axis', x: 4, y: 12 });
  const span = s('text', { class: 'axis', x: W - 4, y: 12, 'text-anchor': 'end' });
  svg.append(...grid, area, ...lines, label, span);
  const fig = $(`#${id}`);
  fig.append(svg);
  if (names.length > 1) {
    fig.append(h('div', { class: 'legend' }, names.map((n, i) => h('span', {}, h('i', { style: `background:${i ? '#d88a0b' : '#128c7e'}` }), n))));
  }
  charts[id] = { area, lines, label, span, unit, names };
}

/** Path for points in the window; null values break the line instead of dropping to zero. */
function pathOf(points, now, span, max) {
  let d = '';
  let pen = false;
  for (const { t, v } of points) {
    if (v == null) { pen = false; continue; }
    const x = Math.max(0, ((t - (now - span)) / span) * W);
    const y = H - (Math.min(v, max) / max) * (H - 6);
    // A segment's first point gets a tiny stub so that a lone sample still shows (as a dot).
    d += pen ? `L${x.toFixed(1)},${y.toFixed(1)}` : `M${x.toFixed(1)},${y.toFixed(1)}h0.1`;
    pen = true;
  }
  return d;
}

function drawChart(id, lists) {
  const c = charts[id];
  const now = Date.now();
  const max = niceMax(Math.max(0, ...lists.flat().map((p) => p.v ?? 0)) * 1.1);
  // Shown span: from the first sample (at least 1 min) up to the 5-minute window, so a fresh page fills quickly.
  const oldest = Math.min(...lists.map((l) => l[0]?.t ?? now));
  const span = Math.min(WINDOW_MS, Math.max(60_000, now - oldest));
  lists.forEach((points, i) => c.lines[i].setAttribute('d', pathOf(points, now, span, max)));
  const first = pathOf(lists[0], now, span, max);
  // The area under the first series: its line closed down to the x axis.
  const xs = [...first.matchAll(/[ML]([\d.]+),/g)].map((m) => m[1]);
  c.area.setAttribute('d', xs.length > 1 && !first.slice(1).includes('M') ? `${first}L${xs.at(-1)},${H}L${xs[0]},${H}Z` : '');
  c.label.textContent = `max ${fmt(max)} ${c.unit}`;
  c.span.textContent = `${Math.round(span / 60_000)} min`;
}

function drawCharts() {
  drawChart('chart-tput', [series.tput]);
  drawChart('chart-latency', [series.p50, series.p95]);
  drawChart('chart-lag', [series.lag]);
}

// ---------------------------------------------------------------- wiring

function start() {
  chart('chart-tput', ['msg/s'], 'msg/s');
  chart('chart-latency', ['p50', 'p95'], 'ms');
  chart('chart-lag', ['lag'], 'msgs');

  $('#logout').addEventListener('click', guard(async () => {
    leaving = true;
    stream.abort?.abort();
    try { await fetch('/console/logout', { method: 'POST', headers: { Authorization: `Bearer ${token}` } }); } catch { /* leave anyway */ }
    sessionStorage.removeItem(TOKEN_KEY);
    location.replace('/console/login');
  }));

  $('#org-filter').addEventListener('input', debounce(guard(async () => {
    const org = $('#org-filter').value.trim();
    if (org === state.org) return;
    state.org = org;
    state.convs.clear();
    state.convCursor = null;
    renderFeed();
    startStream({ fresh: true });
    await loadConversations();
  }), 400));
  $('#feed-more').addEventListener('click', guard(() => loadConversations({ more: true })));
  $('#thread-older').addEventListener('click', guard(() => state.thread && fetchMessages(state.thread, { older: true })));

  $('#tab-thread').addEventListener('click', () => showTab('thread'));
  $('#tab-dlq').addEventListener('click', () => showTab('dlq'));
  $('#dlq-filters').addEventListener('submit', (e) => { e.preventDefault(); refreshDlq().catch(report); });
  for (const id of ['#dlq-status', '#dlq-failure-type']) $(id).addEventListener('change', filtersChanged);
  for (const id of ['#dlq-tenant', '#dlq-fingerprint']) $(id).addEventListener('input', debounce(filtersChanged, 400));
  $('#bulk-dry-run').addEventListener('click', guard(bulkDryRun));
  $('#bulk-confirm').addEventListener('click', guard(bulkConfirm));
  $('#payload-close').addEventListener('click', () => $('#payload-dialog').close());

  startStream();
  loadConversations().catch(report);
  every(2000, pollHealth);
  every(2000, pollMetrics);
  // The DLQ panel refreshes itself while it is on screen.
  setInterval(() => { if (state.tab === 'dlq' && !document.hidden) refreshDlq().catch(report); }, 3000);
}

if (!token) location.replace('/console/login');
else start();
