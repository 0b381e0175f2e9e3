"""The first score comes with the page: the viewer follows the retained snapshots and puts the
club's current one into the HTML as JSON data; live.js shows it before mqtt.js has loaded, and
MQTT takes over with the usual rule. Real broker, real scorer service, real Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scorer.config import Club, Settings
from tests.viewer.conftest import LIVE, accepted, score_on_page, texts
from tests.viewer.pagekit import (
    assert_name_shown_as_text,
    embedded,
    get_html,
    wait_html,
    wait_rev,
)
from viewer.server import start_viewer
from viewer.snapshots import viewer_broker_url

START = {"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob", "best_of": 3}
HOSTILE = "</script><img src=x onerror=alert(1)>"


def open_without_broker(open_page: Any, url: str) -> tuple[Any, list[str]]:
    """A page whose every WebSocket to the broker fails at once: what it shows came from the
    server. Returns the page and the WebSocket URLs it tried."""
    page = open_page("about:blank")
    page.failures.allowed.append("WebSocket connection to")
    tried: list[str] = []

    def refuse(ws: Any) -> None:
        tried.append(ws.url)
        ws.close(code=1011, reason="blocked by the test")

    page.route_web_socket(re.compile(r".*"), refuse)
    page.goto(url)
    return page, tried


def late_mqtt_js(page: Any, meanwhile: Callable[[], Any]) -> None:
    """Hold the page's mqtt.js request until ``meanwhile`` has run: the page (its HTML already
    received) then connects to a broker that has moved on from what the page carries."""

    def hold(route: Any) -> None:
        meanwhile()
        route.continue_()

    page.route(re.compile(r".*/mqtt\.min\.js$"), hold)


# --- the HTML --------------------------------------------------------------------------------


def test_the_page_html_served_mid_match_already_carries_the_current_snapshot(stack: Any) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    for side in (1, 1, 2, 1, 1, 2, 1):
        rev = accepted(scorer, {"cmd": "point", "side": side})["rev"]
    current = stack.service.matches["alpha"].match.snapshot()
    assert current["rev"] == rev

    for path in ("/clubs/alpha", "/clubs/alpha/display", "/clubs/alpha/overlay", "/"):
        snapshot = wait_rev(stack, path, rev)
        assert snapshot["match_id"] == current["match_id"], path
        assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (5, 2), path
        assert snapshot["game_data"]["player1"] == "Ann", path
    # Only the club's own snapshot; the scorer's page (behind a password) carries none.
    assert list(embedded(get_html(stack.url("/clubs/alpha")))) == ["clubs/alpha/game"]
    assert embedded(get_html(stack.url("/clubs/beta"))) is None
    assert embedded(get_html(stack.url("/clubs/alpha/score"))) is None

    # Deleting the match (an empty retained payload) takes the snapshot out of the pages.
    accepted(scorer, {"cmd": "delete"})
    wait_html(stack.url("/clubs/alpha"), lambda html: embedded(html) is None)
    assert embedded(get_html(stack.url("/"))) is None


def test_a_hostile_player_name_stays_inside_the_json_block(stack: Any) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, player1=HOSTILE, player2="a & b > c"))
    rev = accepted(scorer, {"cmd": "point", "side": 1})["rev"]
    for path in ("/clubs/alpha", "/"):
        snapshot = wait_rev(stack, path, rev)
        html = get_html(stack.url(path))
        assert "<img" not in html and html.count("</script>") == html.count("<script")
        assert "\\u003c/script\\u003e\\u003cimg" in html
        assert snapshot["game_data"]["player1"] == HOSTILE
        assert snapshot["game_data"]["player2"] == "a & b > c"


def test_without_a_broker_connection_the_pages_carry_no_snapshot_until_it_is_back(
    stack: Any,
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    rev = accepted(scorer, {"cmd": "point", "side": 2})["rev"]
    wait_rev(stack, "/clubs/alpha", rev)

    stack.endpoint.stop()
    try:
        # Nothing the viewer saw before can be trusted now: pages work from MQTT alone.
        # Bounds, not speed claims: a loaded CI machine stretches the stop and the reconnect.
        wait_html(stack.url("/clubs/alpha"), lambda html: embedded(html) is None, timeout=20)
    finally:
        stack.endpoint.start()
    # paho reconnects (at most 4 s apart) and the retained snapshot comes back with it.
    wait_rev(stack, "/clubs/alpha", rev, timeout=20)


def test_the_scorer_offline_banner_is_shown_from_the_first_byte(stack: Any) -> None:
    banner = re.compile(r'<p [^>]*id="scorer-banner"[^>]*>')
    html = get_html(stack.url("/clubs/alpha"))
    assert " hidden" in banner.search(html).group(0)  # the service is online
    stack.service.stop()  # publishes the retained "offline"
    html = wait_html(
        stack.url("/clubs/alpha"), lambda h: " hidden" not in banner.search(h).group(0), timeout=5
    )
    assert "The scorer service is offline" in html
    # "stalled" (connected, but commands do not come through) is said from the first byte too.
    service = stack.endpoint.client(stack.endpoint.service_user)
    service.publish("rallycast/status/scorer", "stalled", qos=1, retain=True).wait_for_publish(5)
    wait_html(
        stack.url("/clubs/alpha?lang=en"),
        lambda h: (
            "The scorer service is not applying commands right now" in h
            and " hidden" not in banner.search(h).group(0)
        ),
        timeout=5,
    )


def test_the_viewer_follows_the_broker_up_passes_it() -> None:
    # `rallycast up` hands the viewer settings whose mqtt_port is the embedded broker's.
    up = Settings(bind="0.0.0.0", mqtt_port=41883)
    assert viewer_broker_url(up) == "mqtt://127.0.0.1:41883"
    assert viewer_broker_url(Settings(bind="10.1.2.3", mqtt_port=41883)) == "mqtt://10.1.2.3:41883"
    assert viewer_broker_url(Settings(bind="::", mqtt_port=41883)) == "mqtt://[::1]:41883"
    # A broker named in the settings is the one (`rallycast viewer` beside another broker).
    other = Settings(broker_url="mqtt://broker.example:1884", mqtt_port=41883)
    assert viewer_broker_url(other) == "mqtt://broker.example:1884"
    assert viewer_broker_url(Settings()) == "mqtt://127.0.0.1:1883"


async def test_start_viewer_follows_the_broker_and_stops_within_the_budget(
    amqtt_broker: Any, tmp_path: Path
) -> None:
    settings = amqtt_broker.settings(data_dir=str(tmp_path / "app"), log_level="WARNING")
    started = time.monotonic()
    running = await start_viewer(settings)
    try:
        assert time.monotonic() - started < 3
        viewer = running.server.config.app.state.viewer
        assert viewer.snapshots.ready, "start_viewer returned before it followed the broker"
    finally:
        stopping = time.monotonic()
        await running.stop()
        stopped_in = time.monotonic() - stopping
    assert running.task.done() and stopped_in < 1.5, stopped_in
    assert not viewer.snapshots.ready


async def test_start_viewer_without_a_broker_starts_at_once_and_stops_at_once() -> None:
    # Nothing listens on this port: the first attempt fails at once, paho keeps retrying.
    settings = Settings(
        bind="127.0.0.1", http_port=0, broker_url="mqtt://127.0.0.1:9", clubs=(Club("alpha"),)
    )
    started = time.monotonic()
    running = await start_viewer(settings)
    assert time.monotonic() - started < 1.5
    stopping = time.monotonic()
    await running.stop()
    assert time.monotonic() - stopping < 1.5


# --- in Chromium -------------------------------------------------------------------------------


@pytest.mark.browser
def test_the_embedded_score_shows_with_the_broker_unreachable(stack: Any, open_page: Any) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    for side in (1, 1, 2, 1, 1, 2, 1, 2):
        rev = accepted(scorer, {"cmd": "point", "side": side})["rev"]
    wait_rev(stack, "/clubs/alpha", rev)

    page, tried = open_without_broker(open_page, stack.url("/clubs/alpha"))
    page.wait_for_selector(LIVE, state="visible")
    assert score_on_page(page) == ("5", "3")
    assert page.inner_text(f'{LIVE} [data-field="name"][data-side="1"]') == "Ann"
    assert page.inner_text(f'{LIVE} [data-field="status"]') == "Game 1"
    assert texts(page, "score", "1", "liveGameSection") == ["5"]
    page.wait_for_selector("#connection-banner", state="visible")  # it did try, and failed
    assert tried and all(f":{stack.endpoint.ws_port}/" in url for url in tried)
    assert not page.evaluate("() => Boolean(Rallycast.client && Rallycast.client.connected)")
    assert page.evaluate("() => Rallycast.firstScoreAt") > 0

    for path, scope, sides in (
        ("/clubs/alpha/display", "#board", ("left", "right")),
        ("/clubs/alpha/overlay", "#bug", ("1", "2")),
    ):
        other, _ = open_without_broker(open_page, stack.url(path))
        other.wait_for_function("() => window.Rallycast && Rallycast.firstScoreAt > 0")
        shown = [
            other.inner_text(f'{scope} [data-field="score"][data-side="{side}"]') for side in sides
        ]
        assert shown == ["5", "3"], (path, shown)
        assert other.locator(scope).is_visible(), path
    index, _ = open_without_broker(open_page, stack.url("/"))
    index.wait_for_selector('.club-item[data-club="alpha"][data-match="on"]')
    assert index.inner_text('.club-item[data-club="alpha"] [data-field="state"]') == ("Ann 5–3 Bob")


@pytest.mark.browser
def test_a_hostile_name_in_the_embedded_snapshot_is_text_and_runs_nothing(
    stack: Any, open_page: Any
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, player1=HOSTILE, player2="<b>Bob</b>"))
    rev = accepted(scorer, {"cmd": "point", "side": 1})["rev"]
    wait_rev(stack, "/", rev)
    for path in ("/", "/clubs/alpha", "/clubs/alpha/display", "/clubs/alpha/overlay"):
        page, _ = open_without_broker(open_page, stack.url(path))
        assert_name_shown_as_text(page, HOSTILE, path)
        # The data block is still whole: nothing after it became markup.
        assert (
            page.evaluate(
                "() => document.querySelectorAll('script[type=\"application/json\"]').length"
            )
            == 2
        )
    time.sleep(0.3)  # an onerror handler would have fired by now; open_page fails on any dialog


@pytest.mark.browser
def test_a_newer_mqtt_snapshot_replaces_the_embedded_one(stack: Any, open_page: Any) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    rev = accepted(scorer, {"cmd": "point", "side": 1})["rev"]
    wait_rev(stack, "/clubs/alpha", rev)

    page = open_page("about:blank")
    # The page leaves the server with 1-0 in it; by the time mqtt.js runs the score is 2-0.
    late_mqtt_js(page, lambda: accepted(scorer, {"cmd": "point", "side": 1}))
    page.goto(stack.url("/clubs/alpha"))
    page.wait_for_function(
        "() => document.querySelector('#liveGameSection [data-field=score][data-side=\"1\"]')"
        ".textContent === '2'"
    )
    assert texts(page, "score", "1", "liveGameSection") == ["1", "2"]  # embedded, then MQTT
    assert page.locator(LIVE).is_visible()


@pytest.mark.browser
def test_an_embedded_match_deleted_before_the_page_connected_goes_away(
    stack: Any, open_page: Any
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    rev = accepted(scorer, {"cmd": "point", "side": 2})["rev"]
    wait_rev(stack, "/clubs/alpha", rev)

    page = open_page("about:blank")
    # The page carries the match; by the time mqtt.js runs the broker retains nothing.
    late_mqtt_js(page, lambda: accepted(scorer, {"cmd": "delete"}))
    page.goto(stack.url("/clubs/alpha"))
    assert texts(page, "score", "2", "liveGameSection") == ["1"]
    page.wait_for_selector(LIVE, state="hidden", timeout=6000)
    assert page.locator("#no-match").is_visible()


@pytest.mark.browser
def test_a_page_opened_on_a_finished_match_does_not_show_it(stack: Any, open_page: Any) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, best_of=1))
    for _ in range(11):
        rev = accepted(scorer, {"cmd": "point", "side": 1})["rev"]
    assert wait_rev(stack, "/clubs/alpha", rev)["status"] == "finished"
    page, _ = open_without_broker(open_page, stack.url("/clubs/alpha"))
    page.wait_for_function("() => window.Rallycast && Rallycast.follow")
    time.sleep(0.3)
    assert page.locator(LIVE).is_hidden()
    assert page.locator("#no-match").is_visible()
    assert texts(page, "score", "1", "liveGameSection") == []
