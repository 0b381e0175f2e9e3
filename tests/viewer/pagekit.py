"""Checks several page test files share: the config block the server writes into every page,
player names that must stay text on every page, presses after a broker restart, and the live
API once the viewer's own follower has caught up."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.viewer.conftest import accepted

NAMES_SHOWN_JS = (
    "() => Array.from(document.querySelectorAll('[data-field=name], [data-field=state]'))"
    ".map((e) => e.textContent).join('|')"
)


def page_config(html: str) -> dict:
    """The page's ``rallycast-config`` JSON block (viewer/templates/base.html), parsed."""
    found = re.search(r'<script type="application/json" id="rallycast-config">(.*?)</script>', html)
    assert found, "no config block"
    return json.loads(found.group(1))


def assert_name_shown_as_text(page: Any, name: str, path: str) -> None:
    """Waits for the page's first score, then checks that the players' names (hostile markup in
    ``name`` or in the other name) made no element and that ``name`` reads as text."""
    page.wait_for_function("() => window.Rallycast && Rallycast.firstScoreAt > 0")
    assert page.locator("img").count() == 0 and page.locator("b").count() == 0, path
    shown = page.evaluate(NAMES_SHOWN_JS)
    assert name in shown, (path, shown)


def press_after_restart(stack: Any, *sides: int) -> None:
    """After a broker restart: waits for the service to be back, then scores a point for each
    of ``sides`` in turn through a fresh client (the old one may still be in its backoff)."""
    assert stack.service.wait_until_connected(15), "the service did not come back"
    fresh = stack.scorer("alpha")
    for side in sides:
        accepted(fresh, {"cmd": "point", "side": side})


def live_api_when(url: str, ready: Callable[[dict], Any], timeout: float = 5.0) -> dict:
    """The body of ``GET /api/clubs/<club>/live`` (``url``, absolute) once ``ready(body)`` is
    true, or the last body after ``timeout`` s (the caller's assertion then shows it). The
    API answers from the viewer's own MQTT follower, a subscriber apart from any page's: it
    can see a snapshot a moment after a page did (a loaded machine made it miss a clear the
    page had already shown)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)
