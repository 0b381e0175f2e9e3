"""Tables on the pages in real Chromium against the real embedded broker (issue 12): the club
page's card per table, the display and overlay of one table, the scorer's choice of table.

The snapshots, replies and the commands' reader are the service user's own MQTT clients
publishing to the table topics (scorer/topics.py) as the scorer service does; the service's
table support is tested on its side, and the lead's club-night test runs both together.
These tests need the broker's ACL for the table topics (broker/acl.py, from the service side
of issue 12): spectators read ``clubs/+/tables/+/game``, the service user writes it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scorer import topics
from scorer.config import Club, Settings
from scorer.engine import Match
from tests.viewer.conftest import ViewerThread, attribute_changes, texts
from tests.viewer.pagekit import live_api_when

pytestmark = pytest.mark.browser

CLUBS = (
    Club("alpha", "Alpha TTC", tables=3, table_names=("Centre court",)),
    Club("beta", "Beta TTC", tables=2),
)
NAMES = {1: "Centre court", 2: "Table 2", 3: "Table 3"}
PHONE = {"width": 360, "height": 740, "mobile": True}


def card(table: int) -> str:
    return "#liveGameSection" if table == 1 else f"#liveGameSection-{table}"


def scope(table: int) -> str:
    return card(table)[1:]


@dataclass
class Night:
    """Broker + viewer for clubs with several tables, and the service user's client."""

    endpoint: Any
    settings: Settings
    viewer: ViewerThread
    service: Any  # a paho client logged in as the service user
    matches: dict[tuple[str, int], Match]

    def url(self, path: str) -> str:
        return self.viewer.url + path

    def play(self, table: int, *commands: dict[str, Any], club: str = "alpha") -> dict:
        """Apply commands to the table's match (a new one on "start") with the real engine,
        then publish its snapshot, retained, on the table's topic as the service does."""
        for command in commands:
            if command["cmd"] == "start":
                self.matches[club, table] = Match(f"{club}-t{table}-{len(self.matches)}")
            self.matches[club, table].apply(dict(command), time.time())
        snapshot = self.matches[club, table].snapshot()
        assert snapshot is not None
        snapshot = dict(
            snapshot, table=table, table_name=self.settings.club(club).table_name(table)
        )
        self.publish(topics.game(club, table), json.dumps(snapshot))
        return snapshot

    def publish(self, topic: str, payload: str, retain: bool = True) -> None:
        self.service.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


@pytest.fixture
def night(amqtt_broker: Any) -> Iterator[Night]:
    # The broker's data dir, as `rallycast up` runs it: the viewer issues device tokens.
    settings = amqtt_broker.settings(data_dir=str(amqtt_broker.data_dir), clubs=CLUBS)
    viewer = ViewerThread(settings)
    viewer.start()
    try:
        service = amqtt_broker.client(amqtt_broker.service_user)
        yield Night(amqtt_broker, settings, viewer, service, {})
    finally:
        viewer.stop()


def start(p1: str, p2: str) -> dict[str, Any]:
    return {"cmd": "start", "game_type": "single", "player1": p1, "player2": p2, "best_of": 1}


POINT1 = {"cmd": "point", "side": 1}
POINT2 = {"cmd": "point", "side": 2}


def wait_connected(page: Any) -> None:
    page.wait_for_function(
        "() => window.Rallycast && Rallycast.client && Rallycast.client.connected"
    )


def wait_text(page: Any, selector: str, text: str) -> None:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.textContent === t; }",
        arg=[selector, text],
    )


def visible_cards(page: Any) -> list[str]:
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('section.live'))"
        ".filter((s) => !s.hidden).map((s) => s.dataset.table)"
    )


