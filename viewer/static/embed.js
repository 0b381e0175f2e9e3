/* <rallycast-live club="riverside" lang="ru"></rallycast-live>: a club's live score on any web
 * page (docs/embed.md). The viewer serves this file at /embed.js after announce.js and a
 * settings line (window.RallycastEmbed: the broker's WebSocket URL, mqtt.js's URL, the words).
 *
 * What it shows is the club page's live section: it appears when a match is on, follows
 * every change, and hides 3 s after the match ends. Everything lives in a shadow root with a
 * constructed stylesheet (no <style> element, so a strict host CSP needs no 'unsafe-inline'),
 * names are put in as text, and nothing from a snapshot is ever run.
 *
 * Attributes: club (required), table (the club's table number, default 1), lang (en, ru; default:
 * the host page's <html lang>), show-idle (say "no match" instead of hiding), controls="none"
 * (no sound/speech/notification buttons), server (the viewer's origin, default: where this
 * script came from). Theming: the CSS custom properties --rallycast-* and ::part() below.
 *
 * How a snapshot is shown (fields, clocks, which snapshot wins, the 3 s after the end) is
 * scoreview.js, the same file as our own pages', served just before this one. */
(function () {
  'use strict';
  const settings = window.RallycastEmbed;
  if (!settings || window.customElements.get('rallycast-live')) return;

  const V = window.RallycastView; // scoreview.js, concatenated before this file
  const { format, isSnapshot } = V;
  const CLUB_RE = /^[a-z0-9-]{1,64}$/;
  const TABLE_RE = /^[1-9][0-9]?$/; // 1-64, no sign, space or leading zero
  const MAX_TABLE = 64;
  const RETAINED_GRACE_MS = 2000; // as live.js: how long a retained snapshot may take
  const scriptOrigin = document.currentScript ? new URL(document.currentScript.src).origin : location.origin;

  const CSS = `
    :host { all: initial; display: block; contain: content;
      font: var(--rallycast-font, 16px/1.35 system-ui, sans-serif);
      color: var(--rallycast-fg, #1d1d1f); }
    :host([hidden]) { display: none; }
    [hidden] { display: none !important; }
    .live { background: var(--rallycast-bg, #ffffff); color: var(--rallycast-fg, #1d1d1f);
      border: 1px solid var(--rallycast-border, #d0d0d8); border-radius: var(--rallycast-radius, 10px);
      padding: 0.75em 1em; }
    .title { margin: 0 0 0.4em; font-size: 1.05em; font-weight: 600; display: flex; align-items: center; gap: 0.45em; }
    .dot { flex: none; width: 0.7em; height: 0.7em; border-radius: 50%; background: var(--rallycast-live, #d6202f); }
    .live[data-status="finished"] .dot, .live[data-status="abandoned"] .dot { background: var(--rallycast-muted, #6b6b76); }
    .alert { font-weight: 700; }
    .clock { font-variant-numeric: tabular-nums; }
    table { border-collapse: collapse; width: 100%; }
    td, th { padding: 0.15em 0.35em; text-align: left; font-weight: normal; }
    th { width: 100%; overflow-wrap: anywhere; }
    .serve { color: transparent; width: 1em; }
    .serve.serving { color: var(--rallycast-accent, #d4002a); }
    .games-won { color: var(--rallycast-muted, #6b6b76); text-align: right; }
    .points { font-size: 1.5em; font-weight: 700; text-align: right; font-variant-numeric: tabular-nums; }
    p { margin: 0.3em 0 0; }
    .muted { color: var(--rallycast-muted, #6b6b76); }
    .controls { display: flex; gap: 0.4em; margin-top: 0.5em; flex-wrap: wrap; }
    button { font: inherit; font-size: 0.85em; cursor: pointer; padding: 0.2em 0.6em;
      border-radius: 999px; border: 1px solid var(--rallycast-border, #d0d0d8);
      background: transparent; color: var(--rallycast-fg, #1d1d1f); }
    [data-field="serving"]:not(:empty)::before { content: "· "; }
    button[aria-pressed="true"] { background: var(--rallycast-accent, #d4002a); color: #fff;
      border-color: var(--rallycast-accent, #d4002a); }
  `;
  let sheet = null;
  function styles() {
    if (!sheet) {
      sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
    }
    return sheet;
  }

  function randomHex(bytes) {
    return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // mqtt.js once per page, whatever the number of elements (a classic script: window.mqtt).
  let mqttLoading = null;
  function loadMqtt(origin) {
    if (window.mqtt) return Promise.resolve(window.mqtt);
    if (!mqttLoading) {
      mqttLoading = new Promise((resolve, reject) => {
        const script = document.createElement('script');
        script.src = origin + settings.mqttJs;
        script.async = true;
        script.onload = () => (window.mqtt ? resolve(window.mqtt) : reject(new Error('mqtt.js did not load')));
        script.onerror = () => { mqttLoading = null; reject(new Error('mqtt.js could not be loaded from ' + script.src)); };
        document.head.appendChild(script);
      });
    }
    return mqttLoading;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    for (const child of children || []) node.append(child);
    return node;
  }

  class RallycastLive extends HTMLElement {
    static get observedAttributes() { return ['club', 'lang', 'table', 'server']; }

    connectedCallback() {
      if (this.started) return;
      this.started = true;
      this.generation = (this.generation || 0) + 1; // answers for an older start are dropped
      this.build();
      this.start();
    }

    disconnectedCallback() {
      this.started = false;
      if (this.client) this.client.end(true);
      this.client = null;
    }

    attributeChangedCallback(name, old, value) {
      if (this.started && old !== value) { this.disconnectedCallback(); this.connectedCallback(); }
    }

    get language() {
      const asked = (this.getAttribute('lang') || document.documentElement.lang || 'en').slice(0, 2).toLowerCase();
      return settings.strings[asked] ? asked : 'en';
    }

    build() {
      const root = this.shadowRoot || this.attachShadow({ mode: 'open' });
      root.adoptedStyleSheets = [styles()];
      const S = (this.S = settings.strings[this.language]);
      const rows = [1, 2].map((side) => el('tr', { part: 'row' }, [
        el('td', { class: 'serve', 'data-serve': String(side), part: 'serve', 'aria-hidden': 'true' }, ['●']),
        el('th', { scope: 'row', part: 'name' }, [el('bdi', { 'data-field': 'name', 'data-side': String(side) })]),
        el('td', { class: 'games-won', 'data-field': 'games', 'data-side': String(side), part: 'games-won' }),
        el('td', { class: 'points', 'data-field': 'score', 'data-side': String(side), part: 'points' }),
      ]));
      // The club page's live section (viewer/templates/club.html), line for line.
      this.section = el('section', { class: 'live', part: 'live', 'aria-live': 'polite', hidden: '' }, [
        el('p', { class: 'title', part: 'title' }, [
          el('span', { class: 'dot', part: 'dot', title: S.live_on }), el('span', { 'data-field': 'heading' }),
        ]),
        el('table', { part: 'score' }, [el('tbody', {}, rows)]),
        el('p', { class: 'line', part: 'status' }, [
          el('span', { 'data-field': 'status' }), ' ', el('span', { 'data-field': 'serving' }),
        ]),
        el('p', { class: 'line alert', part: 'alert', 'data-show-if': 'timeout', hidden: '' }, [
          el('span', { 'data-field': 'timeout' }), ' ', el('span', { class: 'clock', 'data-clock': 'timeout' }),
        ]),
        el('p', { class: 'line alert', part: 'alert', 'data-show-if': 'interval', hidden: '' }, [
          el('span', { 'data-field': 'interval' }), ' · ' + S.interval + ' ', el('span', { class: 'clock', 'data-clock': 'interval' }),
        ]),
        el('p', { class: 'line alert', part: 'alert', 'data-show-if': 'ends', 'data-field': 'ends', hidden: '' }),
        el('p', { class: 'line', part: 'game-list' }, [S.game_scores + ': ', el('span', { 'data-field': 'game_list' })]),
      ]);
      this.idle = el('p', { class: 'muted', part: 'idle', hidden: '' }, [S.no_match]);
      this.problem = el('p', { class: 'muted', part: 'problem', role: 'status', hidden: '' });
      this.announcer = window.RallycastAnnounce.create({ lang: this.language, clubName: '' });
      this.controls = el('div', { class: 'controls', part: 'controls' });
      for (const [name, label] of [['sound', S.sound], ['speech', S.speech], ['notify', S.notify]]) {
        const button = el('button', { type: 'button', 'data-toggle': name, part: 'toggle toggle-' + name }, [label]);
        button.addEventListener('click', () => this.toggle(name));
        this.controls.append(button);
      }
      if (typeof Notification === 'undefined') this.controls.querySelector('[data-toggle="notify"]').hidden = true;
      this.controls.hidden = this.getAttribute('controls') === 'none';
      this.announcer.onChange(() => this.showChoices());
      this.showChoices();
      root.replaceChildren(this.section, this.idle, this.problem, this.controls);
      this.setVisible(false);
    }

    toggle(name) {
      const a = this.announcer;
      if (name === 'sound') a.setSound(!a.sound);
      else if (name === 'speech') a.setSpeech(!a.speech);
      else a.setNotify(!a.notify);
    }

    showChoices() {
      for (const button of this.controls.querySelectorAll('[data-toggle]')) {
        button.setAttribute('aria-pressed', String(Boolean(this.announcer[button.dataset.toggle])));
      }
    }

    say(problem) {
      this.problem.textContent = problem || '';
      this.problem.hidden = !problem;
    }

    setVisible(visible) {
      this.section.hidden = !visible;
      this.idle.hidden = visible || !this.hasAttribute('show-idle');
      this.dataset.state = visible ? 'live' : 'idle'; // for the host page's own CSS, if it likes
    }

    async start() {
      const club = this.getAttribute('club') || '';
      const table = this.getAttribute('table') || '1';
      if (!CLUB_RE.test(club)) { this.say('rallycast-live: club="…" must be a club id (a-z, 0-9, -)'); return; }
      if (!TABLE_RE.test(table) || Number(table) > MAX_TABLE) { this.say('rallycast-live: table="…" must be a table number 1-' + MAX_TABLE); return; }
      const number = Number(table);
      const origin = this.getAttribute('server') || scriptOrigin;
      // The topic scheme of docs/protocol.md ("Tables"): table 1 keeps clubs/<club>/game.
      this.topic = number === 1 ? 'clubs/' + club + '/game' : 'clubs/' + club + '/tables/' + number + '/game';
      const generation = this.generation;
      const current = () => this.started && this.generation === generation;
      this.filter = new V.SnapshotFilter();
      this.update = V.liveSection(
        (snapshot) => V.render(this.section, snapshot, this.S),
        // A hide planned before a restart (another club or table) is not this start's.
        (visible) => { if (this.generation === generation) this.setVisible(visible); },
      );
      // The first score from the JSON API, so the element shows it at once; MQTT takes over.
      // Without CORS for this site (embed_origins) the retained MQTT copy arrives a moment later.
      try {
        const response = await fetch(origin + '/api/clubs/' + club + '/live', { mode: 'cors', credentials: 'omit' });
        if (!current()) return;
        if (response.status === 404) { this.say(format(this.S.unknown_club, { club })); return; }
        if (response.ok) {
          const body = await response.json();
          if (!current()) return;
          if (body.club && body.club.name) this.announcer.title = String(body.club.name);
          // Every table's snapshot (docs/api.md); a server from before tables has table 1 only.
          const tables = Array.isArray(body.tables) ? body.tables : [{ table: 1, snapshot: body.snapshot }];
          const mine = tables.find((entry) => entry && entry.table === number);
          if (!mine) { this.say(format(this.S.unknown_table, { club, table: number })); return; }
          // What is on now is the baseline: the announcer tells only what changes after it.
          if (isSnapshot(mine.snapshot)) this.onSnapshot(mine.snapshot);
          else if (body.known) this.announcer.update(null);
        }
      } catch (error) {
        /* no API for this origin: MQTT alone */
      }
      try {
        const mqtt = await loadMqtt(origin);
        if (!current()) return;
        this.connect(mqtt, origin);
      } catch (error) {
        this.say(String(error.message || error));
      }
    }

    wsUrl(origin) {
      if (settings.wsUrl) return settings.wsUrl;
      const url = new URL(origin);
      // URL.hostname keeps an IPv6 address in its brackets.
      return (url.protocol === 'https:' ? 'wss://' : 'ws://') + url.hostname + ':' + settings.wsPort + '/mqtt';
    }

    connect(mqtt, origin) {
      const client = mqtt.connect(this.wsUrl(origin), {
        protocolVersion: 4,
        reconnectPeriod: 1000,
        connectTimeout: 4000,
        keepalive: 20,
        clean: true,
        clientId: 'rallycast-embed-' + randomHex(6),
        // Native timers: mqtt.js's default runs them in a blob: worker, which a strict host
        // CSP (no worker-src blob:) would refuse.
        timerVariant: 'native',
      });
      this.client = client;
      let heard = false;
      let subscribed = false;
      client.on('connect', () => {
        this.say('');
        this.dataset.connected = 'true';
        if (subscribed) return; // mqtt.js resubscribes after a reconnect; the broker resends
        subscribed = true;
        client.subscribe({ [this.topic]: { qos: 1 } }, (error) => {
          // Without the API (no CORS for this site) nothing said what was on: a retained
          // snapshot not here within the grace time means none, and that is the baseline.
          if (error) return;
          setTimeout(() => {
            if (!heard && this.announcer.last === undefined) this.announcer.update(null);
          }, RETAINED_GRACE_MS);
        });
      });
      client.on('offline', () => { this.dataset.connected = 'false'; });
      client.on('message', (topic, payload) => {
        if (topic !== this.topic) return;
        heard = true;
        const snapshot = V.parseSnapshot(payload.toString());
        if (snapshot !== undefined) this.onSnapshot(snapshot);
      });
    }

    // Newer rev or another match wins (after a reconnect the broker resends its retained
    // copy); then the live section of scoreview.js shows, keeps or hides it.
    onSnapshot(snapshot) {
      if (!this.filter.accept('live', snapshot)) return;
      this.announcer.update(snapshot);
      this.update(snapshot);
      if (snapshot === null) return;
      // For the host page (and tests): what the element shows now. Bubbles in the host's DOM.
      this.dispatchEvent(new CustomEvent('rallycast:snapshot', {
        bubbles: true, detail: { rev: snapshot.rev, status: snapshot.status, live: !this.section.hidden },
      }));
    }
  }

  window.customElements.define('rallycast-live', RallycastLive);
})();
