"""Sound, speech, notifications and the QR code on our own pages (the club page and the TV
display), in real Chromium against the real broker and scorer service. The browser's outputs
are recorded where they leave the page (tests/viewer/test_embed.py OUTPUTS_JS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scorer.config import Club
from tests.viewer.conftest import accepted, running_stack
from tests.viewer.test_embed import OUTPUTS_JS, START, decode_qr

pytestmark = pytest.mark.browser

TV_1080 = {"width": 1920, "height": 1080}


def open_with_outputs(open_page: Any, url: str, **kw: Any) -> Any:
    page = open_page(url, **kw)
    page.add_init_script(OUTPUTS_JS)
    page.reload()
    page.wait_for_function(
        "() => window.Rallycast && Rallycast.client && Rallycast.client.connected"
        " && Rallycast.announcer"
    )
    return page


def test_club_page_sound_and_speech_are_off_until_clicked_then_follow_each_point_in_order(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    page = open_with_outputs(open_page, stack.url("/clubs/alpha?lang=ru"))
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, player1="Иванов", player2="Петров"))
    accepted(scorer, {"cmd": "point", "side": 1})
    page.wait_for_function(
        "() => document.querySelector('#liveGameSection [data-field=score][data-side=\"1\"]')"
        ".textContent === '1'"
    )
    assert page.evaluate("() => [__out.calls, __out.requests]") == [[], 0]
    for name in ("sound", "speech"):
        button = page.locator(f'#announce-controls [data-toggle="{name}"]')
        assert button.get_attribute("aria-pressed") == "false"
        button.click()
        assert button.get_attribute("aria-pressed") == "true"
    assert page.evaluate("() => __out.requests") == 0  # sound and speech never ask
    accepted(scorer, {"cmd": "point", "side": 2})  # 1-1: Petrov serves
    accepted(scorer, {"cmd": "point", "side": 1})  # 2-1: Petrov serves, has 1
    page.wait_for_function("() => __out.calls.length === 4")
    assert page.evaluate("() => __out.calls") == [
        "tone 880",
        "say ru-RU 1:1, подаёт Петров",
        "tone 880",
        "say ru-RU 1:2, подаёт Петров",
    ]
    page.screenshot(path=str(artifacts_dir / "club-announce-on.png"), full_page=True)


def test_club_page_notifications_are_asked_for_only_on_the_click_and_shown_in_the_background(
    stack: Any, open_page: Any
) -> None:
    page = open_with_outputs(open_page, stack.url("/clubs/alpha"))
    scorer = stack.scorer("alpha")
    page.evaluate("() => { __out.hidden = true; }")
    accepted(scorer, START)
    page.wait_for_selector("#liveGameSection", state="visible")
    assert page.evaluate("() => [__out.requests, __out.notes]") == [0, []]
    page.locator('#announce-controls [data-toggle="notify"]').click()
    page.wait_for_function("() => __out.requests === 1")
    accepted(scorer, {"cmd": "end"})
    page.wait_for_function("() => __out.notes.length === 1")
    assert page.evaluate("() => __out.notes") == ["Alpha TTC: Match over | Match abandoned"]


def test_the_qr_codes_on_the_club_page_and_the_tv_decode_to_the_club_page_url(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    club_url = stack.url("/clubs/alpha")
    page = open_page(club_url)
    shot = page.locator("#club-qr").screenshot(path=str(artifacts_dir / "club-qr.png"))
    assert decode_qr(shot) == [club_url]

    display = open_page(stack.url("/clubs/alpha/display"), **TV_1080)
    display.screenshot(path=str(artifacts_dir / "display-idle-qr.png"))
    assert decode_qr(display.locator("#idle-qr").screenshot()) == [club_url]
    scorer = stack.scorer("alpha")
    accepted(scorer, dict(START, best_of=5))
    display.wait_for_selector("#board[data-state=in_progress]")
    assert display.locator("#announce-controls").is_hidden()  # the top line is the score's
    display.screenshot(path=str(artifacts_dir / "display-match-qr.png"))
    # The small one in the top line, as a phone camera sees the TV's pixels.
    assert decode_qr(display.locator("#board-qr").screenshot()) == [club_url]


def test_the_tv_offers_the_toggles_while_idle_and_keeps_them_for_the_match(
    stack: Any, open_page: Any
) -> None:
    display = open_with_outputs(open_page, stack.url("/clubs/alpha/display"), **TV_1080)
    display.locator('#announce-controls [data-toggle="sound"]').click()
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    display.wait_for_selector("#board[data-state=in_progress]")
    for _ in range(11):
        accepted(scorer, {"cmd": "point", "side": 2})
    display.wait_for_function("() => __out.calls.length === 14")
    calls = display.evaluate("() => __out.calls")
    assert calls == ["tone 880"] * 10 + ["tone 523", "tone 659", "tone 784", "tone 1047"]


@pytest.fixture
def two_tables(amqtt_broker: Any) -> Any:
    clubs = (Club("alpha", "Alpha TTC", tables=2, table_names=("Centre court",)),)
    with running_stack(amqtt_broker, amqtt_broker.data_dir, clubs=clubs) as stack:
        yield stack


def test_the_club_page_of_a_club_with_tables_announces_every_table_by_its_name(
    two_tables: Any, open_page: Any
) -> None:
    page = open_with_outputs(open_page, two_tables.url("/clubs/alpha"))
    page.locator('#announce-controls [data-toggle="speech"]').click()
    page.locator('#announce-controls [data-toggle="notify"]').click()
    page.wait_for_function("() => __out.requests === 1")
    page.evaluate("() => { __out.hidden = true; }")
    # Each table's baseline is known (its retained snapshot, or none after the grace):
    # what changes after it is news.
    page.wait_for_function(
        "() => [...Rallycast.announcers.values()].every((a) => a.last !== undefined)"
    )
    centre, second = two_tables.scorer("alpha", 1), two_tables.scorer("alpha", 2)
    accepted(second, dict(START, player1="Cleo", player2="Dan"))
    page.wait_for_function("() => __out.notes.length === 1")
    accepted(second, {"cmd": "point", "side": 2})
    accepted(centre, START)
    accepted(centre, {"cmd": "point", "side": 1})
    page.wait_for_function("() => __out.calls.length === 4")
    assert page.evaluate("() => __out.calls") == [
        "say en-GB Table 2. Cleo against Dan",
        "say en-GB Table 2. 0–1, Cleo serves",
        "say en-GB Centre court. Ann against Bob",
        "say en-GB Centre court. 1–0, Ann serves",
    ]
    # Asked once for both tables; each table's notification names it.
    assert page.evaluate("() => __out.requests") == 1
    page.wait_for_function("() => __out.notes.length === 2")
    assert page.evaluate("() => __out.notes") == [
        "Alpha TTC · Table 2: Match started | Cleo – Dan",
        "Alpha TTC · Centre court: Match started | Ann – Bob",
    ]
