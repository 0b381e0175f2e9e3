"""scorer/stats.py against values computed by hand for a known log (docs/history.md)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scorer.engine import Match, Refused, fold
from scorer.stats import match_stats
from tests.scorer.test_engine_properties import RELAXED, commands, played, start_match, starts

A, B = 1, 2


def known_log() -> list[dict[str, Any]]:
    """Best of 3, Ann (side 1) serves first.

    Game 1: Bob 5 in a row, then Ann 11 in a row (11-5). Game 2 (Bob serves first): the
    sides alternate from Ann to 10-10, then Bob twice (10-12); a timeout by side 1 after 4
    points, a 2+ taken back by undo and a 1+ taken back by 1-. Game 3 (Ann serves first):
    Ann 11-0, the expedite system from 4 points. A point every 10 s, 60 s between games."""
    match = Match("known")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}, now=1000)
    at = 1000.0

    def point(side: int, gap: float = 10) -> None:
        nonlocal at
        at += gap
        match.apply({"cmd": "point", "side": side}, now=at)

    for _ in range(5):
        point(B)
    for _ in range(11):
        point(A)
    for number in range(20):
        point(A if number % 2 == 0 else B, gap=60 if number == 0 else 10)
        if number == 3:
            match.apply({"cmd": "timeout", "side": 1}, now=at + 5)
        if number == 5:
            match.apply("2+", now=at + 3)
            match.apply("undo", now=at + 4)
        if number == 7:
            match.apply("1+", now=at + 3)
            match.apply("1-", now=at + 4)
    point(B)
    point(B)
    for number in range(11):
        point(A, gap=60 if number == 0 else 10)
        if number == 3:
            match.apply({"cmd": "expedite"}, now=at + 5)
    assert match.status == "finished"
    return match.log


def test_known_log_totals_match_hand_computed_values() -> None:
    stats = match_stats("known", known_log())
    assert stats["players"] == ["Ann", "Bob"]
    assert stats["winner"] == 1 and stats["games_won"] == [2, 1]
    assert [game["score"] for game in stats["games"]] == [[11, 5], [10, 12], [11, 0]]
    assert [game["winner"] for game in stats["games"]] == [1, 2, 1]
    totals = stats["totals"]
    assert totals["points_won"] == [32, 17]
    assert totals["won_on_serve"] == [16, 8]
    assert totals["won_on_receive"] == [16, 9]
    assert totals["served"] == [25, 24]
    assert totals["received"] == [24, 25]
    assert totals["longest_run"] == [11, 5]
    assert totals["largest_lead_overcome"] == [5, 1]
    assert totals["deuce_games"] == 1
    assert totals["seconds_per_point"] == round(590 / 49, 3)


def test_known_log_games_have_times_servers_timeouts_and_expedite() -> None:
    stats = match_stats("known", known_log())
    one, two, three = stats["games"]
    assert [g["duration_s"] for g in stats["games"]] == [160, 270, 160]
    assert stats["started_at"] == 1000 and stats["ended_at"] == 1590
    assert stats["duration_s"] == 590
    # Game 1: Ann serves points 1-2, Bob 3-4, ... (R4)
    assert [p["server"] for p in one["points"]] == [1, 1, 2, 2] * 4
    assert [p["lead"] for p in one["points"]][:6] == [-1, -2, -3, -4, -5, -4]
    # Game 2: Bob serves first (R5); from 10-10 service changes every point.
    assert [p["server"] for p in two["points"]] == [2, 2, 1, 1] * 5 + [2, 1]
    assert two["points"][0]["seconds"] == 60
    assert two["timeouts"] == [{"side": 1, "after": 4}]
    assert two["deuce"] and not one["deuce"]
    # Game 3: Ann first; expedite from 4 points: service alternates each point (R10).
    assert three["expedite_from"] == 4
    assert [p["server"] for p in three["points"]] == [1, 1, 2, 2, 1, 2, 1, 2, 1, 2, 1]
    assert all(p["server_name"] == ("Ann" if p["server"] == 1 else "Bob") for p in three["points"])


def test_points_taken_back_are_not_in_the_record() -> None:
    stats = match_stats("known", known_log())
    assert len(stats["games"][1]["points"]) == 22
    assert sum(len(game["points"]) for game in stats["games"]) == 49


def test_abandoned_match_ends_at_the_end_command() -> None:
    match = Match("a")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob"}, now=0)
    match.apply("1+", now=5)
    match.apply({"cmd": "end"}, now=9)
    stats = match_stats("a", match.log)
    assert stats["status"] == "abandoned" and stats["winner"] is None
    assert stats["ended_at"] == 9 and stats["duration_s"] == 9
    assert stats["games"][0]["winner"] is None and stats["games"][0]["score"] == [1, 0]


def test_doubles_server_names_follow_the_order_of_service() -> None:
    match = Match("d")
    match.apply(
        {"cmd": "start", "game_type": "double", "players1": ["A1", "A2"],
         "players2": ["B1", "B2"], "best_of": 3},
        now=0,
    )  # fmt: skip
    for at in range(1, 9):
        match.apply("1+", now=at)
    names = [p["server_name"] for p in match_stats("d", match.log)["games"][0]["points"]]
    # R7: X1->Y1, Y1->X2, X2->Y2, Y2->X1, two points each (not the last game: no R8).
    assert names == ["A1", "A1", "B1", "B1", "A2", "A2", "B2", "B2"]


def test_a_log_without_start_is_refused() -> None:
    with pytest.raises(Refused):
        match_stats("x", [])
    with pytest.raises(Refused):
        match_stats("x", [{"cmd": "point", "side": 1, "delta": 1, "at": 1.0}])


# ------------------------------------------------------------- every log, not one log


@RELAXED
@given(params=starts, script=commands)
def test_stats_agree_with_the_engine_on_any_log(params, script):
    match = played(params, script)
    stats = match_stats("prop", match.log)
    snapshot = fold("prop", match.log)
    assert stats["status"] == snapshot["status"]
    assert stats["games_won"] == snapshot["games_won"]
    ended = [game["score"] for game in stats["games"] if game["winner"] is not None]
    assert ended == snapshot["games"]
    totals = stats["totals"]
    points = [p for game in stats["games"] for p in game["points"]]
    assert sum(totals["points_won"]) == len(points) == sum(sum(g["score"]) for g in stats["games"])
    assert totals["served"] == totals["received"][::-1]
    for side in (0, 1):
        assert (
            totals["won_on_serve"][side] + totals["won_on_receive"][side]
            == (totals["points_won"][side])
        )
    assert all(p["seconds"] >= 0 for p in points)
    for game in stats["games"]:  # the lead is the score's difference after each point
        assert all(p["lead"] == p["score"][0] - p["score"][1] for p in game["points"])
        assert game["deuce"] == (min(game["score"]) >= 10)


@RELAXED
@given(
    params=starts,
    presses=st.lists(
        st.one_of(
            st.sampled_from(["1+", "1+", "2+", "2+"]),
            st.just({"cmd": "expedite"}),
            st.builds(lambda side: {"cmd": "correct", "server": side}, st.sampled_from([1, 2])),
            st.builds(lambda side: {"cmd": "timeout", "side": side}, st.sampled_from([1, 2])),
        ),
        min_size=1,
        max_size=120,
    ),
)
def test_each_point_is_served_by_whom_the_scoreboard_showed_serving(params, presses):
    """Without undo or -1 every point stands: the server stats names for the n-th point is
    the scoreboard's server_player just before it was pressed."""
    match = start_match(params)
    shown: list[str] = []
    for number, press in enumerate(presses, start=1):
        before = match.snapshot()
        try:
            match.apply(press, float(number))
        except Refused:
            continue
        if press in ("1+", "2+"):
            shown.append(before["server_player"])
    stats = match_stats("prop", match.log)
    assert [p["server_name"] for g in stats["games"] for p in g["points"]] == shown
