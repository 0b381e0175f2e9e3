/* Rallycast live pages: one MQTT-over-WebSocket connection per page (mqtt.js), the service's
 * snapshots rendered as text. The rules live in the scorer service: nothing here computes a
 * score or a server, it only places what the snapshot says. */
(function () {
  'use strict';

  const config = JSON.parse(document.getElementById('rallycast-config').textContent);
  const S = config.strings;
  const END_HIDE_MS = 3000; // the club page's live section hides 3 s after a match ends
  const AUTH_REFUSED = new Set([4, 5]); // CONNACK: bad user name or password / not authorised
  // After the first subscription, how long the broker gets to send the retained snapshot of
  // a topic whose snapshot came embedded in the page; none by then: the club has no match.
  const RETAINED_GRACE_MS = 2000;

  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
  }

  const brokerUrl = () => window.RallycastEarly.url; // preconnect.js works it out

  function isSnapshot(value) {
    return Boolean(value) && typeof value === 'object' && Boolean(value.game_data) && typeof value.game_data === 'object';
  }

  // The snapshots the server put into the page ({topic: snapshot}, viewer/snapshots.py keeps
  // the retained ones): shown at once, through the same filter and render as MQTT's.
  function embeddedSnapshots() {
    const block = document.getElementById('rc-snapshot');
    if (!block) return {};
    try {
      const found = JSON.parse(block.textContent);
      const snapshots = {};
      for (const topic of Object.keys(found || {})) {
        if (isSnapshot(found[topic])) snapshots[topic] = found[topic];
      }
      return snapshots;
    } catch (error) {
      return {};
    }
  }

  // The socket preconnect.js opened, once, if it is still usable; later connections open their own.
  function earlySocket(url) {
    const early = window.RallycastEarly;
    const socket = early.socket;
    early.socket = null;
    return socket && early.url === url && socket.readyState <= WebSocket.OPEN ? socket : null;
  }

  function randomHex(bytes) {
    // crypto.randomUUID needs a secure context; a club's LAN page is often plain http.
    return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // A snapshot is shown only if its match differs from the shown one or its rev is greater:
  // after a reconnect the broker resends the retained copy, and a late copy must not win.
  class SnapshotFilter {
    constructor() { this.shown = new Map(); }
    accept(key, snapshot) {
      const shown = this.shown.get(key);
      if (snapshot === null) { this.shown.delete(key); return shown !== undefined; }
      if (shown && shown.match_id === snapshot.match_id && !(snapshot.rev > shown.rev)) return false;
      this.shown.set(key, { match_id: snapshot.match_id, rev: snapshot.rev });
      return true;
    }
  }

  function showBanner(id, text) {
    const banner = document.getElementById(id);
    if (!banner) return;
    if (text) banner.textContent = text;
    banner.hidden = !text;
  }

  /* Connect to the broker. options: username, password, topics (subscribed once; mqtt.js
   * resubscribes after each reconnect and the broker resends the retained snapshots),
   * onSnapshot(topic, snapshot|null), onMessage(topic, text), onConnect(),
   * onAuthRefused(). Returns the mqtt.js client. */
  // MQTT keep-alive: mqtt.js pings after KEEPALIVE_S without an ack and gives the connection up
  // half a period later, so a frozen or dead connection shows within about 3 s (asked: 5 s).
  const KEEPALIVE_S = 2;
  const STATUS_TEXT = { offline: 'scorer_offline', stalled: 'scorer_stalled' };

  function connect(options) {
    if (typeof mqtt === 'undefined') return null; // the server page already says mqtt.js is missing
    let socket = null; // the WebSocket under the current connection
    const client = mqtt.connect(brokerUrl(), {
      protocolVersion: 4,
      reconnectPeriod: 1000,
      connectTimeout: 4000,
      keepalive: KEEPALIVE_S,
      clean: true,
      clientId: 'rallycast-' + config.page + '-' + randomHex(6),
      username: options.username,
      password: options.password,
      createWebsocket: (url, protocols) => {
        socket = earlySocket(url) || new WebSocket(url, protocols);
        return socket;
      },
    });
    let subscribed = false;
    const heard = new Set(); // game topics a message came on
    const embedded = options.embedded || [];
    client.on('connect', () => {
      if (!performance.getEntriesByName('rallycast:connected').length) performance.mark('rallycast:connected');
      showBanner('connection-banner', '');
      if (!subscribed) {
        subscribed = true;
        const wanted = {};
        for (const topic of options.topics.concat([config.statusTopic])) wanted[topic] = { qos: 1 };
        client.subscribe(wanted, (error) => {
          if (error || !embedded.length) return;
          // An embedded snapshot the broker no longer retains (the match was deleted between
          // the page's HTML and this subscription) would otherwise stay on screen.
          setTimeout(() => {
            if (!client.connected) return;
            for (const topic of embedded) if (!heard.has(topic)) options.onSnapshot(topic, null);
          }, RETAINED_GRACE_MS);
        });
      }
      if (options.onConnect) options.onConnect();
    });
    client.on('offline', () => {
      showBanner('connection-banner', S.reconnecting);
      if (options.onOffline) options.onOffline();
    });
    client.on('error', (error) => {
      if (AUTH_REFUSED.has(error.code)) {
        client.end(true);
        if (options.onAuthRefused) options.onAuthRefused();
      }
    });
    client.on('message', (topic, payload) => {
      const text = payload.toString();
      if (topic === config.statusTopic) {
        const key = STATUS_TEXT[text.trim()];
        showBanner('scorer-banner', key ? S[key] : '');
        return;
      }
      if (options.onMessage) options.onMessage(topic, text);
      if (!options.onSnapshot || !/^clubs\/[a-z0-9-]+\/game$/.test(topic)) return;
      heard.add(topic);
      let snapshot = null;
      if (text.trim()) {
        try { snapshot = JSON.parse(text); } catch (error) { return; }
        if (!isSnapshot(snapshot)) return;
      }
      options.onSnapshot(topic, snapshot);
    });
    // A closing tab ends its MQTT session cleanly (DISCONNECT, then a normal WebSocket close)
    // instead of leaving the broker a "1001 going away" close in the middle of a session.
    client.rcClose = () => {
      if (socket && socket.readyState === WebSocket.OPEN) {
        try {
          socket.send(new Uint8Array([0xe0, 0x00])); // MQTT 3.1.1 DISCONNECT
          socket.close(1000);
        } catch (error) { /* closing anyway */ }
      }
      client.end(true);
    };
    Rallycast.client = client;
    return client;
  }

  window.addEventListener('pagehide', () => {
    if (Rallycast.client) Rallycast.client.rcClose();
  });
  // Back from the back/forward cache with a closed connection: start again.
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) location.reload();
  });

  /* A spectator page: show the snapshots embedded in the page now, then connect (as soon as
   * mqtt.js, loaded after this script, has run). MQTT's copies go through the same
   * onSnapshot and filter, so an embedded snapshot older than the broker's is replaced and
   * one that is not older is not shown twice. */
  function follow(options) {
    const embedded = embeddedSnapshots();
    const shown = Object.keys(embedded);
    for (const topic of shown) options.onSnapshot(topic, embedded[topic]);
    const go = () => connect(Object.assign({}, options, { embedded: shown }));
    if (typeof mqtt === 'undefined' && !domLoaded) document.addEventListener('DOMContentLoaded', go);
    else go();
  }

  // --- rendering: elements say what they show with data-field / data-side / data-serve ---
  // A value is a string, or {tpl, v} (a sentence with names in it), or {lines} (a doubles
  // pair's names, one per line). Names are always text inside <bdi>: a bidi-override
  // character in a name can reorder only the name itself, never the score next to it.

  const INTERVAL_MS = 60000; // ITTF: intervals of up to 1 minute between games; timeouts 1 minute
  const firstSeen = new Map(); // clock fallback, see deadline()

  function rich(tpl, values) { return { tpl: tpl, v: values }; }

  function nameNode(name) {
    const bdi = document.createElement('bdi');
    bdi.textContent = name;
    return bdi;
  }

  // Fill el with template text and <bdi> names (values named in `names` are names).
  function fill(el, value) {
    el.classList.toggle('as-lines', Boolean(value && value.lines));
    if (value && value.lines) {
      el.replaceChildren(...value.lines.map((line, i) => {
        const node = nameNode(line);
        node.className = 'name-line' + (value.roles[i] ? ' is-' + value.roles[i] : '');
        return node;
      }));
      return;
    }
    if (!value || typeof value !== 'object') { el.textContent = value === undefined || value === null ? '' : String(value); return; }
    const nodes = [];
    const parts = value.tpl.split(/\{(\w+)\}/);
    parts.forEach((part, i) => {
      if (i % 2 === 0) { if (part) nodes.push(document.createTextNode(part)); return; }
      const got = value.v[part];
      if (got === undefined || got === null) return;
      nodes.push(got && got.name !== undefined ? nameNode(got.name) : document.createTextNode(String(got)));
    });
    el.replaceChildren(...nodes);
  }

  const asName = (name) => ({ name: name || '' });

  function statusText(s) {
    const doubles = s.game_data.game_type === 'double';
    switch (s.status) {
      case 'between_games': return S.between_games;
      case 'finished': return rich(doubles ? S.won_by_pair : S.won_by, { name: asName(s.game_data.winner) });
      case 'abandoned': return S.abandoned;
      default: return format(S.game_no, { n: s.game_no || 1 });
    }
  }

  function headingText(s) {
    if (s.status === 'finished') return rich(S.heading_finished, { name: asName(s.game_data.winner) });
    if (s.status === 'abandoned') return S.heading_abandoned;
    return (s.best_of || 1) > 1 ? format(S.heading_match, { n: s.best_of }) : S.heading_friendly;
  }

  /* The local time (ms) a 1-minute period that began at `iso` (service clock) ends. The
   * device's clock is trusted unless it is clearly behind the service's (the period would
   * start in the future): then the minute counts from when this page first saw it. */
  function deadline(iso, key) {
    const began = Date.parse(iso || '');
    if (Number.isNaN(began)) return 0;
    const now = Date.now();
    if (now - began >= -5000) return began + INTERVAL_MS;
    if (!firstSeen.has(key)) firstSeen.set(key, now);
    return firstSeen.get(key) + INTERVAL_MS;
  }

  function clockText(until) {
    if (!until) return '';
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    return Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0');
  }

  function winnerFirst(game) {
    const score = game.score || [0, 0];
    return game.winner === 2 ? [score[1], score[0]] : score;
  }

  function view(s) {
    const g = s.game_data;
    const doubles = g.game_type === 'double';
    const won = s.games_won || [0, 0];
    const games = s.games || [];
    const last = games.length ? games[games.length - 1] : null;
    const names = { 1: g.player1, 2: g.player2 };
    const playing = s.status === 'in_progress';
    const dash = (pair) => pair[0] + '–' + pair[1];
    const lastGame = s.last_game && (s.status === 'between_games' || s.status === 'finished') ? s.last_game : null;
    const timeout = playing && s.timeout && (s.timeout.side === 1 || s.timeout.side === 2) ? s.timeout : null;
    let serving = '';
    if (playing && s.server_player) {
      serving = doubles && s.receiver_player
        ? rich(S.serves_to, { server: asName(s.server_player), receiver: asName(s.receiver_player) })
        : rich(S.serves_one, { server: asName(s.server_player) });
    }
    return {
      side: {
        name: names,
        score: { 1: g.score1, 2: g.score2 },
        games: { 1: won[0], 2: won[1] },
      },
      doubles: doubles,
      heading: headingText(s),
      status: statusText(s),
      serving: serving,
      best_of: (s.best_of || 1) > 1 ? format(S.best_of_n, { n: s.best_of }) : S.heading_friendly,
      game_list: games.length ? games.map(dash).join(', ') : '—',
      // After a best-of-N match the games tell who won; otherwise the last game's score; the
      // winner's number first, as it follows "won by ...".
      result: s.status === 'finished' && (s.best_of || 1) > 1
        ? dash(winnerFirst({ score: won, winner: won[1] > won[0] ? 2 : 1 }))
        : last ? dash(s.status === 'finished' ? winnerFirst({ score: last, winner: last[1] > last[0] ? 2 : 1 }) : last) : '',
      over: s.status === 'finished' || s.status === 'abandoned' ? 'yes' : '',
      final_game: s.status === 'finished' && last ? format(S.final_game, { score: dash(last) }) : '',
      timeout: timeout ? rich(S.timeout_side, { name: asName(names[timeout.side]) }) : '',
      timeout_until: timeout ? deadline(timeout.started_at, 'timeout ' + s.match_id + ' ' + timeout.started_at) : 0,
      interval: lastGame && s.status === 'between_games'
        ? rich(doubles ? S.game_to_pair : S.game_to, {
          // The winner's points first, as said aloud: "Game 3 to Petrov, 11-9".
          n: lastGame.game_no, name: asName(lastGame.winner_name || names[lastGame.winner]), score: dash(winnerFirst(lastGame)),
        })
        : '',
      interval_until: lastGame && s.status === 'between_games'
        ? deadline(lastGame.ended_at, 'interval ' + s.match_id + ' ' + lastGame.game_no) : 0,
      ends: s.ends_changed && (playing || s.status === 'between_games') ? S.change_ends : '',
      server: s.status === 'finished' || s.status === 'abandoned' ? 0 : g.server,
      server_player: playing ? s.server_player : null,
      receiver_player: playing ? s.receiver_player : null,
      left: s.left_side === 2 ? 2 : 1,
    };
  }

  // "left"/"right" are the ends of the table (snapshot's left_side); "1"/"2" are the sides.
  function sideOf(name, v) {
    if (name === 'left') return v.left;
    if (name === 'right') return 3 - v.left;
    return Number(name);
  }

  function setValue(el, value) {
    const key = JSON.stringify(value === undefined || value === null ? '' : value);
    if (el.rcShown === key) return; // unchanged: nothing written (the tests count writes)
    el.rcShown = key;
    fill(el, value);
  }

  function tickClocks() {
    for (const el of $$('[data-clock]')) {
      const text = clockText(Number(el.dataset.until || 0));
      if (el.textContent !== text) el.textContent = text;
    }
  }
  let clockTimer = null;

  function render(root, snapshot) {
    const v = view(snapshot);
    for (const el of $$('[data-field]', root)) {
      const field = el.dataset.field;
      let value;
      if (el.dataset.side) {
        const side = sideOf(el.dataset.side, v);
        value = (v.side[field] || {})[side];
        // A pair on the TV: one name per line, so a long pair never wraps onto three lines.
        if (field === 'name' && 'lines' in el.dataset && v.doubles && typeof value === 'string') {
          const at = value.indexOf(' / ');
          if (at > 0) {
            const lines = [value.slice(0, at), value.slice(at + 3)];
            // Who of the pair serves and who receives the next rally.
            const roles = lines.map((n) => (n === v.server_player ? 'server' : n === v.receiver_player ? 'receiver' : ''));
            value = { lines: lines, roles: roles };
          }
        }
      } else value = v[field];
      setValue(el, value);
    }
    for (const el of $$('[data-show-if]', root)) el.hidden = !v[el.dataset.showIf];
    for (const el of $$('[data-clock]', root)) el.dataset.until = String(v[el.dataset.clock + '_until'] || 0);
    for (const el of $$('[data-serve]', root)) {
      el.classList.toggle('serving', sideOf(el.dataset.serve, v) === v.server);
    }
    root.dataset.status = snapshot.status || '';
    tickClocks();
    if (!clockTimer) clockTimer = setInterval(tickClocks, 250);
    scoreShown();
    return v;
  }

  // When the page first showed a score (ms since navigation): what `rallycast bench` reads.
  function scoreShown() {
    if (Rallycast.firstScoreAt) return;
    Rallycast.firstScoreAt = performance.now();
    performance.mark('rallycast:first-score');
  }

  // --- the pages ---

  const pages = {};

  pages.index = function () {
    const filter = new SnapshotFilter();
    follow({
      topics: [config.gamesTopic],
      onSnapshot(topic, snapshot) {
        const clubId = topic.split('/')[1];
        const item = $('.club-item[data-club="' + clubId + '"]');
        if (!item || !filter.accept(clubId, snapshot)) return;
        const live = snapshot !== null && snapshot.type !== 'game_end';
        item.dataset.match = live ? 'on' : 'off';
        const g = live ? snapshot.game_data : null;
        const state = $('[data-field="state"]', item);
        if (live) fill(state, rich('{a} ' + g.score1 + '–' + g.score2 + ' {b}', { a: asName(g.player1), b: asName(g.player2) }));
        else state.textContent = S.no_match;
        if (live) scoreShown();
      },
    });
  };

  pages.club = function () {
    const section = document.getElementById('liveGameSection');
    const noMatch = document.getElementById('no-match');
    const filter = new SnapshotFilter();
    const seenLive = new Set(); // matches this page showed in progress
    let hideTimer = null;

    function setVisible(visible) {
      section.hidden = !visible;
      noMatch.hidden = visible;
    }
    function cancelHide() {
      clearTimeout(hideTimer);
      hideTimer = null;
    }
    follow({
      topics: [config.topics.game],
      onSnapshot(topic, snapshot) {
        if (!filter.accept('club', snapshot)) return;
        cancelHide();
        if (snapshot === null) { setVisible(false); return; }
        if (snapshot.type !== 'game_end') {
          seenLive.add(snapshot.match_id);
          render(section, snapshot);
          setVisible(true);
        } else if (seenLive.has(snapshot.match_id)) {
          // The final score stays for a moment, then the section goes, as on the seed's page.
          render(section, snapshot);
          setVisible(true);
          hideTimer = setTimeout(() => setVisible(false), END_HIDE_MS);
        } else {
          setVisible(false); // a match that ended before this page opened: nothing is on
        }
      },
    });
  };

  pages.display = function () {
    const board = document.getElementById('board');
    const filter = new SnapshotFilter();
    let wakeLock = null;

    async function keepAwake() {
      if (!('wakeLock' in navigator) || document.visibilityState !== 'visible') return;
      try {
        wakeLock = await navigator.wakeLock.request('screen');
      } catch (error) {
        wakeLock = null; // not allowed here (no user gesture, battery saver): the kiosk's settings rule
      }
    }
    // The browser drops the lock whenever the tab is hidden; take it again when it is back.
    document.addEventListener('visibilitychange', keepAwake);
    keepAwake();
    // A visible button, not a tap anywhere: a kiosk's mouse or a TV remote can find it.
    const fullButton = document.getElementById('fullscreen');
    const showFullButton = () => { fullButton.hidden = Boolean(document.fullscreenElement) || !document.documentElement.requestFullscreen; };
    fullButton.addEventListener('click', () => {
      if (!document.fullscreenElement && document.documentElement.requestFullscreen) {
        document.documentElement.requestFullscreen().catch(() => {});
      }
      if (!wakeLock) keepAwake();
    });
    document.addEventListener('fullscreenchange', showFullButton);
    showFullButton();

    follow({
      topics: [config.topics.game],
      onSnapshot(topic, snapshot) {
        if (!filter.accept('display', snapshot)) return;
        if (snapshot === null) { board.dataset.state = 'idle'; return; }
        render(board, snapshot);
        board.dataset.state = snapshot.status;
      },
    });
  };

  pages.overlay = function () {
    const bug = document.getElementById('bug');
    const look = config.overlay;
    // CSSOM, not inline style attributes: the CSP allows no inline style.
    for (const name of ['bg', 'fg', 'accent']) document.documentElement.style.setProperty('--' + name, look[name]);
    document.documentElement.style.setProperty('--scale', String(look.scale));
    bug.classList.add('pos-' + look.pos);
    const filter = new SnapshotFilter();
    follow({
      topics: [config.topics.game],
      onSnapshot(topic, snapshot) {
        if (!filter.accept('overlay', snapshot)) return;
        bug.hidden = snapshot === null;
        if (snapshot !== null) render(bug, snapshot);
      },
    });
  };

  const Rallycast = { config, strings: S, format, showBanner, fill, rich, asName, sideOf, clockText, randomHex, brokerUrl, connect, follow, render, view, SnapshotFilter, pages, client: null, firstScoreAt: 0 };
  window.Rallycast = Rallycast;

  // This script is deferred, so the document is parsed by now: the spectator pages start at
  // once (their embedded score shows before mqtt.js runs); a page another script adds
  // (score.js) starts when every deferred script has run.
  let domLoaded = false;
  document.addEventListener('DOMContentLoaded', () => { domLoaded = true; });
  function startPage() {
    const page = pages[config.page];
    if (page) page();
  }
  if (pages[config.page] && document.readyState !== 'loading') startPage();
  else document.addEventListener('DOMContentLoaded', startPage);
})();
