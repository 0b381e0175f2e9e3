/* Opens the broker's WebSocket while mqtt.js (a large script) is still being fetched and
 * compiled, so the handshake overlaps with it; live.js hands this socket to mqtt.js for its
 * first connection. Loaded without defer, right after the page's config block. */
(function () {
  'use strict';
  const config = JSON.parse(document.getElementById('rallycast-config').textContent);

  function brokerUrl() {
    if (config.wsUrl) return config.wsUrl;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const host = location.hostname.includes(':') ? '[' + location.hostname + ']' : location.hostname;
    return scheme + '://' + host + ':' + config.wsPort + '/mqtt';
  }

  const early = { url: brokerUrl(), socket: null };
  // Spectator pages connect at once; the scorer's page waits for a password.
  if (config.page !== 'score' && config.page !== 'error' && typeof WebSocket !== 'undefined') {
    early.socket = new WebSocket(early.url, ['mqtt']);
    early.socket.binaryType = 'arraybuffer';
    early.socket.addEventListener('open', () => performance.mark('rallycast:ws-open'));
  }
  window.RallycastEarly = early;
})();
