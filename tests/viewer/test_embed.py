"""The live score on another website (viewer/embed.py, static/embed.js, static/announce.js) in
real Chromium against the real broker and scorer service. The host page is served from ANOTHER
origin (its own port) with a strict Content-Security-Policy and hostile CSS: the element must
appear, follow every change, hide 3 s after the end, keep its look, and leave the host's alone.
Sound, speech and notifications are observed at the browser's output (oscillators, the speech
queue, the Notification constructor), never by stubbing our own code."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scorer.config import Club
from tests.viewer.conftest import Stack, accepted, running_stack
from tests.viewer.pagekit import assert_minute_left, follower_at, press_after_restart
from tests.viewer.png import Png

pytestmark = pytest.mark.browser

START = {"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob", "best_of": 1}
ELEMENT = "rallycast-live"
LIVE = f"{ELEMENT} section.live"  # Playwright's CSS engine pierces open shadow roots

# The host's stylesheet does its worst to anything it can reach; its own text must stay as it says.
HOST_CSS = """
body { font-family: serif; }
.news { color: rgb(0, 128, 0); font-size: 18px; }
* { color: rgb(255, 0, 0) !important; }
.news { color: rgb(0, 128, 0) !important; }
section, table, td, th, p, span, button { display: none !important; font-size: 60px !important; }
.news { display: block !important; font-size: 18px !important; }
rallycast-live { display: block; margin: 10px; --rallycast-accent: rgb(0, 0, 255); }
rallycast-live::part(points) { color: rgb(0, 0, 200); }
"""


def host_html(viewer: str, club: str = "alpha", lang: str = "en", extra: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Alpha TTC events</title>
<link rel="stylesheet" href="/host.css">
<script src="{viewer}/embed.js" async></script>
</head><body>
<p class="news" id="news">Club news: the summer league starts on Monday.</p>
<rallycast-live club="{club}" table="1" lang="{lang}"></rallycast-live>
{extra}
</body></html>"""


def strict_csp(viewer: str, ws_port: int) -> str:
    # What docs/embed.md tells a host to allow, and nothing else: no inline script or style,
    # no blob: workers, no eval.
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {viewer}",
            "style-src 'self'",
            f"connect-src {viewer} ws://127.0.0.1:{ws_port}",
            f"frame-src {viewer}",
            "img-src 'self'",
            "base-uri 'none'",
        )
    )


