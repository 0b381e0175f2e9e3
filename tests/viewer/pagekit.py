"""Checks several page test files share: the config block the server writes into every page,
player names that must stay text on every page, presses after a broker restart, the live API
and the pages' HTML once the viewer's own follower has caught up, and a countdown read
against the time of the command that started it.

The viewer's follower (viewer/snapshots.py) is an MQTT subscriber of its own: a reply to the
scorer, or a page showing a change, says nothing about whether the follower has it yet. A
test that asserts on what the follower serves (the HTML's embedded snapshot, the live API, a
page opened later) first waits for it here."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.viewer.conftest import accepted

BLOCK_RE = re.compile(r'<script type="application/json" id="rc-snapshot">(.*?)</script>', re.S)
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


def get_html(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode("utf-8")


def embedded(html: str) -> dict[str, Any] | None:
    """The snapshots a page's HTML carries (``{topic: snapshot}``), None when it carries none."""
    found = BLOCK_RE.search(html)
    return None if found is None else json.loads(found.group(1))


def wait_html(url: str, test: Callable[[str], bool], timeout: float = 10.0) -> str:
    """The page's HTML once ``test`` holds (the viewer's MQTT client sees each snapshot a few
    milliseconds after the scorer's reply, or seconds after a reconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        html = get_html(url)
        if test(html):
            return html
        assert time.monotonic() < deadline, f"the page never matched: {html[:2000]}"
        time.sleep(0.05)


def wait_rev(
    stack: Any, path: str, rev: int, club: str = "alpha", timeout: float = 10.0
) -> dict[str, Any]:
    """The snapshot of the club's table 1 embedded in the HTML of ``path`` once its rev is
    ``rev``."""
    topic = f"clubs/{club}/game"

    def has_rev(html: str) -> bool:
        return (embedded(html) or {}).get(topic, {}).get("rev") == rev

    return embedded(wait_html(stack.url(path), has_rev, timeout))[topic]


def follower_at(
    stack: Any, rev: int, club: str = "alpha", table: int = 1, timeout: float = 10.0
) -> dict[str, Any]:
    """The viewer's own snapshot of the club's table once it is at ``rev`` (via the live API):
    a page opened after this starts from that snapshot, not an older one."""
    url = stack.url(f"/api/clubs/{club}/live")

    def at_rev(body: dict) -> bool:
        snapshot = body["tables"][table - 1]["snapshot"]
        return bool(snapshot) and snapshot["rev"] == rev

    body = live_api_when(url, at_rev, timeout)
    assert at_rev(body), f"the viewer's follower never reached rev {rev}: {body}"
    return body["tables"][table - 1]["snapshot"]


def clock_seconds(page: Any, selector: str) -> int:
    """The seconds a countdown (``m:ss``) at ``selector`` shows."""
    text = page.inner_text(selector)
    found = re.fullmatch(r"(\d+):(\d\d)", text)
    assert found, text
    return int(found.group(1)) * 60 + int(found.group(2))


def assert_minute_left(page: Any, selector: str, called: float, answered: float) -> int:
    """Reads the one-minute countdown at ``selector`` and checks it against the time of the
    command that started it: sent at ``called``, its reply at ``answered`` (time.monotonic()).
    What is left of 60 s when read, +-2 s for whole seconds shown and the page's tick; a
    fixed window ("0:58 to 1:00") fails when a loaded machine takes seconds to show it."""
    read_from = time.monotonic()
    left = clock_seconds(page, selector)
    read_to = time.monotonic()
    lowest, highest = 60 - (read_to - called) - 2, 60 - (read_from - answered) + 2
    assert lowest <= left <= min(highest, 60), (selector, left, lowest, highest)
    return left


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