def test_each_card_follows_its_own_table_appears_at_start_and_hides_3s_after_its_end(
    night: Night, open_page: Any, artifacts_dir: Path
) -> None:
    index = open_page(night.url("/"))
    alpha = open_page(night.url("/clubs/alpha"))
    beta = open_page(night.url("/clubs/beta"))
    for page in (index, alpha, beta):
        wait_connected(page)
    alpha_state = '.club-item[data-club="alpha"] [data-field="state"]'
    # The cards stand in table order, named as configured, all hidden while nothing is on.
    assert alpha.evaluate(
        "() => Array.from(document.querySelectorAll('section.live'))"
        ".map((s) => [s.dataset.table, s.querySelector('.live-table-name').textContent])"
    ) == [["1", "Centre court"], ["2", "Table 2"], ["3", "Table 3"]]
    assert visible_cards(alpha) == [] and alpha.locator("#no-match").is_visible()

    # Table 2 starts first: only its card shows.
    night.play(2, start("Ann", "Bob"), POINT1)
    alpha.wait_for_selector(card(2), state="visible")
    wait_text(alpha, f'{card(2)} [data-field="score"][data-side="1"]', "1")
    assert visible_cards(alpha) == ["2"] and alpha.locator("#no-match").is_hidden()
    assert alpha.inner_text(f'{card(2)} [data-field="name"][data-side="1"]') == "Ann"
    # The club list says a match is on at Alpha (its only one is on table 2).
    wait_text(index, alpha_state, "Ann 1–0 Bob")
    assert index.get_attribute('.club-item[data-club="alpha"]', "data-match") == "on"

    # Tables 3 and 1 start; each card shows its own match.
    night.play(3, start("Cleo", "Dan"), POINT2, POINT2)
    night.play(1, start("Eve", "Fay"))
    alpha.wait_for_selector(card(3), state="visible")
    alpha.wait_for_selector(card(1), state="visible")
    wait_text(alpha, f'{card(3)} [data-field="score"][data-side="2"]', "2")
    assert visible_cards(alpha) == ["1", "2", "3"]
    assert alpha.inner_text(f'{card(1)} [data-field="name"][data-side="2"]') == "Fay"
    assert alpha.inner_text(f'{card(3)} [data-field="name"][data-side="1"]') == "Cleo"
    wait_text(index, alpha_state, "Eve 0–0 Fay")  # the lowest-numbered table that is on

    # Points on table 3 reach card 3 only.
    for _ in range(3):
        night.play(3, POINT1)
    wait_text(alpha, f'{card(3)} [data-field="score"][data-side="1"]', "3")
    assert texts(alpha, "score", "1", scope(2)) == ["1"]
    assert texts(alpha, "score", "1", scope(1)) == ["0"]
    assert texts(alpha, "score", "1", scope(3)) == ["0", "1", "2", "3"]

    # A snapshot on a table the club has not configured (table 5) shows nowhere.
    night.publish(topics.game("alpha", 5), json.dumps(night.matches["alpha", 3].snapshot()))
    # Another club's tables stay apart: beta's page shows nothing of alpha's.
    night.play(2, start("Gus", "Hal"), POINT1, club="beta")
    beta.wait_for_selector(card(2), state="visible")
    assert beta.inner_text(f'{card(2)} [data-field="name"][data-side="1"]') == "Gus"
    assert visible_cards(beta) == ["2"]
    wait_text(index, '.club-item[data-club="beta"] [data-field="state"]', "Gus 1–0 Hal")
    assert [t for t in texts(beta, "name", "1") if t not in ("", "Gus")] == []
    assert visible_cards(alpha) == ["1", "2", "3"]
    alpha.screenshot(path=str(artifacts_dir / "club-three-tables.png"))

    # Table 2's match ends (Ann takes the game 11-0): its card keeps the result for 3 s,
    # then hides; the others stay.
    night.play(2, *[POINT1] * 10)
    alpha.wait_for_selector(card(2), state="hidden", timeout=6000)
    ended = [
        c for c in attribute_changes(alpha, scope(2), "data-status") if c["value"] == "finished"
    ]
    hidden = [c for c in attribute_changes(alpha, scope(2), "hidden") if c["value"] is not None]
    assert len(ended) == 1 and hidden, (ended, hidden)
    delay_ms = hidden[-1]["t"] - ended[0]["t"]
    assert 2500 <= delay_ms <= 4000, f"hidden {delay_ms:.0f} ms after the end"
    assert visible_cards(alpha) == ["1", "3"]

    # Table 3's match is deleted (the service clears its retained snapshot): gone at once.
    night.publish(topics.game("alpha", 3), "")
    alpha.wait_for_selector(card(3), state="hidden")
    assert visible_cards(alpha) == ["1"] and alpha.locator("#no-match").is_hidden()

    # The API gives every table's snapshot, table 1's also at the top (docs/api.md), once
    # the viewer's follower has the clear the page showed.
    live = live_api_when(
        night.url("/api/clubs/alpha/live"), lambda b: not b["tables"][2]["snapshot"]
    )
    assert live["known"] is True
    assert [(t["table"], t["name"], t["topic"]) for t in live["tables"]] == [
        (1, "Centre court", "clubs/alpha/game"),
        (2, "Table 2", "clubs/alpha/tables/2/game"),
        (3, "Table 3", "clubs/alpha/tables/3/game"),
    ]
    snaps = [t["snapshot"] for t in live["tables"]]
    assert snaps[0]["game_data"]["player1"] == "Eve" and live["snapshot"] == snaps[0]
    assert snaps[1]["status"] == "finished" and snaps[1]["table"] == 2
    assert snaps[2] is None


