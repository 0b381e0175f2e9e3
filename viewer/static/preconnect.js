/* Opens the broker's WebSocket while mqtt.js (a large script) is still being fetched and
 * compiled, so the handshake overlaps with it; live.js hands this socket to mqtt.js for its
 * first connection. Loaded without defer, right after the page's config block. */
(function () {
  'use strict';
  const config = JSON.parse(document.getElementById('rallycast-config').textContent);

  // The broker's WebSocket URLs as the server worked them out from its settings for this
  // page (scorer/ws_urls.py): a cluster's nodes, or this page's host on ws_port. Shuffled
  // once per page, so the pages of a club spread over the nodes; mqtt.js goes on to the next
  // one in this order when its node is lost (live.js).
  function brokerUrls() {
    return (config.wsUrls || []).slice();
  }

  function shuffled(items) {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }

  const urls = shuffled(brokerUrls());
  const early = { url: urls[0], urls: urls, socket: null };
  // Spectator pages connect at once; the scorer's page waits for a password.
  if (early.url && config.page !== 'score' && config.page !== 'error' && typeof WebSocket !== 'undefined') {
    early.socket = new WebSocket(early.url, ['mqtt']);
    early.socket.binaryType = 'arraybuffer';
    early.socket.addEventListener('open', () => performance.mark('rallycast:ws-open'));
  }
  window.RallycastEarly = early;
})();
