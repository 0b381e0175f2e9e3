"""The engine's command vocabulary: parsing, refusals, ids, -1/undo, abandon, the log, the
snapshot and the events (docs/rules.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scorer.engine import Match, Refused, parse_command
from tests.scorer.enginekit import press, start_match

SEED_START = {
    "cmd": "start",
    "game_type": "single",
    "player1": "Иван Иванов",
    "player2": "Петр Петров",
    "best_of": 1,
    "first_server": 1,
}


def started(**changes: Any) -> Match:
    return start_match("m-1", SEED_START, **changes)


def refused(match: Match, command: Any, reason: str) -> None:
    """The command is refused with ``reason`` in its message and nothing changes."""
    before, log_before = match.snapshot(), match.log
    with pytest.raises(Refused, match=reason):
        match.apply(command, 999.0)
    assert match.snapshot() == before and match.log == log_before


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1+", {"cmd": "point", "side": 1, "delta": 1}),
        (" 2+\n", {"cmd": "point", "side": 2, "delta": 1}),
        ("1-", {"cmd": "point", "side": 1, "delta": -1}),
        ("2-", {"cmd": "point", "side": 2, "delta": -1}),
        ("UNDO", {"cmd": "undo"}),
        ("  Undo ", {"cmd": "undo"}),
        (b"1+", {"cmd": "point", "side": 1, "delta": 1}),
    ],
)
def test_text_shorthands_are_trimmed_and_case_insensitive(text, expected):
    assert parse_command(text) == expected


def test_json_bytes_text_and_dict_give_the_same_normalized_command():
    raw = {"cmd": "point", "side": 2, "id": "a1"}
    expected = {"cmd": "point", "side": 2, "delta": 1, "id": "a1"}
    assert parse_command(raw) == expected
    assert parse_command(json.dumps(raw)) == expected
    assert parse_command(json.dumps(raw).encode()) == expected


def test_start_defaults_are_filled_in_and_names_trimmed():
    command = parse_command({"cmd": "start", "player1": "  Ann ", "player2": "Bob"})
    assert command == {
        "cmd": "start",
        "game_type": "single",
        "player1": "Ann",
        "player2": "Bob",
        "best_of": 1,
        "first_server": 1,
    }


def test_start_keeps_force_only_when_true():
    assert parse_command({**SEED_START, "force": True})["force"] is True
    assert "force" not in parse_command({**SEED_START, "force": False})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "UTF-8"),
        ("", "empty"),
        ("   ", "empty"),
        ("3+", "not a command"),
        ("{not json", "not a command"),
        ("[1, 2]", "JSON object"),
        ('"undo"', "JSON object"),
        ({"side": 1}, '"cmd"'),
        ({"cmd": 5}, '"cmd"'),
        ({"cmd": "jump"}, "unknown command 'jump'"),
        ({"cmd": "delete"}, "unknown command"),
        ({"cmd": "point", "side": 1, "colour": "red"}, "unknown field.*colour"),
        ({"cmd": "point", "side": 1, "at": 5}, "unknown field.*at"),
        ({"cmd": "point"}, '"side" is missing'),
        ({"cmd": "point", "side": "1"}, '"side" must be a whole number'),
        ({"cmd": "point", "side": True}, '"side" must be a whole number'),
        ({"cmd": "point", "side": 1.0}, '"side" must be a whole number'),
        ({"cmd": "point", "side": 3}, '"side" must be one of 1, 2'),
        ({"cmd": "point", "side": 1, "delta": 2}, '"delta" must be one of'),
        ({"cmd": "point", "side": 1, "id": True}, '"id"'),
        ({"cmd": "point", "side": 1, "id": 1.5}, '"id"'),
        ({"cmd": "point", "side": 1, "id": ""}, '"id"'),
        ({"cmd": "point", "side": 1, "id": "x" * 129}, '"id"'),
        ({"cmd": "timeout", "side": None}, '"side"'),
        ({**SEED_START, "best_of": "3"}, '"best_of" must be a whole number'),
        ({**SEED_START, "best_of": 4}, "odd"),
        ({**SEED_START, "first_server": 3}, '"first_server"'),
        ({**SEED_START, "game_type": "triple"}, '"game_type"'),
        ({**SEED_START, "player1": ""}, '"player1" is empty'),
        ({**SEED_START, "player1": "   "}, '"player1" is empty'),
        ({**SEED_START, "player2": "я" * 65}, "longer than 64"),
        ({**SEED_START, "player2": 7}, "must be a name"),
        ({**SEED_START, "player2": "Иван Иванов"}, "same name"),
        ({**SEED_START, "force": "yes"}, '"force"'),
        ({**SEED_START, "players1": ["A", "B"]}, "doubles"),
        (
            {"cmd": "start", "game_type": "double", "players1": ["A"], "players2": ["C", "D"]},
            "two names",
        ),
        (
            {"cmd": "start", "game_type": "double", "players1": "AB", "players2": ["C", "D"]},
            "two names",
        ),
        (
            {"cmd": "start", "game_type": "double", "players1": ["A", ""], "players2": ["C", "D"]},
            "empty",
        ),
        ({"cmd": "start", "game_type": "double", "player1": "A", "player2": "B"}, "doubles take"),
        ({"cmd": "correct", "left_side": 3}, '"left_side"'),
        ({"cmd": "correct", "receiver": "Bob"}, "together"),
        ({"cmd": "server"}, '"player"'),
        ("x" * 5000, "too long"),
        ("[" * 3000, "not a command"),  # nesting deeper than the parser goes
        ({"cmd": "undo", 1: 2}, "unknown field"),
    ],
)
def test_malformed_commands_are_refused_with_a_reason(raw, reason):
    with pytest.raises(Refused, match=reason):
        parse_command(raw)


def test_a_64_character_name_is_accepted():
    assert started(player2="я" * 64).snapshot()["game_data"]["player2"] == "я" * 64


# ---------------------------------------------------------------- match life


def test_snapshot_is_none_before_the_start_and_commands_are_refused():
    match = Match("m")
    assert match.snapshot() is None and match.status is None and match.rev == 0
    for command in (
        "1+",
        "1-",
        "undo",
        {"cmd": "timeout", "side": 1},
        {"cmd": "expedite"},
        {"cmd": "end"},
    ):
        with pytest.raises(Refused, match="no match has started"):
            match.apply(command, 1.0)
    assert match.log == []


def test_start_snapshot_has_the_seed_shape_and_the_scoreboard_fields():
    match = Match("m-42")
    outcome = match.apply(SEED_START, 1764170000.25)
    assert outcome.snapshot == {
        "type": "game_update",
        "game_data": {
            "game_type": "single",
            "score1": 0,
            "score2": 0,
            "player1": "Иван Иванов",
            "player2": "Петр Петров",
            "is_finished": False,
            "server": 1,
            "winner": None,
        },
        "schema": 1,
        "rev": 1,
        "match_id": "m-42",
        "best_of": 1,
        "games": [],
        "games_won": [0, 0],
        "game_no": 1,
        "status": "in_progress",
        "server_player": "Иван Иванов",
        "receiver_player": "Петр Петров",
        "left_side": 1,
        "expedite": False,
        "timeouts_used": [0, 0],
        "can_undo": False,
        "can_redo": False,
        "timeout": None,
        "last_game": None,
        "ends_changed": False,
        "updated_at": "2025-11-26T15:13:20.250Z",
    }
    assert outcome.event == {
        "kind": "start",
        "game_no": 1,
        "score": [0, 0],
        "rev": 1,
        "match_id": "m-42",
    }
    assert outcome.duplicate is False


def test_doubles_names_are_joined_per_pair():
    match = Match("d")
    command = {
        "cmd": "start",
        "game_type": "double",
        "players1": ["A", "B"],
        "players2": ["C", "D"],
    }
    snapshot = match.apply(command, 1.0).snapshot
    assert snapshot["game_data"]["player1"] == "A / B"
    assert snapshot["game_data"]["player2"] == "C / D"
    assert snapshot["game_data"]["game_type"] == "double"


def test_a_second_start_while_the_match_is_in_progress_is_refused():
    match = started()
    refused(match, SEED_START, "a match is in progress")
    refused(match, {**SEED_START, "force": True}, "a match is in progress")  # the service decides


def test_a_start_after_the_match_ended_is_refused_by_the_engine():
    match = started()
    press(match, *["1+"] * 11)
    refused(match, SEED_START, "over")


def test_game_end_snapshot_matches_the_seed_game_end_message():
    match = started()
    press(match, *["1+", "2+"] * 3 + ["1+"] * 8)
    snapshot = match.snapshot()
    assert snapshot["type"] == "game_end"
    assert snapshot["game_data"]["score1"] == 11 and snapshot["game_data"]["score2"] == 3
    assert snapshot["game_data"]["winner"] == "Иван Иванов"
    assert snapshot["game_data"]["is_finished"] is True
    assert snapshot["game_data"]["server"] is None
    assert snapshot["server_player"] is None and snapshot["receiver_player"] is None
    assert snapshot["status"] == "finished" and snapshot["games"] == [[11, 3]]


def test_point_events_name_the_kind_side_game_and_score():
    match = started(best_of=3)
    kinds = [press(match, "1+").event for _ in range(11)]
    assert kinds[0] == {
        "kind": "point",
        "side": 1,
        "game_no": 1,
        "score": [1, 0],
        "rev": 2,
        "match_id": "m-1",
    }
    assert kinds[-1]["kind"] == "game_end" and kinds[-1]["score"] == [11, 0]
    events = [press(match, "2+").event for _ in range(11)]
    assert events[0]["game_no"] == 2 and events[0]["score"] == [0, 1]
    assert events[-1]["kind"] == "game_end"
    last = [press(match, "1+").event for _ in range(11)][-1]
    assert last["kind"] == "match_end" and last["game_no"] == 3


def test_rev_counts_accepted_commands_and_updated_at_is_the_latest_at():
    match = Match("m")
    match.apply(SEED_START, 0.0)
    match.apply("1+", 60.5)
    with pytest.raises(Refused):
        match.apply("7+", 120.0)
    snapshot = match.snapshot()
    assert snapshot["rev"] == 2
    assert snapshot["updated_at"] == "1970-01-01T00:01:00.500Z"


# ---------------------------------------------------------------- ids


def test_a_repeated_id_is_a_duplicate_and_changes_nothing():
    match = started()
    first = press(match, {"cmd": "point", "side": 1, "id": "p1"})
    again = press(match, {"cmd": "point", "side": 1, "id": "p1"})
    assert again.duplicate is True and again.event is None
    assert again.snapshot == first.snapshot
    assert match.rev == 2


def test_a_repeated_id_is_a_duplicate_whatever_the_command():
    match = started()
    press(match, {"cmd": "point", "side": 1, "id": 7})
    assert press(match, {"cmd": "undo", "id": 7}).duplicate is True
    assert match.snapshot()["game_data"]["score1"] == 1


def test_a_repeated_id_after_the_match_ended_is_a_duplicate_not_a_refusal():
    match = started()
    press(match, *["1+"] * 10)
    press(match, {"cmd": "point", "side": 1, "id": "win"})
    assert press(match, {"cmd": "point", "side": 1, "id": "win"}).duplicate is True


def test_a_refused_commands_id_is_not_remembered():
    match = started()
    with pytest.raises(Refused):
        press(match, {"cmd": "point", "side": 1, "delta": -1, "id": "x"})
    assert press(match, {"cmd": "point", "side": 1, "id": "x"}).duplicate is False


def test_ids_survive_a_rebuild_from_the_log():
    match = started()
    press(match, {"cmd": "point", "side": 2, "id": "p"})
    rebuilt = Match.from_log("m-1", match.log)
    assert rebuilt.apply({"cmd": "point", "side": 2, "id": "p"}, 50.0).duplicate is True


# ---------------------------------------------------------------- -1 and undo


def test_minus_one_at_zero_is_refused():
    match = started()
    refused(match, "1-", "no point to take back")
    press(match, "2+")
    refused(match, "1-", "side 1 has no point to take back in game 1")


def test_undo_with_no_change_is_refused():
    refused(started(), "undo", "nothing to undo")


def test_minus_one_removes_that_sides_latest_point_not_the_latest_point():
    match = started()
    press(match, "1+", "1+", "2+")
    outcome = press(match, "1-")
    assert (outcome.snapshot["game_data"]["score1"], outcome.snapshot["game_data"]["score2"]) == (
        1,
        1,
    )
    assert outcome.event["kind"] == "point_removed" and outcome.event["side"] == 1


def test_undo_removes_the_latest_point_whoever_won_it():
    match = started()
    press(match, "1+", "1+", "2+")
    outcome = press(match, "undo")
    assert outcome.snapshot["game_data"]["score2"] == 0
    assert outcome.event == {
        "kind": "undo",
        "change": "point",
        "side": 2,
        "game_no": 1,
        "score": [2, 0],
        "rev": 5,
        "match_id": "m-1",
    }


def test_minus_one_takes_back_a_wrong_match_winning_point():
    match = started()
    before = press(match, *["1+"] * 10).snapshot
    press(match, "1+")
    assert match.status == "finished"
    after = press(match, "1-").snapshot
    assert after["status"] == "in_progress" and after["type"] == "game_update"
    assert after["game_data"] == before["game_data"]
    press(match, "2+")  # play goes on
    assert match.snapshot()["game_data"]["score2"] == 1


def test_minus_one_between_games_reopens_the_game_that_just_ended():
    match = started(best_of=3)
    press(match, *["1+"] * 11)
    assert match.status == "between_games"
    snapshot = press(match, "1-").snapshot
    assert snapshot["status"] == "in_progress" and snapshot["game_no"] == 1
    assert snapshot["games"] == [] and snapshot["games_won"] == [0, 0]
    assert snapshot["game_data"]["score1"] == 10


def test_minus_one_of_the_loser_between_games_keeps_the_game_won():
    match = started(best_of=3)
    press(match, "2+", *["1+"] * 11)
    snapshot = press(match, "2-").snapshot
    assert snapshot["status"] == "between_games" and snapshot["games"] == [[11, 0]]


def test_minus_one_acts_in_the_game_of_the_latest_point():
    match = started(best_of=3)
    press(match, *["1+"] * 11, "2+")
    refused(match, "1-", "side 1 has no point to take back in game 2")
    snapshot = press(match, "2-").snapshot
    assert snapshot["status"] == "between_games" and snapshot["game_data"]["score1"] == 11


def test_minus_one_of_the_trailing_side_at_deuce_ends_the_game():
    match = started(best_of=3)
    press(match, *["1+", "2+"] * 10, "2+")  # 10-11
    outcome = press(match, "1-")  # side 1's 10th point was wrong: 9-11
    snapshot = outcome.snapshot
    assert snapshot["status"] == "between_games" and snapshot["games"] == [[9, 11]]
    assert snapshot["games_won"] == [0, 1] and snapshot["game_data"]["server"] == 2
    assert outcome.event["kind"] == "point_removed" and outcome.event["score"] == [9, 11]
    assert press(match, "1+").snapshot["game_no"] == 2


def test_minus_one_of_the_trailing_side_can_end_the_match():
    match = started()
    press(match, *["1+", "2+"] * 10, "1+")  # 11-10
    snapshot = press(match, "2-").snapshot
    assert snapshot["status"] == "finished" and snapshot["game_data"]["winner"] == "Иван Иванов"


def test_undo_of_the_first_point_of_game_2_goes_back_between_games():
    match = started(best_of=3)
    between = press(match, *["1+"] * 11).snapshot
    press(match, "2+")
    snapshot = press(match, "undo").snapshot
    # the same except the clock, that the undo can be redone, and that this change (unlike
    # the game-winning point) did not move the players to the other ends
    assert snapshot["can_redo"] is True and snapshot["ends_changed"] is False
    assert between["can_redo"] is False and between["ends_changed"] is True
    ignored = {"rev": 0, "updated_at": "", "can_redo": None, "ends_changed": None}
    assert {**snapshot, **ignored} == {**between, **ignored}


# ---------------------------------------------------------------- abandon


def test_end_abandons_the_match_and_it_stays_visible():
    match = started(best_of=3)
    press(match, "1+", "2+", "1+")
    outcome = press(match, {"cmd": "end"})
    snapshot = outcome.snapshot
    assert snapshot["type"] == "game_end" and snapshot["status"] == "abandoned"
    assert snapshot["game_data"]["is_finished"] is True
    assert snapshot["game_data"]["winner"] is None
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (2, 1)
    assert outcome.event["kind"] == "abandon"
    for command in (
        "1+",
        "undo",
        "2-",
        {"cmd": "end"},
        {"cmd": "timeout", "side": 1},
        {"cmd": "expedite"},
    ):
        refused(match, command, "abandoned")


def test_end_after_the_match_is_finished_is_refused():
    match = started()
    press(match, *["2+"] * 11)
    refused(match, {"cmd": "end"}, "over")


# ---------------------------------------------------------------- log and rebuild


def test_log_holds_normalized_accepted_commands_with_their_time():
    match = Match("m")
    match.apply(SEED_START, 10.0)
    match.apply(" 1+ ", 11.0)
    with pytest.raises(Refused):
        match.apply("2-", 11.5)  # refused: not logged
    assert match.log[0] == {**SEED_START, "at": 10.0}
    assert match.log[1] == {"cmd": "point", "side": 1, "delta": 1, "at": 11.0}


def test_from_log_rebuilds_the_exact_snapshot():
    match = started(best_of=3)
    press(match, *["1+", "2+"] * 7, "undo", {"cmd": "timeout", "side": 2}, {"cmd": "expedite"})
    press(match, "1+", "1-", {"cmd": "correct", "server": 2, "left_side": 2})
    rebuilt = Match.from_log("m-1", match.log)
    assert rebuilt.snapshot() == match.snapshot()
    assert rebuilt.log == match.log


def test_from_log_refuses_an_entry_without_at():
    with pytest.raises(Refused, match='log entry 1 has no "at"'):
        Match.from_log("m", [dict(SEED_START)])


def test_from_log_refuses_a_log_the_engine_could_not_have_written():
    log = [{**SEED_START, "at": 1.0}, {"cmd": "point", "side": 1, "delta": -1, "at": 2.0}]
    with pytest.raises(Refused, match="log entry 2"):
        Match.from_log("m", log)


def test_the_log_cannot_be_changed_through_the_property():
    match = started()
    match.log[0]["player1"] = "Mallory"
    match.log.clear()
    assert match.rev == 1 and match.log[0]["player1"] == "Иван Иванов"


def test_snapshot_of_a_long_best_of_7_match_is_under_1_kb():
    match = started(best_of=7)
    for game in range(7):
        winner = "1+" if game % 2 == 0 else "2+"
        press(match, *["1+", "2+"] * 12, *[winner] * 2)
    snapshot = match.snapshot()
    assert snapshot["status"] == "finished" and len(snapshot["games"]) == 7
    assert len(json.dumps(snapshot, ensure_ascii=False).encode()) < 1024