def test_a_page_opened_mid_night_shows_every_table_at_once_from_the_server(
    night: Night, open_page: Any
) -> None:
    night.play(1, start("Ann", "Bob"), POINT1)
    night.play(3, start("Cleo", "Dan"), POINT2, POINT2)
    # The viewer's own follower has them once the API says so.
    live_api_when(
        night.url("/api/clubs/alpha/live"),
        lambda b: b["tables"][2]["snapshot"] and b["tables"][0]["snapshot"],
    )
    page = open_page(night.url("/clubs/alpha"))
    page.wait_for_selector(card(3), state="visible")
    # The first score each card ever wrote is the current one (embedded in the page).
    assert texts(page, "score", "2", scope(3)) == ["2"]
    assert texts(page, "score", "1", scope(1)) == ["1"]
    assert visible_cards(page) == ["1", "3"]


def test_the_display_and_the_overlay_show_the_table_of_their_url_only(
    night: Night, open_page: Any, artifacts_dir: Path
) -> None:
    display = open_page(night.url("/clubs/alpha/display?table=2"), width=1280, height=720)
    overlay = open_page(night.url("/clubs/alpha/overlay?table=3"))
    first = open_page(night.url("/clubs/alpha/display"))
    for page in (display, overlay, first):
        wait_connected(page)
    night.play(1, start("Ann", "Bob"))
    night.play(2, start("Cleo", "Dan"), POINT1, POINT1)
    night.play(3, start("Eve", "Fay"), POINT2)
    # The TV shows the players at their ends (left, right); at the start side 1 is at the left.
    wait_text(display, '[data-field="score"][data-side="left"]', "2")
    assert display.inner_text('[data-field="name"][data-side="left"]') == "Cleo"
    assert display.inner_text("#board-table") == "Table 2"
    overlay.wait_for_selector("#bug", state="visible")
    wait_text(overlay, '[data-field="score"][data-side="2"]', "1")
    assert overlay.inner_text('[data-field="name"][data-side="1"]') == "Eve"
    wait_text(first, '[data-field="name"][data-side="left"]', "Ann")
    display.screenshot(path=str(artifacts_dir / "display-table-2.png"))
    # The iframe embed of table 3: the <rallycast-live table="3"> element (docs/embed.md).
    frame = open_page(night.url("/clubs/alpha/embed?table=3"))
    frame.wait_for_selector("rallycast-live [part=live]", state="visible")
    assert frame.inner_text('rallycast-live [data-field="name"][data-side="1"]') == "Eve"
    assert frame.inner_text('rallycast-live [data-field="score"][data-side="2"]') == "1"
    # Nothing of another table ever showed on them.
    assert set(texts(display, "name", "left")) <= {"", "Cleo", "Dan"}
    assert set(texts(overlay, "name", "1")) <= {"", "Eve"}

    # A table the club does not have is a page that says so, with its tables to pick from.
    bad = open_page(night.url("/clubs/alpha/display?table=7"))
    bad.failures.allowed.append("404 (Not Found)")  # the page's own status, on purpose
    assert bad.inner_text("h1") == "No such table"
    assert bad.locator(".table-links a").all_inner_texts() == ["Centre court", "Table 2", "Table 3"]
    bad.click("text=Table 3")
    bad.wait_for_url("**/clubs/alpha/display?table=3")
    wait_text(bad, '[data-field="name"][data-side="left"]', "Eve")


