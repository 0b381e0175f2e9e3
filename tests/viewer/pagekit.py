"""Checks several page test files share: the config block the server writes into every page,
player names that must stay text on every page, presses after a broker restart, the live API
and the pages' HTML once the viewer's own follower has caught up, and a countdown read
against the time of the command that started it, and the frames a spectator showed.

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

from tests.viewer.conftest import accepted, timed_texts

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


def frame_problems(
    shown: list[tuple[float, str]], expected: list[str], outages: list[tuple[float, float]]
) -> list[str]:
    """What is wrong with the texts a spectator page showed for one field (``shown``: the
    page's clock in ms and the text, in order) against every frame the scorer made
    (``expected``, in order); empty when nothing is. Consecutive repeats count once on both
    sides. ``outages``: (when the page said it was reconnecting, when it then first wrote a
    score: the retained snapshot's render; inf if it wrote none, NaN if it never came back).

    A connected page renders every snapshot it receives, in order, so it must show every
    frame. Over a reconnect it gets only the retained snapshot, the newest (MQTT 3.1.1
    section 3.3.1.3), so frames may be skipped there and only there: the text after the skip
    must be that render, and the outage must have begun after the text before it (a reconnect
    takes at least mqtt.js's 1 s reconnect period, so "at the same ms" counts as after). A
    render that leaves this field's text as it was writes nothing: the page may then have
    landed on a later frame with the same text. Never allowed: a text that is not a later
    frame (a point nobody pressed, or going back) and an end that is not the last frame.

    Blind spots, all around a reconnect, since the page's clock says nothing about when each
    frame was made: a frame lost between the field's last text and the outage passes (it may
    have been made during the outage); a landing's text may stand for any later frame with
    that text (losses up to that frame pass); and a render that changes neither score writes
    nothing, so the landing is taken to be the next score written (a frame lost just before
    it passes).
    """
    frames = [v for i, v in enumerate(expected) if i == 0 or expected[i - 1] != v]
    texts_shown = [e for i, e in enumerate(shown) if i == 0 or shown[i - 1][1] != e[1]]

    def step_ok(i: int, j: int, since: float, t: float) -> bool:
        return j == i + 1 or any(since <= o and landing == t for o, landing in outages)

    def landed(readings: set[int], since: float, until: float) -> set[int]:
        """Readings after a render that wrote nothing here, between since and until."""
        if not any(since <= o and landing <= until for o, landing in outages):
            return readings
        return readings | {
            j for i in readings if i >= 0 for j in range(i, len(frames)) if frames[j] == frames[i]
        }

    # Which frame each text may stand for: a text can stand for several (a score that comes
    # back after a -1), so every reading is tried, and one that ends on the last frame wins.
    readings = {-1}  # frame indexes the texts so far may end on (-1: none shown yet)
    since = float("-inf")
    for t, text in texts_shown:
        readings = landed(readings, since, t)
        readings = {
            j
            for j in range(len(frames))
            if frames[j] == text and any(i < j and step_ok(i, j, since, t) for i in readings)
        }
        since = t
    if len(frames) - 1 in landed(readings, since, float("inf")):
        return []
    # Not possible: say where the earliest reading goes wrong.
    problems: list[str] = []
    at, since = -1, float("-inf")
    for t, text in texts_shown:
        later = [j for j in range(at + 1, len(frames)) if frames[j] == text]
        if not later:
            where = f"after {frames[at]!r}" if at >= 0 else "first"
            problems.append(f"{text!r} shown {where} at {t:.0f} ms is not a later frame")
            continue
        if not step_ok(at, later[0], since, t):
            skipped = frames[at + 1 : later[0]]
            problems.append(
                f"frames {skipped} skipped before {text!r} at {t:.0f} ms, not at a reconnect"
            )
        at, since = later[0], t
    last = texts_shown[-1][1] if texts_shown else None
    if not problems:
        problems.append(
            f"the texts shown ({[text for _, text in texts_shown]}) do not end on the last"
            f" frame {frames[-1]!r} (last text {last!r})"
        )
    return problems


def page_outages(page: Any, scope: str) -> list[tuple[float, float]]:
    """(offline, landing) for each time the page showed its reconnecting banner (live.js,
    on mqtt.js's ``offline``): landing is its first score text under ``scope`` after the
    banner went again (the retained snapshot's render), inf if none, NaN if the banner
    never went."""
    return page.evaluate(
        """(scope) => {
             const log = window.__rc.log;
             const banner = log.filter((e) => e.kind === 'attr' && e.id === 'connection-banner'
                                              && e.name === 'hidden');
             const scores = log.filter((e) => e.kind === 'text' && e.field === 'score'
                                              && e.scope === scope).map((e) => e.t);
             const outages = [];
             banner.forEach((e, i) => {
               if (e.value !== null) return;  // hidden again: not an outage
               const back = banner.slice(i + 1).find((b) => b.value !== null);
               const landing = back ? scores.find((t) => t >= back.t) : NaN;
               outages.push([e.t, landing === undefined ? Infinity : landing]);
             });
             return outages;
           }""",
        scope,
    )


def assert_frames_shown(
    page: Any, field_name: str, side: str, scope: str, expected: list[str]
) -> None:
    """Every frame of ``expected`` was shown in [data-field=field_name][data-side=side]
    under ``scope``, in order; a frame may be missing only across a reconnect (see
    :func:`frame_problems` and :func:`page_outages`). Reads the recorder's log
    (conftest.RECORDER_JS)."""
    shown = timed_texts(page, field_name, side, scope)
    outages = [(float(o), float(landing)) for o, landing in page_outages(page, scope)]
    problems = frame_problems(shown, expected, outages)
    assert not problems, (problems, shown, outages)
