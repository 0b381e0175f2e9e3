/* Rallycast live pages: one MQTT-over-WebSocket connection per page (mqtt.js), the service's
 * snapshots rendered as text. The rules live in the scorer service: nothing here computes a
 * score or a server, it only places what the snapshot says. */
(function () {
  'use strict';

  const config = JSON.parse(document.getElementById('rallycast-config').textContent);
  const S = config.strings;
  // How a snapshot is shown (scoreview.js, shared with the <rallycast-live> element).
  const V = window.RallycastView;
  const { format, isSnapshot, SnapshotFilter, fill, rich, asName, sideOf, clockText } = V;
  const AUTH_REFUSED = new Set([4, 5]); // CONNACK: bad user name or password / not authorised
  // After the first subscription, how long the broker gets to send the retained snapshot of
  // a topic whose snapshot came embedded in the page; none by then: the club has no match.
  const RETAINED_GRACE_MS = 2000;

  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));

  const brokerUrl = () => window.RallycastEarly.url; // preconnect.js works it out

  // mqtt.js's `servers`: every node of a cluster, the page's own first (preconnect.js
  // shuffled them); each reconnect goes to the next. None for a single broker.
  function brokerServers() {
    const urls = window.RallycastEarly.urls || [];
    if (urls.length < 2) return undefined;
    return urls.map((text) => {
      const url = new URL(text);
      const protocol = url.protocol.replace(/:$/, '');
      return { host: url.hostname, port: Number(url.port) || (protocol === 'wss' ? 443 : 80), protocol };
    });
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

  function randomHex(bytes) {
    // crypto.randomUUID needs a secure context; a club's LAN page is often plain http.
    return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function showBanner(id, text) {
    const banner = document.getElementById(id);
    if (!banner) return;
    if (text) banner.textContent = text;
    banner.hidden = !text;
  }

  /* Connect to the broker. options: username, password, topics (subscribed once; mqtt.js
   * resubscribes after each reconnect and the broker resends the retained snapshots),
   * qos1 (topics subscribed at QoS 1; the others at QoS 0), optional (topics whose
   * refusal must not cost the others),
   * onSnapshot(topic, snapshot|null), onMessage(topic, text), onConnect(),
   * onAuthRefused(). Returns the mqtt.js client. */
  // MQTT keep-alive: mqtt.js pings after KEEPALIVE_S without an ack and gives the connection up
  // half a period later, so a frozen or dead connection shows within about 3 s (asked: 5 s).
  const KEEPALIVE_S = 2;
  const STATUS_TEXT = { offline: 'scorer_offline', stalled: 'scorer_stalled' };

  function connect(options) {
    if (typeof mqtt === 'undefined') return null; // the server page already says mqtt.js is missing
    if (!brokerUrl()) return null; // no usable host to connect to (scorer/ws_urls.py)
    let socket = null; // the WebSocket under the current connection
    const client = mqtt.connect(brokerUrl(), {
      servers: brokerServers(),
      protocolVersion: 4,
      reconnectPeriod: 1000, // the pages' reconnect delay; the Python clients': scorer/timing.py
      connectTimeout: 4000,
      keepalive: KEEPALIVE_S,
      clean: true,
      clientId: 'rallycast-' + config.page + '-' + randomHex(6),
      username: options.username,
      password: options.password,
      createWebsocket: (url, protocols) => {
        // The socket preconnect.js opened, once, while it is young enough; later
        // connections open their own.
        socket = window.RallycastEarly.take(url) || new WebSocket(url, protocols);
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
        // QoS 0 for what spectators follow (retained snapshots come again after a reconnect;
        // on a NATS cluster each QoS 1 subscription is a replicated JetStream consumer);
        // QoS 1 only for options.qos1 (the scorer page's replies).
        const qos1 = new Set(options.qos1 || []);
        for (const topic of options.topics.concat([config.statusTopic])) wanted[topic] = { qos: qos1.has(topic) ? 1 : 0 };
        // options.optional (a club's other tables) in a SUBSCRIBE of their own: mqtt.js
        // forgets every topic of a SUBSCRIBE the broker refused one of (a broker whose ACL
        // predates tables) and would not subscribe them again after a reconnect.
        if (options.optional && options.optional.length) {
          const optional = {};
          for (const topic of options.optional) optional[topic] = { qos: 0 };
          client.subscribe(optional, () => {});
        }
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
      if (!options.onSnapshot || !/^clubs\/.+\/game$/.test(topic)) return; // a table's snapshot
      heard.add(topic);
      const snapshot = V.parseSnapshot(text);
      if (snapshot !== undefined) options.onSnapshot(topic, snapshot);
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

  // --- rendering: scoreview.js puts a snapshot into the elements under a root ---

  function render(root, snapshot) {
    const v = V.render(root, snapshot, S);
    scoreShown();
    return v;
  }
  const view = (snapshot) => V.view(snapshot, S);

  // When the page first showed a score (ms since navigation): what `rallycast bench` reads.
  function scoreShown() {
    if (Rallycast.firstScoreAt) return;
    Rallycast.firstScoreAt = performance.now();
    performance.mark('rallycast:first-score');
  }

  // --- the pages ---

  const pages = {};

  // The club list: per club, whether a match is on, with the score of the lowest-numbered
  // table that has one. config.clubs[i].topics lists each club's table topics (table 1
  // first); the other tables come through config.tablesTopic, subscribed when a club has them.
  pages.index = function () {
    const filter = new SnapshotFilter();
    const where = new Map(); // game topic -> [club id, table number]
    for (const club of config.clubs) (club.topics || []).forEach((topic, i) => where.set(topic, [club.id, i + 1]));
    const live = new Map(); // club id -> Map(table -> snapshot in progress)
    follow({
      topics: [config.gamesTopic],
      optional: config.clubs.some((club) => (club.topics || []).length > 1) ? [config.tablesTopic] : [],
      onSnapshot(topic, snapshot) {
        const found = where.get(topic);
        if (!found || !filter.accept(topic, snapshot)) return;
        const [clubId, table] = found;
        const item = $('.club-item[data-club="' + clubId + '"]');
        if (!item) return;
        if (!live.has(clubId)) live.set(clubId, new Map());
        const tables = live.get(clubId);
        if (snapshot !== null && snapshot.type !== 'game_end') tables.set(table, snapshot);
        else tables.delete(table);
        const first = Math.min(...tables.keys());
        const shown = tables.get(first);
        item.dataset.match = shown ? 'on' : 'off';
        const state = $('[data-field="state"]', item);
        if (shown) {
          const g = shown.game_data;
          fill(state, rich('{a} ' + g.score1 + '–' + g.score2 + ' {b}', { a: asName(g.player1), b: asName(g.player2) }));
          scoreShown();
        } else state.textContent = S.no_match;
      },
    });
  };

  // One card per table (the club's tables in order, from the server); each follows its own
  // table's snapshots: appears when its match starts, hides 3 s after its end. The two
  // filters of config.gameFilters follow every table of the club.
  pages.club = function () {
    const noMatch = document.getElementById('no-match');
    const filter = new SnapshotFilter();
    const cards = new Map(); // game topic -> update(snapshot)
    const shown = new Set(); // tables with a card on screen
    for (const card of $$('section.live[data-topic]')) {
      const table = card.dataset.table;
      cards.set(card.dataset.topic, V.liveSection(
        (snapshot) => render(card, snapshot),
        (visible) => {
          card.hidden = !visible;
          if (visible) shown.add(table); else shown.delete(table);
          noMatch.hidden = shown.size > 0;
        },
      ));
    }
    // gameFilters: [table 1's topic, the other tables' filter]; a club with one table needs
    // only the first, as before tables.
    follow({
      topics: config.gameFilters.slice(0, 1),
      optional: cards.size > 1 ? config.gameFilters.slice(1) : [],
      onSnapshot(topic, snapshot) {
        const update = cards.get(topic); // none: a table this club does not have
        if (update && filter.accept(topic, snapshot)) update(snapshot);
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