def two_matches_and_their_commands(night: Night) -> Any:
    """Matches on tables 1 and 2; a recorder of every command the club's tables get (as the
    service sees them)."""
    commands = night.endpoint.recorder(
        [topics.commands("alpha", 1), "clubs/alpha/tables/+/game/cmd"],
        user=night.endpoint.service_user,
    )
    night.play(1, start("Ann", "Bob"))
    night.play(2, start("Cleo", "Dan"))
    return commands


def sign_in(phone: Any, night: Night) -> None:
    """The phone page's sign-in, with the club's scorer password."""
    phone.fill("#password", night.endpoint.users["alpha"])
    phone.click("#signin-form button[type=submit]")


def test_the_phone_page_scores_the_table_it_picked_and_remembers_the_choice(
    night: Night, open_page: Any, artifacts_dir: Path
) -> None:
    commands = two_matches_and_their_commands(night)
    phone = open_page(night.url("/clubs/alpha/score"), **PHONE)
    assert phone.locator("#table-pick option").all_inner_texts() == list(NAMES.values())
    assert phone.input_value("#table-pick") == "1"
    sign_in(phone, night)
    wait_text(phone, '[data-field="name"][data-side="left"]', "Ann")

    phone.select_option("#table-pick", "2")
    wait_text(phone, '[data-field="name"][data-side="left"]', "Cleo")
    phone.screenshot(path=str(artifacts_dir / "score-table-2.png"))
    phone.tap("button[data-cmd='plus'][data-end='left']")
    press = commands.wait_for(lambda m: True, timeout=5)
    assert press.topic == "clubs/alpha/tables/2/game/cmd"
    sent = json.loads(press.payload)
    assert sent["cmd"] == "point" and sent["side"] == 1
    assert sent["match"] == night.matches["alpha", 2].snapshot()["match_id"]

    # While the press waits for its reply the table cannot change (it goes to its table).
    phone.select_option("#table-pick", "3")
    assert phone.input_value("#table-pick") == "2"
    assert (
        phone.inner_text("#reply") == "Send or forget the waiting presses before changing tables."
    )
    # A reply on table 1's reply topic is not this press's; table 2's is.
    night.publish(topics.replies("alpha", 1), json.dumps({"id": sent["id"], "ok": True}), False)
    night.play(2, POINT1)
    night.publish(
        topics.replies("alpha", 2),
        json.dumps({"id": sent["id"], "ok": True, "error": None, "code": None, "table": 2,
                    "rev": night.matches["alpha", 2].snapshot()["rev"], "match_id": None}),
        False,
    )  # fmt: skip
    wait_text(phone, "#reply", "OK")
    assert phone.get_attribute("#scorer", "data-pending") == "0"
    wait_text(phone, '[data-field="score"][data-side="left"]', "1")
    # Every press went to table 2's topic, none to another table's (resends keep the id).
    assert {m.topic for m in commands.messages} == {"clubs/alpha/tables/2/game/cmd"}
    assert {json.loads(m.payload)["id"] for m in commands.messages} == {sent["id"]}

    # The choice is this device's: a reload comes back on table 2; ?table= wins over it.
    phone.reload()
    assert phone.input_value("#table-pick") == "2"
    wait_text(phone, '[data-field="name"][data-side="left"]', "Cleo")
    phone.goto(night.url("/clubs/alpha/score?table=1"))
    assert phone.input_value("#table-pick") == "1"
    wait_text(phone, '[data-field="name"][data-side="left"]', "Ann")
    phone.goto(night.url("/clubs/alpha/score"))
    assert phone.input_value("#table-pick") == "1"
