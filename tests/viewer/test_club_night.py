"""A club night (issue 12, "Done when"): four tables scored at once through the real service on
the real embedded broker, followed live on one club page in real Chromium; afterwards every
match is in the record with its table, chart, statistics, export and API, and the ladder has
moved."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from scorer.config import Club
from tests.viewer.conftest import (
    attribute_changes,
    dedupe,
    running_stack,
    texts,
    wait_subscribed,
)
from tests.viewer.pagekit import assert_frames_shown

pytestmark = pytest.mark.browser

TABLES = 4
CLUBS = (
    Club("alpha", "Alpha TTC", tables=TABLES, table_names=("Centre court",)),
    Club("beta", "Beta TTC"),
)


def card_id(table: int) -> str:
    return "liveGameSection" if table == 1 else f"liveGameSection-{table}"


def rallies(table: int) -> list[int]:
    """Each table's own sequence of rally winners (side 1 or 2), so a card showing another
    table's score is caught: table n's player 2 takes n + 1 points, then player 1 wins 11-(n+1)."""
    return [2] * (table + 1) + [1] * 11


def players(table: int) -> tuple[str, str]:
    return f"Host{table}", f"Guest{table}"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def night(amqtt_broker: Any) -> Any:
    with running_stack(amqtt_broker, amqtt_broker.data_dir, clubs=CLUBS) as stack:
        yield stack


def test_four_tables_scored_at_once_are_followed_on_one_club_page_and_kept_in_the_record(
    night: Any, open_page: Any, artifacts_dir: Path
) -> None:
    page = open_page(night.url("/clubs/alpha"))
    wait_subscribed(page)  # every frame is checked below, the first one too
    scorers = {table: night.scorer("alpha", table) for table in range(1, TABLES + 1)}
    match_ids: dict[int, str] = {}
    errors: list[BaseException] = []
    halfway = threading.Barrier(TABLES, timeout=30)

    def play(table: int) -> None:
        try:
            p1, p2 = players(table)
            reply = scorers[table].send(
                {
                    "cmd": "start",
                    "game_type": "single",
                    "player1": p1,
                    "player2": p2,
                    "best_of": 1,
                }  # fmt: skip
            )
            assert reply["ok"] and reply["table"] == table, reply
            match_ids[table] = reply["match_id"]
            for number, side in enumerate(rallies(table)):
                if number == 5:
                    halfway.wait()  # every table is live at once here
                reply = scorers[table].send({"cmd": "point", "side": side})
                assert reply["ok"] and reply["table"] == table, reply
        except BaseException as exc:  # the test thread reports it
            errors.append(exc)
            halfway.abort()

    threads = [threading.Thread(target=play, args=(t,)) for t in range(1, TABLES + 1)]
    for thread in threads:
        thread.start()
    # While all four play, the page shows four cards at once.
    page.wait_for_function(
        "(n) => document.querySelectorAll('section.live:not([hidden])').length === n",
        arg=TABLES,
        timeout=15000,
    )
    page.screenshot(path=str(artifacts_dir / "club-night-four-tables.png"), full_page=True)
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(set(match_ids.values())) == TABLES

    # Every card showed its own table's scores, in order, and hid 3 s after its end.
    for table in range(1, TABLES + 1):
        page.wait_for_selector(f"#{card_id(table)}", state="hidden", timeout=10000)
    for table in range(1, TABLES + 1):
        expected = [(0, 0)]
        for side in rallies(table):
            a, b = expected[-1]
            expected.append((a + 1, b) if side == 1 else (a, b + 1))
        scope = card_id(table)
        assert_frames_shown(page, "score", "1", scope, [str(a) for a, _ in expected])
        assert_frames_shown(page, "score", "2", scope, [str(b) for _, b in expected])
        assert dedupe(texts(page, "name", "1", scope)) == [players(table)[0]]
        shown = [c for c in attribute_changes(page, scope, "hidden") if c["value"] is None]
        hidden = [c for c in attribute_changes(page, scope, "hidden") if c["value"] is not None]
        assert shown and hidden and hidden[-1]["t"] > shown[0]["t"], (table, shown, hidden)

    # The record: the four matches, each on its table, newest first, with chart and stats.
    deadline = time.monotonic() + 20
    listed: dict[str, Any] = {}
    while time.monotonic() < deadline:
        listed = get_json(night.url("/api/clubs/alpha/matches"))
        if listed["total"] == TABLES:
            break
        time.sleep(0.2)
    assert listed["total"] == TABLES, listed
    by_id = {m["match_id"]: m for m in listed["matches"]}
    for table, match_id in match_ids.items():
        row = by_id[match_id]
        assert str(row["table"]) == str(table)
        assert row["players"] == list(players(table)) and row["games_won"] == [1, 0]
        detail = get_json(night.url(f"/api/clubs/alpha/matches/{match_id}"))
        stats = detail["stats"]
        assert stats["games"][0]["score"] == [11, table + 1], stats["games"]
        # Statistics from the log: player 1 won 11 of 11 + table + 1 points, in one run of 11.
        assert stats["totals"]["points_won"] == [11, table + 1]
        assert stats["totals"]["longest_run"] == [11, table + 1]
        assert stats["totals"]["largest_lead_overcome"][0] == table + 1
        assert str(detail["match"]["table"]) == str(table)
        html = get_text(night.url(f"/clubs/alpha/matches/{match_id}"))
        assert "<svg" in html and "Host" in html
        exported = list(csv.DictReader(io.StringIO(
            get_text(night.url(f"/clubs/alpha/matches/{match_id}.csv")))))  # fmt: skip
        assert exported, "the match's CSV export is empty"
    # The 4-table club lists name their tables.
    matches_page = get_text(night.url("/clubs/alpha/matches"))
    assert 'data-col="table"' in matches_page and "Centre court" in matches_page
    # The ladder moved: every winner is above every loser.
    ladder = {r["name"]: r for r in get_json(night.url("/api/clubs/alpha/ladder"))["ladder"]}
    for table in range(1, TABLES + 1):
        host, guest = players(table)
        assert ladder[host]["rating"] > ladder[guest]["rating"], (ladder[host], ladder[guest])
        assert ladder[host]["played"] == 1 and ladder[host]["won"] == 1
    # Nothing leaked into the other club.
    assert get_json(night.url("/api/clubs/beta/matches"))["total"] == 0
    page.screenshot(path=str(artifacts_dir / "club-night-after.png"), full_page=True)
