/* How a snapshot is shown, in one place for our pages (live.js) and the <rallycast-live>
 * element on other sites (embed.js, served after this file at /embed.js): which snapshot
 * wins, what each [data-field] says, the 1-minute clocks, and the live section that appears
 * when a match starts and hides 3 s after it ends. It reads no config and opens no
 * connection; the words come in as an argument (`S`, viewer/i18n.py's browser strings).
 *
 * Elements say what they show with data-field / data-side / data-serve / data-show-if /
 * data-clock. A value is a string, or {tpl, v} (a sentence with names in it), or {lines} (a
 * doubles pair's names, one per line). Names are always text inside <bdi>: a bidi-override
 * character in a name can reorder only the name itself, never the score next to it. */
(function () {
  'use strict';

  const END_HIDE_MS = 3000; // the live section hides 3 s after a match ends (the seed's page)
  const PERIOD_MS = 60000; // ITTF: intervals of up to 1 minute between games; timeouts 1 minute
  const firstSeen = new Map(); // clock fallback, see deadline()

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
  }

  function isSnapshot(value) {
    return Boolean(value) && typeof value === 'object' && Boolean(value.game_data) && typeof value.game_data === 'object';
  }

  // A retained message's text: a snapshot, null (empty payload: no match), or undefined
  // (not a snapshot: ignored).
  function parseSnapshot(text) {
    if (!text.trim()) return null;
    let snapshot;
    try { snapshot = JSON.parse(text); } catch (error) { return undefined; }
    return isSnapshot(snapshot) ? snapshot : undefined;
  }

  // A snapshot is shown only if its match differs from the shown one or its rev is greater:
  // after a reconnect the broker resends the retained copy, and a late copy must not win.
  /* Never back in time: a broker may serve an old retained copy (nats-server after a node's
   * loss, docs/scale.md "Failover"; a bridge catching up). The same match: a rev not above
   * the shown one is dropped. Another match: one last updated before the shown one (the
   * service's updated_at, ISO-8601 UTC with milliseconds, so text order is time order) is
   * dropped; a new match is always updated later than the one it replaces. */
  class SnapshotFilter {
    constructor() { this.shown = new Map(); }
    accept(key, snapshot) {
      const shown = this.shown.get(key);
      if (snapshot === null) { this.shown.delete(key); return shown !== undefined; }
      if (shown && shown.match_id === snapshot.match_id && !(snapshot.rev > shown.rev)) return false;
      if (shown && shown.match_id !== snapshot.match_id && shown.updated_at && snapshot.updated_at
          && snapshot.updated_at < shown.updated_at) return false;
      this.shown.set(key, { match_id: snapshot.match_id, rev: snapshot.rev, updated_at: snapshot.updated_at || '' });
      return true;
    }
  }

  function rich(tpl, values) { return { tpl: tpl, v: values }; }
  const asName = (name) => ({ name: name || '' });

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

  function statusText(s, S) {
    const doubles = s.game_data.game_type === 'double';
    switch (s.status) {
      case 'between_games': return S.between_games;
      case 'finished': return rich(doubles ? S.won_by_pair : S.won_by, { name: asName(s.game_data.winner) });
      case 'abandoned': return S.abandoned;
      default: return format(S.game_no, { n: s.game_no || 1 });
    }
  }

  function headingText(s, S) {
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
    if (now - began >= -5000) return began + PERIOD_MS;
    if (!firstSeen.has(key)) firstSeen.set(key, now);
    return firstSeen.get(key) + PERIOD_MS;
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

  // What every field shows for snapshot `s`, in the words `S`.
  function view(s, S) {
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
      heading: headingText(s, S),
      status: statusText(s, S),
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

  // The clocks of every rendered root (a page, a card, an element's shadow root), ticked
  // together; a root no longer in a document is dropped.
  const clockRoots = new Set();
  let clockTimer = null;
  function tick(root) {
    for (const el of root.querySelectorAll('[data-clock]')) {
      const text = clockText(Number(el.dataset.until || 0));
      if (el.textContent !== text) el.textContent = text;
    }
  }
  function tickAll() {
    for (const root of clockRoots) {
      if (root.isConnected) tick(root);
      else clockRoots.delete(root);
    }
    if (!clockRoots.size) { clearInterval(clockTimer); clockTimer = null; }
  }

  // Put snapshot `s` into the elements under `root`; returns the view.
  function render(root, s, S) {
    const v = view(s, S);
    for (const el of root.querySelectorAll('[data-field]')) {
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
    for (const el of root.querySelectorAll('[data-show-if]')) el.hidden = !v[el.dataset.showIf];
    for (const el of root.querySelectorAll('[data-clock]')) el.dataset.until = String(v[el.dataset.clock + '_until'] || 0);
    for (const el of root.querySelectorAll('[data-serve]')) {
      el.classList.toggle('serving', sideOf(el.dataset.serve, v) === v.server);
    }
    if (root.dataset) root.dataset.status = s.status || '';
    tick(root);
    clockRoots.add(root);
    if (!clockTimer) clockTimer = setInterval(tickAll, 250);
    return v;
  }

  /* The live section of one table (the club page's card, the embed element): shown while a
   * match this page saw in progress is on, the final score kept END_HIDE_MS, then hidden; a
   * match that ended before the page opened is not shown. show(snapshot) renders,
   * setVisible(bool) shows or hides. Returns update(snapshot | null), to be called with the
   * snapshots a SnapshotFilter accepted. */
  function liveSection(show, setVisible) {
    const seenLive = new Set(); // matches this section showed in progress
    let hideTimer = null;
    return function update(snapshot) {
      clearTimeout(hideTimer);
      hideTimer = null;
      if (snapshot === null) { setVisible(false); return; }
      if (snapshot.type !== 'game_end') {
        seenLive.add(snapshot.match_id);
        show(snapshot);
        setVisible(true);
      } else if (seenLive.has(snapshot.match_id)) {
        // The final score stays for a moment, then the section goes, as on the seed's page.
        show(snapshot);
        setVisible(true);
        hideTimer = setTimeout(() => setVisible(false), END_HIDE_MS);
      } else {
        setVisible(false); // a match that ended before this page opened: nothing is on
      }
    };
  }

  window.RallycastView = {
    END_HIDE_MS, format, isSnapshot, parseSnapshot, SnapshotFilter, rich, asName, fill,
    view, sideOf, clockText, render, liveSection,
  };
})();
