/* The operator page: login, caller cards over the websocket, results, recent calls,
   call-backs (POST /api/calls) and the agent's own status (PUT /api/me/status);
   the follow-up of calls: an agent's own missed calls (GET /api/callbacks?mine=1)
   and points (GET /api/kpi); a manager's (or administrator's) team missed calls,
   KPI table, VIP call plan (GET /api/vip-plan) and notices over the websocket; their
   call log (GET /api/calls/log: filters, CSV export, a player with the waveform for
   each recorded call, GET /api/calls/{id}/recording/link); the dashboard of marketers
   (and above their sections, of managers and administrators): GET /api/reports/channels
   as KPI tiles and SVG charts (charts.js), the channel table and its CSV; leads also get
   GET /api/reports/agents. Administrators see the CRM delivery: GET /api/admin/outbox
   (events waiting and dead per CRM sink) and POST /api/admin/outbox/retry.

   Plain browser JavaScript, no build step. The protocol is docs/websocket-protocol.md;
   in short: GET /api/token (session cookie), open /ws, send {"type":"auth"} first,
   then receive pop / update / withdraw frames. A pop id is shown at most once: a
   repeated pop or an update replaces the content of the same card. On a lost
   socket the page reconnects with exponential backoff and jitter, with a fresh
   token each time; the server re-sends the live pops right after "ready", and
   cards that are not re-sent are settled (ringing ones removed, talking ones
   marked ended) once that burst is over.

   Every visible text comes from i18n/<lang>.json. Data from the PBX (caller
   names!) is only ever put into the page with textContent, never as HTML. */