class HostSite:
    """Another website on its own port: serves the pages put in ``pages`` with a strict CSP."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.csp = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                    return
                if self.path == "/host.css":
                    body, kind = HOST_CSS.encode(), "text/css"
                elif self.path.split("?")[0] in site.pages:
                    body, kind = site.pages[self.path.split("?")[0]].encode(), "text/html"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind + "; charset=utf-8")
                self.send_header("Content-Security-Policy", site.csp)
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host() -> Iterator[HostSite]:
    site = HostSite()
    yield site
    site.close()


@pytest.fixture
def stack(amqtt_broker: Any, tmp_path: Path, host: HostSite) -> Iterator[Stack]:
    with running_stack(amqtt_broker, tmp_path / "app", embed_origins=(host.origin,)) as running:
        host.csp = strict_csp(running.viewer.url, amqtt_broker.ws_port)
        host.pages["/"] = host_html(running.viewer.url)
        yield running


# Installed before any script of the host page: CSP violations, the element's snapshot events,
# and the browser's outputs (sound, speech, notifications) recorded where they leave the page.
OUTPUTS_JS = """
(() => {
  const out = { violations: [], snapshots: [], calls: [], requests: 0, notes: [], hidden: false };
  window.__out = out;
  document.addEventListener('securitypolicyviolation', (e) =>
    out.violations.push(e.violatedDirective + ' ' + e.blockedURI));
  document.addEventListener('rallycast:snapshot', (e) =>
    out.snapshots.push(Object.assign({ t: performance.now() }, e.detail)));
  const start = OscillatorNode.prototype.start;
  OscillatorNode.prototype.start = function (when) {
    out.calls.push('tone ' + this.frequency.value);
    return start.call(this, when);
  };
  speechSynthesis.speak = (u) => out.calls.push('say ' + u.lang + ' ' + u.text);
  speechSynthesis.cancel = () => {};
  class FakeNotification {
    constructor(title, options) { out.notes.push(title + ' | ' + options.body); }
    static requestPermission() {
      out.requests += 1;
      FakeNotification.permission = 'granted';
      return Promise.resolve('granted');
    }
  }
  FakeNotification.permission = 'default';
  window.Notification = FakeNotification;
  Object.defineProperty(Document.prototype, 'visibilityState', {
    get: () => (out.hidden ? 'hidden' : 'visible'), configurable: true });
})();
"""


def open_host(open_page: Any, host: HostSite, path: str = "/") -> Any:
    page = open_page(host.origin + path)  # the conftest recorder, then ours on later loads
    page.add_init_script(OUTPUTS_JS)
    page.reload()
    wait_connected(page)
    return page


def wait_connected(page: Any) -> None:
    page.wait_for_function(
        "() => { const e = document.querySelector('rallycast-live');"
        " return e && e.dataset.connected === 'true'; }"
    )


def shown_score(page: Any) -> tuple[str, str]:
    return (
        page.inner_text(f'{LIVE} [data-field="score"][data-side="1"]'),
        page.inner_text(f'{LIVE} [data-field="score"][data-side="2"]'),
    )


def wait_score(page: Any, a: int, b: int) -> None:
    page.wait_for_function(
        """([a, b]) => {
             const root = document.querySelector('rallycast-live').shadowRoot;
             const s = (side) => root.querySelector('[data-field="score"][data-side="' + side + '"]');
             return s(1).textContent === a && s(2).textContent === b;
           }""",
        arg=[str(a), str(b)],
    )


def computed(page: Any, selector_js: str, prop: str) -> str:
    return page.evaluate(f"() => getComputedStyle({selector_js}).{prop}")


INNER = "document.querySelector('rallycast-live').shadowRoot.querySelector"


# --- the element on a cross-origin host page with a strict CSP ---


def test_element_on_a_cross_origin_strict_csp_page_appears_updates_and_hides_3s_after_the_end(
    stack: Any, host: HostSite, open_page: Any, artifacts_dir: Path
) -> None:
    assert host.origin != stack.viewer.url  # two origins: the host's port and the viewer's
    page = open_host(open_page, host)
    assert page.locator(LIVE).is_hidden()  # no match: nothing on the host page

    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    page.wait_for_selector(LIVE, state="visible")
    # When the element hides, by the page's clock: read from Python after the screenshots
    # below, a loaded machine made the hide look late (the section uses `hidden`).
    page.evaluate(
        """() => {
          const live = document.querySelector('rallycast-live').shadowRoot
            .querySelector('section.live');
          window.__hides = [];
          new MutationObserver(() => { if (live.hidden) __hides.push(performance.now()); })
            .observe(live, { attributes: true, attributeFilter: ['hidden'] });
        }"""
    )
    assert page.inner_text(f'{LIVE} [data-field="name"][data-side="1"]') == "Ann"
    expected = [(0, 0)]
    for side in [1, 2, 1, 1] + [1] * 8:  # ends 11-1: Ann wins the best-of-1 match
        a, b = expected[-1]
        expected.append((a + 1, b) if side == 1 else (a, b + 1))
        accepted(scorer, {"cmd": "point", "side": side})
        if len(expected) == 4:
            wait_score(page, *expected[-1])
            page.screenshot(path=str(artifacts_dir / "embed-host-live.png"))
    wait_score(page, 11, 1)
    assert page.inner_text(f'{LIVE} [data-field="status"]') == "Match won by Ann"
    page.screenshot(path=str(artifacts_dir / "embed-host-end.png"))

    # Every change arrived, in order (the element reports each snapshot it showed).
    shown = page.evaluate("() => __out.snapshots.map((s) => s.rev)")
    assert shown == sorted(set(shown)) and len(shown) == len(expected), shown

    page.wait_for_selector(LIVE, state="hidden", timeout=6000)
    ended_at = page.evaluate("() => __out.snapshots.find((s) => s.status === 'finished').t")
    hidden_at = min(t for t in page.evaluate("() => __hides") if t >= ended_at)
    # 3 s by the element's timer; the rest is room for a loaded renderer's timers.
    assert 2900 <= hidden_at - ended_at <= 4500, f"hidden {hidden_at - ended_at:.0f} ms after"

    # The host's CSP let everything through without a single exception...
    assert page.evaluate("() => __out.violations") == []
    # ...the host's text kept its own look (ours does not leak)...
    assert computed(page, "document.getElementById('news')", "color") == "rgb(0, 128, 0)"
    assert computed(page, "document.getElementById('news')", "fontSize") == "18px"
    assert computed(page, "document.getElementById('news')", "fontFamily") == "serif"


def test_host_css_cannot_break_the_element_and_themes_it_through_custom_properties_and_parts(
    stack: Any, host: HostSite, open_page: Any, artifacts_dir: Path
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    accepted(scorer, {"cmd": "point", "side": 2})
    page = open_host(open_page, host)
    page.wait_for_selector(LIVE, state="visible")
    wait_score(page, 0, 1)
    # The host hides every section/table/td and paints all text red with !important: none of
    # it reaches the shadow root.
    assert computed(page, f"{INNER}('section')", "display") == "block"
    assert computed(page, f"{INNER}('th')", "color") != "rgb(255, 0, 0)"
    assert computed(page, f"{INNER}('th')", "fontSize") != "60px"
    assert computed(page, f"{INNER}('button')", "color") != "rgb(255, 0, 0)"
    assert computed(page, f"{INNER}('button')", "display") != "none"
    # ...while the theming the element offers works: ::part(points) and --rallycast-accent.
    assert computed(page, f"{INNER}('.points')", "color") == "rgb(0, 0, 200)"
    assert computed(page, f"{INNER}('.serve.serving')", "color") == "rgb(0, 0, 255)"
    page.locator(ELEMENT).screenshot(path=str(artifacts_dir / "embed-element.png"))
    assert page.evaluate("() => __out.violations") == []


def test_the_element_shows_the_interval_the_change_of_ends_and_a_timeout_like_the_club_page(
    stack: Any, host: HostSite, open_page: Any, artifacts_dir: Path
) -> None:
    page = open_host(open_page, host)
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, best_of=3))
    for _ in range(10):
        accepted(scorer, {"cmd": "point", "side": 1})
    called = time.monotonic()  # the game (and the interval) ends between this and its reply
    accepted(scorer, {"cmd": "point", "side": 1})
    answered = time.monotonic()
    interval = f'{LIVE} [data-show-if="interval"]'
    page.wait_for_selector(interval, state="visible")
    assert page.inner_text(f'{interval} [data-field="interval"]') == "Game 1 to Ann, 11–0"
    assert page.inner_text(f'{LIVE} [data-field="heading"]') == "Match, best of 3"
    assert page.inner_text(f'{LIVE} [data-field="ends"]') == "Change ends"
    # The ITTF minute, counting down from the game's last point.
    assert_minute_left(page, f'{interval} [data-clock="interval"]', called, answered)
    page.screenshot(path=str(artifacts_dir / "embed-interval.png"))
    accepted(scorer, {"cmd": "point", "side": 2})
    accepted(scorer, {"cmd": "timeout", "side": 2})
    timeout = f'{LIVE} [data-show-if="timeout"]'
    page.wait_for_selector(timeout, state="visible")
    assert page.locator(interval).is_hidden()
    assert page.inner_text(f'{timeout} [data-field="timeout"]') == "Timeout – Bob"


def test_names_are_text_in_the_element_and_nothing_from_a_snapshot_runs(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    evil = "<img src=x onerror=alert(1)>"
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, player1=evil, player2="<b>Bob</b>"))
    page = open_host(open_page, host)
    page.wait_for_selector(LIVE, state="visible")
    assert page.inner_text(f'{LIVE} [data-field="name"][data-side="1"]') == evil
    assert page.evaluate(f"() => {INNER}All('img, b').length") == 0
    time.sleep(0.3)  # an onerror handler would have fired by now; open_page fails on a dialog


def test_a_bad_or_unknown_club_says_so_in_place_of_the_score(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    host.pages["/"] = host_html(
        stack.viewer.url,
        club="nope",
        extra='<rallycast-live id="bad" club="Bad/Club"></rallycast-live>'
        '<rallycast-live id="t2" club="alpha" table="2"></rallycast-live>'
        '<rallycast-live id="t02" club="alpha" table="02"></rallycast-live>',
    )
    page = open_page(host.origin + "/")
    page.failures.allowed.append("404 (Not Found)")  # the API's answer for the unknown club
    problem = "rallycast-live{} p[part=problem]"
    page.wait_for_selector(problem.format(":not([id])"), state="visible")
    assert page.inner_text(problem.format(":not([id])")) == "rallycast-live: there is no club nope"
    assert "must be a club id" in page.inner_text(problem.format("#bad"))
    # Alpha has one table (issue 12: a club's tables come from its config).
    page.wait_for_selector(problem.format("#t2"), state="visible")
    assert page.inner_text(problem.format("#t2")) == "rallycast-live: club alpha has no table 2"
    assert "must be a table number 1-64" in page.inner_text(problem.format("#t02"))


def test_first_score_comes_from_the_json_api_before_mqtt_connects(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    for side in (1, 1, 2):
        accepted(scorer, {"cmd": "point", "side": side})
    # The viewer's own follower has the snapshot (a retained message, no sleep).
    follower_at(stack, stack.service.matches["alpha"].rev)
    # The broker's WebSocket is blocked for this page: only the API can show the score.
    page = open_page(host.origin + "/")
    page.route("ws://**", lambda route: route.abort())
    page.context.route(f"{stack.viewer.url}/static/**/mqtt.min.js", lambda route: route.abort())
    page.failures.allowed.append("mqtt.js could not be loaded")
    page.failures.allowed.append("Failed to load resource")
    page.reload()
    page.wait_for_selector(LIVE, state="visible")
    assert shown_score(page) == ("2", "1")


def test_the_iframe_fallback_shows_the_score_on_a_host_that_runs_no_script(
    stack: Any, host: HostSite, open_page: Any, artifacts_dir: Path
) -> None:
    viewer = stack.viewer.url
    host.pages["/frame"] = (
        '<!doctype html><html><head><link rel="stylesheet" href="/host.css"></head><body>'
        '<p class="news" id="news">Events</p>'
        f'<iframe id="f" src="{viewer}/clubs/alpha/embed?lang=ru" width="360" height="260">'
        "</iframe></body></html>"
    )
    host.csp = f"default-src 'none'; style-src 'self'; frame-src {viewer}"
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    rev = accepted(scorer, {"cmd": "point", "side": 1})["rev"]
    # The frame's first score comes from the viewer's own follower (the live API), which may
    # see the point a moment after the reply: wait for it, so the frame never starts at 0-0.
    follower_at(stack, rev)
    page = open_page(host.origin + "/frame")
    frame = page.frame_locator("#f")
    frame.locator(LIVE).wait_for(state="visible")
    assert frame.locator(f'{LIVE} [data-field="score"][data-side="1"]').inner_text() == "1"
    assert frame.locator(f"{LIVE} .title").inner_text() == "Товарищеская партия"
    page.screenshot(path=str(artifacts_dir / "embed-iframe.png"))


def test_the_element_reconnects_after_a_broker_restart_and_follows_on(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    accepted(scorer, {"cmd": "point", "side": 2})
    page = open_host(open_page, host)
    # The broker is down on purpose: the browser logs the failed connects, and a send mqtt.js
    # made as the socket closed.
    page.failures.allowed += ["WebSocket connection to", "WebSocket is already in CLOSING"]
    wait_score(page, 0, 1)
    page.evaluate("() => { window.__sameDocument = true; }")
    stack.endpoint.stop()
    page.wait_for_function(
        "() => document.querySelector('rallycast-live').dataset.connected === 'false'"
    )
    stack.endpoint.start()
    wait_connected(page)
    press_after_restart(stack, 1, 1)
    wait_score(page, 2, 1)
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"


# --- HTTP: the API's CORS, the frame's ancestors ---


def api(stack: Any, path: str, origin: str | None) -> tuple[int, Any, Any]:
    """(status, headers (case-insensitive), JSON body) of a GET with that Origin header."""
    request = urllib.request.Request(stack.viewer.url + path)
    if origin:
        request.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def test_the_api_answers_cors_only_to_the_configured_origins(stack: Any, host: HostSite) -> None:
    status, headers, body = api(stack, "/api/clubs/alpha/live", host.origin)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == host.origin
    assert body["club"] == {"id": "alpha", "name": "Alpha TTC"} and body["snapshot"] is None
    assert "Origin" in headers["Vary"]
    status, headers, _ = api(stack, "/api/clubs/alpha/live", "https://evil.example")
    assert status == 200 and headers["Access-Control-Allow-Origin"] is None
    status, headers, body = api(stack, "/api/clubs/nope/live", host.origin)
    assert status == 404 and "nope" in body["error"]
    with urllib.request.urlopen(stack.viewer.url + "/clubs/alpha/embed", timeout=5) as response:
        csp = response.headers["Content-Security-Policy"]
    assert f"frame-ancestors 'self' {host.origin}" in csp


# --- sound, speech, notifications ---


def test_sound_and_speech_follow_each_point_game_and_match_in_order_once_opted_in(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    page = open_host(open_page, host)
    # Off until asked: a point before opting in makes no sound and says nothing.
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, best_of=3))
    accepted(scorer, {"cmd": "point", "side": 1})
    wait_score(page, 1, 0)
    assert page.evaluate("() => __out.calls") == []
    for name in ("sound", "speech"):
        button = page.locator(f'{ELEMENT} button[data-toggle="{name}"]')
        assert button.get_attribute("aria-pressed") == "false"
        button.click()
        assert button.get_attribute("aria-pressed") == "true"

    # Ann served first; service changes every 2 points; the server's score is called first.
    accepted(scorer, {"cmd": "point", "side": 2})  # 1-1, Bob serves
    accepted(scorer, {"cmd": "point", "side": 1})  # 2-1, Bob serves: "1–2, Bob serves"
    for _ in range(9):  # 11-1: game 1 to Ann
        accepted(scorer, {"cmd": "point", "side": 1})
    for _ in range(11):  # 11-0: game 2 and the match to Ann
        accepted(scorer, {"cmd": "point", "side": 1})
    page.wait_for_function("() => __out.calls.some((c) => c.includes('wins the match'))")

    calls = page.evaluate("() => __out.calls")
    point = ["tone 880"]
    expected = point + ["say en-GB 1–1, Bob serves"]
    expected += point + ["say en-GB 1–2, Bob serves"]
    # 3-1 (Ann serves: 3–1), 4-1, then Bob 1–5, 1–6, Ann 7–1, 8–1, Bob 1–9, 1–10.
    for text in ("3–1, Ann", "4–1, Ann", "1–5, Bob", "1–6, Bob", "7–1, Ann", "8–1, Ann",
                 "1–9, Bob", "1–10, Bob"):  # fmt: skip
        expected += point + [f"say en-GB {text} serves"]
    expected += ["tone 660", "tone 990", "say en-GB Game 1 to Ann, 11–1"]
    # Game 2: the players change ends and the other player (Bob) serves first (ITTF 2.13.3).
    servers = ["Bob", "Ann", "Ann", "Bob", "Bob", "Ann", "Ann", "Bob", "Bob", "Ann"]
    for n, server in enumerate(servers, 1):
        text = f"0–{n}, Bob serves" if server == "Bob" else f"{n}–0, Ann serves"
        expected += point + [f"say en-GB {text}"]
    expected += ["tone 523", "tone 659", "tone 784", "tone 1047"]
    expected += ["say en-GB Ann wins the match, 2–0"]
    assert calls == expected


def test_speech_is_in_the_elements_language_and_the_toggle_is_remembered_on_this_device(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    host.pages["/"] = host_html(stack.viewer.url, lang="ru")
    page = open_host(open_page, host)
    page.locator(f'{ELEMENT} button[data-toggle="speech"]').click()
    page.reload()  # the same device (browser profile): the choice is still there
    wait_connected(page)
    button = page.locator(f'{ELEMENT} button[data-toggle="speech"]')
    assert button.get_attribute("aria-pressed") == "true"
    assert (
        page.locator(f'{ELEMENT} button[data-toggle="sound"]').get_attribute("aria-pressed")
        == "false"
    )
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, player1="Иванов", player2="Петров"))
    for side in (1, 2, 1, 1, 1, 2, 1, 1, 2, 1, 1, 2):  # 8-4 after 12 points
        accepted(scorer, {"cmd": "point", "side": side})
    page.wait_for_function("() => __out.calls.some((c) => c.includes('8:4'))")
    calls = page.evaluate("() => __out.calls")
    assert calls[0] == "say ru-RU Иванов — Петров"  # the start, then each point, no tones
    assert calls[-1] == "say ru-RU 8:4, подаёт Иванов"
    assert "say ru-RU 2:5, подаёт Петров" in calls  # 5-2 after 7 points: Petrov serves
    assert not any(c.startswith("tone") for c in calls)


def test_notifications_are_requested_only_after_opting_in_and_shown_only_in_the_background(
    stack: Any, host: HostSite, open_page: Any
) -> None:
    page = open_host(open_page, host)
    scorer = stack.scorer("alpha")
    page.evaluate("() => { __out.hidden = true; }")
    accepted(scorer, START)  # in the background, not opted in: nothing
    page.wait_for_selector(LIVE, state="visible")
    accepted(scorer, {"cmd": "end"})
    page.wait_for_function("() => __out.snapshots.some((s) => s.status === 'abandoned')")
    assert page.evaluate("() => [__out.requests, __out.notes]") == [0, []]

    page.locator(f'{ELEMENT} button[data-toggle="notify"]').click()
    page.wait_for_function("() => __out.requests === 1")
    assert (
        page.locator(f'{ELEMENT} button[data-toggle="notify"]').get_attribute("aria-pressed")
        == "true"
    )
    accepted(scorer, START)  # background: notified at the start and at the end
    for _ in range(11):
        accepted(scorer, {"cmd": "point", "side": 2})
    page.wait_for_function("() => __out.notes.length === 2")
    assert page.evaluate("() => __out.notes") == [
        "Alpha TTC: Match started | Ann – Bob",
        "Alpha TTC: Match over | Bob wins the match, 11–0",
    ]
    page.evaluate("() => { __out.hidden = false; }")
    accepted(scorer, START)  # in sight: the page shows it, no notification
    page.wait_for_function("() => __out.snapshots.filter((s) => s.rev === 1).length === 3")
    assert len(page.evaluate("() => __out.notes")) == 2
    assert page.evaluate("() => __out.requests") == 1


# --- the QR code ---


def decode_qr(png_bytes: bytes) -> list[str]:
    import zxingcpp

    image = Png(png_bytes)
    grey = bytearray(image.width * image.height)
    for y, row in enumerate(image.rows):
        for x in range(image.width):
            r, g, b = row[x * image.channels : x * image.channels + 3]
            grey[y * image.width + x] = (r * 299 + g * 587 + b * 114) // 1000
    pixels = memoryview(bytes(grey)).cast("B", shape=[image.height, image.width])
    return [found.text for found in zxingcpp.read_barcodes(pixels)]


def test_the_qr_code_decodes_to_the_club_page_url(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    page = open_page(stack.url("/clubs/alpha/embed/snippet"))
    page.wait_for_function("() => document.getElementById('club-qr').complete")
    shot = page.locator("#club-qr").screenshot(path=str(artifacts_dir / "embed-qr.png"))
    assert decode_qr(shot) == [stack.url("/clubs/alpha")]
    page.screenshot(path=str(artifacts_dir / "embed-snippet-page.png"), full_page=True)


def test_the_snippet_page_shows_each_snippet_as_text_ready_to_copy_and_a_live_preview(
    stack: Any, open_page: Any
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    club_page = open_page(stack.url("/clubs/alpha"))
    club_page.click("text=On your website")
    page = club_page
    page.wait_for_url("**/clubs/alpha/embed/snippet")
    base = stack.viewer.url
    assert page.inner_text("#snippet-html") == (
        f'<script src="{base}/embed.js" async></script>\n'
        '<rallycast-live club="alpha" table="1" lang="en"></rallycast-live>'
    )
    django = page.inner_text("#snippet-django")
    assert '<rallycast-live club="{{ club.rallycast_id }}"' in django
    assert "LANGUAGE_CODE|slice:':2'" in django
    assert f'src="{base}/clubs/alpha/embed?lang=en"' in page.inner_text("#snippet-iframe")
    assert f"connect-src {base} ws://127.0.0.1:" in page.inner_text("#snippet-csp")
    page.wait_for_selector("#preview section.live", state="visible")  # the live preview
    assert page.inner_text('#preview [data-field="name"][data-side="1"]') == "Ann"


def test_the_snippet_page_of_a_club_with_tables_gives_each_tables_snippets_and_preview(
    amqtt_broker: Any, open_page: Any
) -> None:
    clubs = (Club("alpha", "Alpha TTC", tables=2, table_names=("Centre court",)),)
    with running_stack(amqtt_broker, amqtt_broker.data_dir, clubs=clubs) as night:
        accepted(night.scorer("alpha", 2), dict(START, player1="Cleo", player2="Dan"))
        page = open_page(night.url("/clubs/alpha/embed/snippet"))
        assert page.inner_text("nav.tables strong") == "Centre court"
        page.click("nav.tables >> text=Table 2")
        page.wait_for_url("**/clubs/alpha/embed/snippet?table=2&lang=en")
        base = night.viewer.url
        assert page.inner_text("#snippet-html") == (
            f'<script src="{base}/embed.js" async></script>\n'
            '<rallycast-live club="alpha" table="2" lang="en"></rallycast-live>'
        )
        for snippet in ("#snippet-django", "#snippet-wordpress"):
            assert ' table="2" lang=' in page.inner_text(snippet), snippet
        iframe = page.inner_text("#snippet-iframe")
        assert f'src="{base}/clubs/alpha/embed?lang=en&table=2"' in iframe
        page.wait_for_selector("#preview section.live", state="visible")  # table 2's match
        assert page.inner_text('#preview [data-field="name"][data-side="1"]') == "Cleo"
        # The other language keeps the table; a table the club lacks is a 404 page.
        assert page.get_attribute(".lang a", "href") == "?lang=ru&table=2"
        with urllib.request.urlopen(night.url("/clubs/alpha/embed/snippet?table=2")) as ok:
            assert ok.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(night.url("/clubs/alpha/embed/snippet?table=3"))
        assert missing.value.code == 404
        assert "there is no table 3" in missing.value.read().decode()
