/* cti-gateway embed: the agent's caller cards in a corner of any web page (a CRM).

     <script src="https://GATEWAY/embed.js" data-token-url="/cti/token" async></script>
     <script src="https://GATEWAY/embed.js" data-token="..." async></script>

   Documented in docs/embed.md. The script opens the websocket of the gateway it
   was loaded from (docs/websocket-protocol.md), authenticates with a token from
   data-token-url (a URL of the host CRM answering {"token": "..."} or the bare
   token; fetched again for every connection) or from data-token, and shows pops
   in a fixed box inside a shadow root, so the host page's CSS cannot reach it.
   Options: data-lang="ru|en" (else the page's <html lang>, else the browser's),
   data-position="bottom-right|bottom-left|top-right|top-left", data-sound="off".
   Every frame is also dispatched on document as a CustomEvent
   ("cti-gateway:pop", "cti-gateway:update", "cti-gateway:withdraw",
   "cti-gateway:state") with the frame as detail, for the CRM's own code.
   The host page's origin must be in the gateway's [http] allowed_origins. */
(() => {
  'use strict';

  const script = document.currentScript;
  const FLAG = Symbol.for('cti-gateway.embed');
  if (!script || window[FLAG]) return; // included twice: one socket is enough
  window[FLAG] = true;

  const PING_MS = 25000;
  const PONG_TIMEOUT_MS = 10000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const RESYNC_MS = 1500;
  const WITHDRAWN_SHOWN_MS = 1500;
  const CLOSE_AUTH = 4401;

  // A copy of the keys this widget uses from gateway/static/i18n/<lang>.json; the
  // widget runs on a foreign origin and cannot fetch the catalogue without CORS.
  // tests/test_page.py checks that this copy equals the catalogues.
  // BEGIN STRINGS
  const STRINGS = {
    "en": {
      "embed.title": "Calls",
      "embed.token_failed": "Could not get a token from the CRM",
      "embed.auth_failed": "The gateway refused the token",
      "conn.connecting": "Connecting…",
      "conn.connected": "Connected",
      "conn.reconnecting": "Reconnecting…",
      "conn.offline": "Offline",
      "state.ringing": "Ringing",
      "state.talking": "Talking",
      "state.ended": "Ended",
      "direction.inbound": "Inbound",
      "direction.outbound": "Outbound",
      "direction.internal": "Internal",
      "card.label": "Call from {caller}",
      "card.shop": "Shop",
      "card.channel": "Channel",
      "card.shop_channel": "Shop and channel",
      "card.unknown": "unknown",
      "card.hidden_number": "Number withheld",
      "card.vip": "VIP",
      "card.manager": "Manager",
      "card.missed": "Open missed calls",
      "card.recent": "Last calls",
      "card.no_recent": "No earlier calls",
      "card.crm": "Open in CRM",
      "card.close": "Close",
      "withdraw.answered_elsewhere": "Answered by a colleague",
      "withdraw.stopped_ringing": "Stopped ringing",
      "withdraw.caller_hung_up": "The caller hung up",
      "withdraw.other": "Call withdrawn",
      "outcome.answered": "Answered",
      "outcome.missed": "Missed",
      "outcome.abandoned": "Caller hung up",
      "outcome.busy": "Busy",
      "outcome.failed": "Not connected",
      "result.order": "Order",
      "result.question": "Question",
      "result.complaint": "Complaint",
      "result.spam": "Spam",
      "result.wrong_number": "Wrong number"
    },
    "ru": {
      "embed.title": "Звонки",
      "embed.token_failed": "CRM не выдала токен",
      "embed.auth_failed": "Шлюз не принял токен",
      "conn.connecting": "Подключение…",
      "conn.connected": "На связи",
      "conn.reconnecting": "Переподключение…",
      "conn.offline": "Нет сети",
      "state.ringing": "Звонит",
      "state.talking": "Разговор",
      "state.ended": "Завершён",
      "direction.inbound": "Входящий",
      "direction.outbound": "Исходящий",
      "direction.internal": "Внутренний",
      "card.label": "Звонок от {caller}",
      "card.shop": "Магазин",
      "card.channel": "Канал",
      "card.shop_channel": "Магазин и канал",
      "card.unknown": "неизвестно",
      "card.hidden_number": "Номер скрыт",
      "card.vip": "VIP",
      "card.manager": "Менеджер",
      "card.missed": "Открытые пропущенные",
      "card.recent": "Последние звонки",
      "card.no_recent": "Раньше не звонил",
      "card.crm": "Открыть в CRM",
      "card.close": "Закрыть",
      "withdraw.answered_elsewhere": "Ответил коллега",
      "withdraw.stopped_ringing": "Звонок перестал поступать",
      "withdraw.caller_hung_up": "Звонящий положил трубку",
      "withdraw.other": "Звонок снят",
      "outcome.answered": "Отвечен",
      "outcome.missed": "Пропущен",
      "outcome.abandoned": "Звонящий не дождался",
      "outcome.busy": "Занято",
      "outcome.failed": "Не соединился",
      "result.order": "Заказ",
      "result.question": "Вопрос",
      "result.complaint": "Жалоба",
      "result.spam": "Спам",
      "result.wrong_number": "Ошиблись номером"
    }
  };
  // END STRINGS

  const gateway = new URL(script.src, location.href);
  const WS_URL = `${gateway.protocol === 'https:' ? 'wss:' : 'ws:'}//${gateway.host}/ws`;
  const cfg = {
    tokenUrl: script.dataset.tokenUrl || null,
    token: script.dataset.token || null,
    position: ['bottom-right', 'bottom-left', 'top-right', 'top-left'].includes(script.dataset.position)
      ? script.dataset.position : 'bottom-right',
    sound: script.dataset.sound !== 'off',
  };
  const langOf = (tag) => ((tag || '').toLowerCase().startsWith('ru') ? 'ru' : 'en');
  const lang = ['ru', 'en'].includes(script.dataset.lang) ? script.dataset.lang
    : langOf(document.documentElement.lang || navigator.language);
  const messages = STRINGS[lang];
  const t = (key, vars) => {
    const text = key in messages ? messages[key] : key;
    return vars ? text.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : text;
  };
  const label = (prefix, value) => (value ? (`${prefix}.${value}` in messages ? t(`${prefix}.${value}`) : String(value)) : '');

  const CSS = `
    :host { all: initial !important; position: fixed !important; z-index: 2147483000 !important;
            display: block !important; width: min(360px, calc(100vw - 24px)) !important;
            font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif !important;
            color: #1d2330 !important; }
    :host([data-position="bottom-right"]) { right: 12px !important; bottom: 12px !important; }
    :host([data-position="bottom-left"]) { left: 12px !important; bottom: 12px !important; }
    :host([data-position="top-right"]) { right: 12px !important; top: 12px !important; }
    :host([data-position="top-left"]) { left: 12px !important; top: 12px !important; }
    * { box-sizing: border-box; }
    [hidden] { display: none !important; }
    .box { background: #fff; border: 1px solid #d8dde4; border-radius: 10px; box-shadow: 0 6px 24px rgb(0 0 0 / 0.18);
           overflow: hidden; }
    .bar { display: flex; align-items: center; gap: 8px; padding: 6px 10px; background: #f4f5f7; font-weight: 600; }
    .bar .title { margin-right: auto; }
    .dot { width: 10px; height: 10px; border-radius: 50%; background: #e08a00; }
    .bar[data-state="connected"] .dot { background: #1b8a4b; }
    .bar[data-state="offline"] .dot { background: #b42318; }
    .conn { font-weight: 400; font-size: 12px; color: #5f6b7a; }
    .problem { margin: 0; padding: 6px 10px; color: #b42318; font-size: 12px; }
    .cards { max-height: min(70vh, 640px); overflow-y: auto; display: grid; gap: 8px; padding: 8px; }
    .cards:empty { display: none; }
    .card { border: 1px solid #d8dde4; border-left: 6px solid #e08a00; border-radius: 8px; padding: 8px 10px;
            display: grid; gap: 4px; background: #fff6e5; }
    .card[data-state="talking"] { border-left-color: #1b8a4b; background: #fff; }
    .card[data-state="ended"] { border-left-color: #6b7280; background: #fff; }
    .card[data-withdrawn] { opacity: 0.55; }
    .card.vip { box-shadow: 0 0 0 2px #8a2be2; }
    .head { display: flex; justify-content: space-between; gap: 8px; align-items: flex-start; }
    .k { font-size: 11px; text-transform: uppercase; letter-spacing: 0.04em; color: #5f6b7a; display: block; }
    .big { font-size: 20px; font-weight: 700; line-height: 1.15; overflow-wrap: anywhere; }
    .badges { display: flex; gap: 4px; flex-wrap: wrap; justify-content: flex-end; }
    .badge { border-radius: 999px; padding: 1px 8px; font-size: 12px; font-weight: 700; color: #fff; background: #e08a00;
             white-space: nowrap; }
    .badge.talking { background: #1b8a4b; } .badge.ended { background: #6b7280; } .badge.vip { background: #8a2be2; }
    .caller { font-size: 16px; font-weight: 600; overflow-wrap: anywhere; }
    .caller .name { font-weight: 400; margin-left: 6px; }
    .meta { font-size: 12px; color: #5f6b7a; display: flex; flex-wrap: wrap; gap: 2px 10px; }
    .meta .alert { color: #b42318; font-weight: 700; }
    ul { margin: 0; padding: 0; list-style: none; font-size: 12px; }
    li { display: flex; gap: 6px; flex-wrap: wrap; }
    a { color: #1f5fd1; font-weight: 600; }
    button { font: inherit; cursor: pointer; border: 1px solid #d8dde4; background: #fff; border-radius: 6px;
             padding: 1px 8px; color: inherit; }
    .reason { font-weight: 700; margin: 0; }
    .close { justify-self: end; }
  `;

  // -- the box ----------------------------------------------------------------------

  const host = document.createElement('cti-gateway-popups');
  host.dataset.position = cfg.position;
  const root = host.attachShadow({ mode: 'open' });
  try {
    const sheet = new CSSStyleSheet(); // not an inline <style>: survives a strict CSP on the host page
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } catch (_) {
    const style = document.createElement('style');
    style.textContent = CSS;
    root.append(style);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
    return node;
  }

  const connText = el('span', { class: 'conn', 'data-testid': 'embed-conn-text' });
  const bar = el('div', { class: 'bar', 'data-testid': 'embed-conn', 'data-state': 'connecting', role: 'status' },
    el('span', { class: 'dot', 'aria-hidden': 'true' }), el('span', { class: 'title', text: t('embed.title') }), connText);
  const problem = el('p', { class: 'problem', role: 'alert', 'data-testid': 'embed-problem', hidden: true });
  const cards = el('div', { class: 'cards', 'data-testid': 'embed-pops', 'aria-live': 'polite' });
  const box = el('section', { class: 'box', lang, 'aria-label': t('embed.title') }, bar, problem, cards);
  root.append(box);

  function mount() { (document.body || document.documentElement).append(host); }
  if (document.body) mount(); else document.addEventListener('DOMContentLoaded', mount);

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(`cti-gateway:${name}`, { detail }));
  }

  function setConn(state, message) {
    bar.dataset.state = state;
    connText.textContent = t(`conn.${state}`);
    problem.textContent = message || '';
    problem.hidden = !message;
    emit('state', { state });
  }

  // -- cards ----------------------------------------------------------------------

  const pops = new Map(); // pop_id -> {frame, el, timer, withdrawn}
  const gone = new Set();

  function lineText(value, card) {
    const text = value && typeof value === 'object' ? String(value.name || value.title || '') : String(value || '');
    if (!text) return t('card.unknown');
    return card.dialled && (text === card.dialled.e164 || text === card.dialled.raw) && card.dialled.display
      ? card.dialled.display : text;
  }

  function render(entry) {
    const frame = entry.frame;
    const card = frame.card || {};
    const state = frame.state || 'ringing';
    const c = card.caller;
    const number = c && (c.display || c.e164 || c.raw) ? (c.display || c.e164 || c.raw) : t('card.hidden_number');
    const name = (card.contact && card.contact.name) || (c && c.name) || '';
    const shop = lineText(card.shop, card);
    const channel = lineText(card.channel, card);
    const manager = card.assigned_manager && typeof card.assigned_manager === 'object'
      ? card.assigned_manager.name : card.assigned_manager;
    let crm = null;
    try {
      const u = typeof card.crm_url === 'string' && card.crm_url ? new URL(card.crm_url, location.href) : null;
      crm = u && (u.protocol === 'https:' || u.protocol === 'http:') ? u.href : null;
    } catch (_) { crm = null; }

    const node = entry.el;
    node.dataset.state = state;
    if (entry.withdrawn) node.dataset.withdrawn = entry.withdrawn; else delete node.dataset.withdrawn;
    node.classList.toggle('vip', Boolean(card.vip));
    node.setAttribute('aria-label', t('card.label', { caller: number }));
    const lines = shop === channel
      ? [el('div', {}, el('span', { class: 'k', text: t('card.shop_channel') }), el('span', { class: 'big', 'data-testid': 'embed-shop', text: shop }))]
      : [el('div', {}, el('span', { class: 'k', text: t('card.shop') }), el('span', { class: 'big', 'data-testid': 'embed-shop', text: shop })),
        el('div', {}, el('span', { class: 'k', text: t('card.channel') }), el('span', { class: 'big', text: channel }))];
    const meta = el('div', { class: 'meta' },
      card.direction ? el('span', { text: label('direction', card.direction) }) : null,
      manager ? el('span', { text: `${t('card.manager')}: ${manager}` }) : null,
      typeof card.open_missed_calls === 'number'
        ? el('span', { class: card.open_missed_calls > 0 ? 'alert' : '', text: `${t('card.missed')}: ${card.open_missed_calls}` }) : null);
    let history = null;
    if (Array.isArray(card.recent_calls)) {
      history = card.recent_calls.length
        ? el('ul', {}, el('li', { class: 'k', text: t('card.recent') }), ...card.recent_calls.slice(0, 5).map((call) => {
          const d = new Date(call.started_at);
          const when = Number.isNaN(d.getTime()) ? '' : new Intl.DateTimeFormat(lang,
            { day: '2-digit', month: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).format(d);
          return el('li', {}, el('span', { text: when }), el('span', { text: label('outcome', call.outcome) }),
            call.result ? el('span', { text: label('result', call.result) }) : null);
        }))
        : el('ul', {}, el('li', { class: 'k', text: t('card.no_recent') }));
    }
    const close = state === 'ended' && !entry.withdrawn ? el('button', { type: 'button', class: 'close', text: t('card.close'), 'data-testid': 'embed-close' }) : null;
    if (close) close.addEventListener('click', () => remove(entry));
    node.replaceChildren(...[
      el('div', { class: 'head' }, el('div', {}, ...lines),
        el('div', { class: 'badges' },
          card.vip ? el('span', { class: 'badge vip', text: t('card.vip') }) : null,
          el('span', { class: `badge ${state}`, 'data-testid': 'embed-state', text: label('state', state) }))),
      el('div', { class: 'caller', 'data-testid': 'embed-caller' }, number, name ? el('span', { class: 'name', text: name }) : null),
      meta, history,
      crm ? el('a', { href: crm, target: '_blank', rel: 'noopener noreferrer', text: t('card.crm') }) : null,
      entry.withdrawn ? el('p', { class: 'reason', text: `withdraw.${entry.withdrawn}` in messages
        ? t(`withdraw.${entry.withdrawn}`) : t('withdraw.other') }) : null,
      close,
    ].filter(Boolean));
  }

  function remove(entry) {
    clearTimeout(entry.timer);
    gone.add(entry.frame.pop_id);
    if (gone.size > 500) gone.delete(gone.values().next().value);
    pops.delete(entry.frame.pop_id);
    entry.el.remove();
  }

  function onPop(frame) {
    if (resyncSeen) resyncSeen.add(frame.pop_id);
    let entry = pops.get(frame.pop_id);
    if (!entry) {
      if (frame.type !== 'pop' && gone.has(frame.pop_id)) return;
      gone.delete(frame.pop_id);
      entry = { frame, el: el('article', { class: 'card', 'data-testid': 'embed-card', 'data-pop-id': frame.pop_id }), timer: 0, withdrawn: null };
      pops.set(frame.pop_id, entry);
      cards.prepend(entry.el);
      if (frame.state === 'ringing') beep();
    } else {
      entry.frame = { ...entry.frame, ...frame, card: frame.card || entry.frame.card };
      if (frame.type === 'pop' && entry.withdrawn) { clearTimeout(entry.timer); entry.withdrawn = null; }
    }
    render(entry);
  }

  function onWithdraw(frame) {
    const entry = pops.get(frame.pop_id);
    gone.add(frame.pop_id);
    if (!entry) return;
    entry.withdrawn = frame.reason || 'other';
    render(entry);
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => remove(entry), WITHDRAWN_SHOWN_MS);
  }

  // -- sound --------------------------------------------------------------------------

  let audio = null;
  function unlockAudio() {
    if (!cfg.sound) return;
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!audio && Ctx) { try { audio = new Ctx(); } catch (_) { audio = null; } }
    if (audio && audio.state === 'suspended') audio.resume().catch(() => {});
  }
  for (const kind of ['pointerdown', 'keydown']) document.addEventListener(kind, unlockAudio, { capture: true, passive: true });

  function beep() {
    if (!audio) return;
    try {
      const start = audio.currentTime + 0.02;
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.2, start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start(start);
      osc.stop(start + 0.3);
    } catch (_) { /* no sound is better than no card */ }
  }

  // -- the websocket --------------------------------------------------------------------

  let ws = null;
  let attempt = 0;
  let connected = false;
  let retryTimer = 0;
  let pingTimer = 0;
  let pongTimer = 0;
  let resyncSeen = null;

  async function token() {
    if (!cfg.tokenUrl) return cfg.token;
    const res = await fetch(cfg.tokenUrl, { credentials: 'include', cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!res.ok) throw new Error(`token URL answered ${res.status}`);
    if ((res.headers.get('Content-Type') || '').includes('json')) {
      const data = await res.json();
      if (data && typeof data.token === 'string') return data.token;
      throw new Error('token URL answered JSON without "token"');
    }
    return (await res.text()).trim();
  }

  async function connect() {
    clearTimeout(retryTimer);
    if (ws) return;
    setConn(connected ? 'reconnecting' : 'connecting');
    let value;
    try {
      value = await token();
      if (!value) throw new Error('no token: set data-token-url or data-token');
    } catch (err) {
      console.warn('cti-gateway embed:', err.message || err);
      setConn('reconnecting', t('embed.token_failed'));
      retry();
      return;
    }
    const socket = new WebSocket(WS_URL);
    ws = socket;
    socket.onopen = () => socket.send(JSON.stringify({ type: 'auth', token: value }));
    socket.onmessage = (ev) => { if (ws === socket) onFrame(ev.data); };
    socket.onclose = (ev) => {
      if (ws !== socket) return;
      ws = null;
      stopPing();
      if (ev.code === CLOSE_AUTH && !cfg.tokenUrl) {
        setConn('offline', t('embed.auth_failed')); // a fixed token will not get better
        return;
      }
      retry();
    };
  }

  function retry() {
    clearTimeout(retryTimer);
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = Math.max(BACKOFF_MIN_MS, cap / 2 + Math.random() * (cap / 2));
    attempt += 1;
    retryTimer = setTimeout(connect, delay);
    if (bar.dataset.state !== 'reconnecting') setConn('reconnecting', problem.hidden ? '' : problem.textContent);
  }

  function drop() {
    const socket = ws;
    ws = null;
    stopPing();
    if (socket) {
      socket.onclose = socket.onmessage = socket.onopen = null;
      try { socket.close(1000); } catch (_) { /* already closed */ }
    }
  }

  function stopPing() {
    clearInterval(pingTimer);
    clearTimeout(pongTimer);
  }

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }

  function onFrame(data) {
    clearTimeout(pongTimer);
    let frame;
    try { frame = JSON.parse(data); } catch (_) { return; }
    if (!frame || typeof frame !== 'object') return;
    if (frame.type === 'ready') {
      attempt = 0;
      connected = true;
      setConn('connected');
      stopPing();
      pingTimer = setInterval(() => {
        send({ type: 'ping' });
        clearTimeout(pongTimer);
        pongTimer = setTimeout(() => { drop(); retry(); }, PONG_TIMEOUT_MS);
      }, PING_MS);
      resyncSeen = new Set();
      setTimeout(() => {
        const seen = resyncSeen;
        resyncSeen = null;
        for (const entry of [...pops.values()]) {
          if (!seen || seen.has(entry.frame.pop_id) || entry.withdrawn) continue;
          if (entry.frame.state === 'ringing') remove(entry);
          else if (entry.frame.state === 'talking') { entry.frame = { ...entry.frame, state: 'ended' }; render(entry); }
        }
      }, RESYNC_MS);
    } else if ((frame.type === 'pop' || frame.type === 'update') && typeof frame.pop_id === 'string') {
      onPop(frame);
      if (frame.type === 'pop') send({ type: 'ack', pop_id: frame.pop_id });
      emit(frame.type, frame);
    } else if (frame.type === 'withdraw' && typeof frame.pop_id === 'string') {
      onWithdraw(frame);
      emit('withdraw', frame);
    } else if (frame.type === 'error') {
      console.warn('cti-gateway embed: server error', frame.code, frame.message);
    }
  }

  window.addEventListener('online', () => { if (!ws) { attempt = 0; connect(); } });
  connect();
})();
