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
  // take(url): the early socket for mqtt.js's first connection, once, or null.
  const early = { url: urls[0], urls: urls, take: () => null };
  // Spectator pages connect at once; the scorer's page waits for a password.
  if (early.url && config.page !== 'score' && config.page !== 'error' && typeof WebSocket !== 'undefined') {
    const socket = new WebSocket(early.url, ['mqtt']);
    socket.binaryType = 'arraybuffer';
    socket.addEventListener('open', () => performance.mark('rallycast:ws-open'));
    const opened = performance.now();
    // The broker drops a socket whose CONNECT has not come within its deadline (3 s,
    // broker/limits.py). If mqtt.js is still loading (a slow phone) when half of it is gone
    // (earlySocketMs, viewer/app.py), the page lets the socket go itself: mqtt.js opens its
    // own rather than write its CONNECT into one the broker may be closing at that moment.
    const graceMs = config.earlySocketMs;
    let kept = true;
    const letGo = () => {
      if (!kept) return;
      kept = false;
      // Closing a socket still opening logs an error in the console; close it once open.
      if (socket.readyState === WebSocket.CONNECTING) socket.addEventListener('open', () => socket.close(1000));
      else socket.close(1000);
    };
    setTimeout(letGo, graceMs);
    early.take = (url) => {
      // The age, not only the timer: a busy page may run the timer late.
      if (!kept || url !== early.url || socket.readyState > WebSocket.OPEN || performance.now() - opened >= graceMs) {
        letGo();
        return null;
      }
      kept = false;
      return socket;
    };
  }
  window.RallycastEarly = early;
})();