(() => {
  'use strict';

  const LANGS = ['ru', 'en'];
  const LANG_KEY = 'cti.lang';
  const SOUND_KEY = 'cti.sound';
  const PING_MS = 25000;            // keeps proxies from closing an idle socket
  const PONG_TIMEOUT_MS = 10000;    // no frame this long after a ping: the socket is dead
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const RESYNC_MS = 1500;           // the re-sent pops follow "ready" at once; settle the rest after this
  const RECENT_EVERY_MS = 60000;
  const RECENT_AGAIN_MS = 2000;     // the call record is written a moment after "ended": look again
  const WITHDRAWN_SHOWN_MS = 1500;  // a withdrawn card shows its reason this long
  const SAVED_SHOWN_MS = 1500;      // an ended card closes this long after its result is saved
  const GONE_REMEMBERED = 500;
  const CALLBACK_ATTEMPTS = 3;      // a call-back re-sent (same request id) only when the network lost the answer
  const CALLBACK_RETRY_MS = 1000;
  const CALLBACK_SHOWN_MS = 5000;   // "your phone will ring" shows this long
  const CALLBACK_ERROR_SHOWN_MS = 20000;
  // A click-to-call is not a pop: after a call-back from the missed list, look at the
  // list this often (for this long) so the task goes once the customer is reached.
  const TASK_WATCH_MS = 4000;
  const TASK_WATCH_FOR_MS = 10 * 60000;
  const MEETING_SHOWN_MS = 5000;
  const NOTICES_MAX = 20;
  const LOG_PAGE = 50;              // calls per page of the call log
  const LOG_CHANGE_MS = 300;
  const LOG_OUTCOMES = ['answered', 'missed', 'abandoned', 'busy', 'failed'];
  const OUTBOX_EVERY_MS = 30000;    // the CRM delivery is read again this often while the page is in view
  const OUTBOX_LISTED = 200;        // the server lists at most this many entries
  const DUE_SOON_MS = 5000;         // an event due this soon goes "now" (the times shown are to the minute)

  // -- state --------------------------------------------------------------------

  const S = {
    lang: 'en',
    messages: {},
    catalogues: new Map(),
    user: null,
    callResults: [],
    generation: 0,        // bumped on login/logout: late answers of an old session are ignored
    ws: null,
    conn: 'connecting',
    everConnected: false,
    attempt: 0,
    retryTimer: 0,
    retryAt: 0,
    countdownTimer: 0,
    pingTimer: 0,
    pongTimer: 0,
    resyncTimer: 0,
    resyncSeen: null,     // pop ids received since the last "ready", while the re-send burst lasts
    pops: new Map(),      // pop_id -> entry {id, frame, el, parts, removeTimer, notification, saved}
    gone: new Set(),      // withdrawn or closed pop ids: stray updates for them are ignored
    recent: null,         // the last /api/calls/recent answer
    recentError: false,
    recentTimer: 0,
    recentAgainTimer: 0,
    sound: true,
    audio: null,
    cardSeq: 0,
    callbacks: new Map(), // "pop:<pop id>" / "recent:<call id>" -> {state: pending|placed|error, reply}
    presence: null,       // the last /api/me/status answer; null: not offered by this gateway
    skew: 0,              // server clock minus ours, ms (from "ready"), for the wrap-up countdown
    wrapTimer: 0,
    tasks: null,          // open callback tasks from the last /api/callbacks answer (mine, or the team's)
    tasksError: false,
    closeReasons: [],
    closeChoice: new Map(), // task id -> the reason chosen in its select (kept across re-renders)
    closing: new Map(),   // task id -> {state: pending|error, text}
    closedTasks: new Set(), // closed from this page: a list fetched before the close does not bring them back
    watchTimer: 0,
    watchUntil: 0,
    kpi: null,            // the last /api/kpi answer
    kpiError: false,
    meeting: null,        // "log a meeting": {state: pending|placed|error, text}
    meetingTimer: 0,
    vip: null,            // the last /api/vip-plan answer
    vipError: false,
    shops: new Map(),     // shop id -> {name, timezone}, learnt from tasks (the VIP plan names only the id)
    notices: [],          // newest first: {id, kind, task, at}
    agents: null,         // GET /api/agents: the agents a lead may filter the call log by
    log: null,            // the last /api/calls/log answer
    logOffset: 0,
    logError: null,       // why the last call log request failed (text), or null
    logLoading: false,
    logSeq: 0,            // answers to an older call log request are dropped
    logTimer: 0,
    player: null,         // the open player: {callId, row, audio, canvas, peaks, duration, ...}
    dash: null,           // the last /api/reports/channels answer
    dashError: null,      // why the last report request failed (text), or null
    dashLoading: false,
    dashSeq: 0,           // answers to an older report request are dropped
    dashTimer: 0,
    dashToday: null,      // the reports' today (their time zone), from the first answer
    dashShops: new Set(), // shop ids seen in any answer: the shop filter's choices
    heat: 'calls',        // what the heatmap shows: calls | missed
    agentsReport: null,   // the last /api/reports/agents answer (leads)
    agentsError: null,
    agentsSeq: 0,
    outbox: null,         // the last /api/admin/outbox answer (administrators)
    outboxState: 'dead',  // the entries listed: dead | pending
    outboxError: null,    // why the last outbox request failed (text), or null
    outboxLoading: false,
    outboxSeq: 0,         // answers to an older outbox request are dropped
    outboxTimer: 0,
    outboxBusy: new Set(), // retries on their way: "entry:<id>", "sink:<name>", "all"
    outboxAction: null,   // the last retry's outcome: {state: done|error, text}
  };

  const $ = (id) => document.getElementById(id);

  // -- i18n -----------------------------------------------------------------------

  function pickLang() {
    let saved = null;
    try { saved = localStorage.getItem(LANG_KEY); } catch (_) { /* storage disabled */ }
    if (LANGS.includes(saved)) return saved;
    return (navigator.language || '').toLowerCase().startsWith('ru') ? 'ru' : 'en';
  }

  async function catalogue(lang) {
    if (!S.catalogues.has(lang)) {
      const res = await fetch(`/static/i18n/${lang}.json`, { cache: 'no-cache' });
      if (!res.ok) throw new Error(`catalogue ${lang}: ${res.status}`);
      S.catalogues.set(lang, await res.json());
    }
    return S.catalogues.get(lang);
  }

  function has(key) { return Object.prototype.hasOwnProperty.call(S.messages, key); }

  function t(key, vars) {
    const text = has(key) ? S.messages[key] : key;
    if (!vars) return text;
    return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
  }

  /** A translated label for a value from the server (result, outcome...), else the value itself. */
  function label(prefix, value) {
    if (value === null || value === undefined || value === '') return '';
    return has(`${prefix}.${value}`) ? t(`${prefix}.${value}`) : String(value);
  }

  function applyI18n(root) {
    for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
    for (const el of root.querySelectorAll('[data-i18n-attr]')) {
      for (const pair of el.dataset.i18nAttr.split(';')) {
        const [attr, key] = pair.split(':');
        if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
      }
    }
  }

  async function setLang(lang, remember) {
    let messages;
    try {
      messages = await catalogue(lang);
    } catch (err) {
      console.error('cti: message catalogue not loaded', err);
      if (!S.catalogues.size) throw err;
      return;
    }
    S.lang = lang;
    S.messages = messages;
    if (remember) {
      try { localStorage.setItem(LANG_KEY, lang); } catch (_) { /* storage disabled */ }
    }
    document.documentElement.lang = lang;
    document.title = t('app.title');
    for (const b of document.querySelectorAll('[data-lang]')) {
      b.setAttribute('aria-pressed', String(b.dataset.lang === lang));
    }
    applyI18n(document);
    renderUser();
    renderConn();
    renderStatus();
    for (const entry of S.pops.values()) {
      renderResultOptions(entry);
      renderCard(entry);
    }
    renderRecent();
    renderFollowup();
    renderNotices();
    renderLog();
    renderDashboard();
    renderOutbox();
  }

  // -- formatting (the browser's own time zone unless a zone is given) -------------------

  function parseTime(iso) {
    const d = iso ? new Date(iso) : null;
    return d && !Number.isNaN(d.getTime()) ? d : null;
  }

  function formatClock(iso) {
    const d = parseTime(iso);
    if (!d) return '';
    return new Intl.DateTimeFormat(S.lang, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' }).format(d);
  }

  function formatDateTime(iso) {
    const d = parseTime(iso);
    if (!d) return '';
    return new Intl.DateTimeFormat(S.lang, {
      day: '2-digit', month: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
    }).format(d);
  }

  /** Day, month and time as seen in ``zone`` (a shop's IANA time zone), with the zone's short name. */
  function formatInZone(iso, zone) {
    const d = parseTime(iso);
    if (!d) return '';
    const options = { day: '2-digit', month: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
      timeZoneName: 'short' };
    if (zone) {
      try {
        return new Intl.DateTimeFormat(S.lang, { ...options, timeZone: zone }).format(d);
      } catch (_) { /* a zone this browser does not know: its own zone, named */ }
    }
    return new Intl.DateTimeFormat(S.lang, options).format(d);
  }

  /** A calendar day "2026-11-27" as people write it. */
  function formatDay(day) {
    const d = typeof day === 'string' ? parseTime(`${day}T12:00:00Z`) : null;
    if (!d) return '';
    return new Intl.DateTimeFormat(S.lang, { day: 'numeric', month: 'long', timeZone: 'UTC' }).format(d);
  }

  function formatNumber(n) {
    return typeof n === 'number' && Number.isFinite(n)
      ? new Intl.NumberFormat(S.lang, { maximumFractionDigits: 1 }).format(n) : '–';
  }

  /** Shop, channel, manager: a string today, perhaps an object with a name later. */
  function nameOf(value) {
    if (value === null || value === undefined || value === '') return '';
    if (typeof value === 'object') return String(value.name || value.title || value.login || value.id || '');
    return String(value);
  }

  /** The dialled number stands in for shop and channel: show it as people write it. */
  function lineText(value, card) {
    const text = nameOf(value);
    if (!text) return t('card.unknown');
    if (card.dialled && (text === card.dialled.e164 || text === card.dialled.raw) && card.dialled.display) {
      return card.dialled.display;
    }
    return text;
  }

  function callerNumber(card) {
    const c = card.caller;
    return c && (c.display || c.e164 || c.raw) ? (c.display || c.e164 || c.raw) : t('card.hidden_number');
  }

  function callerName(card) {
    const contact = card.contact && typeof card.contact === 'object' ? card.contact : null;
    return (contact && contact.name) || (card.caller && card.caller.name) || '';
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child);
    }
    return node;
  }

  function safeUrl(url) {
    if (typeof url !== 'string' || !url) return null;
    try {
      const u = new URL(url, location.href);
      return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
    } catch (_) {
      return null;
    }
  }

  // -- HTTP -----------------------------------------------------------------------

  async function api(method, path, body) {
    const init = { method, credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init); // rejects on a network error
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    return { ok: res.ok, status: res.status, data };
  }

  function errorText(r) {
    return (r.data && typeof r.data.message === 'string' && r.data.message) || t('error.server', { status: r.status });
  }

  // -- views ----------------------------------------------------------------------

  function show(view) {
    const socket = view === 'agent' || view === 'manager';
    $('loading').hidden = view !== 'loading';
    $('login-view').hidden = view !== 'login';
    $('nonagent-view').hidden = view !== 'nonagent';
    $('agent-view').hidden = view !== 'agent';
    $('manager-view').hidden = view !== 'manager';
    // Marketers get the dashboard alone; managers and administrators above their sections.
    $('dashboard-view').hidden = !(view === 'dashboard' || view === 'manager');
    $('session').hidden = !(socket || view === 'nonagent' || view === 'dashboard');
    $('agent-tools').hidden = view !== 'agent';
    $('ws-tools').hidden = !socket;
    $('notify-tools').hidden = !socket;
    if (!socket) $('notices').hidden = true;
  }

  function isAgent() { return Boolean(S.user && S.user.role === 'agent'); }

  /** Managers and administrators: their team's follow-up, and notices over the socket. */
  function isLead() { return Boolean(S.user && (S.user.role === 'manager' || S.user.role === 'admin')); }

  function usesSocket() { return isAgent() || isLead(); }

  function renderUser() {
    const u = S.user;
    if (!u) { $('who').textContent = ''; return; }
    const ext = (u.extensions || []).join(', ');
    $('who').textContent = t('header.user', { name: u.name || u.login }) + (ext ? ` · ${t('header.extensions', { extensions: ext })}` : '');
  }

  function showLogin(sessionEnded) {
    show('login');
    $('session-note').hidden = !sessionEnded;
    $('login-error').hidden = true;
    $('login-name').focus();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const button = $('login-submit');
    const error = $('login-error');
    const login = $('login-name').value.trim();
    const password = $('login-password').value;
    error.hidden = true;
    button.disabled = true;
    button.textContent = t('login.busy');
    try {
      const r = await api('POST', '/api/login', { login, password });
      if (!r.ok) {
        error.textContent = r.status === 401 ? t('login.bad_credentials') : t('login.failed', { message: errorText(r) });
        error.hidden = false;
        return;
      }
      $('login-password').value = '';
      const me = await api('GET', '/api/me');
      if (!me.ok) throw new Error(errorText(me));
      enter(me.data);
    } catch (err) {
      error.textContent = t('login.failed', { message: err instanceof TypeError ? t('error.network') : err.message });
      error.hidden = false;
    } finally {
      button.disabled = false;
      button.textContent = t('login.submit');
    }
  }

  function enter(me) {
    S.generation += 1;
    S.user = me.user;
    S.callResults = Array.isArray(me.call_results) ? me.call_results : [];
    $('session-note').hidden = true;
    renderUser();
    if (isMarketer()) {
      show('dashboard');
      refreshDashboard();
      return;
    }
    if (!usesSocket()) {
      show('nonagent');
      return;
    }
    show(isAgent() ? 'agent' : 'manager');
    renderNotifyButton();
    S.everConnected = false;
    S.attempt = 0;
    connect();
    clearInterval(S.recentTimer);
    if (isAgent()) {
      refreshRecent();
      refreshStatus();
      refreshTasks();
      refreshKpi();
      S.recentTimer = setInterval(() => { refreshRecent(); refreshStatus(); refreshTasks(); refreshKpi(); },
        RECENT_EVERY_MS);
    } else {
      refreshLead();
      S.recentTimer = setInterval(refreshLead, RECENT_EVERY_MS);
      // The call log is read when asked (filters, pages): a re-read would move the rows under the reader.
      S.logOffset = 0;
      refreshAgents();
      refreshLog();
      refreshDashboard();
      renderOutbox();
      refreshOutbox();
      clearInterval(S.outboxTimer);
      if (isAdmin()) S.outboxTimer = setInterval(() => { if (!document.hidden) refreshOutbox(); }, OUTBOX_EVERY_MS);
    }
  }

  /** Forget everything of the session: socket, timers, cards. */
  function teardown() {
    S.generation += 1;
    S.user = null;
    dropSocket();
    clearTimeout(S.retryTimer);
    clearInterval(S.countdownTimer);
    clearInterval(S.recentTimer);
    clearTimeout(S.recentAgainTimer);
    clearTimeout(S.resyncTimer);
    clearInterval(S.wrapTimer);
    S.wrapTimer = 0;
    S.presence = null;
    S.callbacks.clear();
    renderStatus();
    for (const entry of S.pops.values()) {
      clearTimeout(entry.removeTimer);
      closeNotification(entry);
    }
    S.pops.clear();
    S.gone.clear();
    $('pops').replaceChildren();
    S.recent = null;
    renderRecent();
    renderEmpty();
    stopWatch();
    clearTimeout(S.meetingTimer);
    S.tasks = null;
    S.tasksError = false;
    S.closeChoice.clear();
    S.closing.clear();
    S.closedTasks.clear();
    S.kpi = null;
    S.kpiError = false;
    S.meeting = null;
    S.vip = null;
    S.vipError = false;
    S.shops.clear();
    S.notices = [];
    renderFollowup();
    renderNotices();
    closePlayer(false);
    clearTimeout(S.logTimer);
    S.agents = null;
    S.log = null;
    S.logError = null;
    S.logLoading = false;
    S.logSeq += 1;
    for (const [, id] of LOG_FIELDS) $(id).value = ''; // the next user starts with no filters
    renderLog();
    clearTimeout(S.dashTimer);
    S.dash = null;
    S.dashError = null;
    S.dashLoading = false;
    S.dashSeq += 1;
    S.dashToday = null;
    S.dashShops.clear();
    S.agentsReport = null;
    S.agentsError = null;
    S.agentsSeq += 1;
    for (const [, id] of DASH_FIELDS) $(id).value = '';
    renderDashboard();
    clearInterval(S.outboxTimer);
    S.outbox = null;
    S.outboxState = 'dead';
    S.outboxError = null;
    S.outboxLoading = false;
    S.outboxSeq += 1;
    S.outboxBusy.clear();
    S.outboxAction = null;
    renderOutbox();
  }

  async function onLogout() {
    teardown();
    try { await api('POST', '/api/logout'); } catch (_) { /* the cookie expires anyway */ }
    showLogin(false);
  }

  function sessionEnded() {
    teardown();
    showLogin(true);
  }

  // -- the websocket ----------------------------------------------------------------

  function setConn(state) {
    S.conn = state;
    renderConn();
  }

  function renderConn() {
    const box = $('conn');
    box.dataset.state = S.conn;
    let text;
    if (S.conn === 'reconnecting' && S.retryAt > Date.now() + 1000) {
      text = t('conn.reconnecting_in', { seconds: Math.ceil((S.retryAt - Date.now()) / 1000) });
    } else {
      text = t(`conn.${S.conn}`);
    }
    $('conn-text').textContent = text;
  }

  async function connect() {
    const generation = S.generation;
    clearTimeout(S.retryTimer);
    clearInterval(S.countdownTimer);
    S.retryAt = 0;
    if (S.ws) return;
    setConn(S.everConnected ? 'reconnecting' : 'connecting');
    let token;
    try {
      // A fresh token for every attempt: page tokens live 5 minutes and only open the socket.
      const r = await api('GET', '/api/token');
      if (generation !== S.generation) return;
      if (r.status === 401) { sessionEnded(); return; }
      if (!r.ok || !r.data || typeof r.data.token !== 'string') throw new Error(`token: ${r.status}`);
      token = r.data.token;
    } catch (err) {
      if (generation === S.generation) scheduleReconnect();
      return;
    }
    const url = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token }));
    ws.onmessage = (ev) => { if (S.ws === ws) onFrame(ev.data); };
    ws.onclose = () => {
      if (S.ws !== ws) return;
      S.ws = null;
      stopPing();
      if (generation === S.generation) scheduleReconnect();
    };
  }

  /** Let go of the socket now, without waiting for a closing handshake. */
  function dropSocket() {
    const ws = S.ws;
    S.ws = null;
    stopPing();
    if (ws) {
      ws.onclose = ws.onmessage = ws.onopen = null;
      try { ws.close(1000); } catch (_) { /* already closed */ }
    }
  }

  function scheduleReconnect() {
    clearTimeout(S.retryTimer);
    clearInterval(S.countdownTimer);
    if (!navigator.onLine) {
      setConn('offline'); // the "online" event reconnects
      return;
    }
    // Exponential backoff with jitter: between half and all of min(30 s, 0.5 s * 2^n), at least 0.5 s.
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** S.attempt);
    const delay = Math.max(BACKOFF_MIN_MS, cap / 2 + Math.random() * (cap / 2));
    S.attempt += 1;
    S.retryAt = Date.now() + delay;
    S.retryTimer = setTimeout(connect, delay);
    S.countdownTimer = setInterval(renderConn, 1000);
    setConn('reconnecting');
  }

  function startPing() {
    stopPing();
    S.pingTimer = setInterval(() => {
      send({ type: 'ping' });
      clearTimeout(S.pongTimer);
      S.pongTimer = setTimeout(() => { // any frame clears it; silence means a dead socket
        dropSocket();
        scheduleReconnect();
      }, PONG_TIMEOUT_MS);
    }, PING_MS);
  }

  function stopPing() {
    clearInterval(S.pingTimer);
    clearTimeout(S.pongTimer);
  }

  function send(frame) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(frame));
  }

  function onFrame(data) {
    clearTimeout(S.pongTimer);
    let frame;
    try { frame = JSON.parse(data); } catch (_) { return; }
    if (!frame || typeof frame !== 'object') return;
    switch (frame.type) {
      case 'ready': {
        const serverTime = parseTime(frame.server_time);
        if (serverTime) S.skew = serverTime.getTime() - Date.now();
        S.attempt = 0;
        if (S.everConnected) refreshTasks(); // notices may have come and gone while we were away
        S.everConnected = true;
        setConn('connected');
        startPing();
        S.resyncSeen = new Set();
        clearTimeout(S.resyncTimer);
        S.resyncTimer = setTimeout(settleAfterResync, RESYNC_MS);
        if (isAgent()) refreshStatus(); // "connected" is part of it
        break;
      }
      case 'pop':
      case 'update':
        if (typeof frame.pop_id === 'string') showPop(frame);
        break;
      case 'withdraw':
        if (typeof frame.pop_id === 'string') withdrawPop(frame.pop_id, frame.reason);
        break;
      case 'notice':
        onNotice(frame);
        break;
      case 'error':
        console.warn('cti: server error', frame.code, frame.message);
        break;
      default:
        break; // pong, or something newer than this page
    }
  }

  /** Cards the server did not re-send after a reconnect changed while we were away. */
  function settleAfterResync() {
    const seen = S.resyncSeen;
    S.resyncSeen = null;
    if (!seen) return;
    for (const entry of [...S.pops.values()]) {
      if (seen.has(entry.id) || entry.removeTimer) continue;
      if (entry.frame.state === 'ringing') {
        removeCard(entry);
      } else if (entry.frame.state === 'talking') {
        entry.frame = { ...entry.frame, state: 'ended' };
        renderCard(entry);
      }
    }
  }

  // -- cards ----------------------------------------------------------------------

  function showPop(frame) {
    const id = frame.pop_id;
    if (S.resyncSeen) S.resyncSeen.add(id);
    let entry = S.pops.get(id);
    if (!entry) {
      // An update for a card the agent closed or that was withdrawn is stale; a new pop
      // (the phone rings again for this call) shows the card again.
      if (frame.type !== 'pop' && S.gone.has(id)) return;
      S.gone.delete(id);
      entry = createCard(frame);
      S.pops.set(id, entry);
      $('pops').prepend(entry.el);
      renderEmpty();
      if (frame.state === 'ringing' || !frame.state) {
        beep();
        notify(entry);
      }
      send({ type: 'ack', pop_id: id });
    } else {
      entry.frame = { ...entry.frame, ...frame, at: frame.at || entry.frame.at, card: frame.card || entry.frame.card };
      if (entry.removeTimer && frame.type === 'pop') { // withdrawn a moment ago and ringing again
        clearTimeout(entry.removeTimer);
        entry.removeTimer = 0;
        entry.withdrawn = null;
      }
    }
    if (entry.frame.state !== 'ringing') closeNotification(entry);
    renderCard(entry);
    if (entry.frame.state === 'ended') {
      refreshRecentSoon();
      if (entry.saved) scheduleClose(entry, SAVED_SHOWN_MS);
    }
  }

  function withdrawPop(id, reason) {
    const entry = S.pops.get(id);
    rememberGone(id);
    if (!entry) return;
    entry.withdrawn = reason || 'other';
    closeNotification(entry);
    renderCard(entry);
    scheduleClose(entry, WITHDRAWN_SHOWN_MS);
    refreshRecentSoon();
  }

  function rememberGone(id) {
    S.gone.add(id);
    if (S.gone.size > GONE_REMEMBERED) S.gone.delete(S.gone.values().next().value);
  }

  function scheduleClose(entry, ms) {
    clearTimeout(entry.removeTimer);
    entry.removeTimer = setTimeout(() => removeCard(entry), ms);
  }

  function removeCard(entry) {
    clearTimeout(entry.removeTimer);
    closeNotification(entry);
    rememberGone(entry.id);
    if (S.pops.get(entry.id) === entry) S.pops.delete(entry.id);
    entry.el.remove();
    renderEmpty();
  }

  function renderEmpty() {
    $('pops-empty').hidden = S.pops.size > 0;
  }

  /** The card's frame: the parts rebuilt on every change, and the result form, built once. */
  function createCard(frame) {
    const n = ++S.cardSeq;
    const entry = { id: frame.pop_id, frame, removeTimer: 0, notification: null, saved: false, withdrawn: null };
    const titleId = `card-${n}-title`;
    const body = el('div', { class: 'card-body' });
    const select = el('select', { id: `card-${n}-result`, 'data-testid': 'result-select', required: true });
    const note = el('textarea', { id: `card-${n}-note`, rows: 2, maxlength: 2000, 'data-testid': 'result-note' });
    const save = el('button', { type: 'submit', class: 'primary', 'data-testid': 'result-save', 'data-i18n': 'result.save' });
    const status = el('span', { class: 'result-status', role: 'status', 'data-testid': 'result-status' });
    const form = el('form', { class: 'result', 'data-testid': 'result-form' },
      el('div', { class: 'field' },
        el('label', { for: select.id, 'data-i18n': 'result.label' }), select),
      el('div', { class: 'field grow' },
        el('label', { for: note.id, 'data-i18n': 'result.note' }), note),
      el('div', { class: 'actions' }, save, status));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); saveResult(entry); });
    const close = el('button', { type: 'button', class: 'close', 'data-testid': 'pop-close', 'data-i18n': 'card.close' });
    close.addEventListener('click', () => removeCard(entry));
    const callback = el('button', { type: 'button', class: 'callback', 'data-testid': 'pop-callback' });
    const callbackStatus = el('span', { class: 'callback-status', role: 'status', 'data-testid': 'pop-callback-status' });
    callback.addEventListener('click', () => {
      const card = entry.frame.card || {};
      const number = customerNumber(card);
      if (number) callBack(`pop:${entry.id}`, number, card.shop_id || null, () => renderCallback(entry));
    });
    const tools = el('div', { class: 'card-tools' }, callback, callbackStatus);
    entry.el = el('article', { class: 'card', 'data-testid': 'pop-card', 'data-pop-id': frame.pop_id,
      'data-call-id': frame.call_id }, body, tools, form, close);
    entry.parts = { body, select, note, save, status, form, close, titleId, callback, callbackStatus, tools };
    renderResultOptions(entry);
    applyI18n(entry.el);
    return entry;
  }

  function renderResultOptions(entry) {
    const { select } = entry.parts;
    const current = select.value;
    select.replaceChildren(el('option', { value: '', text: t('result.choose') }),
      ...S.callResults.map((name) => el('option', { value: name, text: label('result', name) })));
    select.value = S.callResults.includes(current) ? current : '';
  }

  function renderCard(entry) {
    const frame = entry.frame;
    const card = frame.card || {};
    const state = frame.state || 'ringing';
    const p = entry.parts;
    entry.el.dataset.state = state;
    entry.el.dataset.callId = frame.call_id || '';
    if (entry.withdrawn) entry.el.dataset.withdrawn = entry.withdrawn;
    else delete entry.el.dataset.withdrawn;
    entry.el.classList.toggle('vip', Boolean(card.vip));

    const shop = lineText(card.shop, card);
    const channel = lineText(card.channel, card);
    const line = shop === channel
      ? el('div', { class: 'line' }, el('div', { class: 'line-item' },
        el('span', { class: 'k', text: t('card.shop_channel') }),
        el('span', { class: 'v big', 'data-testid': 'pop-shop', text: shop })))
      : el('div', { class: 'line' },
        el('div', { class: 'line-item' },
          el('span', { class: 'k', text: t('card.shop') }),
          el('span', { class: 'v big', 'data-testid': 'pop-shop', text: shop })),
        el('div', { class: 'line-item' },
          el('span', { class: 'k', text: t('card.channel') }),
          el('span', { class: 'v big', 'data-testid': 'pop-channel', text: channel })));

    const head = el('div', { class: 'card-head' }, line,
      el('div', { class: 'badges' },
        card.vip ? el('span', { class: 'badge vip-badge', 'data-testid': 'pop-vip', text: t('card.vip') }) : null,
        card.open_missed_calls > 0 ? el('span', { class: 'badge missed-badge', 'data-testid': 'pop-missed',
          title: t('card.missed'), text: t('card.missed_badge', { count: card.open_missed_calls }) }) : null,
        el('span', { class: `badge state state-${state}`, 'data-testid': 'pop-state', 'data-state': state,
          text: label('state', state) }),
        frame.at ? el('time', { class: 'since', datetime: frame.at, 'data-testid': 'pop-since',
          text: t('card.since', { time: formatClock(frame.at) }) }) : null));

    const name = callerName(card);
    const company = card.contact && typeof card.contact === 'object' && card.contact.company ? card.contact.company : '';
    const caller = el('h3', { class: 'caller', id: p.titleId },
      el('span', { class: 'number', 'data-testid': 'pop-caller-number', text: callerNumber(card) }),
      name ? el('span', { class: 'name', 'data-testid': 'pop-caller-name', text: name }) : null,
      company ? el('span', { class: 'company', text: t('card.company', { company }) }) : null);

    const facts = el('dl', { class: 'facts' });
    const fact = (key, value, testid) => {
      if (value === '' || value === null || value === undefined) return;
      facts.append(el('div', {}, el('dt', { text: t(key) }), el('dd', { 'data-testid': testid, text: String(value) })));
    };
    fact('card.direction', label('direction', card.direction), 'pop-direction');
    fact('card.manager', nameOf(card.assigned_manager), 'pop-manager');

    let history = null;
    if (Array.isArray(card.recent_calls)) {
      history = el('div', { class: 'history', 'data-testid': 'pop-history' }, el('h4', { text: t('card.recent') }));
      if (!card.recent_calls.length) {
        history.append(el('p', { class: 'muted', text: t('card.no_recent') }));
      } else {
        const list = el('ul', {});
        for (const c of card.recent_calls.slice(0, 5)) {
          list.append(el('li', { 'data-testid': 'pop-history-call' },
            el('time', { datetime: c.started_at || '', text: formatDateTime(c.started_at) }),
            el('span', { class: `outcome outcome-${c.outcome || ''}`, text: label('outcome', c.outcome) }),
            c.result ? el('span', { class: 'result-tag', text: label('result', c.result) }) : null,
            c.note ? el('span', { class: 'note', text: c.note }) : null));
        }
        history.append(list);
      }
    }

    const crm = safeUrl(card.crm_url);
    const crmLink = crm ? el('a', { class: 'crm', href: crm, target: '_blank', rel: 'noopener noreferrer',
      'data-testid': 'pop-crm', text: t('card.crm') }) : null;

    const reason = entry.withdrawn ? el('p', { class: 'withdrawn-reason', 'data-testid': 'pop-withdraw-reason',
      text: has(`withdraw.${entry.withdrawn}`) ? t(`withdraw.${entry.withdrawn}`) : t('withdraw.other') }) : null;

    p.body.replaceChildren(...[head, caller, facts, history, crmLink, reason].filter(Boolean));
    p.close.hidden = state !== 'ended';
    p.form.hidden = Boolean(entry.withdrawn);
    renderCallback(entry);
    entry.el.setAttribute('aria-label', t('card.label', { caller: callerNumber(card) }));
  }

  async function saveResult(entry) {
    const { select, note, save, status } = entry.parts;
    const result = select.value;
    status.dataset.status = '';
    if (!result) {
      status.textContent = t('result.required');
      status.dataset.status = 'error';
      select.focus();
      return;
    }
    const generation = S.generation;
    save.disabled = true;
    status.textContent = t('result.saving');
    status.dataset.status = 'saving';
    let r;
    try {
      r = await api('POST', `/api/calls/${encodeURIComponent(entry.frame.call_id)}/result`,
        { result, note: note.value.trim() || null });
    } catch (_) {
      r = null;
    }
    if (generation !== S.generation) return;
    save.disabled = false;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (!r || !r.ok) {
      status.textContent = t('result.error', { message: r ? errorText(r) : t('error.network') });
      status.dataset.status = 'error';
      return;
    }
    entry.saved = true;
    status.textContent = t('result.saved');
    status.dataset.status = 'saved';
    refreshRecent();
    if (entry.frame.state === 'ended') scheduleClose(entry, SAVED_SHOWN_MS);
  }

  // -- sound and desktop notifications -------------------------------------------------

  function unlockAudio() {
    // Browsers let a page make sound only after a gesture: make the context on the first one.
    if (!S.audio && (window.AudioContext || window.webkitAudioContext)) {
      try { S.audio = new (window.AudioContext || window.webkitAudioContext)(); } catch (_) { S.audio = null; }
    }
    if (S.audio && S.audio.state === 'suspended') S.audio.resume().catch(() => {});
  }

  function beep() {
    if (!S.sound || !S.audio) return;
    try {
      if (S.audio.state === 'suspended') S.audio.resume().catch(() => {});
      const start = S.audio.currentTime + 0.02;
      for (const [offset, freq] of [[0, 880], [0.22, 660]]) {
        const osc = S.audio.createOscillator();
        const gain = S.audio.createGain();
        osc.type = 'sine';
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0.0001, start + offset);
        gain.gain.exponentialRampToValueAtTime(0.25, start + offset + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.18);
        osc.connect(gain).connect(S.audio.destination);
        osc.start(start + offset);
        osc.stop(start + offset + 0.2);
      }
    } catch (_) { /* no sound is better than no card */ }
  }

  function renderNotifyButton() {
    const supported = 'Notification' in window;
    $('notify').hidden = !supported || Notification.permission !== 'default';
    $('notify-denied').hidden = !supported || Notification.permission !== 'denied';
  }

  async function askNotifications() {
    unlockAudio();
    try { await Notification.requestPermission(); } catch (_) { /* old callback-only API */ }
    renderNotifyButton();
  }

  function notify(entry) {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    const card = entry.frame.card || {};
    const name = callerName(card);
    try {
      const n = new Notification(t('notify.title', { caller: name ? `${callerNumber(card)} ${name}` : callerNumber(card) }), {
        body: t('notify.body', { line: lineText(card.shop, card) }),
        tag: entry.id,
        lang: S.lang,
      });
      n.onclick = () => { window.focus(); n.close(); };
      entry.notification = n;
    } catch (_) { /* e.g. a browser that wants a service worker for notifications */ }
  }

  function closeNotification(entry) {
    if (entry.notification) {
      entry.notification.close();
      entry.notification = null;
    }
  }

  // -- recent calls ----------------------------------------------------------------------

  async function refreshRecent() {
    const generation = S.generation;
    let r;
    try { r = await api('GET', '/api/calls/recent'); } catch (_) { r = null; }
    if (generation !== S.generation) return;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.calls)) {
      S.recent = r.data.calls;
      S.recentError = false;
    } else {
      S.recentError = true; // keep showing the last list we had
    }
    renderRecent();
  }

  function refreshRecentSoon() {
    clearTimeout(S.recentAgainTimer);
    refreshRecent();
    refreshStatus(); // the agent's part of a call ended: his wrap-up may have started
    refreshTasks();  // a missed call opens a task, an answered one may close it
    refreshKpi();
    S.recentAgainTimer = setTimeout(() => { refreshRecent(); refreshTasks(); refreshKpi(); }, RECENT_AGAIN_MS);
  }

  function renderRecent() {
    const body = $('recent-body');
    const status = $('recent-status');
    const calls = S.recent || [];
    body.replaceChildren(...calls.map((c) => {
      const number = c.direction === 'outbound' ? c.dialled : c.caller;
      const talk = typeof c.talk_seconds === 'number' && c.talk_seconds > 0
        ? t('recent.seconds', { seconds: Math.round(c.talk_seconds) }) : '';
      const actions = el('td', { class: 'actions' });
      if (c.direction !== 'internal' && isCustomerNumber(number)) {
        const key = `recent:${c.call_id}`;
        const button = el('button', { type: 'button', class: 'callback', 'data-testid': 'recent-callback' });
        const status = el('span', { class: 'callback-status', role: 'status', 'data-testid': 'recent-callback-status' });
        const paint = () => paintCallback(button, status, S.callbacks.get(key), number);
        button.addEventListener('click', () => callBack(key, number, null, paint));
        paint();
        actions.append(button, status);
      }
      return el('tr', { 'data-testid': 'recent-call', 'data-call-id': c.call_id },
        el('td', {}, el('time', { datetime: c.started_at || '', 'data-testid': 'recent-time', text: formatDateTime(c.started_at) })),
        el('td', { text: label('direction', c.direction) }),
        el('td', { class: 'number', text: number || '' }),
        el('td', { class: `outcome outcome-${c.outcome || ''}`, text: label('outcome', c.outcome) }),
        el('td', { text: c.answered_by || '' }),
        el('td', { text: talk }),
        el('td', { 'data-testid': 'recent-result', text: label('result', c.result) }),
        el('td', { class: 'note', 'data-testid': 'recent-note', text: c.note || '' }),
        actions);
    }));
    if (S.recentError) {
      status.textContent = t('recent.error');
      status.hidden = false;
    } else if (S.recent && !calls.length) {
      status.textContent = t('recent.empty');
      status.hidden = false;
    } else {
      status.hidden = true;
    }
  }

  // -- call back (click-to-call) ---------------------------------------------------------

  /** A customer's number, not an agent's extension (those are at most 6 digits). */
  function isCustomerNumber(raw) {
    return typeof raw === 'string' && raw.replace(/\D/g, '').length > 6;
  }

  function customerNumber(card) {
    const c = card.caller;
    if (!c || c.extension) return null;
    const number = c.e164 || c.raw;
    return isCustomerNumber(number) ? number : null;
  }

  /** A fresh id per click. crypto.randomUUID needs a secure context (https); this does not. */
  function requestId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  /** Ask the gateway to ring the agent's phone, then the customer. The request id is sent
      again only when the network lost the answer: the gateway places it once however often. */
  async function callBack(key, number, shop, render) {
    const current = S.callbacks.get(key);
    if (current && current.state === 'pending') return;
    const generation = S.generation;
    const body = { number, request_id: requestId() };
    if (shop) body.shop = shop;
    S.callbacks.set(key, { state: 'pending', reply: null });
    render();
    let reply = null;
    for (let attempt = 0; attempt < CALLBACK_ATTEMPTS; attempt += 1) {
      try {
        reply = await api('POST', '/api/calls', body);
        break;
      } catch (_) { // no answer: did the gateway get it? The same request id finds out.
        if (attempt + 1 < CALLBACK_ATTEMPTS) await sleep(CALLBACK_RETRY_MS * (attempt + 1));
      }
      if (generation !== S.generation) return;
    }
    if (generation !== S.generation) return;
    if (reply && reply.status === 401) { sessionEnded(); return; }
    const done = { state: reply && reply.ok ? 'placed' : 'error', reply };
    S.callbacks.set(key, done);
    render();
    setTimeout(() => {
      if (S.callbacks.get(key) !== done) return;
      S.callbacks.delete(key);
      render();
    }, done.state === 'placed' ? CALLBACK_SHOWN_MS : CALLBACK_ERROR_SHOWN_MS);
  }

  function callbackText(cb) {
    if (cb.state === 'pending') return t('c2c.calling');
    if (cb.state === 'placed') return t('c2c.placed');
    const r = cb.reply;
    const message = r ? errorText(r) : t('error.network');
    const code = r && r.data && typeof r.data.error === 'string' ? r.data.error : '';
    return code && has(`c2c.error.${code}`) ? t(`c2c.error.${code}`, { message }) : t('c2c.failed', { message });
  }

  function paintCallback(button, status, cb, number) {
    button.textContent = t('c2c.call_back');
    button.setAttribute('aria-label', t('c2c.label', { number }));
    button.disabled = Boolean(cb && cb.state === 'pending');
    status.textContent = cb ? callbackText(cb) : '';
    status.dataset.status = cb ? cb.state : '';
    status.hidden = !cb;
  }

  function renderCallback(entry) {
    const p = entry.parts;
    const card = entry.frame.card || {};
    const number = customerNumber(card);
    // Not while the phone rings: then the thing to do is to pick it up.
    p.tools.hidden = !number || (entry.frame.state || 'ringing') === 'ringing' || Boolean(entry.withdrawn);
    if (number) paintCallback(p.callback, p.callbackStatus, S.callbacks.get(`pop:${entry.id}`), callerNumber(card));
  }

  // -- follow-up: missed-call tasks ------------------------------------------------------
  //
  // An agent sees his own open tasks (mine=1) and may call back or close them; a manager
  // or administrator sees those of his teams and supervised shops and may close them.
  // Times are shown as the task's shop sees them (task.timezone): the deadline is in the
  // shop's working hours, not the reader's.

  function learnShop(task) {
    if (task && typeof task.shop === 'string' && task.shop) {
      S.shops.set(task.shop, { name: task.shop_name || task.shop, timezone: task.timezone || null });
    }
  }

  function shopName(id) {
    if (!id) return '';
    const shop = S.shops.get(id);
    return shop && shop.name ? shop.name : String(id);
  }

  /** Where a shop's times are shown: its own zone if known, else the KPI zone. */
  function shopZone(id) {
    const shop = id ? S.shops.get(id) : null;
    return (shop && shop.timezone) || (S.kpi && S.kpi.timezone) || null;
  }

  /** A login as a person's name, where the KPI report (or the session) knows it. */
  function personName(login) {
    if (!login) return '';
    if (S.user && S.user.login === login) return S.user.name || login;
    const agent = S.kpi && Array.isArray(S.kpi.agents) ? S.kpi.agents.find((a) => a && a.login === login) : null;
    return agent && agent.name ? agent.name : String(login);
  }

  async function refreshTasks() {
    if (!usesSocket()) return;
    const generation = S.generation;
    const asked = Date.now();
    let r;
    try { r = await api('GET', isAgent() ? '/api/callbacks?mine=1' : '/api/callbacks'); } catch (_) { r = null; }
    if (generation !== S.generation) return;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.tasks)) {
      const tasks = r.data.tasks.filter((task) => task && typeof task === 'object' && task.status === 'open'
        && !S.closedTasks.has(task.task_id));
      const listed = new Set(tasks.map((task) => task.task_id));
      // A task of the agent's that went by itself was a customer reached: that earned points.
      const reached = isAgent() && (S.tasks || []).some((task) => !listed.has(task.task_id));
      S.tasks = tasks;
      S.tasksError = false;
      if (Array.isArray(r.data.close_reasons)) S.closeReasons = r.data.close_reasons.filter((x) => typeof x === 'string');
      for (const task of tasks) learnShop(task);
      for (const id of [...S.closeChoice.keys()]) if (!listed.has(id)) S.closeChoice.delete(id);
      for (const id of [...S.closing.keys()]) if (!listed.has(id)) S.closing.delete(id);
      // A notice whose task was no longer open when we asked has been dealt with.
      const before = S.notices.length;
      S.notices = S.notices.filter((n) => n.at >= asked || listed.has(n.task.task_id));
      if (S.notices.length !== before) renderNotices();
      if (reached) refreshKpi();
    } else {
      S.tasksError = true; // keep showing the last list we had
    }
    renderFollowup(); // shop names and zones learnt from the tasks are used by the VIP plan too
  }

  function renderTasks() {
    const agent = isAgent();
    const body = $(agent ? 'missed-body' : 'team-missed-body');
    const status = $(agent ? 'missed-status' : 'team-missed-status');
    const tasks = S.tasks || [];
    body.replaceChildren(...tasks.map((task) => taskRow(task, agent)));
    if (S.tasksError) {
      status.textContent = t('missed.error');
      status.hidden = false;
    } else if (S.tasks && !tasks.length) {
      status.textContent = t('missed.empty');
      status.hidden = false;
    } else {
      status.hidden = true;
    }
  }

  function isOverdue(task) {
    if (task.overdue === true) return true;
    const due = parseTime(task.due_at);
    return Boolean(due && due.getTime() <= Date.now() + S.skew);
  }

  function taskTime(iso, zone, testid) {
    return el('time', { datetime: iso || '', 'data-testid': testid, title: zone || null, text: formatInZone(iso, zone) });
  }

  function taskRow(task, agent) {
    const id = task.task_id;
    const zone = task.timezone || (S.kpi && S.kpi.timezone) || null;
    const number = typeof task.phone === 'string' ? task.phone : '';
    const overdue = isOverdue(task);
    const marks = el('td', { class: 'marks', 'data-testid': 'task-state' });
    if (overdue) marks.append(el('span', { class: 'mark overdue', 'data-testid': 'task-overdue', text: t('missed.overdue') }));
    if (task.escalated_at) {
      marks.append(el('span', { class: 'mark escalated', 'data-testid': 'task-escalated', text: t('missed.escalated') }));
    }
    if (!overdue && !task.escalated_at) marks.append(el('span', { class: 'mark in-time', text: t('missed.in_time') }));

    const actions = el('td', { class: 'actions' });
    if (agent && isCustomerNumber(number)) {
      const key = `task:${id}`;
      const button = el('button', { type: 'button', class: 'callback', 'data-testid': 'task-callback' });
      const status = el('span', { class: 'callback-status', role: 'status', 'data-testid': 'task-callback-status' });
      paintCallback(button, status, S.callbacks.get(key), number);
      button.addEventListener('click', async () => {
        await callBack(key, number, task.shop || null, () => paintTaskCallback(id, number));
        const cb = S.callbacks.get(key);
        if (cb && cb.state === 'placed') watchTasks();
      });
      actions.append(el('div', { class: 'task-callback' }, button, status));
    }
    actions.append(closeControl(task, number));

    return el('tr', { 'data-testid': 'missed-task', 'data-task-id': id, 'data-overdue': overdue ? 'true' : null,
      class: overdue ? 'overdue' : null },
    el('td', { class: 'caller-cell' },
      el('span', { class: 'number', 'data-testid': 'task-phone', text: number }),
      task.name ? el('span', { class: 'name', 'data-testid': 'task-name', text: String(task.name) }) : null),
    el('td', { 'data-testid': 'task-shop', text: task.shop_name || task.shop || '' }),
    agent ? null : el('td', { 'data-testid': 'task-owner', text: personName(task.owner) }),
    el('td', { class: 'num', 'data-testid': 'task-attempts', text: typeof task.attempts === 'number' ? String(task.attempts) : '' }),
    el('td', {}, taskTime(task.last_attempt_at, zone, 'task-last-attempt')),
    el('td', {}, taskTime(task.due_at, zone, 'task-due')),
    marks,
    actions);
  }

  /** The call-back of a task row: the row may have been rebuilt since the click. */
  function paintTaskCallback(id, number) {
    const row = document.querySelector(`#missed-body tr[data-task-id="${CSS.escape(String(id))}"]`);
    if (!row) return;
    paintCallback(row.querySelector('[data-testid="task-callback"]'),
      row.querySelector('[data-testid="task-callback-status"]'), S.callbacks.get(`task:${id}`), number);
  }

  /** After a call-back, look at the list until the task goes (the gateway closes it by
      itself when the call is answered) or for TASK_WATCH_FOR_MS. */
  function watchTasks() {
    S.watchUntil = Date.now() + TASK_WATCH_FOR_MS;
    if (S.watchTimer) return;
    S.watchTimer = setInterval(() => {
      if (Date.now() > S.watchUntil || !isAgent()) { stopWatch(); return; }
      refreshTasks();
      refreshRecent();
    }, TASK_WATCH_MS);
  }

  function stopWatch() {
    clearInterval(S.watchTimer);
    S.watchTimer = 0;
    S.watchUntil = 0;
  }

  function closeControl(task, number) {
    const id = task.task_id;
    const state = S.closing.get(id);
    const pending = Boolean(state && state.state === 'pending');
    const select = el('select', { class: 'task-reason', 'data-testid': 'task-close-reason',
      'aria-label': t('missed.reason') });
    select.append(el('option', { value: '', text: t('missed.choose_reason') }),
      ...S.closeReasons.map((reason) => el('option', { value: reason, text: label('close_reason', reason) })));
    select.value = S.closeChoice.get(id) || '';
    select.disabled = pending;
    select.addEventListener('change', () => {
      S.closeChoice.set(id, select.value);
      if (S.closing.get(id) && S.closing.get(id).state === 'error') { S.closing.delete(id); renderTasks(); }
    });
    const button = el('button', { type: 'button', class: 'task-close', 'data-testid': 'task-close',
      'aria-label': t('missed.close_label', { number }), text: t('missed.close') });
    button.disabled = pending;
    button.addEventListener('click', () => closeTask(id, select.value));
    const status = el('span', { class: 'callback-status', role: 'status', 'data-testid': 'task-close-status',
      'data-status': state ? state.state : null, text: state ? state.text : '' });
    status.hidden = !state;
    return el('div', { class: 'task-close-control' }, select, button, status);
  }

  async function closeTask(id, reason) {
    const current = S.closing.get(id);
    if (current && current.state === 'pending') return;
    if (!reason) {
      S.closing.set(id, { state: 'error', text: t('missed.reason_required') });
      renderTasks();
      return;
    }
    const generation = S.generation;
    S.closing.set(id, { state: 'pending', text: t('missed.closing') });
    renderTasks();
    let r;
    try {
      r = await api('POST', `/api/callbacks/${encodeURIComponent(id)}/close`, { reason });
    } catch (_) {
      r = null;
    }
    if (generation !== S.generation) return;
    if (r && r.status === 401) { sessionEnded(); return; }
    // 409: somebody (or the customer's call) closed it first; 404: no longer ours. Either way it is gone.
    if (r && (r.ok || r.status === 409 || (r.status === 404 && r.data && r.data.error === 'no_such_task'))) {
      S.closing.delete(id);
      S.closeChoice.delete(id);
      S.closedTasks.add(id);
      if (S.closedTasks.size > GONE_REMEMBERED) S.closedTasks.delete(S.closedTasks.values().next().value);
      S.tasks = (S.tasks || []).filter((task) => task.task_id !== id);
      S.notices = S.notices.filter((n) => n.task.task_id !== id);
      renderTasks();
      renderNotices();
      return;
    }
    S.closing.set(id, { state: 'error', text: t('missed.close_failed', { message: r ? errorText(r) : t('error.network') }) });
    renderTasks();
  }

  // -- follow-up: points (KPI) ----------------------------------------------------------

  async function refreshKpi() {
    if (!usesSocket()) return;
    const generation = S.generation;
    let r;
    try { r = await api('GET', '/api/kpi'); } catch (_) { r = null; }
    if (generation !== S.generation) return;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.agents)) {
      S.kpi = r.data;
      S.kpiError = false;
    } else {
      S.kpiError = true;
    }
    renderFollowup(); // names and the KPI time zone are used by the other tables too
  }

  /** The report runs from the first of the month to today (KPI time zone): today is its last day. */
  function todayOf(agent) {
    const day = Array.isArray(agent.days) ? agent.days.find((d) => d && d.date === S.kpi.to) : null;
    return day && typeof day.points === 'number' ? day.points : 0;
  }

  function renderPoints() {
    const k = S.kpi;
    const me = k && S.user ? k.agents.find((a) => a && a.login === S.user.login) : null;
    const today = $('my-points-today');
    const month = $('my-points-month');
    const status = $('my-points-status');
    if (me) {
      const points = todayOf(me);
      today.textContent = t('points.today', { points: formatNumber(points), target: formatNumber(me.daily_target) });
      today.dataset.met = String(typeof me.daily_target === 'number' && points >= me.daily_target);
      month.textContent = t('points.month', { points: formatNumber(me.total) });
    } else {
      today.textContent = '';
      month.textContent = '';
    }
    status.hidden = !S.kpiError;
    status.textContent = S.kpiError ? t('points.error') : '';
    // Only kinds in the points table may be recorded by hand.
    $('log-meeting').hidden = !(k && k.points && typeof k.points === 'object' && 'meeting' in k.points);
    renderMeeting();
  }

  function renderMeeting() {
    const m = S.meeting;
    const status = $('log-meeting-status');
    $('log-meeting').disabled = Boolean(m && m.state === 'pending');
    status.hidden = !m;
    status.textContent = m ? m.text : '';
    status.dataset.status = m ? m.state : '';
  }

  /** Record a meeting for today. Like a call-back, the request id is sent again only when
      the network lost the answer: the gateway records it once however often. */
  async function logMeeting() {
    if (S.meeting && S.meeting.state === 'pending') return;
    const generation = S.generation;
    const body = { kind: 'meeting', request_id: requestId() };
    clearTimeout(S.meetingTimer);
    S.meeting = { state: 'pending', text: t('points.logging') };
    renderMeeting();
    let reply = null;
    for (let attempt = 0; attempt < CALLBACK_ATTEMPTS; attempt += 1) {
      try {
        reply = await api('POST', '/api/interactions', body);
        break;
      } catch (_) {
        if (attempt + 1 < CALLBACK_ATTEMPTS) await sleep(CALLBACK_RETRY_MS * (attempt + 1));
      }
      if (generation !== S.generation) return;
    }
    if (generation !== S.generation) return;
    if (reply && reply.status === 401) { sessionEnded(); return; }
    const ok = Boolean(reply && reply.ok);
    S.meeting = ok
      ? { state: 'placed', text: t('points.logged', { points: formatNumber(reply.data && reply.data.points) }) }
      : { state: 'error', text: t('points.log_failed', { message: reply ? errorText(reply) : t('error.network') }) };
    renderMeeting();
    if (ok) refreshKpi();
    const shown = S.meeting;
    S.meetingTimer = setTimeout(() => {
      if (S.meeting !== shown) return;
      S.meeting = null;
      renderMeeting();
    }, ok ? MEETING_SHOWN_MS : CALLBACK_ERROR_SHOWN_MS);
  }

  function renderKpi() {
    const k = S.kpi;
    const agents = k ? k.agents.filter((a) => a && typeof a === 'object') : [];
    $('kpi-body').replaceChildren(...agents.map((a) => {
      const days = Array.isArray(a.days) ? a.days : [];
      const met = days.filter((d) => d && d.target_met).length;
      const today = todayOf(a);
      return el('tr', { 'data-testid': 'kpi-row', 'data-login': a.login },
        el('td', { 'data-testid': 'kpi-name', text: a.name || a.login || '' }),
        el('td', { text: a.team || '' }),
        el('td', { class: 'num', 'data-testid': 'kpi-today',
          'data-met': String(typeof a.daily_target === 'number' && today >= a.daily_target), text: formatNumber(today) }),
        el('td', { class: 'num', 'data-testid': 'kpi-target', text: formatNumber(a.daily_target) }),
        el('td', { class: 'num', 'data-testid': 'kpi-total', text: formatNumber(a.total) }),
        el('td', { class: 'num', 'data-testid': 'kpi-days-met', text: t('kpi.days_met_value', { met, days: days.length }) }));
    }));
    const period = $('kpi-period');
    period.hidden = !k;
    period.textContent = k ? t('kpi.period', { from: formatDay(k.from), to: formatDay(k.to) }) : '';
    const status = $('kpi-status');
    if (S.kpiError) {
      status.textContent = t('kpi.error');
      status.hidden = false;
    } else if (k && !agents.length) {
      status.textContent = t('kpi.empty');
      status.hidden = false;
    } else {
      status.hidden = true;
    }
  }

  // -- follow-up: the VIP call plan --------------------------------------------------------

  async function refreshVip() {
    const generation = S.generation;
    let r;
    try { r = await api('GET', '/api/vip-plan'); } catch (_) { r = null; }
    if (generation !== S.generation) return;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.behind)) {
      S.vip = r.data;
      S.vipError = false;
    } else {
      S.vipError = true;
    }
    renderVip();
  }

  function renderVip() {
    const v = S.vip;
    const behind = v ? v.behind.filter((c) => c && typeof c === 'object') : [];
    $('vip-body').replaceChildren(...behind.map((c) => {
      const last = c.last_call && typeof c.last_call === 'object' ? c.last_call : null;
      const lastCell = el('td', { 'data-testid': 'vip-last-call' });
      if (last) {
        lastCell.append(el('time', { datetime: last.started_at || '', text: formatInZone(last.started_at, shopZone(c.shop)) }),
          ' ', el('span', { class: 'muted', text: label('direction', last.direction) }),
          ' ', el('span', { class: `outcome outcome-${last.outcome || ''}`, text: label('outcome', last.outcome) }));
      } else {
        lastCell.append(el('span', { class: 'muted', text: t('vip.never') }));
      }
      return el('tr', { 'data-testid': 'vip-row', 'data-contact-id': c.contact_id },
        el('td', { 'data-testid': 'vip-name', text: c.name || '' }),
        el('td', { class: 'number', 'data-testid': 'vip-phones', text: Array.isArray(c.phones) ? c.phones.join(', ') : '' }),
        el('td', { 'data-testid': 'vip-manager', text: personName(c.manager) }),
        el('td', { 'data-testid': 'vip-shop', text: shopName(c.shop) }),
        el('td', { class: 'num', 'data-testid': 'vip-progress', text: t('vip.progress_value', { done: c.done, required: c.required }) }),
        lastCell);
    }));
    const period = $('vip-period');
    period.hidden = !v;
    period.textContent = v ? label('vip.period', v.period) : '';
    const status = $('vip-status');
    if (S.vipError) {
      status.textContent = t('vip.error');
      status.hidden = false;
    } else if (v && !behind.length) {
      status.textContent = t('vip.all_on_track', { count: v.on_track || 0 });
      status.hidden = false;
    } else if (v && v.on_track) {
      status.textContent = t('vip.on_track', { count: v.on_track });
      status.hidden = false;
    } else {
      status.hidden = true;
    }
  }

  function refreshLead() {
    refreshKpi();
    refreshTasks();
    refreshVip();
  }

  function renderFollowup() {
    if (isAgent()) {
      renderTasks();
      renderPoints();
    } else if (isLead()) {
      renderTasks();
      renderKpi();
      renderVip();
    } else { // logged out: empty both views
      $('missed-body').replaceChildren();
      $('team-missed-body').replaceChildren();
      $('kpi-body').replaceChildren();
      $('vip-body').replaceChildren();
      for (const id of ['missed-status', 'team-missed-status', 'kpi-status', 'kpi-period', 'vip-status', 'vip-period',
        'my-points-status', 'log-meeting-status']) $(id).hidden = true;
      $('my-points-today').textContent = '';
      $('my-points-month').textContent = '';
    }
  }

  // -- the dashboard (marketers, managers, administrators) ------------------------------------
  //
  // GET /api/reports/channels for the period and shop in the form: KPI tiles against the
  // previous period of the same length, bars per channel, the weekday x hour heatmap, the
  // daily trend and the channel table; the export link carries the same query (format=csv).
  // The charts are SVG drawn by charts.js. The first answer (no period asked) tells the
  // reports' "today" in their time zone: the presets count from it, not from this browser's
  // clock (which may be in another zone). Leads also get GET /api/reports/agents.

  const DASH_FIELDS = [['from', 'dash-from'], ['to', 'dash-to'], ['shop', 'dash-shop']];
  const DASH_TILES = [
    ['calls', 'count'], ['unique_callers', 'count'], ['new_leads', 'count'], ['deals_won', 'count'],
    ['revenue', 'money'], ['cost', 'money'], ['roi', 'roi'],
  ];

  function isMarketer() { return Boolean(S.user && S.user.role === 'marketer'); }

  function dashQuery() {
    const q = new URLSearchParams();
    for (const [key, id] of DASH_FIELDS) {
      const value = $(id).value.trim();
      if (value) q.set(key, value);
    }
    return q;
  }

  async function refreshDashboard() {
    const generation = S.generation;
    const seq = ++S.dashSeq;
    const q = dashQuery();
    S.dashLoading = true;
    renderDashStatus();
    let r;
    try { r = await api('GET', `/api/reports/channels?${q}`); } catch (_) { r = null; }
    if (generation !== S.generation || seq !== S.dashSeq) return; // a newer request is on its way
    S.dashLoading = false;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.channels)) {
      S.dash = r.data;
      S.dashError = null;
      if (!S.dashToday) S.dashToday = r.data.to; // asked without a period: the server's today
      $('dash-from').value = r.data.from;
      $('dash-to').value = r.data.to;
      for (const row of r.data.by_shop || []) if (row && typeof row.shop === 'string') S.dashShops.add(row.shop);
    } else {
      S.dash = null;
      S.dashError = t('dash.error', { message: r ? errorText(r) : t('error.network') });
    }
    renderDashboard();
    if (isLead()) refreshAgentsReport();
  }

  function applyDashSoon() {
    clearTimeout(S.dashTimer);
    S.dashTimer = setTimeout(refreshDashboard, LOG_CHANGE_MS);
  }

  /** "2026-03-05" moved by ``days`` (calendar arithmetic in UTC: no time zone can shift it). */
  function shiftDay(day, days) {
    const d = new Date(`${day}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + days);
    return d.toISOString().slice(0, 10);
  }

  function presetPeriod(preset) {
    const today = S.dashToday || $('dash-to').value;
    if (!today) return null;
    if (preset === 'month') return [`${today.slice(0, 8)}01`, today];
    return [shiftDay(today, 1 - Number(preset)), today];
  }

  function applyPreset(preset) {
    const period = presetPeriod(preset);
    if (!period) return;
    [$('dash-from').value, $('dash-to').value] = period;
    clearTimeout(S.dashTimer);
    refreshDashboard();
  }

  function channelName(channel) {
    return channel ? label('channel', channel) : t('dash.no_channel');
  }

  function formatMoney(n) {
    return typeof n === 'number' && Number.isFinite(n)
      ? new Intl.NumberFormat(S.lang, { maximumFractionDigits: 0 }).format(n) : '–';
  }

  function formatPct(n) {
    return typeof n === 'number' && Number.isFinite(n)
      ? new Intl.NumberFormat(S.lang, { style: 'percent', maximumFractionDigits: 0 }).format(n / 100) : '–';
  }

  /** ROI is a ratio ((margin - cost) / cost); null when the channel cost nothing. */
  function formatRoi(n) {
    return typeof n === 'number' && Number.isFinite(n)
      ? new Intl.NumberFormat(S.lang, { style: 'percent', maximumFractionDigits: 0, signDisplay: 'exceptZero' }).format(n)
      : '–';
  }

  function tileValue(kind, n) {
    if (kind === 'money') return formatMoney(n);
    if (kind === 'roi') return formatRoi(n);
    return formatNumber(n);
  }

  /** The change against the previous period: in per cent, ROI in percentage points. */
  function tileChange(kind, now, before) {
    if (typeof now !== 'number' || typeof before !== 'number') return { text: t('dash.change_none'), trend: 'none' };
    if (kind === 'roi') {
      const points = Math.round((now - before) * 100);
      const trend = points > 0 ? 'up' : points < 0 ? 'down' : 'same';
      return { text: t('dash.change_points', { points: new Intl.NumberFormat(S.lang, { signDisplay: 'exceptZero' })
        .format(points) }), trend };
    }
    if (before === 0) return now > 0 ? { text: t('dash.change_new'), trend: 'up' } : { text: t('dash.change_same'), trend: 'same' };
    const ratio = (now - before) / before;
    const trend = ratio > 0 ? 'up' : ratio < 0 ? 'down' : 'same';
    return { text: t('dash.change_pct', { change: new Intl.NumberFormat(S.lang, { style: 'percent',
      maximumFractionDigits: 0, signDisplay: 'exceptZero' }).format(ratio) }), trend };
  }

  function renderDashStatus() {
    const status = $('dash-status');
    const d = S.dash;
    let text = '';
    if (S.dashError) text = S.dashError;
    else if (S.dashLoading && !d) text = t('dash.loading');
    else if (d && !d.totals.calls && !d.channels.length) text = t('dash.empty');
    status.textContent = text;
    status.hidden = !text;
    status.dataset.state = S.dashError ? 'error' : '';
    $('dash-tiles').setAttribute('aria-busy', String(S.dashLoading));
  }

  function renderDashShops() {
    const shops = [...S.dashShops].sort().map((id) => [id, shopName(id)]);
    setOptions($('dash-shop'), shops, t('dash.all_shops'));
  }

  function renderDashboard() {
    renderDashShops();
    renderDashStatus();
    const d = S.dash;
    const q = dashQuery();
    q.set('format', 'csv');
    $('dash-export').href = `/api/reports/channels?${q}`;
    for (const b of document.querySelectorAll('[data-preset]')) {
      const period = d ? presetPeriod(b.dataset.preset) : null;
      b.setAttribute('aria-pressed', String(Boolean(period && period[0] === d.from && period[1] === d.to)));
    }
    for (const b of document.querySelectorAll('[data-heat]')) {
      b.setAttribute('aria-pressed', String(b.dataset.heat === S.heat));
    }
    const period = $('dash-period');
    period.hidden = !d;
    period.textContent = d ? t('dash.period', { from: formatDay(d.from), to: formatDay(d.to),
      prev_from: formatDay(d.previous_period.from), prev_to: formatDay(d.previous_period.to) }) : '';
    $('dash-heat-zone').textContent = d ? t('dash.heatmap_zone', { zone: d.timezone }) : '';
    renderTiles(d);
    renderCharts(d);
    renderChannelTable(d);
    renderAgentsReport();
  }

  function renderTiles(d) {
    $('dash-tiles').replaceChildren(...(d ? DASH_TILES.map(([key, kind]) => {
      const now = d.totals[key];
      const before = d.totals.previous ? d.totals.previous[key] : null;
      const change = tileChange(kind, now, before);
      return el('div', { class: 'tile', 'data-testid': `tile-${key}`, 'data-value': typeof now === 'number' ? now : '' },
        el('span', { class: 'tile-label', text: t(`dash.tile.${key}`) }),
        el('span', { class: 'tile-value', 'data-testid': 'tile-value', text: tileValue(kind, now),
          title: kind === 'roi' && now === null ? t('dash.roi_none') : null }),
        el('span', { class: 'tile-change', 'data-testid': 'tile-change', 'data-trend': change.trend,
          // For cost, up is not good news.
          'data-good': String(key === 'cost' ? change.trend === 'down' : change.trend === 'up'),
          text: change.text, title: t('dash.previous', { value: tileValue(kind, before) }) }));
    }) : []));
  }

  function renderCharts(d) {
    const charts = window.CtiCharts;
    const boxes = ['chart-calls', 'chart-money', 'chart-heatmap', 'chart-trend'];
    if (!d || !charts) {
      for (const id of boxes) $(id).replaceChildren();
      return;
    }
    const labels = { showTable: t('dash.show_table'), showChart: t('dash.show_chart') };
    const names = d.channels.map((c) => channelName(c.channel));
    charts.bars($('chart-calls'), {
      title: t('dash.calls_chart'), kind: 'bars', labels, categories: names, categoryLabel: t('dash.col.channel'),
      series: [{ key: 'calls', label: t('dash.col.calls'), cls: 's-calls', values: d.channels.map((c) => c.calls) }],
      format: formatNumber,
    });
    charts.bars($('chart-money'), {
      title: t('dash.money_chart'), kind: 'bars', labels, categories: names, categoryLabel: t('dash.col.channel'),
      series: [
        { key: 'cost', label: t('dash.col.cost'), cls: 's-cost', values: d.channels.map((c) => c.cost) },
        { key: 'margin', label: t('dash.col.margin'), cls: 's-margin', values: d.channels.map((c) => c.margin) },
      ],
      format: formatMoney,
    });
    const weekday = new Intl.DateTimeFormat(S.lang, { weekday: 'short', timeZone: 'UTC' });
    const monday = Date.UTC(2024, 0, 1); // a Monday: the heatmap's rows run Monday to Sunday
    const cells = Array.isArray(d.heatmap && d.heatmap.cells) ? d.heatmap.cells : [];
    charts.heatmap($('chart-heatmap'), {
      title: `${t('dash.heatmap')}: ${t(`dash.heat_${S.heat}`)}`, kind: 'heatmap', labels,
      rows: cells.map((_, i) => weekday.format(new Date(monday + i * 86400000))),
      columns: Array.from({ length: 24 }, (_, h) => String(h).padStart(2, '0')),
      values: cells.map((row) => row.map((c) => (c ? c[S.heat] : 0))),
      cls: S.heat === 'missed' ? 's-missed' : 's-calls', valueLabel: t(`dash.heat_${S.heat}_unit`),
      format: formatNumber,
    });
    const trend = Array.isArray(d.trend) ? d.trend : [];
    const short = new Intl.DateTimeFormat(S.lang, { day: 'numeric', month: 'short', timeZone: 'UTC' });
    charts.lines($('chart-trend'), {
      title: t('dash.trend'), kind: 'lines', labels, pointLabel: t('dash.day'),
      points: trend.map((p) => short.format(new Date(`${p.day}T12:00:00Z`))),
      series: ['calls', 'answered', 'missed'].map((key) => ({ key, label: t(`dash.series.${key}`), cls: `s-${key}`,
        values: trend.map((p) => p[key]) })),
      format: formatNumber,
    });
  }

  function renderChannelTable(d) {
    const rows = d ? d.channels : [];
    $('dash-channels-body').replaceChildren(...rows.map((c) => el('tr', { 'data-testid': 'dash-channel',
      'data-channel': c.channel || '' },
    el('th', { scope: 'row', 'data-testid': 'dash-channel-name', text: channelName(c.channel) }),
    el('td', { class: 'num', 'data-testid': 'dash-channel-calls', text: formatNumber(c.calls) }),
    el('td', { class: 'num', text: formatNumber(c.unique_callers) }),
    el('td', { class: 'num', text: formatNumber(c.new_leads) }),
    el('td', { class: 'num', text: formatNumber(c.qualified) }),
    el('td', { class: 'num', text: formatPct(c.answered_pct) }),
    el('td', { class: 'num', text: formatPct(c.missed_pct) }),
    el('td', { class: 'num', text: c.avg_wait_seconds === null ? '–' : formatSeconds(c.avg_wait_seconds) }),
    el('td', { class: 'num', text: formatNumber(c.callbacks_in_sla) }),
    el('td', { class: 'num', text: formatNumber(c.deals_won) }),
    el('td', { class: 'num', text: formatMoney(c.revenue) }),
    el('td', { class: 'num', text: formatMoney(c.margin) }),
    el('td', { class: 'num', 'data-testid': 'dash-channel-cost', text: formatMoney(c.cost) }),
    el('td', { class: 'num', text: formatMoney(c.cost_per_lead) }),
    el('td', { class: 'num', text: formatMoney(c.cost_per_deal) }),
    el('td', { class: 'num', 'data-testid': 'dash-channel-roi', text: formatRoi(c.roi),
      title: c.roi === null ? t('dash.roi_none') : null }))));
  }

  async function refreshAgentsReport() {
    const generation = S.generation;
    const q = new URLSearchParams();
    for (const key of ['from', 'to']) if ($(`dash-${key}`).value) q.set(key, $(`dash-${key}`).value);
    const seq = ++S.agentsSeq;
    let r;
    try { r = await api('GET', `/api/reports/agents?${q}`); } catch (_) { r = null; }
    if (generation !== S.generation || seq !== S.agentsSeq) return;
    if (r && r.status === 401) { sessionEnded(); return; }
    const ok = Boolean(r && r.ok && r.data && Array.isArray(r.data.agents));
    S.agentsReport = ok ? r.data : null;
    S.agentsError = ok ? null : t('agents.error', { message: r ? errorText(r) : t('error.network') });
    renderAgentsReport();
  }

  function renderAgentsReport() {
    $('agents-report').hidden = !isLead();
    const a = S.agentsReport;
    const rows = a ? a.agents.filter((x) => x && typeof x === 'object') : [];
    $('agents-body').replaceChildren(...rows.map((x) => el('tr', { 'data-testid': 'agents-row', 'data-login': x.login },
      el('td', { 'data-testid': 'agents-name', text: x.name || x.login || '' }),
      el('td', { text: x.team || '' }),
      el('td', { class: 'num', 'data-testid': 'agents-answered', text: formatNumber(x.answered) }),
      el('td', { class: 'num', 'data-testid': 'agents-missed', text: formatNumber(x.missed_on_phone) }),
      el('td', { class: 'num', text: formatSeconds(x.talk_seconds) }),
      el('td', { class: 'num', text: t('agents.points_value', { points: formatNumber(x.points),
        target: formatNumber(x.target) }) }),
      el('td', { class: 'num', text: t('agents.callbacks_value', { in_sla: formatNumber(x.callbacks_in_sla),
        callbacks: formatNumber(x.callbacks) }) }))));
    const status = $('agents-status');
    const text = S.agentsError || (a && !rows.length ? t('agents.empty') : '');
    status.textContent = text;
    status.hidden = !text;
  }

  // -- the call log (managers and administrators) ----------------------------------------
  //
  // GET /api/calls/log with the form's filters, a page at a time; the export link carries
  // the same filters (format=csv). A call whose recording is ready gets a Play button: it
  // asks GET /api/calls/{id}/recording/link for a short-lived URL and the recording's
  // waveform (peaks), and opens a player row under the call: the browser's own <audio
  // controls>, and the waveform drawn on a canvas that shows the position and seeks on a
  // click (or the arrow keys: it is a slider). One player at a time; it survives a
  // re-render of the table (the row is moved, not rebuilt, so the audio keeps playing).

  const LOG_FIELDS = [['from', 'calllog-from'], ['to', 'calllog-to'], ['agent', 'calllog-agent'],
    ['shop', 'calllog-shop'], ['channel', 'calllog-channel'], ['outcome', 'calllog-outcome'],
    ['number', 'calllog-number']];

  /** The form's filters as a query string (empty fields left out: the server's defaults). */
  function logQuery() {
    const q = new URLSearchParams();
    for (const [key, id] of LOG_FIELDS) {
      const value = $(id).value.trim();
      if (value) q.set(key, value);
    }
    return q;
  }

  async function refreshAgents() {
    const generation = S.generation;
    let r;
    try { r = await api('GET', '/api/agents'); } catch (_) { return; }
    if (generation !== S.generation || !r.ok || !r.data || !Array.isArray(r.data.agents)) return;
    S.agents = r.data.agents.filter((a) => a && typeof a.login === 'string');
    renderLog();
  }

  async function refreshLog() {
    if (!isLead()) return;
    const generation = S.generation;
    const seq = ++S.logSeq;
    const q = logQuery();
    q.set('limit', String(LOG_PAGE));
    q.set('offset', String(S.logOffset));
    S.logLoading = true;
    renderLogStatus();
    let r;
    try { r = await api('GET', `/api/calls/log?${q}`); } catch (_) { r = null; }
    if (generation !== S.generation || seq !== S.logSeq) return; // a newer request is on its way
    S.logLoading = false;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.calls)) {
      S.log = r.data;
      S.logError = null;
      // The period the server used (its defaults, when the fields were empty) is the one shown.
      if (typeof r.data.from === 'string') $('calllog-from').value = r.data.from;
      if (typeof r.data.to === 'string') $('calllog-to').value = r.data.to;
      if (Array.isArray(r.data.shops)) {
        for (const shop of r.data.shops) {
          if (shop && typeof shop.id === 'string') {
            S.shops.set(shop.id, { name: shop.name || shop.id, timezone: shop.timezone || null });
          }
        }
      }
    } else {
      S.log = null;
      const code = r && r.data && typeof r.data.error === 'string' ? r.data.error : '';
      const message = r ? errorText(r) : t('error.network');
      S.logError = code && has(`calllog.error.${code}`)
        ? t(`calllog.error.${code}`, { message }) : t('calllog.error', { message });
    }
    renderLog();
  }

  function applyLog() {
    clearTimeout(S.logTimer);
    S.logOffset = 0;
    refreshLog();
  }

  /** A changed field applies after a moment: typing a date changes it field by field. */
  function applyLogSoon() {
    clearTimeout(S.logTimer);
    S.logTimer = setTimeout(applyLog, LOG_CHANGE_MS);
  }

  function resetLog() {
    for (const [, id] of LOG_FIELDS) $(id).value = '';
    applyLog();
  }

  function setOptions(select, options, allText) {
    const current = select.value;
    const values = options.map(([value]) => value);
    // A value chosen before (a shop gone from the plan since) stays choosable.
    if (current && !values.includes(current)) options = [...options, [current, current]];
    select.replaceChildren(el('option', { value: '', text: allText }),
      ...options.map(([value, text]) => el('option', { value, text })));
    select.value = current;
  }

  function agentByExtension(extension) {
    return (S.agents || []).find((a) => Array.isArray(a.extensions) && a.extensions.includes(extension)) || null;
  }

  function extensionName(extension) {
    const agent = agentByExtension(extension);
    return agent ? agent.name || agent.login : String(extension);
  }

  /** Who handled the call: whoever placed it, then everyone who talked; else whose phones rang. */
  function logAgents(c) {
    const placer = c.direction !== 'inbound' && typeof c.caller === 'string' && !isCustomerNumber(c.caller)
      ? c.caller : null;
    const talked = Array.isArray(c.talked) ? c.talked : [];
    const people = [...new Set([placer, ...talked].filter(Boolean))];
    if (!people.length && c.answered_by) people.push(c.answered_by);
    if (people.length) {
      const name = (e) => (e === c.answered_by && c.answered_by_name ? c.answered_by_name : extensionName(e));
      return el('span', { text: people.map(name).join(' → ') });
    }
    const rang = Array.isArray(c.rang) ? c.rang : [];
    return rang.length
      ? el('span', { class: 'muted', title: t('calllog.rang'), text: rang.map(extensionName).join(', ') }) : null;
  }

  /** 75 -> "1:15" */
  function formatSeconds(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) return '';
    const total = Math.round(seconds);
    return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, '0')}`;
  }

  /** 750 -> "13 min", 7500 -> "2 h 5 min" */
  function formatSpan(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '';
    const minutes = Math.max(1, Math.round(seconds / 60));
    return minutes < 60 ? t('duration.min', { minutes })
      : t('duration.h_min', { hours: Math.floor(minutes / 60), minutes: minutes % 60 });
  }

  function taskCell(task) {
    const cell = el('td', { 'data-testid': 'calllog-task' });
    if (!task || typeof task !== 'object') return cell;
    let key = 'task.closed';
    let state = task.status;
    const vars = { time: formatSpan(task.callback_seconds) };
    if (task.this_call === 'reach') {
      key = 'task.reach';
      state = 'reach';
    } else if (task.status === 'open') {
      key = 'task.open';
    } else if (task.status === 'reached') {
      if (!vars.time) key = 'task.reached';
      else key = task.within_sla === false ? 'task.reached_late' : 'task.reached_in_time';
      if (task.within_sla === false) state = 'late';
    }
    cell.dataset.taskId = task.task_id;
    cell.append(el('span', { class: `task-state task-${state}`, 'data-state': state, text: t(key, vars) }));
    return cell;
  }

  function recordingCell(c) {
    const cell = el('td', { class: 'actions', 'data-testid': 'calllog-recording' });
    const rec = c.recording && typeof c.recording === 'object' ? c.recording : null;
    if (!rec) return cell;
    if (rec.status !== 'ready') {
      cell.append(el('span', { class: 'muted', 'data-status': rec.status, text: label('recording', rec.status) }));
      return cell;
    }
    const open = Boolean(S.player && S.player.callId === c.call_id);
    const button = el('button', { type: 'button', class: 'play', 'data-testid': 'calllog-play',
      'aria-expanded': String(open), text: t('calllog.play'),
      'aria-label': t('calllog.play_label', { time: formatInZone(c.started_at, c.timezone) }) });
    button.addEventListener('click', () => {
      if (S.player && S.player.callId === c.call_id) closePlayer(true);
      else openPlayer(c);
      focusPlay(c.call_id); // the table was drawn again: keep the focus where it was
    });
    cell.append(button);
    if (typeof rec.duration === 'number') {
      cell.append(' ', el('span', { class: 'muted small', text: formatSeconds(rec.duration) }));
    }
    return cell;
  }

  function logRow(c) {
    const zone = c.timezone || shopZone(c.shop);
    const number = c.customer || (c.direction === 'outbound' ? c.dialled : c.caller) || '';
    const line = [c.shop_name || c.shop, label('channel', c.channel)].filter(Boolean).join(' · ');
    const result = el('td', { 'data-testid': 'calllog-result' },
      c.result ? el('span', { class: 'result-tag', text: label('result', c.result) }) : null,
      c.result && c.note ? ' ' : null,
      c.note ? el('span', { class: 'note', text: c.note }) : null);
    return el('tr', { 'data-testid': 'calllog-row', 'data-call-id': c.call_id, 'data-outcome': c.outcome },
      el('td', {}, el('time', { datetime: c.started_at || '', title: zone || null, 'data-testid': 'calllog-time',
        text: formatInZone(c.started_at, zone) })),
      el('td', { text: label('direction', c.direction) }),
      el('td', { class: 'caller-cell' },
        el('span', { class: 'number', 'data-testid': 'calllog-number', text: number || t('card.hidden_number') }),
        c.customer_name ? el('span', { class: 'name', text: c.customer_name }) : null),
      el('td', { 'data-testid': 'calllog-line', text: line }),
      el('td', { class: `outcome outcome-${c.outcome || ''}`, 'data-testid': 'calllog-outcome',
        text: label('outcome', c.outcome) }),
      el('td', { 'data-testid': 'calllog-agent' }, logAgents(c)),
      el('td', { class: 'num', text: formatSeconds(c.ring_seconds) }),
      el('td', { class: 'num', text: c.talk_seconds > 0 ? formatSeconds(c.talk_seconds) : '' }),
      result,
      taskCell(c.task),
      recordingCell(c));
  }

  function renderLogStatus() {
    const status = $('calllog-status');
    let text = '';
    if (S.logError) text = S.logError;
    else if (S.logLoading && !S.log) text = t('calllog.loading');
    else if (S.log && !S.log.calls.length) text = t('calllog.empty');
    status.textContent = text;
    status.hidden = !text;
    status.dataset.state = S.logError ? 'error' : '';
    $('calllog-body').setAttribute('aria-busy', String(S.logLoading));
  }

  function renderLog() {
    const data = S.log;
    setOptions($('calllog-agent'), (S.agents || []).map((a) => [a.login, a.name || a.login]), t('calllog.all'));
    setOptions($('calllog-shop'), (data && Array.isArray(data.shops) ? data.shops : [])
      .filter((s) => s && typeof s.id === 'string').map((s) => [s.id, s.name || s.id]), t('calllog.all'));
    setOptions($('calllog-channel'), (data && Array.isArray(data.channels) ? data.channels : [])
      .filter((c) => typeof c === 'string').map((c) => [c, label('channel', c)]), t('calllog.all'));
    setOptions($('calllog-outcome'), LOG_OUTCOMES.map((o) => [o, label('outcome', o)]), t('calllog.all'));

    const calls = data ? data.calls.filter((c) => c && typeof c === 'object' && typeof c.call_id === 'string') : [];
    const rows = [];
    let playerKept = false;
    for (const c of calls) {
      rows.push(logRow(c));
      if (S.player && S.player.callId === c.call_id) {
        rows.push(S.player.row);
        playerKept = true;
      }
    }
    if (S.player && !playerKept) closePlayer(false);
    $('calllog-body').replaceChildren(...rows);
    if (S.player) {
      applyI18n(S.player.row);
      paintPlayer(S.player);
    }
    renderLogStatus();

    const exportLink = $('calllog-export');
    if (data) {
      const q = logQuery();
      q.set('format', 'csv');
      exportLink.setAttribute('href', `/api/calls/log?${q}`);
      exportLink.removeAttribute('aria-disabled');
    } else if (S.logError) { // filters the server refused: nothing to export
      exportLink.removeAttribute('href');
      exportLink.setAttribute('aria-disabled', 'true');
    }

    const pager = $('calllog-pager');
    const total = data && typeof data.total === 'number' ? data.total : 0;
    pager.hidden = !data || total <= calls.length;
    if (data) {
      const offset = typeof data.offset === 'number' ? data.offset : 0;
      $('calllog-range').textContent = calls.length
        ? t('calllog.range', { first: offset + 1, last: offset + calls.length, total }) : '';
      $('calllog-prev').disabled = offset <= 0;
      $('calllog-next').disabled = offset + calls.length >= total;
    }
  }

  function focusPlay(callId) {
    const row = $('calllog-body').querySelector(`tr[data-testid="calllog-row"][data-call-id="${CSS.escape(callId)}"]`);
    const button = row ? row.querySelector('[data-testid="calllog-play"]') : null;
    if (button) button.focus();
  }

  function pageLog(step) {
    if (!S.log) return;
    S.logOffset = Math.max(0, (S.log.offset || 0) + step * LOG_PAGE);
    refreshLog();
  }

  // -- the player ------------------------------------------------------------------------

  function closePlayer(render) {
    const p = S.player;
    if (!p) return;
    S.player = null;
    cancelAnimationFrame(p.frame);
    if (p.audio) {
      p.audio.pause();
      p.audio.removeAttribute('src'); // stop fetching
      p.audio.load();
    }
    p.row.remove();
    if (render) renderLog();
  }

  async function openPlayer(c) {
    closePlayer(false);
    const generation = S.generation;
    const status = el('p', { class: 'player-status muted small', role: 'status', 'data-testid': 'player-status',
      text: t('calllog.player_loading') });
    const close = el('button', { type: 'button', class: 'link-button player-close', 'data-testid': 'player-close',
      'data-i18n': 'calllog.close_player' });
    const box = el('div', { class: 'player', 'data-testid': 'player', 'data-call-id': c.call_id }, status, close);
    const row = el('tr', { class: 'player-row', 'data-testid': 'player-row', 'data-call-id': c.call_id },
      el('td', { colspan: 11 }, box));
    const known = c.recording && typeof c.recording.duration === 'number' ? c.recording.duration : 0;
    const p = { callId: c.call_id, row, box, status, audio: null, canvas: null, time: null, peaks: [], duration: known,
      frame: 0, retried: false };
    close.addEventListener('click', () => closePlayer(true));
    S.player = p;
    applyI18n(row);
    renderLog(); // the row goes under its call, the button says it is open
    const link = await recordingLink(c.call_id);
    if (generation !== S.generation || S.player !== p) return; // closed meanwhile
    if (!link.url) {
      status.textContent = t('calllog.player_error', { message: link.error });
      status.dataset.state = 'error';
      return;
    }
    const rec = link.recording || {};
    p.peaks = Array.isArray(rec.peaks) ? rec.peaks.map((v) => Math.max(0, Math.min(1, Number(v) || 0))) : [];
    if (typeof rec.duration === 'number' && rec.duration > 0) p.duration = rec.duration;
    const canvas = el('canvas', { class: 'waveform', role: 'slider', tabindex: 0, 'data-testid': 'waveform',
      'aria-valuemin': 0, 'aria-valuemax': Math.round(p.duration), 'aria-valuenow': 0 });
    const audio = el('audio', { controls: true, preload: 'metadata', 'data-testid': 'player-audio' });
    const time = el('span', { class: 'player-time muted small', 'data-testid': 'player-time', 'aria-hidden': 'true' });
    p.canvas = canvas;
    p.audio = audio;
    p.time = time;
    canvas.addEventListener('click', (ev) => {
      const rect = canvas.getBoundingClientRect();
      if (rect.width > 0) seek(p, ((ev.clientX - rect.left) / rect.width) * playerDuration(p));
    });
    canvas.addEventListener('keydown', (ev) => {
      const steps = { ArrowLeft: -5, ArrowDown: -5, ArrowRight: 5, ArrowUp: 5, PageDown: -30, PageUp: 30 };
      if (ev.key in steps) seek(p, audio.currentTime + steps[ev.key]);
      else if (ev.key === 'Home') seek(p, 0);
      else if (ev.key === 'End') seek(p, playerDuration(p));
      else return;
      ev.preventDefault();
    });
    for (const kind of ['timeupdate', 'seeked', 'loadedmetadata', 'durationchange', 'pause', 'ended']) {
      audio.addEventListener(kind, () => paintPlayer(p));
    }
    audio.addEventListener('play', () => animate(p));
    audio.addEventListener('error', () => playbackFailed(p));
    audio.src = link.url;
    status.hidden = true;
    box.replaceChildren(el('div', { class: 'player-wave' }, canvas, time), audio, status, close);
    applyI18n(box);
    paintPlayer(p);
  }

  /** {url, recording} or {error}. Only a same-origin URL is played. */
  async function recordingLink(callId) {
    let r;
    try { r = await api('GET', `/api/calls/${encodeURIComponent(callId)}/recording/link`); } catch (_) { r = null; }
    if (r && r.status === 401) { sessionEnded(); return { error: t('error.network') }; }
    if (!r || !r.ok || !r.data) return { error: r ? errorText(r) : t('error.network') };
    let url = null;
    try {
      const u = new URL(String(r.data.url || ''), location.href);
      if (u.origin === location.origin) url = u.href;
    } catch (_) { /* no URL */ }
    return url ? { url, recording: r.data.recording } : { error: t('calllog.not_ready') };
  }

  /** The link expires (it is short-lived): on an error, get a fresh one once and carry on. */
  async function playbackFailed(p) {
    if (S.player !== p || !p.audio.getAttribute('src')) return;
    if (!p.retried) {
      p.retried = true;
      const at = p.audio.currentTime;
      const link = await recordingLink(p.callId);
      if (S.player !== p) return;
      if (link.url) {
        p.audio.src = link.url;
        p.audio.currentTime = at;
        return;
      }
    }
    p.status.textContent = t('calllog.player_error', { message: t('calllog.not_playable') });
    p.status.dataset.state = 'error';
    p.status.hidden = false;
  }

  function playerDuration(p) {
    const d = p.audio ? p.audio.duration : NaN;
    return Number.isFinite(d) && d > 0 ? d : p.duration;
  }

  function seek(p, seconds) {
    const duration = playerDuration(p);
    if (!p.audio || !(duration > 0)) return;
    p.audio.currentTime = Math.max(0, Math.min(duration, seconds));
    paintPlayer(p);
  }

  /** Smooth progress while playing (timeupdate comes only a few times a second). */
  function animate(p) {
    cancelAnimationFrame(p.frame);
    const step = () => {
      if (S.player !== p || p.audio.paused) return;
      drawWaveform(p);
      p.frame = requestAnimationFrame(step);
    };
    p.frame = requestAnimationFrame(step);
  }

  function paintPlayer(p) {
    if (!p.canvas) return;
    const duration = playerDuration(p);
    const now = p.audio.currentTime || 0;
    // Whole seconds gone by, as the audio element's own controls count them.
    const text = t('calllog.position', { current: formatSeconds(Math.floor(now)), total: formatSeconds(duration) });
    p.canvas.setAttribute('aria-label', t('calllog.waveform'));
    p.canvas.setAttribute('aria-valuemax', String(Math.round(duration)));
    p.canvas.setAttribute('aria-valuenow', String(Math.floor(now)));
    p.canvas.setAttribute('aria-valuetext', text);
    p.canvas.dataset.position = now.toFixed(2);
    p.time.textContent = text;
    drawWaveform(p);
  }

  function drawWaveform(p) {
    const canvas = p.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    // Colours from the style sheet (light and dark), not from here.
    const style = getComputedStyle(canvas);
    const played = style.getPropertyValue('--wave-played').trim() || '#1f5fd1';
    const rest = style.getPropertyValue('--wave-rest').trim() || '#9aa4b2';
    const mark = style.getPropertyValue('--wave-mark').trim() || played;
    const duration = playerDuration(p);
    const fraction = duration > 0 ? Math.max(0, Math.min(1, (p.audio.currentTime || 0) / duration)) : 0;
    const peaks = p.peaks.length ? p.peaks : [0];
    const bar = width / peaks.length;
    ctx.clearRect(0, 0, width, height);
    peaks.forEach((value, i) => {
      const h = Math.max(dpr, value * (height - 2 * dpr));
      ctx.fillStyle = (i + 0.5) / peaks.length <= fraction ? played : rest;
      ctx.fillRect(i * bar + bar * 0.15, (height - h) / 2, Math.max(dpr, bar * 0.7), h);
    });
    ctx.fillStyle = mark;
    ctx.fillRect(Math.min(width - 2 * dpr, fraction * width), 0, 2 * dpr, height);
  }

  // -- the CRM delivery (administrators) -----------------------------------------------------
  //
  // GET /api/admin/outbox: per CRM sink, the events waiting and dead and the age of the
  // oldest waiting one, and the entries of the state chosen (dead or waiting, newest first).
  // POST /api/admin/outbox/retry puts dead entries back in line: one ("Retry now"), a sink's
  // or all of them ("Retry all dead"); the list is read again at once, and every 30 s while
  // the page is in view. With no sink configured the section says so rather than hiding:
  // an administrator who expects the calls in a CRM learns here that none is set up.

  function isAdmin() { return Boolean(S.user && S.user.role === 'admin'); }

  async function refreshOutbox() {
    if (!isAdmin()) return;
    const generation = S.generation;
    const seq = ++S.outboxSeq;
    S.outboxLoading = true;
    renderOutboxStatus();
    let r;
    try { r = await api('GET', `/api/admin/outbox?state=${encodeURIComponent(S.outboxState)}`); } catch (_) { r = null; }
    if (generation !== S.generation || seq !== S.outboxSeq) return; // a newer request is on its way
    S.outboxLoading = false;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && Array.isArray(r.data.sinks) && Array.isArray(r.data.entries)) {
      S.outbox = r.data;
      S.outboxError = null;
    } else { // the last list stays, under the error
      S.outboxError = t('outbox.error', { message: r ? errorText(r) : t('error.network') });
    }
    renderOutbox();
  }

  function showOutbox(state) {
    if (state === S.outboxState) return;
    S.outboxState = state;
    S.outboxAction = null;
    renderOutbox();
    refreshOutbox();
  }

  /** Dead entries back in line. ``body``: {entry_ids} or {all_dead, sink}; ``busy``: whose button waits. */
  async function retryOutbox(body, busy) {
    const generation = S.generation;
    S.outboxBusy.add(busy);
    S.outboxAction = null;
    renderOutbox();
    let r;
    try { r = await api('POST', '/api/admin/outbox/retry', body); } catch (_) { r = null; }
    if (generation !== S.generation) return;
    S.outboxBusy.delete(busy);
    if (r && r.status === 401) { sessionEnded(); return; }
    if (r && r.ok && r.data && typeof r.data.retried === 'number') {
      S.outboxAction = { state: 'done',
        text: r.data.retried ? t('outbox.retried', { count: r.data.retried }) : t('outbox.retried_none') };
      refreshOutbox();
    } else {
      S.outboxAction = { state: 'error',
        text: t('outbox.retry_error', { message: r ? errorText(r) : t('error.network') }) };
    }
    renderOutbox();
  }

  function epochTime(seconds) {
    const iso = typeof seconds === 'number' && Number.isFinite(seconds) ? new Date(seconds * 1000).toISOString() : '';
    return el('time', { datetime: iso, text: formatDateTime(iso) });
  }

  /** How long the oldest event has waited: "under a minute", "13 min", "2 h 5 min". */
  function waitedText(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '–';
    return seconds < 60 ? t('outbox.under_minute') : formatSpan(seconds);
  }

  /** An entry's stream: a call's id, or "task:<id>" for a missed-call task. */
  function streamText(stream) {
    const text = String(stream || '');
    return text.startsWith('task:') ? t('outbox.stream_task', { id: text.slice(5) }) : t('outbox.stream_call', { id: text });
  }

  function outboxSinkRow(s) {
    const pending = Number(s.pending) || 0;
    const dead = Number(s.dead) || 0;
    const busy = `sink:${s.name}`;
    let retry = null;
    if (dead) {
      retry = el('button', { type: 'button', 'data-testid': 'outbox-sink-retry', text: t('outbox.retry_sink'),
        'aria-label': t('outbox.retry_sink_label', { sink: s.name }), disabled: S.outboxBusy.has(busy) });
      retry.addEventListener('click', () => retryOutbox({ all_dead: true, sink: s.name }, busy));
    }
    return el('tr', { 'data-testid': 'outbox-sink', 'data-sink': s.name },
      el('th', { scope: 'row', 'data-testid': 'outbox-sink-name', text: s.name }),
      el('td', { 'data-testid': 'outbox-sink-kind', text: label('outbox.kind', s.kind) }),
      el('td', { class: 'num', 'data-testid': 'outbox-sink-pending', text: formatNumber(pending) }),
      el('td', { class: dead ? 'num dead' : 'num', 'data-testid': 'outbox-sink-dead', text: formatNumber(dead) }),
      el('td', { class: 'num', 'data-testid': 'outbox-sink-oldest', text: pending ? waitedText(s.oldest_seconds) : '–' }),
      el('td', { class: 'actions' }, retry));
  }

  function outboxEntryRow(e) {
    const dead = e.state === 'dead';
    let next;
    if (dead) next = el('span', { class: 'muted', text: t('outbox.next_by_hand') });
    else if (e.next_at * 1000 <= Date.now() + S.skew + DUE_SOON_MS) next = el('span', { text: t('outbox.next_now') });
    else next = epochTime(e.next_at);
    let retry = null;
    if (dead) {
      const busy = `entry:${e.entry_id}`;
      retry = el('button', { type: 'button', 'data-testid': 'outbox-entry-retry', text: t('outbox.retry'),
        'aria-label': t('outbox.retry_label', { event: label('outbox.event', e.event), stream: streamText(e.stream) }),
        disabled: S.outboxBusy.has(busy) });
      retry.addEventListener('click', () => retryOutbox({ entry_ids: [e.entry_id] }, busy));
    }
    return el('tr', { 'data-testid': 'outbox-entry', 'data-entry-id': e.entry_id, 'data-state': e.state },
      el('td', { 'data-testid': 'outbox-entry-sink', text: e.sink }),
      el('td', { 'data-testid': 'outbox-entry-event' },
        el('span', { class: 'event-name', text: label('outbox.event', e.event) }),
        el('code', { class: 'muted small', text: e.event })),
      el('td', { class: 'stream', 'data-testid': 'outbox-entry-stream', text: streamText(e.stream) }),
      el('td', { class: 'num', 'data-testid': 'outbox-entry-attempts', text: formatNumber(e.attempts) }),
      el('td', { class: 'outbox-error', 'data-testid': 'outbox-entry-error', text: e.last_error || '' }),
      el('td', { 'data-testid': 'outbox-entry-created' }, epochTime(e.created_at)),
      el('td', { 'data-testid': 'outbox-entry-next' }, next),
      el('td', { class: 'actions' }, retry));
  }

  function outboxSinks() {
    return S.outbox ? S.outbox.sinks.filter((s) => s && typeof s.name === 'string') : [];
  }

  function renderOutboxStatus() {
    const status = $('outbox-status');
    const current = Boolean(S.outbox && S.outbox.state === S.outboxState);
    let text = '';
    if (S.outboxError) text = S.outboxError;
    else if (S.outboxLoading && !current) text = t('outbox.loading');
    else if (S.outbox && !outboxSinks().length) text = t('outbox.no_sinks');
    status.textContent = text;
    status.hidden = !text;
    status.dataset.state = S.outboxError ? 'error' : '';
    $('outbox-entries').setAttribute('aria-busy', String(S.outboxLoading));
  }

  function renderOutbox() {
    $('outbox').hidden = !isAdmin();
    const sinks = outboxSinks();
    $('outbox-main').hidden = !sinks.length;
    for (const b of document.querySelectorAll('[data-outbox-state]')) {
      b.setAttribute('aria-pressed', String(b.dataset.outboxState === S.outboxState));
    }
    $('outbox-sinks').replaceChildren(...sinks.map(outboxSinkRow));
    const dead = sinks.reduce((n, s) => n + (Number(s.dead) || 0), 0);
    const retryAll = $('outbox-retry-all');
    retryAll.hidden = S.outboxState !== 'dead';
    retryAll.disabled = !dead || S.outboxBusy.has('all');

    // The entries of the other state stay out while the chosen ones are on their way.
    const current = S.outbox && S.outbox.state === S.outboxState ? S.outbox : null;
    const entries = current ? current.entries.filter((e) => e && typeof e === 'object'
      && typeof e.entry_id === 'number') : [];
    $('outbox-entries').replaceChildren(...entries.map(outboxEntryRow));
    const total = sinks.reduce((n, s) => n + (Number(S.outboxState === 'dead' ? s.dead : s.pending) || 0), 0);
    let text = '';
    if (current && !entries.length) text = t(`outbox.empty_${S.outboxState}`);
    else if (current && entries.length >= OUTBOX_LISTED && total > entries.length) {
      text = t('outbox.newest', { shown: formatNumber(entries.length), total: formatNumber(total) });
    }
    const listStatus = $('outbox-list-status');
    listStatus.textContent = text;
    listStatus.hidden = !text;

    const action = $('outbox-action');
    const a = S.outboxAction;
    action.textContent = a ? a.text : '';
    action.hidden = !a;
    action.dataset.state = a ? a.state : '';
    action.setAttribute('role', a && a.state === 'error' ? 'alert' : 'status');
    renderOutboxStatus();
  }

  // -- notices (over the websocket) ---------------------------------------------------------

  function onNotice(frame) {
    // Kinds this page does not know are from a newer gateway: ignored.
    if (frame.kind !== 'callback_overdue' || !frame.task || typeof frame.task !== 'object') return;
    const task = frame.task;
    const id = `${frame.kind}:${task.task_id}`;
    learnShop(task);
    if (!S.notices.some((n) => n.id === id)) {
      S.notices.unshift({ id, kind: frame.kind, task, at: Date.now() });
      if (S.notices.length > NOTICES_MAX) S.notices.length = NOTICES_MAX;
      renderNotices();
      beep();
      desktopNotice(id, task);
    }
    refreshTasks(); // the task is marked overdue and escalated now
  }

  function noticeText(task) {
    const caller = task.name ? `${task.phone} ${task.name}` : String(task.phone || t('card.hidden_number'));
    return t('notice.callback_overdue', {
      caller,
      shop: task.shop_name || task.shop || t('card.unknown'),
      owner: personName(task.owner) || t('card.unknown'),
      due: formatInZone(task.due_at, task.timezone),
    });
  }

  function renderNotices() {
    const box = $('notices');
    box.hidden = !S.notices.length;
    box.replaceChildren(...S.notices.map((n) => {
      const dismiss = el('button', { type: 'button', class: 'link-button', 'data-testid': 'notice-dismiss',
        text: t('notice.dismiss') });
      dismiss.addEventListener('click', () => {
        S.notices = S.notices.filter((x) => x !== n);
        renderNotices();
      });
      return el('div', { class: 'notice notice-banner', 'data-testid': 'notice', 'data-kind': n.kind,
        'data-task-id': n.task.task_id },
      el('strong', { class: 'notice-title', text: t('notice.callback_overdue_title') }),
      el('span', { class: 'notice-text', 'data-testid': 'notice-text', text: noticeText(n.task) }),
      dismiss);
    }));
  }

  function desktopNotice(id, task) {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    try {
      const n = new Notification(t('notice.callback_overdue_title'), { body: noticeText(task), tag: id, lang: S.lang });
      n.onclick = () => { window.focus(); n.close(); };
    } catch (_) { /* e.g. a browser that wants a service worker for notifications */ }
  }

  // -- my status: available / pause / do not disturb, and wrap-up ------------------------

  async function refreshStatus() {
    const generation = S.generation;
    let r;
    try { r = await api('GET', '/api/me/status'); } catch (_) { return; }
    if (generation !== S.generation) return;
    if (r.status === 401) { sessionEnded(); return; }
    if (r.status === 404) { S.presence = null; renderStatus(); return; } // this gateway keeps no presence
    if (r.ok && r.data) {
      S.presence = r.data;
      renderStatus();
    }
  }

  async function setStatus(body) {
    const generation = S.generation;
    const error = $('status-error');
    const buttons = document.querySelectorAll('#presence button');
    error.hidden = true;
    for (const b of buttons) b.disabled = true;
    let r;
    try { r = await api('PUT', '/api/me/status', body); } catch (_) { r = null; }
    if (generation !== S.generation) return;
    for (const b of buttons) b.disabled = false;
    if (r && r.status === 401) { sessionEnded(); return; }
    if (!r || !r.ok || !r.data) {
      error.textContent = t('status.error', { message: r ? errorText(r) : t('error.network') });
      error.hidden = false;
      return;
    }
    S.presence = r.data;
    renderStatus();
  }

  function renderStatus() {
    const p = S.presence;
    $('presence').hidden = !p;
    if (!p) {
      clearInterval(S.wrapTimer);
      S.wrapTimer = 0;
      return;
    }
    $('presence').dataset.status = p.status;
    for (const b of document.querySelectorAll('#presence button[data-status]')) {
      b.setAttribute('aria-pressed', String(b.dataset.status === p.status));
    }
    renderWrapUp();
  }

  function renderWrapUp() {
    const p = S.presence;
    const until = p && typeof p.wrap_up_until === 'number' ? p.wrap_up_until * 1000 : 0;
    const left = Math.ceil((until - (Date.now() + S.skew)) / 1000);
    $('wrap-up').hidden = !(left > 0);
    if (left > 0) {
      $('wrap-up-text').textContent = t('status.wrap_up', { seconds: left });
      if (!S.wrapTimer) S.wrapTimer = setInterval(renderWrapUp, 1000);
    } else if (S.wrapTimer) {
      clearInterval(S.wrapTimer);
      S.wrapTimer = 0;
    }
  }

  // -- start ----------------------------------------------------------------------------

  async function boot() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', onLogout);
    $('notify').addEventListener('click', askNotifications);
    $('recent-refresh').addEventListener('click', refreshRecent);
    $('missed-refresh').addEventListener('click', () => { refreshTasks(); refreshKpi(); });
    $('manager-refresh').addEventListener('click', refreshLead);
    $('log-meeting').addEventListener('click', logMeeting);
    $('calllog-filters').addEventListener('submit', (ev) => { ev.preventDefault(); applyLog(); });
    $('calllog-filters').addEventListener('change', applyLogSoon); // every choice applies by itself
    $('calllog-reset').addEventListener('click', resetLog);
    $('calllog-prev').addEventListener('click', () => pageLog(-1));
    $('calllog-next').addEventListener('click', () => pageLog(1));
    $('dash-filters').addEventListener('submit', (ev) => { ev.preventDefault(); refreshDashboard(); });
    $('outbox-refresh').addEventListener('click', refreshOutbox);
    $('outbox-retry-all').addEventListener('click', () => retryOutbox({ all_dead: true }, 'all'));
    for (const b of document.querySelectorAll('[data-outbox-state]')) {
      b.addEventListener('click', () => showOutbox(b.dataset.outboxState));
    }
    document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshOutbox(); });
    $('dash-filters').addEventListener('change', applyDashSoon); // every choice applies by itself
    for (const b of document.querySelectorAll('[data-preset]')) {
      b.addEventListener('click', () => applyPreset(b.dataset.preset));
    }
    for (const b of document.querySelectorAll('[data-heat]')) {
      b.addEventListener('click', () => { S.heat = b.dataset.heat; renderDashboard(); });
    }
    window.addEventListener('resize', () => { if (S.player) drawWaveform(S.player); });
    for (const b of document.querySelectorAll('#presence button[data-status]')) {
      b.addEventListener('click', () => setStatus({ status: b.dataset.status }));
    }
    $('wrap-up-end').addEventListener('click', () => setStatus({ wrap_up: 'end' }));
    for (const b of document.querySelectorAll('[data-lang]')) {
      b.addEventListener('click', () => setLang(b.dataset.lang, true));
    }
    try { S.sound = localStorage.getItem(SOUND_KEY) !== 'off'; } catch (_) { /* storage disabled */ }
    $('sound').checked = S.sound;
    $('sound').addEventListener('change', () => {
      S.sound = $('sound').checked;
      try { localStorage.setItem(SOUND_KEY, S.sound ? 'on' : 'off'); } catch (_) { /* storage disabled */ }
      if (S.sound) { unlockAudio(); beep(); }
    });
    for (const kind of ['pointerdown', 'keydown']) document.addEventListener(kind, unlockAudio, { capture: true });
    window.addEventListener('online', () => {
      if (usesSocket() && !S.ws) { S.attempt = 0; connect(); }
    });
    window.addEventListener('offline', () => {
      if (usesSocket() && S.conn !== 'connected') setConn('offline');
    });

    await setLang(pickLang(), false);
    show('loading');
    let me = null;
    for (let attempt = 0; ; attempt += 1) {
      try {
        me = await api('GET', '/api/me');
        break;
      } catch (_) { // the gateway is restarting: wait like the socket does
        await new Promise((resolve) => setTimeout(resolve, Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt)));
      }
    }
    if (me.ok && me.data) enter(me.data);
    else showLogin(false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
