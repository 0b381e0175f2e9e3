/* <rallycast-live club="riverside" lang="ru"></rallycast-live>: a club's live score on any web
 * page (docs/embed.md). The viewer serves this file at /embed.js after announce.js and a
 * settings line (window.RallycastEmbed: the broker's WebSocket URL, mqtt.js's URL, the words).
 *
 * What it shows is the club page's live section: it appears when a match is on, follows
 * every change, and hides 3 s after the match ends. Everything lives in a shadow root with a
 * constructed stylesheet (no <style> element, so a strict host CSP needs no 'unsafe-inline'),
 * names are put in as text, and nothing from a snapshot is ever run.
 *
 * Attributes: club (required), table (1: one table per club today), lang (en, ru; default:
 * the host page's <html lang>), show-idle (say "no match" instead of hiding), controls="none"
 * (no sound/speech/notification buttons), server (the viewer's origin, default: where this
 * script came from). Theming: the CSS custom properties --rallycast-* and ::part() below. */
(function () {
  'use strict';
  const settings = window.RallycastEmbed;
  if (!settings || window.customElements.get('rallycast-live')) return;

  const END_HIDE_MS = 3000; // as the club page: the final score stays 3 s, then the section goes
  const CLUB_RE = /^[a-z0-9-]{1,64}$/;
  const RETAINED_GRACE_MS = 2000; // as live.js: how long a retained snapshot may take
  const PERIOD_MS = 60000; // ITTF: timeouts and intervals between games of up to 1 minute
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

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
  }

  function isSnapshot(value) {
    return Boolean(value) && typeof value === 'object' && Boolean(value.game_data) && typeof value.game_data === 'object';
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

  /* Put a value into an element as text: a string, or {tpl, v} (a sentence whose {name}
   * values are names). Names go into <bdi> with textContent, never into HTML: a bidi
   * character in a name reorders only the name, and markup in it stays text. */
  function fill(node, value) {
    if (!value || typeof value !== 'object') { node.textContent = value === undefined || value === null ? '' : String(value); return; }
    const parts = value.tpl.split(/\{(\w+)\}/);
    const nodes = [];
    parts.forEach((part, i) => {
      if (i % 2 === 0) { if (part) nodes.push(document.createTextNode(part)); return; }
      const got = value.v[part];
      if (got === undefined || got === null) return;
      if (got && got.name !== undefined) {
        const bdi = document.createElement('bdi');
        bdi.textContent = got.name;
        nodes.push(bdi);
      } else nodes.push(document.createTextNode(String(got)));
    });
    node.replaceChildren(...nodes);
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
      clearTimeout(this.hideTimer);
      clearInterval(this.clockTimer);
      this.clockTimer = null;
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
      if (table !== '1') { this.say('rallycast-live: only table="1" exists (one table per club)'); return; }
      const origin = this.getAttribute('server') || scriptOrigin;
      this.topic = 'clubs/' + club + '/game';
      this.shown = null; // {match_id, rev} of the snapshot on screen
      this.seenLive = new Set();
      const generation = this.generation;
      const current = () => this.started && this.generation === generation;
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
          // What is on now is the baseline: the announcer tells only what changes after it.
          if (isSnapshot(body.snapshot)) this.onSnapshot(body.snapshot);
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
        const text = payload.toString();
        if (!text.trim()) { this.onSnapshot(null); return; }
        let snapshot;
        try { snapshot = JSON.parse(text); } catch (error) { return; }
        if (isSnapshot(snapshot)) this.onSnapshot(snapshot);
      });
    }

    // Newer rev or another match wins (after a reconnect the broker resends its retained copy).
    accept(snapshot) {
      const shown = this.shown;
      if (snapshot === null) { this.shown = null; return shown !== null; }
      if (shown && shown.match_id === snapshot.match_id && !(snapshot.rev > shown.rev)) return false;
      this.shown = { match_id: snapshot.match_id, rev: snapshot.rev };
      return true;
    }

    onSnapshot(snapshot) {
      if (!this.accept(snapshot)) return;
      this.announcer.update(snapshot);
      clearTimeout(this.hideTimer);
      if (snapshot === null) { this.setVisible(false); return; }
      if (snapshot.type !== 'game_end') {
        this.seenLive.add(snapshot.match_id);
        this.render(snapshot);
        this.setVisible(true);
      } else if (this.seenLive.has(snapshot.match_id)) {
        this.render(snapshot);
        this.setVisible(true);
        this.hideTimer = setTimeout(() => this.setVisible(false), END_HIDE_MS);
      } else {
        this.setVisible(false); // ended before this page opened: nothing is on
      }
      // For the host page (and tests): what the element shows now. Bubbles in the host's DOM.
      this.dispatchEvent(new CustomEvent('rallycast:snapshot', {
        bubbles: true, detail: { rev: snapshot.rev, status: snapshot.status, live: !this.section.hidden },
      }));
    }

    view(s) {
      const S = this.S;
      const g = s.game_data;
      const doubles = g.game_type === 'double';
      const won = s.games_won || [0, 0];
      const games = s.games || [];
      const names = { 1: g.player1, 2: g.player2 };
      const playing = s.status === 'in_progress';
      const dash = (pair) => pair[0] + '–' + pair[1];
      const name = (text) => ({ name: text || '' });
      const rich = (tpl, v) => ({ tpl, v });
      let status;
      if (s.status === 'between_games') status = S.between_games;
      else if (s.status === 'finished') status = rich(doubles ? S.won_by_pair : S.won_by, { name: name(g.winner) });
      else if (s.status === 'abandoned') status = S.abandoned;
      else status = format(S.game_no, { n: s.game_no || 1 });
      let heading;
      if (s.status === 'finished') heading = rich(S.heading_finished, { name: name(g.winner) });
      else if (s.status === 'abandoned') heading = S.heading_abandoned;
      else heading = (s.best_of || 1) > 1 ? format(S.heading_match, { n: s.best_of }) : S.heading_friendly;
      let serving = '';
      if (playing && s.server_player) {
        serving = doubles && s.receiver_player
          ? rich(S.serves_to, { server: name(s.server_player), receiver: name(s.receiver_player) })
          : rich(S.serves_one, { server: name(s.server_player) });
      }
      const timeout = playing && s.timeout && (s.timeout.side === 1 || s.timeout.side === 2) ? s.timeout : null;
      const lastGame = s.status === 'between_games' && s.last_game ? s.last_game : null;
      const winnerFirst = (game) => (game.winner === 2 ? [game.score[1], game.score[0]] : game.score);
      return {
        side: { name: names, score: { 1: g.score1, 2: g.score2 }, games: { 1: won[0], 2: won[1] } },
        heading,
        status,
        serving,
        timeout: timeout ? rich(S.timeout_side, { name: name(names[timeout.side]) }) : '',
        timeout_until: timeout ? this.deadline(timeout.started_at) : 0,
        interval: lastGame
          ? rich(doubles ? S.game_to_pair : S.game_to, {
            n: lastGame.game_no, name: name(lastGame.winner_name || names[lastGame.winner]), score: dash(winnerFirst(lastGame)),
          })
          : '',
        interval_until: lastGame ? this.deadline(lastGame.ended_at) : 0,
        ends: s.ends_changed && (playing || s.status === 'between_games') ? S.change_ends : '',
        game_list: games.length ? games.map(dash).join(', ') : '—',
        server: s.status === 'finished' || s.status === 'abandoned' ? 0 : g.server,
      };
    }

    // When a 1-minute timeout or interval that began at `iso` (the service's clock) ends, in
    // this device's time; a device clock clearly behind the service's counts from now.
    deadline(iso) {
      const began = Date.parse(iso || '');
      if (Number.isNaN(began)) return 0;
      const now = Date.now();
      return (now - began >= -5000 ? began : now) + PERIOD_MS;
    }

    render(snapshot) {
      const v = this.view(snapshot);
      for (const node of this.section.querySelectorAll('[data-field]')) {
        const field = node.dataset.field;
        const value = node.dataset.side ? (v.side[field] || {})[node.dataset.side] : v[field];
        const key = JSON.stringify(value === undefined || value === null ? '' : value);
        if (node.rcShown === key) continue; // unchanged: nothing written
        node.rcShown = key;
        fill(node, value);
      }
      for (const node of this.section.querySelectorAll('[data-show-if]')) node.hidden = !v[node.dataset.showIf];
      for (const node of this.section.querySelectorAll('[data-clock]')) node.dataset.until = String(v[node.dataset.clock + '_until'] || 0);
      for (const node of this.section.querySelectorAll('[data-serve]')) {
        node.classList.toggle('serving', Number(node.dataset.serve) === v.server);
      }
      this.section.dataset.status = snapshot.status || '';
      this.tick();
      if (!this.clockTimer) this.clockTimer = setInterval(() => this.tick(), 250);
    }

    tick() {
      for (const node of this.section.querySelectorAll('[data-clock]')) {
        const until = Number(node.dataset.until || 0);
        const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
        const text = until ? Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0') : '';
        if (node.textContent !== text) node.textContent = text;
      }
    }
  }

  window.customElements.define('rallycast-live', RallycastLive);
})();
