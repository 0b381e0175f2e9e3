/* Sound, speech and notifications on our own pages (club page, TV display): the buttons in
 * #announce-controls, and the announcer (announce.js) fed from the page's own MQTT client
 * (live.js's Rallycast.client) and the snapshot embedded in the page. Loaded deferred after
 * live.js, mqtt.js and announce.js; touches nothing live.js renders. */
(function () {
  'use strict';
  const box = document.getElementById('announce-controls');
  if (!box || !window.RallycastAnnounce || !window.Rallycast || !Rallycast.config.topics) return;
  const config = Rallycast.config;
  const topic = config.topics.game;
  const words = box.dataset; // the buttons' labels: data-sound, data-speech, data-notify
  const RETAINED_GRACE_MS = 2000; // as live.js: how long the broker's retained copy may take

  const announcer = RallycastAnnounce.create({ lang: config.lang, clubName: config.club.name });

  // The buttons: off until clicked; a click is what lets the browser play sound and ask.
  for (const name of ['sound', 'speech', 'notify']) {
    if (name === 'notify' && typeof Notification === 'undefined') continue;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'announce-toggle';
    button.dataset.toggle = name;
    button.textContent = words[name] || name;
    button.addEventListener('click', (event) => {
      event.stopPropagation(); // the display's board goes full screen on a click
      if (name === 'sound') announcer.setSound(!announcer.sound);
      else if (name === 'speech') announcer.setSpeech(!announcer.speech);
      else announcer.setNotify(!announcer.notify);
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
      const found = JSON.parse(block.textContent)[topic];
      if (found && typeof found === 'object' && found.game_data) announcer.update(found);
    } catch (error) { /* live.js ignores a bad block too */ }
  }

  let heard = false;
  function onMessage(messageTopic, payload) {
    if (messageTopic !== topic) return;
    heard = true;
    const text = payload.toString();
    if (!text.trim()) { announcer.update(null); return; }
    let snapshot;
    try { snapshot = JSON.parse(text); } catch (error) { return; }
    if (snapshot && typeof snapshot === 'object' && snapshot.game_data) announcer.update(snapshot);
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
      if (!heard && announcer.last === undefined) announcer.update(null);
    }, RETAINED_GRACE_MS);
    if (client.connected) grace();
    else client.once('connect', grace);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', attach);
  else attach();

  Rallycast.announcer = announcer;
})();
