/* Sound, speech and notifications on our own pages (club page, TV display): the buttons in
 * #announce-controls, and the announcer (announce.js) fed from the page's own MQTT client
 * (live.js's Rallycast.client) and the snapshot embedded in the page. Loaded deferred after
 * live.js, mqtt.js and announce.js; touches nothing live.js renders. */
(function () {
  'use strict';
  const box = document.getElementById('announce-controls');
  if (!box || !window.RallycastAnnounce || !window.Rallycast || !Rallycast.config.topics) return;
  const config = Rallycast.config;
  const words = box.dataset; // the buttons' labels: data-sound, data-speech, data-notify
  const RETAINED_GRACE_MS = 2000; // as live.js: how long the broker's retained copy may take

  // One announcer per table the page shows: the club page of a club with several tables
  // shows them all (each announcement then starts with the table's name); a display, one.
  const tables = config.page === 'club' && Array.isArray(config.tables) && config.tables.length > 1
    ? config.tables.map((t) => [t.topics.game, t.name])
    : [[config.topics.game, '']];
  const announcers = new Map(tables.map(([topic, where]) => [
    topic, RallycastAnnounce.create({ lang: config.lang, clubName: config.club.name, where }),
  ]));
  const announcer = announcers.get(tables[0][0]); // holds the choices the buttons show

  // The buttons: off until clicked; a click is what lets the browser play sound and ask.
  const setters = { sound: 'setSound', speech: 'setSpeech', notify: 'setNotify' };
  for (const name of ['sound', 'speech', 'notify']) {
    if (name === 'notify' && typeof Notification === 'undefined') continue;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'announce-toggle';
    button.dataset.toggle = name;
    button.textContent = words[name] || name;
    button.addEventListener('click', async (event) => {
      event.stopPropagation(); // the display's board goes full screen on a click
      // The first table's announcer asks the browser (notifications) and makes the one audio
      // context, inside the click; the other tables' follow its answer.
      await announcer[setters[name]](!announcer[name]);
      for (const each of announcers.values()) {
        if (each === announcer) continue;
        each[name] = announcer[name];
        each.audio = announcer.audio;
      }
    });
    box.append(button);
  }
  function showChoices() {
    for (const button of box.querySelectorAll('[data-toggle]')) {
      button.setAttribute('aria-pressed', String(Boolean(announcer[button.dataset.toggle])));
    }
  }
  announcer.onChange(showChoices);
  showChoices();

  // The baseline: what the page opened with (announce.js tells only what changes after it).
  const block = document.getElementById('rc-snapshot');
  if (block) {
    try {
      const embedded = JSON.parse(block.textContent);
      for (const [topic, each] of announcers) {
        const found = embedded[topic];
        if (found && typeof found === 'object' && found.game_data) each.update(found);
      }
    } catch (error) { /* live.js ignores a bad block too */ }
  }

  const heard = new Set(); // topics a message came on
  function onMessage(messageTopic, payload) {
    const each = announcers.get(messageTopic);
    if (!each) return;
    heard.add(messageTopic);
    const text = payload.toString();
    if (!text.trim()) { each.update(null); return; }
    let snapshot;
    try { snapshot = JSON.parse(text); } catch (error) { return; }
    if (snapshot && typeof snapshot === 'object' && snapshot.game_data) each.update(snapshot);
  }

  let tries = 0;
  function attach() {
    const client = Rallycast.client;
    if (!client) {
      if (++tries < 100) setTimeout(attach, 100); // mqtt.js still loading: live.js connects soon
      return;
    }
    client.on('message', onMessage);
    const grace = () => setTimeout(() => {
      for (const [topic, each] of announcers) {
        if (!heard.has(topic) && each.last === undefined) each.update(null);
      }
    }, RETAINED_GRACE_MS);
    if (client.connected) grace();
    else client.once('connect', grace);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', attach);
  else attach();

  Rallycast.announcer = announcer;
  Rallycast.announcers = announcers;
})();
