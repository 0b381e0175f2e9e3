"""Undo, redo and -1 as entries of the append-only log (docs/rules.md, "Undo, redo and -1"):
the failing inputs of issue 10, each pinned with the value the laws give."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from scorer.engine import Match, Outcome, Refused

_clock = itertools.count(1)
SINGLES = {"cmd": "start", "player1": "Ann", "player2": "Bob"}


def started(**changes: Any) -> Match:
    match = Match("h")
    match.apply({**SINGLES, **changes}, float(next(_clock)))
    return match


def press(match: Match, *commands: Any) -> Outcome:
    outcome = None
    for command in commands:
        outcome = match.apply(command, float(next(_clock)))
    assert outcome is not None
    return outcome


def score(snapshot: dict[str, Any]) -> tuple[int, int]:
    return snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]


def test_undo_takes_back_the_latest_change_even_when_it_was_a_minus_one():
    match = started()
    press(match, "1+", "1+", "1+", "2+", "2+")  # 3-2
    assert score(press(match, "1-").snapshot) == (2, 2)
    assert score(press(match, "undo").snapshot) == (3, 2)  # the -1 is taken back, not a point


def best_of_7_game_3_at_9_all() -> Match:
    match = started(best_of=7)
    press(match, *["2+"] * 22)  # games 1 and 2 to side 2
    press(match, *["1+", "2+"] * 9)  # game 3: 9-9
    return match


def test_minus_one_derives_the_match_again_so_no_game_ends_on_an_illegal_score():
    match = best_of_7_game_3_at_9_all()
    press(match, "2+", "2+")  # 9-11: game 3 over
    assert score(press(match, "2-").snapshot) == (9, 10)
    press(match, "1+", "2+", "2+")  # 10-10, then 10-12
    snapshot = press(match, "1-").snapshot
    # Side 1's 10th point goes: game 3 ended 9-11, side 2's later point opens game 4.
    assert snapshot["games"] == [[0, 11], [0, 11], [9, 11]]
    assert snapshot["status"] == "in_progress" and snapshot["game_no"] == 4
    assert score(snapshot) == (0, 1)
    assert snapshot["games_won"] == [0, 3]


def test_minus_one_that_would_leave_points_after_the_match_end_is_refused_towards_undo():
    match = started()  # best of 1
    press(match, *["1+", "2+"] * 10, "1+", "2+", "1+", "1+")  # 13-11 after deuce
    assert match.status == "finished"
    before = match.snapshot()
    with pytest.raises(Refused, match="undo") as caught:
        press(match, "2-")
    assert caught.value.code == "points_after_match_end"
    assert caught.value.params == {"side": 2, "game_no": 1}
    assert match.snapshot() == before
