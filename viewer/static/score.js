/* The scorer's phone page: sign in as the club's scorer user, send commands, show the replies.
 * It renders the service's snapshots like every other page; it never computes the score.
 *
 * Delivery (docs/protocol.md, "Ids make retries safe"): a press is done when the service's
 * reply for its id arrives. Every press gets a fresh id and joins a queue shown on the page;
 * only the first press of the queue is on the wire, and it is resent with the SAME id (after
 * 0.5 s, then doubling up to 4 s, for 30 s in all, and at once after each reconnect: the
 * algorithm of docs/protocol.md) until its reply arrives; then the next one goes. So a tap during a blip is one more press in the list, in
 * order, never a silent double point: a scorer who taps +1 twice meant two points (as on a
 * paper score sheet), and one who did not sees the second press queued and can take it back
 * with -1 or Undo once it is applied. The queue is kept in localStorage, so a reload (or a
 * phone that kills the tab) resends what the page showed as queued, with the same ids.
 *
 * Tables: a club with several tables gets a choice of table (#table-pick, the server's list
 * of the club's tables with their topics). The page then sends to that table's cmd topic and
 * waits for replies on its reply topic; the choice is remembered on this device, and a URL's
 * ?table= wins. Each table has its own queue; the table can change only while no press waits,
 * so a press always goes to the table it was made for. */
