"""Undo, redo and -1 as entries of the append-only log (docs/rules.md, "Undo, redo and -1"):
the failing inputs of issue 10, each pinned with the value the laws give."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from scorer.engine import Match, Refused
from tests.scorer.enginekit import press, start_match

SINGLES = {"cmd": "start", "player1": "Ann", "player2": "Bob"}
DOUBLES = {
    "cmd": "start",
    "game_type": "double",
    "players1": ["A", "B"],
    "players2": ["C", "D"],
    "best_of": 3,
}


def started(**changes: Any) -> Match:
    return start_match("h", SINGLES, **changes)


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


def refused(match: Match, command: Any, code: str, **params: Any) -> Refused:
    """The command is refused with ``code`` (and these params); nothing changes."""
    before, log_before = match.snapshot(), match.log
    with pytest.raises(Refused) as caught:
        match.apply(command, 999.0)
    assert caught.value.code == code, str(caught.value)
    assert caught.value.params == params
    assert match.snapshot() == before and match.log == log_before
    return caught.value


# ---------------------------------------------------------------- undo: the latest change


@pytest.mark.parametrize(
    "change",
    [
        "1+",
        "2-",
        {"cmd": "timeout", "side": 1},
        {"cmd": "expedite"},
        {"cmd": "correct", "server": 2},
        {"cmd": "correct", "left_side": 2},
    ],
)
def test_undo_takes_back_whatever_the_latest_change_was(change):
    match = started(best_of=3)
    before = press(match, "1+", "2+", "1+").snapshot
    press(match, change)
    after = press(match, "undo").snapshot
    keep = {"rev": 0, "updated_at": "", "can_redo": None, "ends_changed": None}
    assert {**after, **keep} == {**before, **keep}
    assert after["can_redo"] is True and len(match.log) == 6  # undo is an entry in the log


def test_undo_takes_back_a_doubles_server_choice():
    match = Match("d")
    match.apply(DOUBLES, 1.0)
    before = press(match, *["1+"] * 11).snapshot
    assert press(match, {"cmd": "server", "player": "D"}).snapshot["server_player"] == "D"
    assert press(match, "undo").snapshot["server_player"] == before["server_player"] == "C"


def test_redo_puts_back_what_undo_took_back_until_a_new_change():
    match = started()
    press(match, "1+", "2+", "2+")
    press(match, "undo", "undo")
    assert score(match.snapshot()) == (1, 0)
    assert score(press(match, "redo").snapshot) == (1, 1)
    assert score(press(match, "redo").snapshot) == (1, 2)
    refused(match, "redo", "nothing_to_redo")
    press(match, "undo")
    press(match, "1+")  # a new change: what undo took back is gone
    assert match.snapshot()["can_redo"] is False
    refused(match, "redo", "nothing_to_redo")
    assert score(match.snapshot()) == (2, 1)


def test_undo_and_redo_of_a_minus_one():
    match = started()
    press(match, "1+", "1+", "2+")
    assert score(press(match, "1-").snapshot) == (1, 1)
    assert score(press(match, "undo").snapshot) == (2, 1)
    assert score(press(match, "redo").snapshot) == (1, 1)


def test_undo_and_redo_flags():
    match = started()
    snapshot = match.snapshot()
    assert (snapshot["can_undo"], snapshot["can_redo"]) == (False, False)
    refused(match, "undo", "nothing_to_undo")
    snapshot = press(match, "1+").snapshot
    assert (snapshot["can_undo"], snapshot["can_redo"]) == (True, False)
    snapshot = press(match, "undo").snapshot
    assert (snapshot["can_undo"], snapshot["can_redo"]) == (False, True)
    snapshot = press(match, "1+", {"cmd": "end"}).snapshot
    assert (snapshot["can_undo"], snapshot["can_redo"]) == (False, False)
    refused(match, "undo", "match_abandoned")
    refused(match, "redo", "match_abandoned")


def test_after_the_match_winning_point_undo_and_both_minus_ones_work():
    for fix, expected in (("undo", (10, 9)), ("1-", (10, 9)), ("2-", (11, 8))):
        match = started()
        press(match, *["1+", "2+"] * 9, "1+", "1+")  # 11-9: the match
        assert match.status == "finished"
        snapshot = press(match, fix).snapshot
        assert score(snapshot) == expected
        assert snapshot["status"] == ("finished" if fix == "2-" else "in_progress")


# ---------------------------------------------------------------- -1: derived again


def test_minus_one_of_a_point_in_a_finished_game_is_refused_when_the_game_is_not_the_latest():
    match = started(best_of=3)
    press(match, *["1+"] * 11, "2+")
    refused(match, "1-", "no_point_to_remove", side=1, game_no=2)
    refused(started(), "1-", "no_point_to_remove", side=1, game_no=1)


def test_minus_one_that_would_put_a_later_timeout_between_games_is_refused_towards_undo():
    match = started(best_of=3)
    press(match, *["1+", "2+"] * 10, "2+")  # 10-11
    press(match, {"cmd": "timeout", "side": 1})
    error = refused(
        match, "1-", "later_change_conflicts", side=1, game_no=1, reason="timeout_between_games"
    )
    assert "undo" in str(error)
    press(match, "undo")  # the way out the reason gives: the timeout first, then the point
    assert press(match, "1-").snapshot["games"] == [[9, 11]]


def test_minus_one_that_reopens_a_game_after_a_server_choice_is_refused_towards_undo():
    match = Match("d")
    match.apply(DOUBLES, 1.0)
    press(match, *["1+"] * 11, {"cmd": "server", "player": "D"})
    refused(
        match, "1-", "later_change_conflicts", side=1, game_no=1, reason="server_choice_too_late"
    )


def test_minus_one_takes_the_side_s_latest_point_and_later_points_flow_into_the_next_game():
    match = started(best_of=3)
    press(match, *["1+"] * 10, "2+", "1+")  # 11-1: game 1
    outcome = press(match, "1-")  # 10-1: game 1 goes on
    assert score(outcome.snapshot) == (10, 1) and outcome.snapshot["status"] == "in_progress"
    assert outcome.event["kind"] == "point_removed" and outcome.event["score"] == [10, 1]


# ---------------------------------------------------------------- snapshot additions


def test_timeout_is_shown_while_it_is_the_latest_change_and_a_point_ends_it():
    match = Match("t")
    match.apply({**SINGLES, "best_of": 3}, 1764170000.0)
    match.apply("1+", 1764170001.0)
    snapshot = match.apply({"cmd": "timeout", "side": 2}, 1764170002.5).snapshot
    assert snapshot["timeout"] == {"side": 2, "started_at": "2025-11-26T15:13:22.500Z"}
    assert match.apply("2+", 1764170070.0).snapshot["timeout"] is None
    # undo of that point makes the timeout the latest change again, as it was
    undone = match.apply("undo", 1764170071.0).snapshot
    assert undone["timeout"] == {"side": 2, "started_at": "2025-11-26T15:13:22.500Z"}


def test_last_game_names_the_game_that_just_ended_between_games_and_after_the_match():
    match = Match("g")
    match.apply({**SINGLES, "best_of": 3}, 1764170000.0)
    for second in range(1, 11):
        match.apply("2+", 1764170000.0 + second)
    assert match.snapshot()["last_game"] is None
    snapshot = match.apply("2+", 1764170100.25).snapshot
    assert snapshot["status"] == "between_games"
    assert snapshot["last_game"] == {
        "game_no": 1,
        "winner": 2,
        "winner_name": "Bob",
        "score": [0, 11],
        "ended_at": "2025-11-26T15:15:00.250Z",
    }
    assert match.apply("1+", 1764170200.0).snapshot["last_game"] is None  # game 2 began
    for second in range(11):
        snapshot = match.apply("2+", 1764170300.0 + second).snapshot
    assert snapshot["status"] == "finished" and snapshot["last_game"]["game_no"] == 2
    assert snapshot["last_game"]["score"] == [1, 11]


def test_ends_changed_at_a_game_end_at_5_in_the_deciding_game_and_on_its_undo():
    match = started(best_of=3)
    flags = [press(match, "1+").snapshot["ends_changed"] for _ in range(11)]
    assert flags == [False] * 10 + [True]  # game 1 ended: ends change
    assert press(match, "2+").snapshot["ends_changed"] is False
    assert press(match, "undo").snapshot["ends_changed"] is False  # still game 2's ends
    press(match, *["2+"] * 11)  # game 2 to side 2: 1-1 in games
    flags = [press(match, "1+").snapshot["ends_changed"] for _ in range(5)]
    assert flags == [False] * 4 + [True]  # R6: 5 points in the deciding game
    assert press(match, "undo").snapshot["ends_changed"] is True  # moved back
    assert press(match, "redo").snapshot["ends_changed"] is True
    assert press(match, "1+").snapshot["ends_changed"] is False


def test_ends_changed_on_a_correction_of_the_ends():
    match = started()
    assert press(match, {"cmd": "correct", "left_side": 2}).snapshot["ends_changed"] is True
    assert press(match, {"cmd": "correct", "left_side": 2}).snapshot["ends_changed"] is False


# ---------------------------------------------------------------- names and strings


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("\u202eAnn", "Ann"),  # RIGHT-TO-LEFT OVERRIDE
        ("Ann\u2066x\u2069", "Annx"),  # isolates
        ("\u200fAnn\u200e", "Ann"),  # RLM, LRM
        ("Ann\u202a\u202b\u202c\u202d", "Ann"),
        ("A\tnn\x00\x85", "A nn"),  # C0 and C1 controls become spaces, then trimmed
        ("Анна Смирнова", "Анна Смирнова"),
        ("עדי כהן", "עדי כהן"),  # right-to-left text itself is kept
    ],
)
def test_names_lose_bidi_overrides_and_controls_at_parse_time(given, shown):
    match = started(player1=given)
    assert match.snapshot()["game_data"]["player1"] == shown
    assert match.log[0]["player1"] == shown


def test_a_name_of_only_bidi_controls_is_empty():
    with pytest.raises(Refused) as caught:
        started(player1="\u202e\u202c")
    assert caught.value.code == "bad_command" and caught.value.params == {"field": "player1"}


@pytest.mark.parametrize(
    "raw",
    [
        {**SINGLES, "player1": "Ann\ud800"},
        {"cmd": "point", "side": 1, "id": "x\udfff"},
        {"cmd": "server", "player": "\udc80"},
        {"cmd": "correct", "server": "\ud83d", "receiver": "C"},
        '{"cmd": "start", "player1": "A\\ud800", "player2": "B"}',
        '{"cmd": "start", "players1": ["A\\ud800", "B"]}',
    ],
)
def test_lone_surrogates_are_refused_in_every_string_field(raw):
    match = Match("s")
    with pytest.raises(Refused) as caught:
        match.apply(raw, 1.0)
    assert caught.value.code == "bad_command"
    assert match.log == []


# ---------------------------------------------------------------- refusal codes

# code -> (start command or None, presses before, the refused command, params)
REFUSALS: dict[str, tuple[Any, list[Any], Any, dict[str, Any]]] = {
    "bad_command": (SINGLES, [], {"cmd": "point", "side": 3}, {"field": "side"}),
    "no_match": (None, [], "1+", {}),
    "match_in_progress": (SINGLES, [], SINGLES, {}),
    "match_over": (SINGLES, ["1+"] * 11, "2+", {}),
    "match_abandoned": (SINGLES, [{"cmd": "end"}], "undo", {}),
    "no_point_to_remove": (SINGLES, ["1+"], "2-", {"side": 2, "game_no": 1}),
    "points_after_match_end": (
        SINGLES,
        ["1+", "2+"] * 10 + ["1+", "2+", "1+", "1+"],
        "2-",
        {"side": 2, "game_no": 1},
    ),
    "later_change_conflicts": (
        {**SINGLES, "best_of": 3},
        ["1+", "2+"] * 10 + ["2+", {"cmd": "timeout", "side": 1}],
        "1-",
        {"side": 1, "game_no": 1, "reason": "timeout_between_games"},
    ),
    "nothing_to_undo": (SINGLES, [], "undo", {}),
    "nothing_to_redo": (SINGLES, ["1+"], "redo", {}),
    "timeout_used": (
        SINGLES,
        [{"cmd": "timeout", "side": 2}],
        {"cmd": "timeout", "side": 2},
        {"side": 2},
    ),
    "timeout_between_games": (
        {**SINGLES, "best_of": 3},
        ["1+"] * 11,
        {"cmd": "timeout", "side": 1},
        {"side": 1},
    ),
    "expedite_on": (SINGLES, [{"cmd": "expedite"}], {"cmd": "expedite"}, {}),
    "expedite_too_late": (
        SINGLES,
        ["1+", "2+"] * 9,
        {"cmd": "expedite"},
        {"points": 18, "limit": 18},
    ),
    "not_doubles": ({**SINGLES, "best_of": 3}, ["1+"] * 11, {"cmd": "server", "player": "Bob"}, {}),
    "server_choice_too_late": (DOUBLES, [], {"cmd": "server", "player": "A"}, {}),
    "not_in_serving_pair": (
        DOUBLES,
        ["1+"] * 11,
        {"cmd": "server", "player": "A"},
        {"player": "A", "side": 2},
    ),
    "unknown_player": (SINGLES, [], {"cmd": "correct", "server": "Zoe"}, {"player": "Zoe"}),
    "same_side": (DOUBLES, [], {"cmd": "correct", "server": "A", "receiver": "B"}, {}),
}


@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_each_refusal_has_its_code_and_params(code):
    start, presses, command, params = REFUSALS[code]
    match = Match("r")
    if start is not None:
        match.apply(start, 1.0)
    press(match, *presses) if presses else None
    refused(match, command, code, **params)


def test_every_code_the_engine_raises_is_listed_in_docs_rules_md_and_pinned_here():
    root = Path(__file__).resolve().parents[2]
    source = (root / "scorer" / "engine.py").read_text("utf-8")
    raised = set(re.findall(r'code="([a-z_]+)"', source))
    table = (root / "docs" / "rules.md").read_text("utf-8").split("## Refusals")[1]
    table = table.split("\n## ")[0].split("|---|---|---|")[1]  # the rows
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert raised == documented == set(REFUSALS)


def test_an_old_style_refused_keeps_working():
    exc = Refused("plain text")
    assert str(exc) == "plain text" and exc.code == "refused" and exc.params == {}


def test_minus_one_that_would_put_a_timeout_after_the_match_end_names_the_timeout():
    match = started()  # best of 1
    press(match, *["1+", "2+"] * 10, "2+", {"cmd": "timeout", "side": 1})  # 10-11
    refused(match, "1-", "later_change_conflicts", side=1, game_no=1, reason="match_over")
