"""The phone page's presses and tables in real Chromium on the real embedded broker (issue 12):
a press waiting for its reply on one table is never left behind when this device opens
another table's page (a reload, a link or QR code with ``?table=``); and two tables ending at
the same moment each keep their own 3-s hide on the club page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scorer import topics
from tests.viewer.conftest import attribute_changes
from tests.viewer.test_tables_live import (
    PHONE,
    POINT1,
    POINT2,
    Night,
    card,
    night,
    scope,
    sign_in,
    start,
    two_matches_and_their_commands,
    visible_cards,
    wait_connected,
    wait_text,
)

pytestmark = pytest.mark.browser
__all__ = ["night"]  # the fixture, used by name


def test_a_press_waiting_on_table_2_keeps_the_page_on_table_2_when_table_1_is_opened(
    night: Night, open_page: Any, artifacts_dir: Path
) -> None:
    commands = two_matches_and_their_commands(night)
    phone = open_page(night.url("/clubs/alpha/score?table=2"), **PHONE)
    sign_in(phone, night)
    wait_text(phone, '[data-field="name"][data-side="left"]', "Cleo")
    phone.tap("button[data-cmd='plus'][data-end='left']")
    press = commands.wait_for(lambda m: True, timeout=5)
    assert press.topic == "clubs/alpha/tables/2/game/cmd"
    waiting = json.loads(press.payload)["id"]
    assert phone.get_attribute("#scorer", "data-pending") == "1"

    # No reply yet; the scorer opens table 1's link (or scans its QR code).
    phone.goto(night.url("/clubs/alpha/score?table=1"))
    # The page stays with the waiting press: on table 2, saying why, and still sending it.
    assert phone.input_value("#table-pick") == "2"
    assert phone.get_attribute("#scorer", "data-pending") == "1"
    wait_text(phone, "#reply", "Send or forget the waiting presses before changing tables.")
    assert "table=2" in phone.url
    phone.screenshot(path=str(artifacts_dir / "score-queue-kept-on-table-2.png"))
    resent = commands.wait_for(
        lambda m: m is not press and json.loads(m.payload)["id"] == waiting, timeout=15
    )
    assert resent.topic == "clubs/alpha/tables/2/game/cmd"
    # Nothing went to table 1 for it.
    assert all(m.topic != topics.commands("alpha", 1) for m in commands.messages)

    # Once its reply came, the device may go to table 1.
    night.play(2, POINT1)
    night.publish(
        topics.replies("alpha", 2),
        json.dumps({"id": waiting, "ok": True, "error": None, "code": None, "table": 2,
                    "rev": night.matches["alpha", 2].snapshot()["rev"], "match_id": None}),
        False,
    )  # fmt: skip
    wait_text(phone, "#reply", "OK")
    phone.goto(night.url("/clubs/alpha/score?table=1"))
    assert phone.input_value("#table-pick") == "1"
    wait_text(phone, '[data-field="name"][data-side="left"]', "Ann")


def test_two_tables_ending_in_the_same_moment_each_hide_3s_after_their_own_end(
    night: Night, open_page: Any
) -> None:
    alpha = open_page(night.url("/clubs/alpha"))
    wait_connected(alpha)
    for table, names in ((1, ("Ann", "Bob")), (2, ("Cleo", "Dan")), (3, ("Eve", "Fay"))):
        night.play(table, start(*names), *[POINT1] * 10)
    for table in (1, 2, 3):
        alpha.wait_for_selector(card(table), state="visible")
    # Tables 1 and 3 end together (game point, best of 1); table 2 plays on.
    night.play(1, POINT1)
    night.play(3, POINT1)
    night.play(2, POINT2)
    alpha.wait_for_selector(card(1), state="hidden", timeout=6000)
    alpha.wait_for_selector(card(3), state="hidden", timeout=6000)
    for table in (1, 3):
        changes = attribute_changes(alpha, scope(table), "data-status")
        ended = [c for c in changes if c["value"] == "finished"]
        hidden = [
            c for c in attribute_changes(alpha, scope(table), "hidden") if c["value"] is not None
        ]
        assert len(ended) == 1 and hidden, (table, ended, hidden)
        delay_ms = hidden[-1]["t"] - ended[0]["t"]
        assert 2500 <= delay_ms <= 4000, f"table {table} hidden {delay_ms:.0f} ms after its end"
    assert visible_cards(alpha) == ["2"] and alpha.locator("#no-match").is_hidden()
    # A new match on table 1 right after: its card comes back and stays.
    night.play(1, start("Gus", "Hal"))
    alpha.wait_for_selector(card(1), state="visible")
    wait_text(alpha, f'{card(1)} [data-field="name"][data-side="1"]', "Gus")
