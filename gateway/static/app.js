/* The operator page: login, caller cards over the websocket, results, recent calls,
   call-backs (POST /api/calls) and the agent's own status (PUT /api/me/status).

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
  }

  // -- formatting (the browser's own time zone) -------------------------------------

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
    $('loading').hidden = view !== 'loading';
    $('login-view').hidden = view !== 'login';
    $('nonagent-view').hidden = view !== 'nonagent';
    $('agent-view').hidden = view !== 'agent';
    $('session').hidden = !(view === 'agent' || view === 'nonagent');
    $('agent-tools').hidden = view !== 'agent';
  }

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
    if (!S.user || S.user.role !== 'agent') {
      show('nonagent');
      return;
    }
    show('agent');
    renderNotifyButton();
    S.everConnected = false;
    S.attempt = 0;
    connect();
    refreshRecent();
    refreshStatus();
    clearInterval(S.recentTimer);
    S.recentTimer = setInterval(() => { refreshRecent(); refreshStatus(); }, RECENT_EVERY_MS);
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
        S.everConnected = true;
        setConn('connected');
        startPing();
        S.resyncSeen = new Set();
        clearTimeout(S.resyncTimer);
        S.resyncTimer = setTimeout(settleAfterResync, RESYNC_MS);
        refreshStatus(); // "connected" is part of it
        break;
      }
      case 'pop':
      case 'update':
        if (typeof frame.pop_id === 'string') showPop(frame);
        break;
      case 'withdraw':
        if (typeof frame.pop_id === 'string') withdrawPop(frame.pop_id, frame.reason);
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
    if (typeof card.open_missed_calls === 'number') fact('card.missed', card.open_missed_calls, 'pop-missed');
    const missed = facts.querySelector('[data-testid="pop-missed"]');
    if (missed && card.open_missed_calls > 0) missed.classList.add('alert');

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
    S.recentAgainTimer = setTimeout(refreshRecent, RECENT_AGAIN_MS);
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
      if (S.user && S.user.role === 'agent' && !S.ws) { S.attempt = 0; connect(); }
    });
    window.addEventListener('offline', () => {
      if (S.user && S.user.role === 'agent' && S.conn !== 'connected') setConn('offline');
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