(function () {
  'use strict';

  const R = window.Rallycast;
  const S = R.strings;
  const END_CONFIRM_MS = 3000;
  const FIRST_RESEND_MS = 500; // then doubling, at most MAX_RESEND_MS
  const MAX_RESEND_MS = 4000;
  const GIVE_UP_MS = 30000; // a round of resends; a reconnect or "Send again" starts a new one
  const WATCHDOG_MS = 3000; // no reply this long while connected: say so

  R.pages.score = function () {
    const config = R.config;
    const clubId = config.club.id;
    // Sign-in (docs/security.md, "Device tokens"): the password goes once to the viewer,
    // which answers with a device token; only the token is kept (localStorage), and it is
    // what the page logs in to the broker with. Revoked (`rallycast passwd tokens revoke`,
    // a new password) or signed out, it stops working and the page asks for the password.
    // A viewer that cannot issue tokens (split layout on mosquitto) says `tokens_off`: then
    // the password is used as before but kept in memory only, so a reload asks again.
    const tokenKey = 'rallycast.token.' + clubId;
    const sessionUrl = '/clubs/' + encodeURIComponent(clubId) + '/session';
    // Older pages kept the password itself here: delete it at once, whatever happens next.
    localStorage.removeItem('rallycast.password.' + clubId);
    // The table: ?table= of the URL, else this device's last choice, else table 1.
    const tables = config.tables && config.tables.length ? config.tables : [{ table: 1, topics: config.topics }];
    const tableKey = 'rallycast.table.' + clubId;
    const tablePick = document.getElementById('table-pick');
    const known = (n) => tables.some((t) => t.table === n);
    let table = config.askedTable || Number(localStorage.getItem(tableKey)) || 1;
    if (!known(table)) table = 1;
    let topics = tables.find((t) => t.table === table).topics;
    if (config.askedTable) localStorage.setItem(tableKey, String(table));
    if (tablePick) tablePick.value = String(table);
    // Table 1's queue keeps the key it always had (a queue saved before tables still goes).
    const queueKeyOf = (n) => 'rallycast.queue.' + clubId + (n === 1 ? '' : '.table' + n);
    let queueKey = queueKeyOf(table);
    const scorer = document.getElementById('scorer');
    const replyLine = document.getElementById('reply');
    const startReply = document.getElementById('start-reply');
    const signinForm = document.getElementById('signin-form');
    const signinMessage = document.getElementById('signin-message');
    const startForm = document.getElementById('start-form');
    const startMessage = document.getElementById('start-message');
    const forceNote = document.getElementById('force-note');
    const queueBox = document.getElementById('queue-box');
    const queueList = document.getElementById('queue');
    const retryButton = document.getElementById('retry');
    let filter = new R.SnapshotFilter();
    let client = null;
    let snapshot = null;
    let shown = null; // view of the shown snapshot
    let wantNewMatch = false;
    let endArmedUntil = 0;

    // --- the queue of presses: [{id, command, label, tries}], the first is on the wire ---
    let queue = loadQueue();
    let resendTimer = null;
    let sentAt = 0; // when the first press was first sent in this round (0: not on the wire)
    // Presses this device left waiting on another table (a reload or another table's link
    // mid-queue): the page goes back to that table, as the table picker would not have left
    // it, so those presses are sent (or forgotten) and never wait unseen.
    let leftWaiting = false;
    if (!queue.length) {
      const other = tables.find((t) => t.table !== table && loadQueue(queueKeyOf(t.table)).length);
      if (other) {
        leftWaiting = true;
        table = other.table;
        topics = other.topics;
        queueKey = queueKeyOf(table);
        queue = loadQueue();
        localStorage.setItem(tableKey, String(table));
        if (tablePick) tablePick.value = String(table);
        const url = new URL(location.href);
        url.searchParams.set('table', String(table));
        history.replaceState(null, '', url);
      }
    }

    function loadQueue(key) {
      try {
        const stored = JSON.parse(localStorage.getItem(key || queueKey) || '[]');
        return Array.isArray(stored)
          ? stored.filter((p) => p && p.id && p.command).map((p) => ({ id: p.id, command: p.command, label: String(p.label || ''), tries: 0 }))
          : [];
      } catch (error) {
        return [];
      }
    }
    function saveQueue() {
      if (queue.length) localStorage.setItem(queueKey, JSON.stringify(queue.map((p) => ({ id: p.id, command: p.command, label: p.label }))));
      else localStorage.removeItem(queueKey);
    }

    function matchInProgress() {
      return snapshot !== null && (snapshot.status === 'in_progress' || snapshot.status === 'between_games');
    }
    function matchOver() {
      return snapshot !== null && (snapshot.status === 'finished' || snapshot.status === 'abandoned');
    }

    // data-view picks which panels show (CSS: [data-show]); after a match its result, with a
    // "New match" button; the start form only when asked for or when nothing is on.
    function setView() {
      if (!client) { scorer.dataset.view = 'signin'; return; }
      let view = 'match';
      if (wantNewMatch || snapshot === null) view = 'start';
      else if (matchOver()) view = 'result';
      scorer.dataset.view = view;
      forceNote.hidden = !(view === 'start' && matchInProgress());
    }

    // The latest outcome, on the match screen and under the start form.
    function say(text, kind) {
      for (const line of [replyLine, startReply]) {
        line.textContent = text;
        line.dataset.kind = kind || '';
      }
    }

    function refusalText(reply) {
      const codes = S.codes || {};
      let reason = reply.code && codes[reply.code] ? R.format(codes[reply.code], reply.params || {}) : reply.error;
      if (!reason) reason = reply.code || '?';
      return R.format(S.refused, { reason: reason });
    }

    function renderQueue() {
      queueBox.hidden = queue.length === 0;
      scorer.dataset.pending = String(queue.length);
      const items = queue.map((press, index) => {
        const li = document.createElement('li');
        li.dataset.state = index === 0 ? 'pending' : 'queued';
        li.dataset.id = press.id;
        const label = document.createElement('bdi');
        label.textContent = press.label;
        li.append(label, ' · ' + (index === 0 ? S.pending : S.queued));
        return li;
      });
      queueList.replaceChildren(...items);
      retryButton.hidden = !(queue.length && queue[0].gaveUp);
    }

    function clearResend() {
      clearTimeout(resendTimer);
      resendTimer = null;
    }

    // Put the first press on the wire (again), with its id, and plan the next resend.
    function transmit() {
      clearResend();
      if (!queue.length || !client || !client.connected) return;
      const press = queue[0];
      if (!sentAt) sentAt = Date.now();
      if (Date.now() - sentAt >= GIVE_UP_MS) {
        press.gaveUp = true;
        renderQueue();
        say(R.format(S.gave_up, { s: GIVE_UP_MS / 1000 }), 'refused');
        return;
      }
      press.tries += 1;
      client.publish(topics.cmd, JSON.stringify(press.command), { qos: 1 });
      const wait = Math.min(FIRST_RESEND_MS * 2 ** (press.tries - 1), MAX_RESEND_MS);
      resendTimer = setTimeout(transmit, wait);
      renderQueue();
    }

    function newRound() {
      queue[0].tries = 0;
      queue[0].gaveUp = false;
      sentAt = 0;
      transmit();
    }

    function enqueue(command, label) {
      command.id = R.randomHex(8);
      // The match the press is meant for: the service refuses it (wrong_match) if another
      // match became current meanwhile (a new match started on another phone).
      if (command.cmd !== 'start' && snapshot && snapshot.match_id) command.match = snapshot.match_id;
      queue.push({ id: command.id, command: command, label: label, tries: 0 });
      saveQueue();
      renderQueue();
      say(S.pending, 'sent');
      if (queue.length === 1) transmit();
    }

    function onReply(text) {
      let reply;
      try { reply = JSON.parse(text); } catch (error) { return; }
      if (!reply || !queue.length || reply.id !== queue[0].id) return; // another scorer's, or an old resend's
      clearResend();
      queue.shift();
      sentAt = 0;
      saveQueue();
      renderQueue();
      R.showBanner('reply-banner', '');
      if (reply.ok) say(S.accepted, 'ok');
      else say(refusalText(reply), 'refused');
      if (queue.length) transmit();
    }

    // The reply watchdog: a press on the wire with no reply for WATCHDOG_MS. The keep-alive
    // catches a dead connection; this catches a service that does not answer.
    setInterval(() => {
      const late = queue.length && sentAt && client && client.connected ? Date.now() - sentAt : 0;
      R.showBanner('reply-banner', late >= WATCHDOG_MS ? R.format(S.no_answer, { s: Math.floor(late / 1000) }) : '');
    }, 500);

    retryButton.addEventListener('click', () => {
      if (queue.length) newRound();
    });
    // Forget the presses that wait. The one on the wire may still be applied: the snapshot
    // will show it, and Undo takes it back.
    document.getElementById('drop-queue').addEventListener('click', () => {
      clearResend();
      queue = [];
      sentAt = 0;
      saveQueue();
      renderQueue();
      R.showBanner('reply-banner', '');
      say('', '');
    });

    function sideName(side) {
      if (!snapshot) return '';
      return side === 1 ? snapshot.game_data.player1 : snapshot.game_data.player2;
    }

    function renderSnapshot(next) {
      shown = R.render(scorer, next);
      scorer.dataset.left = String(shown.left); // which side stands at the left end
      const used = next.timeouts_used || [0, 0];
      const playing = next.status === 'in_progress';
      for (const button of scorer.querySelectorAll('[data-cmd="timeout"]')) {
        const side = R.sideOf(button.dataset.end, shown);
        button.disabled = used[side - 1] > 0 || !playing;
      }
      scorer.querySelector('[data-cmd="expedite"]').disabled = Boolean(next.expedite) || !playing;
      // Older services send no can_undo/can_redo: then the buttons stay on.
      scorer.querySelector('[data-cmd="undo"]').disabled = next.can_undo === false;
      scorer.querySelector('[data-cmd="redo"]').disabled = !next.can_redo;
    }

    // Log in to the broker with `secret` (a device token, or the password in the fallback).
    // `fallback`: the password just typed, used (in memory only) if the broker refuses the
    // token it was just given (a viewer that issues tokens in front of a broker that cannot
    // check them).
    function connectWith(secret, fallback) {
      signinMessage.textContent = S.connecting;
      client = R.connect({
        username: clubId,
        password: secret,
        topics: [topics.game, topics.reply],
        qos1: [topics.reply],
        onConnect() {
          fallback = null; // accepted: the password is no longer needed anywhere
          signinMessage.textContent = '';
          setView();
          // Right after a (re)connect the first press goes again, same id, a fresh round.
          if (queue.length) newRound();
        },
        onOffline() { clearResend(); },
        onAuthRefused() {
          client = null;
          if (secret.startsWith('rct_')) {
            localStorage.removeItem(tokenKey);
            if (fallback) { dropToken(secret); connectWith(fallback, null); return; }
            signinMessage.textContent = S.signed_out; // revoked, or the password changed
          } else {
            signinMessage.textContent = S.wrong_password;
          }
          setView();
        },
        onMessage(topic, text) {
          if (topic === topics.reply) onReply(text);
        },
        onSnapshot(topic, next) {
          // A late copy from the table this page scored before is not this table's.
          if (topic !== topics.game || !filter.accept('score', next)) return;
          const before = snapshot;
          snapshot = next;
          // A new match came in (from here or elsewhere): the start form has done its job.
          if (next && (!before || before.match_id !== next.match_id)) wantNewMatch = false;
          if (next) renderSnapshot(next);
          setView();
        },
      });
      setView();
      if (client) scorer.dataset.view = 'connecting';
    }

    // The password, once, for a device token (viewer/session.py).
    let signingIn = false; // one sign-in at a time (a double tap on "Sign in")
    async function signIn(password) {
      if (signingIn || client) return;
      signingIn = true;
      try { await exchange(password); } finally { signingIn = false; }
    }
    async function exchange(password) {
      signinMessage.textContent = S.connecting;
      if (!config.tokens) {
        // This viewer cannot issue tokens: the password, in memory only (never stored).
        signinForm.elements.password.value = '';
        connectWith(password, null);
        return;
      }
      let answer = null;
      let body = {};
      try {
        answer = await fetch(sessionUrl, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ password: password }),
          credentials: 'same-origin',
          cache: 'no-store',
        });
        body = await answer.json().catch(() => ({}));
      } catch (error) {
        signinMessage.textContent = R.format(S.sign_in_failed, { reason: String(error.message || error) });
        return;
      }
      if (answer.status === 201 && typeof body.token === 'string') {
        signinForm.elements.password.value = '';
        localStorage.setItem(tokenKey, body.token);
        connectWith(body.token, password);
      } else if (answer.status === 404 && body.code === 'tokens_off') {
        signinForm.elements.password.value = '';
        connectWith(password, null); // memory only: never stored
      } else if (answer.status === 401) {
        signinMessage.textContent = S.wrong_password;
      } else if (answer.status === 429) {
        signinMessage.textContent = S.too_many_attempts;
      } else {
        signinMessage.textContent = R.format(S.sign_in_failed, { reason: body.error || String(answer.status) });
      }
    }

    // Remove a token on the server (sign out): best effort, the page forgets it anyway.
    function dropToken(token) {
      fetch(sessionUrl, {
        method: 'DELETE',
        headers: { Authorization: 'Bearer ' + token },
        credentials: 'same-origin',
        cache: 'no-store',
        keepalive: true,
      }).catch(() => {});
    }

    // Another table: only with no press waiting (each press goes to the table it was made
    // for); then follow that table's snapshot and replies instead.
    function switchTable(next) {
      if (next === table || !known(next)) return;
      if (queue.length) {
        tablePick.value = String(table);
        say(S.table_busy, 'refused');
        return;
      }
      clearResend();
      const before = topics;
      table = next;
      topics = tables.find((t) => t.table === table).topics;
      localStorage.setItem(tableKey, String(table));
      const url = new URL(location.href);
      url.searchParams.set('table', String(table));
      history.replaceState(null, '', url);
      queueKey = queueKeyOf(table);
      queue = loadQueue();
      sentAt = 0;
      filter = new R.SnapshotFilter();
      snapshot = null;
      shown = null;
      wantNewMatch = false;
      say('', '');
      renderQueue();
      if (client) {
        client.unsubscribe([before.game, before.reply]);
        client.subscribe({ [topics.game]: { qos: 0 }, [topics.reply]: { qos: 1 } });
        if (queue.length && client.connected) newRound(); // left from an earlier visit
      }
      setView();
    }
    if (tablePick) tablePick.addEventListener('change', () => switchTable(Number(tablePick.value)));

    signinForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const password = signinForm.elements.password.value;
      if (password) signIn(password);
    });

    document.getElementById('sign-out').addEventListener('click', () => {
      const token = localStorage.getItem(tokenKey);
      localStorage.removeItem(tokenKey);
      if (token) dropToken(token);
      if (client) client.end(true);
      client = null;
      clearResend();
      signinMessage.textContent = '';
      setView();
    });

    scorer.addEventListener('click', (event) => {
      const button = event.target.closest('[data-cmd]');
      if (!button || button.disabled) return;
      // A pad is an end of the table; the side there is read at the moment of the tap.
      const side = button.dataset.end && shown ? R.sideOf(button.dataset.end, shown) : 0;
      const name = sideName(side);
      switch (button.dataset.cmd) {
        case 'plus': enqueue({ cmd: 'point', side: side }, R.format(S.press_plus, { name: name })); break;
        case 'minus': enqueue({ cmd: 'point', side: side, delta: -1 }, R.format(S.press_minus, { name: name })); break;
        case 'timeout': enqueue({ cmd: 'timeout', side: side }, R.format(S.press_timeout, { name: name })); break;
        case 'undo': enqueue({ cmd: 'undo' }, S.press_undo); break;
        case 'redo': enqueue({ cmd: 'redo' }, S.press_redo); break;
        case 'expedite': enqueue({ cmd: 'expedite' }, S.press_expedite); break;
        case 'new': wantNewMatch = true; setView(); break;
        case 'back': wantNewMatch = false; setView(); break;
        case 'end':
          // Two taps, so a stray thumb does not abandon the match.
          if (Date.now() < endArmedUntil) {
            endArmedUntil = 0;
            button.textContent = S.end_match;
            enqueue({ cmd: 'end' }, S.press_end);
          } else {
            endArmedUntil = Date.now() + END_CONFIRM_MS;
            button.textContent = S.confirm_end;
            setTimeout(() => { button.textContent = S.end_match; }, END_CONFIRM_MS);
          }
          break;
      }
    });

    startForm.addEventListener('change', () => {
      startForm.dataset.type = startForm.elements.game_type.value;
      startMessage.textContent = '';
    });
    startForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const f = startForm.elements;
      const command = {
        cmd: 'start',
        game_type: f.game_type.value,
        best_of: Number(f.best_of.value),
        first_server: Number(f.first_server.value),
      };
      if (command.game_type === 'double') {
        command.players1 = [f.p1a.value.trim(), f.p1b.value.trim()];
        command.players2 = [f.p2a.value.trim(), f.p2b.value.trim()];
        // Refused here, before sending: a pair with an empty name is a typing slip.
        if (command.players1.concat(command.players2).some((name) => !name)) {
          startMessage.textContent = S.partner_missing;
          const empty = ['p1a', 'p1b', 'p2a', 'p2b'].filter((key) => !f[key].value.trim());
          for (const key of ['p1a', 'p1b', 'p2a', 'p2b']) f[key].setAttribute('aria-invalid', String(empty.includes(key)));
          f[empty[0]].focus();
          return;
        }
      } else {
        command.player1 = f.p1a.value.trim();
        command.player2 = f.p2a.value.trim();
      }
      startMessage.textContent = '';
      for (const key of ['p1a', 'p1b', 'p2a', 'p2b']) f[key].removeAttribute('aria-invalid');
      if (matchInProgress()) command.force = true; // the scorer asked for a new match
      enqueue(command, S.press_start);
    });
    startForm.dataset.type = 'single';

    renderQueue();
    if (leftWaiting) say(S.table_busy, 'refused');
    const stored = localStorage.getItem(tokenKey);
    if (stored) connectWith(stored, null);
    else setView();
  };
})();
