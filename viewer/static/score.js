/* The scorer's phone page: sign in as the club's scorer user, send commands, show the replies.
 * It renders the service's snapshots like every other page; it never computes the score. */
(function () {
  'use strict';

  const R = window.Rallycast;
  const S = R.strings;
  const REPLY_WAIT_MS = 5000;
  const END_CONFIRM_MS = 3000;

  R.pages.score = function () {
    const config = R.config;
    const clubId = config.club.id;
    const passwordKey = 'rallycast.password.' + clubId; // kept on this device only, as asked
    const scorer = document.getElementById('scorer');
    const replyLine = document.getElementById('reply');
    const signinForm = document.getElementById('signin-form');
    const signinMessage = document.getElementById('signin-message');
    const startForm = document.getElementById('start-form');
    const forceNote = document.getElementById('force-note');
    const filter = new R.SnapshotFilter();
    const pending = new Map(); // command id -> timer waiting for its reply
    let client = null;
    let snapshot = null;
    let wantNewMatch = false;
    let endArmedUntil = 0;

    function matchInProgress() {
      return snapshot !== null && (snapshot.status === 'in_progress' || snapshot.status === 'between_games');
    }

    // data-view picks which panels show (CSS: [data-show]); the start form when nothing is on.
    function setView() {
      if (!client) { scorer.dataset.view = 'signin'; return; }
      const starting = wantNewMatch || !matchInProgress();
      scorer.dataset.view = starting ? 'start' : 'match';
      forceNote.hidden = !(starting && matchInProgress());
    }

    function say(text, kind) {
      replyLine.textContent = text;
      replyLine.dataset.kind = kind || '';
    }

    function send(command) {
      if (!client || !client.connected) { say(S.reconnecting, 'refused'); return; }
      command.id = R.randomHex(8);
      pending.set(command.id, setTimeout(() => {
        if (pending.delete(command.id)) say(S.no_reply, 'refused');
      }, REPLY_WAIT_MS));
      client.publish(config.topics.cmd, JSON.stringify(command), { qos: 1 });
      say(S.sent, 'sent');
    }

    function onReply(text) {
      let reply;
      try { reply = JSON.parse(text); } catch (error) { return; }
      if (!reply || !pending.has(reply.id)) return; // another scorer's command
      clearTimeout(pending.get(reply.id));
      pending.delete(reply.id);
      if (reply.ok) say(S.accepted, 'ok');
      else say(R.format(S.refused, { reason: reply.error || '?' }), 'refused');
    }

    function signIn(password) {
      signinMessage.textContent = S.connecting;
      client = R.connect({
        username: clubId,
        password: password,
        topics: [config.topics.game, config.topics.reply],
        onConnect() {
          localStorage.setItem(passwordKey, password);
          signinMessage.textContent = '';
          setView();
        },
        onAuthRefused() {
          localStorage.removeItem(passwordKey);
          client = null;
          signinMessage.textContent = S.wrong_password;
          setView();
        },
        onMessage(topic, text) {
          if (topic === config.topics.reply) onReply(text);
        },
        onSnapshot(topic, next) {
          if (!filter.accept('score', next)) return;
          const before = snapshot;
          snapshot = next;
          // A new match came in (from here or elsewhere): the start form has done its job.
          if (next && (!before || before.match_id !== next.match_id)) wantNewMatch = false;
          if (next) {
            R.render(scorer, next);
            // What the snapshot says is used up cannot be pressed again.
            for (const button of scorer.querySelectorAll('[data-cmd="timeout"]')) {
              button.disabled = (next.timeouts_used || [0, 0])[Number(button.dataset.side) - 1] > 0;
            }
            scorer.querySelector('[data-cmd="expedite"]').disabled = Boolean(next.expedite);
          }
          setView();
        },
      });
      setView();
      scorer.dataset.view = 'connecting';
    }

    signinForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const password = signinForm.elements.password.value;
      if (password) signIn(password);
    });

    document.getElementById('sign-out').addEventListener('click', () => {
      localStorage.removeItem(passwordKey);
      if (client) client.end(true);
      client = null;
      setView();
    });

    scorer.addEventListener('click', (event) => {
      const button = event.target.closest('[data-cmd]');
      if (!button) return;
      const side = Number(button.dataset.side);
      switch (button.dataset.cmd) {
        case 'plus': send({ cmd: 'point', side: side }); break;
        case 'minus': send({ cmd: 'point', side: side, delta: -1 }); break;
        case 'timeout': send({ cmd: 'timeout', side: side }); break;
        case 'undo': send({ cmd: 'undo' }); break;
        case 'expedite': send({ cmd: 'expedite' }); break;
        case 'new': wantNewMatch = true; setView(); break;
        case 'back': wantNewMatch = false; setView(); break;
        case 'end':
          // Two taps, so a stray thumb does not abandon the match.
          if (Date.now() < endArmedUntil) {
            endArmedUntil = 0;
            button.textContent = S.end_match;
            send({ cmd: 'end' });
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
      } else {
        command.player1 = f.p1a.value.trim();
        command.player2 = f.p2a.value.trim();
      }
      if (matchInProgress()) command.force = true; // the scorer asked for a new match
      send(command);
    });
    startForm.dataset.type = 'single';

    const stored = localStorage.getItem(passwordKey);
    if (stored) signIn(stored);
    else setView();
  };
})();
