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
  function connect(options) {
    if (typeof mqtt === 'undefined') return null; // the server page already says mqtt.js is missing
    const client = mqtt.connect(brokerUrl(), {
      protocolVersion: 4,
      reconnectPeriod: 1000,
      connectTimeout: 4000,
      keepalive: 20,
      clean: true,
      clientId: 'rallycast-' + config.page + '-' + randomHex(6),
      username: options.username,
      password: options.password,
      createWebsocket: (url, protocols) => earlySocket(url) || new WebSocket(url, protocols),
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
    client.on('offline', () => showBanner('connection-banner', S.reconnecting));
    client.on('error', (error) => {
      if (AUTH_REFUSED.has(error.code)) {
        client.end(true);
        if (options.onAuthRefused) options.onAuthRefused();
      }
    });
    client.on('message', (topic, payload) => {
      const text = payload.toString();
      if (topic === config.statusTopic) {
        showBanner('scorer-banner', text === 'offline' ? S.scorer_offline : '');
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
    Rallycast.client = client;
    return client;
  }

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

  function statusText(s) {
    switch (s.status) {
      case 'between_games': return S.between_games;
      case 'finished': return format(S.won_by, { name: s.game_data.winner || '' });
      case 'abandoned': return S.abandoned;
      default: return format(S.game_no, { n: s.game_no || 1 });
    }
  }

  function view(s) {
    const g = s.game_data;
    const won = s.games_won || [0, 0];
    const games = s.games || [];
    const last = games.length ? games[games.length - 1] : null;
    return {
      side: {
        name: { 1: g.player1, 2: g.player2 },
        score: { 1: g.score1, 2: g.score2 },
        games: { 1: won[0], 2: won[1] },
      },
      status: statusText(s),
      serving: s.status === 'in_progress' && s.server_player ? s.server_player + ' ' + S.serves : '',
      game_list: games.length ? games.map((pair) => pair[0] + '–' + pair[1]).join(', ') : '—',
      // After a best-of-N match the games tell who won; otherwise the last game's score.
      result:
        s.status === 'finished' && (s.best_of || 1) > 1
          ? won[0] + '–' + won[1]
          : last ? last[0] + '–' + last[1] : '',
      server: s.status === 'finished' || s.status === 'abandoned' ? 0 : g.server,
      left: s.left_side === 2 ? 2 : 1,
    };
  }

  // "left"/"right" are the ends of the table (snapshot's left_side); "1"/"2" are the sides.
  function sideOf(name, v) {
    if (name === 'left') return v.left;
    if (name === 'right') return 3 - v.left;
    return Number(name);
  }

  function render(root, snapshot) {
    const v = view(snapshot);
    for (const el of $$('[data-field]', root)) {
      const field = el.dataset.field;
      let value;
      if (el.dataset.side) value = (v.side[field] || {})[sideOf(el.dataset.side, v)];
      else value = v[field];
      const text = value === undefined || value === null ? '' : String(value);
      if (el.textContent !== text) el.textContent = text; // text only: names never become HTML
    }
    for (const el of $$('[data-serve]', root)) {
      el.classList.toggle('serving', sideOf(el.dataset.serve, v) === v.server);
    }
    root.dataset.status = snapshot.status || '';
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
        $('[data-field="state"]', item).textContent = live
          ? '🔴 ' + g.player1 + ' ' + g.score1 + '–' + g.score2 + ' ' + g.player2
          : S.no_match;
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
    board.addEventListener('click', () => {
      if (!document.fullscreenElement && document.documentElement.requestFullscreen) {
        document.documentElement.requestFullscreen().catch(() => {});
      }
      if (!wakeLock) keepAwake();
    });

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

  const Rallycast = { config, strings: S, format, randomHex, brokerUrl, connect, follow, render, view, SnapshotFilter, pages, client: null, firstScoreAt: 0 };
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
