/*
 * Parley chat widget (docs/chat-protocol.md): plain JavaScript, no dependencies, no build step.
 * Embed: <script src="https://…/widget.js" data-agent="ag_…" async></script>; optional
 * data-user-id + data-user-signature, data-open="true", data-position="left".
 * An agent that takes calls gets a Call button: WebRTC to /v1/agents/{id}/voice (WHIP), live
 * captions of both sides over the `captions` data channel.
 * It owns one <parley-chat> element and its open shadow root; server and visitor text reach the
 * DOM only as text.
 */
(() => {
  'use strict';
  if (window.ParleyChat) return;

  // currentScript is null when run from a callback.
  const script = document.currentScript || document.querySelector('script[data-agent][src*="widget.js"]');
  const data = script ? script.dataset : {};
  const agent = data.agent;
  if (!agent) return console.warn('parley: widget.js needs data-agent');

  const api = `${new URL(script.src, location.href).origin}/v1/agents/${encodeURIComponent(agent)}`;
  const KEY_VISITOR = `parley:${agent}:visitor`;
  const KEY_RESUME = `parley:${agent}:resume`;
  const STATUS = { searching: 'Searching…', thinking: 'Thinking…', writing: 'Writing…' };
  const NOTES = { cancelled: 'Stopped', error: 'Incomplete answer' };
  const ERRORS = {
    message_too_long: 'That message is too long.',
    busy: 'Please wait for the current answer.',
    invalid_identity: 'The chat could not verify who you are.',
  };
  for (const code of ['budget_exceeded', 'model_unavailable', 'provider_error', 'timeout', 'internal']) {
    ERRORS[code] = "The assistant can't answer right now. Please try again later.";
  }
  const CALL_ERRORS = {
    call_limit: 'All lines are busy. Please try again in a moment.',
    voice_unavailable: "Calls aren't available right now.",
    voice_disabled: "This assistant doesn't take calls.",
    origin_not_allowed: "Calls aren't allowed from this site.",
    rate_limited: 'Too many calls. Please try again in a moment.',
  };
  const CALL_ENDED = { hung_up: 'Call ended', timeout: 'The call timed out', error: 'The call was interrupted' };

  // !important, or the page's `* {… !important}` rules win on the host and are inherited.
  const STYLE = `
:host{all:initial!important}
*{box-sizing:border-box}
[hidden]{display:none!important}
.w{--pc:#2563eb;--tc:#fff;font:14px/1.45 system-ui,"Segoe UI",Roboto,sans-serif;color:#1f2328;}
button,textarea{font:inherit;color:inherit;margin:0}
:focus-visible{outline:2px solid var(--pc);outline-offset:2px}
svg{width:24px;height:24px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}
.l,.p{position:fixed;right:20px;z-index:2147483000}
.left .l,.left .p{right:auto;left:20px}
.l{bottom:20px;width:56px;height:56px;border:0;border-radius:50%;background:var(--pc);color:var(--tc);cursor:pointer;box-shadow:0 4px 14px #0004;display:grid;place-items:center}
.l .i2,.open .l .i1{display:none}
.open .l .i2{display:block}
.p{bottom:88px;width:380px;height:600px;max-height:calc(100vh - 108px);display:flex;flex-direction:column;background:#fff;border-radius:14px;box-shadow:0 8px 32px #0005;overflow:hidden;animation:in .2s ease-out}
@keyframes in{from{opacity:0;transform:translateY(12px)}}
.h{display:flex;align-items:center;gap:10px;padding:12px 14px;background:var(--pc);color:var(--tc)}
.h img{width:32px;height:32px;border-radius:50%;object-fit:cover}
.t{flex:1;margin:0;font-size:16px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.x{display:flex;padding:4px;border:0;border-radius:6px;background:none;cursor:pointer}
.x svg,.b svg{width:20px;height:20px}
.d{margin:0;padding:6px 14px;font-size:12px;color:#57606a;background:#f6f8fa;border-bottom:1px solid #d8dee4}
.d a{color:inherit}
.c{padding:6px 14px;font-size:12px;background:#fff8c5}
.s{flex:1;overflow-y:auto;padding:14px}
.log{display:flex;flex-direction:column;gap:8px}
.m{max-width:85%;padding:8px 12px;border-radius:14px 14px 14px 4px;white-space:pre-wrap;overflow-wrap:anywhere;align-self:flex-start;background:#f0f2f5}
.m[data-role=user]{align-self:flex-end;background:var(--pc);color:var(--tc);border-radius:14px 14px 4px}
.m[data-state=error]{box-shadow:inset 0 0 0 1px #cf222e}
.cite{font-size:.75em;line-height:0;vertical-align:super;font-weight:600;color:#0550ae}
.note{display:block;font-size:12px;font-style:italic;color:#57606a}
.src{margin:8px 0 0;padding:6px 0 0;list-style:none;font-size:12px;white-space:normal;border-top:1px solid #d0d7de}
summary{cursor:pointer}
.src p{margin:2px 0 4px 12px;color:#57606a}
.n{align-self:center;margin:0;padding:4px 10px;border-radius:8px;font-size:12px;text-align:center;color:#7d2800;background:#fff1e5}
.st{display:flex;align-items:center;gap:6px;margin-top:8px;font-size:12px;color:#57606a}
.dots{display:flex;gap:3px;padding:10px 12px;border-radius:14px;background:#f0f2f5}
.dots i{width:6px;height:6px;border-radius:50%;background:#8c959f;animation:b 1s infinite alternate}
.dots i:nth-child(2){animation-delay:.2s}
.dots i:nth-child(3){animation-delay:.4s}
@keyframes b{to{opacity:.2}}
form{display:flex;align-items:flex-end;gap:8px;margin:0;padding:10px;border-top:1px solid #d8dee4}
textarea{flex:1;min-height:38px;max-height:120px;padding:8px 10px;border:1px solid #d0d7de;border-radius:10px;background:#fff;resize:none}
.b{display:grid;place-items:center;min-width:38px;height:38px;padding:0 10px;border:0;border-radius:10px;background:var(--pc);color:var(--tc);cursor:pointer;font-weight:600}
.b:disabled{opacity:.45;cursor:default}
.stop{background:#fff;color:#1f2328;box-shadow:inset 0 0 0 1px #d0d7de}
.stop[aria-pressed=true]{background:#fff1e5}
.cb{display:flex;align-items:center;gap:8px;padding:8px 14px;background:#f6f8fa;border-bottom:1px solid #d8dee4}
.cs{flex:1;font-size:13px;font-weight:600}
.cs::before{content:"";display:inline-block;width:8px;height:8px;margin-right:6px;border-radius:50%;background:#8c959f}
.cb[data-state=connected] .cs::before{background:#1a7f37}
.hang{background:#cf222e;color:#fff}
.m[data-part=caption]{font-style:normal}
.m[data-part=caption][data-final=false]{opacity:.7}
@media (max-width:480px){.w .p{inset:0;width:auto;height:auto;max-height:none;border-radius:0}.open .l{display:none}textarea{font-size:16px}}
@media (prefers-reduced-motion:reduce){*{animation:none!important;transition:none!important}}`;

  // Storage may be unavailable (privacy modes, sandboxes); the chat then lasts one page.
  const load = (key) => { try { return localStorage.getItem(key); } catch (e) { return null; } };
  const save = (key, value) => { try { localStorage.setItem(key, value); } catch (e) { /* as load */ } };
  const random = (length) => Array.from(crypto.getRandomValues(new Uint8Array(length)),
    (b) => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-'[b & 63]).join('');
  // Only http(s): a javascript: URL must never become a link.
  const safeUrl = (url) => {
    try {
      const u = new URL(url, api);
      return url && /^https?:$/.test(u.protocol) ? u.href : null;
    } catch (e) {
      return null;
    }
  };

  let visitorId = load(KEY_VISITOR);
  if (!/^[\w-]{8,64}$/.test(visitorId || '')) save(KEY_VISITOR, (visitorId = 'v_' + random(22)));

  let ws = null; // the current socket; null between connections
  let live = false; // a session frame arrived on ws
  let opened = false; // the panel was opened once, so a connection is kept from then on
  let attempts = 0;
  let retryTimer = 0;
  let pingTimer = 0;
  let conversationId = null;
  let greeting = '';
  let messages = []; // the log's messages, oldest first: {role, text, citations, state, cid, note, el}
  let replies = {}; // client_message_id → the assistant message answering it
  const done = {}; // client_message_ids whose answer was rendered complete
  let outbox = []; // messages whose answer has not completed: {cid, text, sent, accepted, orphan}

  // Strings in `kids` become text nodes.
  function h(tag, attrs, kids) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === 'text') el.textContent = value;
      else if (value != null) el.setAttribute(name, value);
    }
    if (kids) el.append(...kids);
    return el;
  }

  function icon(path, cls) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    const p = svg.appendChild(document.createElementNS(ns, 'path'));
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('class', cls || '');
    p.setAttribute('d', path);
    return svg;
  }

  const CLOSE = 'M6 6l12 12M18 6L6 18';
  const host = document.createElement('parley-chat');
  const root = host.attachShadow({ mode: 'open' });
  const launcher = h('button', { class: 'l', type: 'button', 'data-part': 'launcher', 'aria-expanded': 'false' },
    [icon('M5 4h14a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2H9l-5 4V6a2 2 0 0 1 1-2z', 'i1'), icon(CLOSE, 'i2')]);
  const avatar = h('img', { alt: '' });
  const title = h('h2', { class: 't' });
  const closeButton = h('button', { class: 'x', type: 'button', 'aria-label': 'Close chat' }, [icon(CLOSE)]);
  const callButton = h('button', { class: 'x', type: 'button', 'aria-label': 'Call', 'data-part': 'call', hidden: '' },
    [icon('M5 4h3l2 5-2.5 1.5a11 11 0 0 0 5 5L14 13l5 2v3a2 2 0 0 1-2 2A15 15 0 0 1 3 6a2 2 0 0 1 2-2z')]);
  const callState = h('span', { class: 'cs', 'data-part': 'call-state' });
  const muteButton = h('button', { class: 'b stop', type: 'button', 'data-part': 'mute', 'aria-pressed': 'false', text: 'Mute' });
  const hangupButton = h('button', { class: 'b hang', type: 'button', 'data-part': 'hangup', text: 'Hang up' });
  const callBar = h('div', { class: 'cb', role: 'status', 'data-part': 'call-bar', hidden: '' },
    [callState, muteButton, hangupButton]);
  const remoteAudio = h('audio', { 'data-part': 'call-audio' });
  remoteAudio.autoplay = true;
  const disclosure = h('span');
  const privacy = h('a', { target: '_blank', rel: 'noopener', text: 'Privacy notice' });
  const connection = h('div', { class: 'c', role: 'status', 'data-part': 'connection', hidden: '', text: 'Reconnecting…' });
  const greetingEl = h('div', { class: 'm', 'data-part': 'greeting', hidden: '' });
  const log = h('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation', 'data-part': 'log' }, [greetingEl]);
  const statusText = h('span');
  const status = h('div', { class: 'st', role: 'status', 'data-part': 'status', hidden: '' },
    [h('span', { class: 'dots', 'aria-hidden': 'true' }, [h('i'), h('i'), h('i')]), statusText]);
  const scroller = h('div', { class: 's' }, [log, status]);
  const input = h('textarea', { rows: '1', 'aria-label': 'Message', 'data-part': 'input' });
  const stopButton = h('button', { class: 'b stop', type: 'button', 'data-part': 'stop', hidden: '', text: 'Stop' });
  const sendButton = h('button', { class: 'b', type: 'submit', 'aria-label': 'Send', 'data-part': 'send' }, [icon('M4 12l16-8-6 16-3-7zM11 13l9-9')]);
  const form = h('form', {}, [input, stopButton, sendButton]);
  const panel = h('div', { class: 'p', role: 'dialog', 'data-part': 'panel', hidden: '' }, [
    h('div', { class: 'h' }, [avatar, title, callButton, closeButton]),
    h('p', { class: 'd', 'data-part': 'disclosure' }, [disclosure, ' ', privacy]),
    connection, callBar, scroller, form, remoteAudio,
  ]);
  const wrap = h('div', { class: data.position === 'left' ? 'w left' : 'w' }, [launcher, panel]);
  // A constructed sheet also works under a CSP that forbids inline <style>.
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLE);
    root.adoptedStyleSheets = [sheet];
  } catch (e) {
    root.append(h('style', { text: STYLE }));
  }
  root.append(wrap);

  function applyAppearance(a) {
    const color = (value, fallback) => (CSS.supports('color', value) ? value : fallback);
    wrap.style.setProperty('--pc', color(a.primary_color, '#2563eb'));
    wrap.style.setProperty('--tc', color(a.text_color, '#fff'));
    const name = a.title || a.name || 'Chat';
    title.textContent = name;
    panel.setAttribute('aria-label', name);
    launcher.setAttribute('aria-label', `Chat with ${name}`);
    const avatarUrl = safeUrl(a.avatar_url);
    if (avatarUrl) avatar.src = avatarUrl;
    avatar.hidden = !avatarUrl;
    disclosure.textContent = a.disclosure || 'You are chatting with an AI assistant.';
    const privacyUrl = safeUrl(a.privacy_url);
    if (privacyUrl) privacy.href = privacyUrl;
    privacy.hidden = !privacyUrl;
    input.placeholder = a.placeholder || 'Type your message…';
    callButton.hidden = !(a.voice && window.RTCPeerConnection && navigator.mediaDevices);
    showGreeting(a.greeting);
  }

  function showGreeting(text) {
    greeting = text || greeting;
    greetingEl.textContent = greeting;
    greetingEl.hidden = !greeting;
  }

  // Applies a change to the log, keeping the view at the end if it was there.
  function follow(change) {
    const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
    change();
    if (atEnd) scroller.scrollTop = scroller.scrollHeight;
  }

  function addMessage(role, text, citations, state, cid) {
    const m = { role, text: text || '', citations: citations || [], state, cid, el: h('div', { class: 'm', 'data-part': 'message', 'data-role': role }) };
    messages.push(m);
    if (role === 'assistant' && cid) replies[cid] = m;
    follow(() => log.append(m.el));
    render(m);
    return m;
  }

  // A streaming answer is hidden from screen readers; on completion its content is replaced by
  // new nodes, which the polite live region announces once, whole.
  function render(m) {
    const streaming = m.state === 'streaming';
    m.el.setAttribute('data-state', m.state);
    if (streaming) m.el.setAttribute('aria-hidden', 'true');
    else m.el.removeAttribute('aria-hidden');
    const body = h('div', {}, m.role === 'assistant' ? withMarkers(m.text, m.citations, streaming) : [m.text]);
    const note = m.note && h('span', { class: 'note', text: m.note });
    const sources = !streaming && m.citations.length && h('ul', { class: 'src', 'data-part': 'sources', 'aria-label': 'Sources' },
      m.citations.map((c) => {
        const label = `[${c.marker}] ${c.title || 'Source'}${c.section ? ` — ${c.section}` : ''}`;
        return h('li', { 'data-part': 'source', title: c.snippet }, [
          c.snippet ? h('details', {}, [h('summary', { text: label }), h('p', { text: c.snippet })]) : label,
        ]);
      }));
    follow(() => m.el.replaceChildren(...[body, note, sources].filter(Boolean)));
  }

  // `[n]` markers become raised spans; while streaming, citations are unknown, so all do.
  function withMarkers(text, citations, streaming) {
    const parts = [];
    let last = 0;
    text.replace(/\[(\d+)\]/g, (marker, n, at) => {
      const citation = citations.find((c) => String(c.marker) === n);
      if (!citation && !streaming) return;
      parts.push(text.slice(last, at), h('span', { class: 'cite', title: citation && citation.title, text: marker }));
      last = at + marker.length;
    });
    parts.push(text.slice(last));
    return parts;
  }

  function notice(text) {
    follow(() => log.append(h('p', { class: 'n', 'data-part': 'notice', text })));
  }

  // null hides the typing indicator; an empty string shows its dots alone.
  function showStatus(text) {
    statusText.textContent = text || '';
    follow(() => { status.hidden = text == null; });
  }

  // One answer is written at a time, so sending waits until the outbox is empty.
  function settle(cid) {
    outbox = outbox.filter((o) => o.cid !== cid);
    showStatus(null);
    updateBusy();
  }

  function updateBusy() {
    const busy = outbox.length > 0;
    sendButton.disabled = busy;
    if (!busy && root.activeElement === stopButton) input.focus();
    stopButton.hidden = !busy;
  }

  function frame(f) {
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(f));
  }

  function transmit(o) {
    if (!live) return;
    o.sent = true;
    frame({ type: 'message', client_message_id: o.cid, text: o.text });
  }

  function send(text) {
    text = String(text || '').trim();
    if (!text || outbox.length) return false;
    const o = { cid: 'c_' + random(16), text };
    outbox.push(o);
    addMessage('user', text, null, 'complete', o.cid);
    scroller.scrollTop = scroller.scrollHeight;
    transmit(o);
    showStatus('');
    updateBusy();
    connect();
    return true;
  }

  function submit() {
    if (send(input.value)) {
      input.value = '';
      grow();
    }
  }

  function grow() {
    input.style.height = 'auto';
    input.style.height = Math.min(input.scrollHeight + 2, 120) + 'px';
  }

  function hello() {
    const token = load(KEY_RESUME);
    frame({
      type: 'hello',
      visitor_id: visitorId,
      resume_token: token || undefined,
      identity: data.userId && data.userSignature ? { user_id: data.userId, signature: data.userSignature } : undefined,
    });
  }

  function connect() {
    if (ws || !opened) return;
    clearTimeout(retryTimer);
    const sock = (ws = new WebSocket(api.replace(/^http/, 'ws') + '/chat'));
    sock.onopen = hello;
    sock.onmessage = (event) => sock === ws && onFrame(event.data);
    sock.onclose = () => {
      if (sock !== ws) return;
      ws = null;
      live = false;
      clearInterval(pingTimer);
      reconnectLater();
    };
  }

  // Backoff 0.5 s doubling to 15 s; jitter spreads the widgets a server restart dropped.
  function reconnectLater() {
    connection.hidden = false;
    retryTimer = setTimeout(connect, Math.min(15000, 500 * 2 ** attempts++) * (0.5 + Math.random() / 2));
  }

  function onFrame(raw) {
    let f;
    try {
      f = JSON.parse(raw);
    } catch (e) {
      return;
    }
    const cid = f.reply_to || f.client_message_id;
    const o = outbox.find((x) => x.cid === cid);
    if (o && f.type !== 'error') o.orphan = false;
    if (f.type === 'session') onSession(f);
    else if (f.type === 'complete') onComplete(f);
    else if (f.type === 'error') onError(f, o);
    else if (done[cid]) return; // accepted, status or delta of an answer already shown complete
    else if (f.type === 'accepted') { if (o) o.accepted = true; }
    else if (f.type === 'status') showStatus(STATUS[f.state] || '');
    else if (f.type === 'delta') {
      const m = replies[cid] || addMessage('assistant', '', null, 'streaming', cid);
      m.text += f.text || '';
      showStatus(null);
      render(m);
    }
  }

  function onSession(s) {
    live = true;
    attempts = 0;
    connection.hidden = true;
    conversationId = s.conversation_id;
    if (s.resume_token) save(KEY_RESUME, s.resume_token);
    if (s.visitor_id && s.visitor_id !== visitorId) save(KEY_VISITOR, (visitorId = s.visitor_id));
    if (!greeting) showGreeting(s.agent && s.agent.greeting);
    const transcript = s.messages || [];
    // A new conversation or a replayed transcript replaces the screen, so a reconnect never
    // duplicates messages; a live_only resume (no transcript) keeps it.
    if (!s.resumed || transcript.length) {
      log.replaceChildren(greetingEl);
      messages = [];
      replies = {};
      for (const x of transcript) {
        if (x.role === 'user') addMessage('user', x.text, null, 'complete', x.client_message_id);
        if (x.role !== 'assistant') continue;
        finish(addMessage('assistant', '', null, 'complete', x.reply_to), x);
        if (x.reply_to) done[x.reply_to] = true;
      }
      outbox = outbox.filter((o) => !done[o.cid]);
      for (const o of outbox) {
        if (!messages.some((m) => m.cid === o.cid)) addMessage('user', o.text, null, 'complete', o.cid);
      }
      scroller.scrollTop = scroller.scrollHeight;
    }
    // Sends are idempotent by client_message_id, so all unanswered ones go again; an answer
    // still being written may then restart with its text so far.
    for (const o of outbox) {
      if (replies[o.cid]) replies[o.cid].text = '';
      o.orphan = o.sent;
      transmit(o);
    }
    retryOrphans(1500);
    showStatus(outbox.length ? '' : null);
    updateBusy();
    clearInterval(pingTimer);
    pingTimer = setInterval(() => frame({ type: 'ping', nonce: String(Date.now()) }), 25000);
  }

  // The doc lets a server ignore the re-send of an answer still being written; re-sending it
  // until a frame about it arrives then gets the stored complete.
  function retryOrphans(delay) {
    setTimeout(() => {
      const quiet = outbox.filter((o) => o.orphan);
      if (!live || !quiet.length) return;
      quiet.forEach(transmit);
      retryOrphans(Math.min(delay * 2, 20000));
    }, delay);
  }

  function onComplete(f) {
    const cid = f.reply_to;
    if (done[cid]) return;
    done[cid] = true;
    // A failed answer with no text gets no bubble; the error notice says enough.
    if (f.text || replies[cid] || f.finish_reason !== 'error') finish(replies[cid] || addMessage('assistant', '', null, 'streaming', cid), f);
    settle(cid);
  }

  // `f` is a complete frame or a transcript message.
  function finish(m, f) {
    m.text = f.text || '';
    m.citations = f.citations || [];
    m.note = NOTES[f.finish_reason];
    m.state = f.finish_reason === 'error' ? 'error' : 'complete';
    render(m);
  }

  function onError(f, o) {
    const { code, client_message_id: cid } = f;
    if (code === 'invalid_resume_token') {
      try { localStorage.removeItem(KEY_RESUME); } catch (e) { /* as load */ }
      return hello();
    }
    const seconds = f.retry_after_seconds;
    const text = code === 'rate_limited'
      ? `You're sending messages too quickly — try again in ${seconds ? seconds + ' s' : 'a moment'}.`
      : ERRORS[code];
    // Protocol errors are the widget's fault, and a fatal error's close leads to a reconnect;
    // neither concerns the visitor.
    if (f.fatal || (!text && !cid)) return console.warn('parley:', code, f.message);
    if (cid) {
      const reply = replies[cid];
      if (reply && reply.state === 'streaming') {
        reply.state = 'error';
        render(reply);
      }
      // A message never accepted was not stored: mark it, offer its text again.
      const mine = o && !o.accepted && messages.find((m) => m.cid === cid && m.role === 'user');
      if (mine) {
        mine.state = 'error';
        render(mine);
        input.value = input.value || o.text;
      }
      settle(cid);
    }
    notice(text || 'Something went wrong. Please try again.');
  }

  function open(focus) {
    opened = true;
    panel.hidden = false;
    wrap.classList.add('open');
    launcher.setAttribute('aria-expanded', 'true');
    scroller.scrollTop = scroller.scrollHeight;
    if (focus) input.focus();
    connect();
  }

  function close() {
    const hadFocus = root.activeElement;
    panel.hidden = true;
    wrap.classList.remove('open');
    launcher.setAttribute('aria-expanded', 'false');
    if (hadFocus) launcher.focus();
  }

  launcher.onclick = () => (panel.hidden ? open(true) : close());
  closeButton.onclick = close;
  wrap.onkeydown = (e) => {
    if (e.key === 'Escape' && !panel.hidden) close();
  };
  form.onsubmit = (e) => {
    e.preventDefault();
    submit();
  };
  input.onkeydown = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  };
  input.oninput = grow;
  stopButton.onclick = () => {
    if (live) return frame({ type: 'cancel' });
    // Offline there is nothing to cancel on the server yet.
    outbox = [];
    showStatus(null);
    updateBusy();
  };

  // Voice calls. One at a time; `call` is null when none is live.
  let call = null; // {pc, stream, url, dc, caller, agent, captions, ended}
  let lastCall = null; // the call that ended last, for state()

  function setCallState(c, state, text) {
    c.state = state;
    callBar.dataset.state = state;
    callState.textContent = text;
  }

  // Resolves once the offer holds every ICE candidate (non-trickle), or after 3 s with those found.
  function gathered(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 3000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  function caption(c, speaker, text, final) {
    follow(() => {
      // Partial caller captions replace each other; agent sentences join one bubble per answer.
      let el = speaker === 'caller' ? c.caller : c.agent;
      if (speaker === 'caller') c.agent = null;
      if (!el) {
        el = h('div', { class: 'm', 'data-part': 'caption', 'data-speaker': speaker,
          'data-role': speaker === 'caller' ? 'user' : 'assistant' });
        el.entry = { speaker, text: '', final: false };
        c.captions.push(el.entry);
        log.append(el);
      }
      if (speaker === 'caller') {
        el.entry.text = text;
        c.caller = final ? null : el;
      } else {
        el.entry.text = el.entry.text ? `${el.entry.text} ${text}` : text;
        c.agent = el;
      }
      el.entry.final = final;
      el.dataset.final = String(final);
      el.textContent = el.entry.text;
    });
  }

  function onCallMessage(c, raw) {
    let m;
    try {
      m = JSON.parse(raw);
    } catch (e) {
      return console.warn('parley: bad caption message');
    }
    if (m.type === 'caption' && typeof m.text === 'string') caption(c, m.speaker, m.text, m.final !== false);
    else if (m.type === 'ended') endCall(c, CALL_ENDED[m.reason] || CALL_ENDED.hung_up, false);
  }

  async function startCall() {
    if (call) return;
    if (panel.hidden) open(false);
    const c = (call = { pc: null, stream: null, url: null, dc: null, caller: null, agent: null, captions: [], ended: false });
    callButton.hidden = true;
    callBar.hidden = false;
    muteButton.setAttribute('aria-pressed', 'false');
    muteButton.textContent = 'Mute';
    setCallState(c, 'connecting', 'Calling…');
    try {
      c.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      if (c.ended) return endCall(c, null, false);
      const pc = (c.pc = new RTCPeerConnection());
      for (const track of c.stream.getAudioTracks()) pc.addTrack(track, c.stream);
      c.dc = pc.createDataChannel('captions');
      c.dc.onmessage = (e) => onCallMessage(c, e.data);
      pc.ontrack = (e) => {
        remoteAudio.srcObject = e.streams[0] || new MediaStream([e.track]);
        remoteAudio.play().catch(() => { /* autoplay refused: the click already counted */ });
      };
      pc.onconnectionstatechange = () => {
        if (c.ended) return;
        if (pc.connectionState === 'connected') setCallState(c, 'connected', 'In call');
        else if (pc.connectionState === 'disconnected') setCallState(c, 'connecting', 'Reconnecting…');
        else if (pc.connectionState === 'failed') endCall(c, 'The call was lost.', true);
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const r = await fetch(`${api}/voice`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp' },
        body: pc.localDescription.sdp,
        credentials: 'omit',
      });
      if (!r.ok) {
        const problem = await r.json().catch(() => ({}));
        throw new Error(CALL_ERRORS[problem.code] || "The call couldn't be connected.");
      }
      const location = r.headers.get('Location');
      c.url = location ? new URL(location, api).href : null;
      const answer = await r.text();
      if (c.ended) return endCall(c, null, true);
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    } catch (e) {
      const text = e && e.name === 'NotAllowedError' ? 'Calls need access to your microphone.' : e && e.message;
      endCall(c, text || "The call couldn't be connected.", true);
    }
  }

  // Ends the call `c`: tells the server unless it ended the call itself, frees the microphone.
  function endCall(c, text, tellServer) {
    if (!c || (c.ended && !c.pc && !c.stream)) return;
    c.ended = true;
    if (tellServer && c.url) fetch(c.url, { method: 'DELETE', credentials: 'omit', keepalive: true }).catch(() => {});
    c.url = null;
    if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
    if (c.pc) c.pc.close();
    c.stream = c.pc = null;
    remoteAudio.srcObject = null;
    if (call === c) {
      call = null;
      lastCall = c;
      callBar.hidden = true;
      callButton.hidden = false;
      if (text) notice(text);
    }
  }

  callButton.onclick = startCall;
  hangupButton.onclick = () => endCall(call, CALL_ENDED.hung_up, true);
  muteButton.onclick = () => {
    if (!call || !call.stream) return;
    const muted = muteButton.getAttribute('aria-pressed') !== 'true';
    call.stream.getAudioTracks().forEach((t) => (t.enabled = !muted));
    muteButton.setAttribute('aria-pressed', String(muted));
    muteButton.textContent = muted ? 'Unmute' : 'Mute';
  };
  window.addEventListener('pagehide', () => endCall(call, null, true));

  window.ParleyChat = {
    open: () => open(true),
    close,
    send: (text) => {
      if (panel.hidden) open(false);
      return send(text);
    },
    state: () => ({
      connected: live,
      conversationId,
      messages: messages.map(({ role, text, citations, state }) => ({ role, text, citations, state })),
      call: (call || lastCall) && {
        state: call ? call.state : 'ended',
        muted: muteButton.getAttribute('aria-pressed') === 'true',
        captions: (call || lastCall).captions.map((e) => ({ ...e })),
      },
    }),
    call: startCall,
    hangUp: () => endCall(call, CALL_ENDED.hung_up, true),
  };

  function attach() {
    document.body.append(host);
    if (data.open === 'true') open(false);
  }

  // Appearance first, so the launcher never changes colour in view. An unknown agent shows
  // nothing; any other failure the default look.
  fetch(`${api}/widget`, { credentials: 'omit' })
    .then((r) => (r.status === 404 ? null : r.ok ? r.json() : {}))
    .catch(() => ({}))
    .then((appearance) => {
      if (!appearance) return console.warn(`parley: no agent ${agent}`);
      applyAppearance(appearance);
      if (document.body) attach();
      else document.addEventListener('DOMContentLoaded', attach);
    });
})();
