/* The snippet page's copy buttons (no inline script: the page's CSP allows none). */
(function () {
  'use strict';
  for (const button of document.querySelectorAll('button[data-copy]')) {
    button.addEventListener('click', async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (error) {
        // Plain http on a LAN is not a secure context: select the text for Ctrl+C instead.
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        return;
      }
      button.textContent = button.dataset.done;
      setTimeout(() => { button.textContent = label; }, 1500);
    });
  }
})();
