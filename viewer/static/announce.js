/* Rallycast announce: what a change of score sounds like, says and notifies. Shared by the
 * embed (<rallycast-live>) and, later, the club page and the TV display. A classic script
 * that defines window.RallycastAnnounce once; it reads snapshots (docs/protocol.md) and never
 * computes a score: the rules stay in the scorer service.
 *
 *   const a = RallycastAnnounce.create({ lang: 'ru', clubName: 'Riverside' });
 *   (option where: 'Table 2' for one of several tables on a page)
 *   a.update(snapshot);          // each snapshot the page shows (null = no match)
 *   a.setSound(true);            // from a click: opt-in, remembered per device
 *   a.setSpeech(true);
 *   a.setNotify(true);           // asks the browser's permission (only from this call)
 *
 * Everything is off until the user turns it on; the choices live in localStorage
 * ("rallycast:sound", "rallycast:speech", "rallycast:notify" = "1" or "0"). */
(function () {
  'use strict';
  if (window.RallycastAnnounce) return; // loaded twice (the page and an embed): keep the first

  // Speech, per language. ITTF umpires call the server's score first (Handbook for Match
  // Officials 10.4.2): '7–5, Ivanov serves' means Ivanov has 7.
  const PHRASES = {
    en: {
      lang: 'en-GB',
      point: (a, b, server) => a + '–' + b + (server ? ', ' + server + ' serves' : ''),
      game: (n, name, a, b) => 'Game ' + n + ' to ' + name + ', ' + a + '–' + b,
      match: (name, a, b) => name + ' wins the match, ' + a + '–' + b,
      abandoned: () => 'Match abandoned',
      started: (p1, p2) => p1 + ' against ' + p2,
      notifyStart: 'Match started',
      notifyEnd: 'Match over',
    },
    ru: {
      lang: 'ru-RU',
      point: (a, b, server) => a + ':' + b + (server ? ', подаёт ' + server : ''),
      game: (n, name, a, b) => 'Партию ' + n + ' выиграл(а) ' + name + ', ' + a + ':' + b,
      match: (name, a, b) => 'Матч выиграл(а) ' + name + ', ' + a + ':' + b,
      abandoned: () => 'Матч прерван',
      started: (p1, p2) => p1 + ' — ' + p2,
      notifyStart: 'Матч начался',
      notifyEnd: 'Матч окончен',
    },
  };

  // Tones (Hz, ms): one short blip per point; a rising pair at a game's end; three rising
  // notes at the match's end. Oscillators: no audio files to fetch (and no CSP media-src).
  const TONES = {
    point: [[880, 90]],
    game: [[660, 140], [990, 220]],
    match: [[523, 160], [659, 160], [784, 160], [1047, 380]],
  };

  function phrases(lang) {
    return PHRASES[lang] || PHRASES.en;
  }

  function isLive(s) {
    return Boolean(s) && s.type !== 'game_end';
  }

  function score(s) {
    const g = (s && s.game_data) || {};
    return [g.score1, g.score2];
  }

  /* What happened from the snapshot `before` to `after` (both may be null): one of
   * 'start' (a new match in progress), 'point' (the score of the game moved: a point, a -1,
   * an undo), 'game' (a game ended, the match goes on), 'match' (the match ended: finished
   * or abandoned), or null (nothing to announce: a correction, a timeout, an older copy). */
  function change(before, after) {
    if (!after) return null;
    if (!before || before.match_id !== after.match_id) return isLive(after) ? 'start' : null;
    if (!(after.rev > before.rev)) return null;
    if (isLive(before) && !isLive(after)) return 'match';
    if (!isLive(after)) return null;
    if ((after.games || []).length > (before.games || []).length) return 'game';
    const [a1, b1] = score(before);
    const [a2, b2] = score(after);
    return a1 !== a2 || b1 !== b2 ? 'point' : null;
  }

  /* The words for a change (see change()), or '' when there is nothing to say. */
  function speechText(kind, s, lang) {
    const p = phrases(lang);
    const g = s.game_data;
    if (kind === 'point' || (kind === 'start' && (g.score1 || g.score2))) {
      const server = g.server === 2 ? 2 : 1;
      const [mine, theirs] = server === 1 ? [g.score1, g.score2] : [g.score2, g.score1];
      return p.point(mine, theirs, s.server_player || '');
    }
    if (kind === 'start') return p.started(g.player1, g.player2);
    if (kind === 'game' && s.last_game) {
      const [a, b] = s.last_game.score;
      return p.game(s.last_game.game_no, s.last_game.winner_name, Math.max(a, b), Math.min(a, b));
    }
    if (kind === 'match') {
      if (s.status === 'abandoned' || !g.winner) return p.abandoned();
      const won = (s.best_of || 1) > 1 ? s.games_won || [0, 0] : [g.score1, g.score2];
      return p.match(g.winner, Math.max(won[0], won[1]), Math.min(won[0], won[1]));
    }
    return '';
  }

  function readChoice(name) {
    try {
      return window.localStorage.getItem('rallycast:' + name) === '1';
    } catch (error) {
      return false; // storage blocked (a sandboxed frame, strict privacy settings): off
    }
  }

  function saveChoice(name, on) {
    try {
      window.localStorage.setItem('rallycast:' + name, on ? '1' : '0');
    } catch (error) {
      /* not remembered here; still on for this page */
    }
  }

  class Announcer {
    constructor(options) {
      this.lang = options.lang || document.documentElement.lang || 'en';
      this.title = options.clubName || 'Rallycast';
      // A table's name when the page follows several (the club page of a club with tables):
      // said before each announcement and put in the notification's title.
      this.where = options.where || '';
      this.sound = readChoice('sound');
      this.speech = readChoice('speech');
      this.notify = readChoice('notify') && typeof Notification !== 'undefined' && Notification.permission === 'granted';
      this.last = undefined; // undefined: nothing seen yet (the first snapshot is the baseline)
      this.audio = null;
      this.listeners = [];
    }

    onChange(listener) { this.listeners.push(listener); }
    changed() { for (const listener of this.listeners) listener(this); }

    setSound(on) {
      this.sound = Boolean(on);
      saveChoice('sound', this.sound);
      if (this.sound) this.context(); // created inside the click: browsers allow audio then
      this.changed();
    }

    setSpeech(on) {
      this.speech = Boolean(on);
      saveChoice('speech', this.speech);
      if (!this.speech && window.speechSynthesis) window.speechSynthesis.cancel();
      this.changed();
    }

    /* Turning notifications on asks the browser's permission (call it from a click). */
    async setNotify(on) {
      if (!on || typeof Notification === 'undefined') {
        this.notify = false;
      } else {
        const answer = Notification.permission === 'granted' ? 'granted' : await Notification.requestPermission();
        this.notify = answer === 'granted';
      }
      saveChoice('notify', this.notify);
      this.changed();
      return this.notify;
    }

    context() {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) return null;
      if (!this.audio) this.audio = new Context();
      if (this.audio.state === 'suspended') this.audio.resume().catch(() => {});
      return this.audio;
    }

    beep(kind) {
      const ctx = this.context();
      if (!ctx) return;
      let at = ctx.currentTime + 0.01;
      for (const [frequency, ms] of TONES[kind]) {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.type = 'sine';
        osc.frequency.value = frequency;
        // A short fade in and out: no click at the edges.
        gain.gain.setValueAtTime(0, at);
        gain.gain.linearRampToValueAtTime(0.25, at + 0.01);
        gain.gain.linearRampToValueAtTime(0, at + ms / 1000);
        osc.connect(gain).connect(ctx.destination);
        osc.start(at);
        osc.stop(at + ms / 1000 + 0.02);
        at += ms / 1000 + 0.03;
      }
    }

    say(text) {
      if (!text || !window.speechSynthesis || typeof SpeechSynthesisUtterance === 'undefined') return;
      const utterance = new SpeechSynthesisUtterance(this.where ? this.where + '. ' + text : text);
      utterance.lang = phrases(this.lang).lang;
      // Only the newest score matters: a queue of old ones would lag behind the table. With
      // several tables, one table's news must not cut another's short: they queue.
      if (!this.where) window.speechSynthesis.cancel();
      window.speechSynthesis.speak(utterance);
    }

    notifyNow(kind, s) {
      if (!this.notify || typeof Notification === 'undefined' || Notification.permission !== 'granted') return;
      if (document.visibilityState !== 'hidden') return; // the page is in sight: it shows it
      const p = phrases(this.lang);
      const g = s.game_data;
      const body = kind === 'start' ? g.player1 + ' – ' + g.player2 : speechText('match', s, this.lang);
      try {
        const title = this.where ? this.title + ' · ' + this.where : this.title;
        new Notification(title + ': ' + (kind === 'start' ? p.notifyStart : p.notifyEnd), {
          body, tag: 'rallycast-' + s.match_id, lang: p.lang,
        });
      } catch (error) {
        /* Android Chrome allows notifications only from a service worker: nothing to do here */
      }
    }

    /* Feed every snapshot the page shows, in order (null = the club has no match). Returns
     * the change it announced (see change()), or null. */
    update(snapshot) {
      const before = this.last;
      // A copy the page has seen already (the broker resends retained ones after a
      // reconnect) or an older one: not news, and not the new baseline either.
      if (before && snapshot && before.match_id === snapshot.match_id && !(snapshot.rev > before.rev)) return null;
      this.last = snapshot;
      if (before === undefined) return null; // what was on when the page opened: no news
      const kind = change(before, snapshot);
      if (!kind) return null;
      if (this.sound && kind !== 'start') this.beep(kind);
      if (this.speech) this.say(speechText(kind, snapshot, this.lang));
      if (kind === 'start' || kind === 'match') this.notifyNow(kind, snapshot);
      return kind;
    }
  }

  window.RallycastAnnounce = {
    change, speechText, phrases, TONES,
    create: (options) => new Announcer(options || {}),
  };
})();
