"""The table-tennis laws R1-R11 (docs/rules.md) and the ITTF test vectors, each as a named
test, through the engine's public API only."""

from __future__ import annotations

from typing import Any

import pytest

from scorer.engine import Match, Outcome, Refused
from scorer.rules import game_over, left_side_by_law, normal_turn, service_turn
from tests.scorer.enginekit import tick


def new_match(**start: Any) -> Match:
    match = Match("m")
    command = {"cmd": "start", "player1": "Ann", "player2": "Bob", **start}
    if command.get("game_type") == "double":
        command.pop("player1")
        command.pop("player2")
        command.setdefault("players1", ["X1", "X2"])
        command.setdefault("players2", ["Y1", "Y2"])
    match.apply(command, tick())
    return match


def press(match: Match, command: Any) -> Outcome:
    return match.apply(command, tick())


def play(match: Match, sides: str) -> dict[str, Any]:
    """Score the rallies in ``sides`` ("1121" = side 1, 1, 2, 1) and return the snapshot."""
    for side in sides:
        press(match, f"{side}+")
    return match.snapshot()


def reach(match: Match, score1: int, score2: int) -> dict[str, Any]:
    """From 0-0 in the current game, reach score1-score2 alternating sides (so no game ends
    on the way when the target is a live score)."""
    level = min(score1, score2)
    lead = "1" * (score1 - level) + "2" * (score2 - level)
    return play(match, "12" * level + lead)


def score(snapshot: dict[str, Any]) -> tuple[int, int]:
    return snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]


def serving(snapshot: dict[str, Any]) -> str:
    return f"{snapshot['server_player']}->{snapshot['receiver_player']}"


# ---------------------------------------------------------------- R1 game


@pytest.mark.parametrize(
    ("score1", "score2", "over"),
    [
        (11, 9, True),
        (14, 12, True),
        (11, 10, False),
        (10, 10, False),
        (11, 0, True),
        (12, 11, False),
        (9, 11, True),
    ],
)
def test_r1_game_is_over_at_11_with_a_lead_of_2_and_has_no_cap(score1, score2, over):
    assert game_over(score1, score2) is over


def test_r1_game_ends_at_11_9_in_the_engine():
    snapshot = reach(new_match(best_of=3), 11, 9)
    assert snapshot["games"] == [[11, 9]]
    assert snapshot["status"] == "between_games"


def test_r1_game_goes_on_at_11_10_and_ends_at_14_12():
    match = new_match(best_of=3)
    snapshot = reach(match, 11, 10)
    assert snapshot["status"] == "in_progress" and snapshot["games"] == []
    snapshot = play(match, "2121" + "1")
    assert score(snapshot) == (14, 12)
    assert snapshot["games"] == [[14, 12]]


def test_r1_point_after_the_last_game_is_over_is_refused():
    match = new_match()
    reach(match, 11, 3)
    with pytest.raises(Refused, match="the match is over"):
        press(match, "2+")
    assert score(match.snapshot()) == (11, 3)


# ---------------------------------------------------------------- R2 match


@pytest.mark.parametrize("best_of", [2, 4, 6, 8, 0])
def test_r2_even_best_of_is_refused(best_of):
    with pytest.raises(Refused, match="odd"):
        new_match(best_of=best_of)


@pytest.mark.parametrize("best_of", [9, -1])
def test_r2_best_of_outside_1_3_5_7_is_refused(best_of):
    with pytest.raises(Refused, match="best_of"):
        new_match(best_of=best_of)


def test_r2_best_of_5_three_games_to_nil_ends_the_match():
    match = new_match(best_of=5)
    for _ in range(3):
        snapshot = reach(match, 11, 4)
    assert snapshot["status"] == "finished"
    assert snapshot["type"] == "game_end"
    assert snapshot["games"] == [[11, 4]] * 3
    assert snapshot["games_won"] == [3, 0]
    assert snapshot["game_data"]["winner"] == "Ann"
    assert snapshot["game_data"]["is_finished"] is True
    with pytest.raises(Refused):
        press(match, "1+")


def test_r2_best_of_7_needs_four_games():
    match = new_match(best_of=7)
    for _ in range(3):
        reach(match, 4, 11)
    snapshot = reach(match, 11, 6)
    assert snapshot["games_won"] == [1, 3] and snapshot["status"] == "between_games"
    snapshot = reach(match, 5, 11)
    assert snapshot["status"] == "finished" and snapshot["game_data"]["winner"] == "Bob"


def test_r2_best_of_defaults_to_one_game():
    match = new_match()
    assert match.snapshot()["best_of"] == 1
    assert reach(match, 11, 7)["status"] == "finished"


# ---------------------------------------------------------------- R3 toss


def test_r3_first_server_side_2_serves_the_first_rally():
    snapshot = new_match(first_server=2).snapshot()
    assert snapshot["game_data"]["server"] == 2
    assert serving(snapshot) == "Bob->Ann"


def test_r3_doubles_first_listed_players_serve_and_receive_first():
    assert serving(new_match(game_type="double").snapshot()) == "X1->Y1"
    assert serving(new_match(game_type="double", first_server=2).snapshot()) == "Y1->X1"


def test_r3_side_1_starts_at_the_left_end():
    assert new_match().snapshot()["left_side"] == 1


# ---------------------------------------------------------------- R4 service


@pytest.mark.parametrize(
    ("score1", "score2", "server"),
    [
        (0, 0, 1),
        (1, 0, 1),
        (1, 1, 2),
        (2, 1, 2),
        (8, 8, 1),
        (9, 8, 1),
        (9, 9, 2),
        (10, 9, 2),
        (10, 10, 1),
        (11, 10, 2),
        (11, 11, 1),
        (12, 11, 2),
    ],
)
def test_r4_singles_server_vector(score1, score2, server):
    """ITTF vector, F = side 1: s = 0,1 -> 1; 2,3 -> 2; 16,17 -> 1; 18,19 -> 2; 10-10 -> 1;
    11-10 -> 2; 11-11 -> 1."""
    assert reach(new_match(), score1, score2)["game_data"]["server"] == server


def test_r4_service_turns_change_every_two_points_then_every_point_from_10_all():
    assert [normal_turn(s) for s in range(24)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 11, 12, 13,
    ]  # fmt: skip


# ---------------------------------------------------------------- R5 next game


def test_r5_singles_game_2_starts_with_the_other_side_serving():
    match = new_match(best_of=5)
    snapshot = reach(match, 11, 5)
    assert snapshot["status"] == "between_games"
    assert snapshot["game_data"]["server"] == 2  # already describes game 2's first rally
    snapshot = reach(match, 3, 11)
    assert snapshot["game_data"]["server"] == 1  # game 3: the match's first server again


def test_r5_singles_games_alternate_from_first_server_2():
    match = new_match(best_of=3, first_server=2)
    assert reach(match, 11, 2)["game_data"]["server"] == 1


# ---------------------------------------------------------------- R6 ends


def test_r6_ends_change_after_every_game():
    match = new_match(best_of=5)
    sides = [match.snapshot()["left_side"]]
    for _ in range(3):
        snapshot = reach(match, 11, 8) if len(sides) != 2 else reach(match, 8, 11)
        sides.append(snapshot["left_side"])
    assert sides == [1, 2, 1, 2]


def test_r6_last_game_ends_change_once_when_a_side_first_reaches_5():
    """ITTF vector: best of 5, game 5 at 4-4 then 5-4: ends change (once only)."""
    match = new_match(best_of=5)
    for game_score in [(11, 5), (5, 11), (11, 5), (5, 11)]:
        reach(match, *game_score)
    snapshot = reach(match, 4, 4)
    assert snapshot["game_no"] == 5
    assert snapshot["left_side"] == 1  # game 5 starts as game 1 did (4 changes so far)
    assert play(match, "1")["left_side"] == 2
    assert play(match, "2")["left_side"] == 2  # 5-5: no second change
    assert play(match, "2")["left_side"] == 2


def test_r6_no_change_at_5_in_a_game_that_is_not_the_last_possible():
    match = new_match(best_of=5)
    reach(match, 11, 5)
    assert reach(match, 5, 0)["left_side"] == 2


def test_r6_one_game_match_changes_ends_at_5():
    match = new_match()
    assert reach(match, 4, 2)["left_side"] == 1
    assert play(match, "1")["left_side"] == 2


def test_r6_undo_of_the_fifth_point_changes_the_ends_back():
    match = new_match()
    reach(match, 5, 0)
    assert press(match, "undo").snapshot["left_side"] == 1


@pytest.mark.parametrize(
    ("game_no", "best_of", "a", "b", "left"),
    [(1, 1, 5, 0, 2), (7, 7, 4, 4, 1), (7, 7, 0, 5, 2), (3, 7, 9, 0, 1)],
)
def test_r6_left_side_by_law_table(game_no, best_of, a, b, left):
    assert left_side_by_law(game_no, best_of, a, b) == left


# ---------------------------------------------------------------- R7 doubles order


@pytest.mark.parametrize(
    ("score1", "score2", "pairing"),
    [
        (0, 0, "X1->Y1"),
        (1, 0, "X1->Y1"),
        (1, 1, "Y1->X2"),
        (2, 1, "Y1->X2"),
        (2, 2, "X2->Y2"),
        (3, 2, "X2->Y2"),
        (3, 3, "Y2->X1"),
        (4, 3, "Y2->X1"),
        (4, 4, "X1->Y1"),
        (9, 9, "Y1->X2"),
        (10, 9, "Y1->X2"),
        (10, 10, "X2->Y2"),
        (11, 10, "Y2->X1"),
        (11, 11, "X1->Y1"),
    ],
)
def test_r7_doubles_game_1_order_vector(score1, score2, pairing):
    """ITTF vector, X1 serving to Y1 (best of 3, so game 1 is not the deciding game)."""
    assert serving(reach(new_match(game_type="double", best_of=3), score1, score2)) == pairing


def test_r7_doubles_game_2_default_first_receiver_of_game_1_serves_to_who_served_to_them():
    match = new_match(game_type="double", best_of=3)
    assert serving(reach(match, 11, 6)) == "Y1->X1"
    order = [serving(play(match, "12")) for _ in range(3)]
    assert order == ["X1->Y2", "Y2->X2", "X2->Y1"]


def game_2_order_after_choosing(server: str, rallies: str) -> list[str]:
    """Doubles, best of 3, game 1 won 11-6: ``server`` is chosen for game 2; the pairing
    then and after each of three more pairs of rallies ``rallies`` (a full turn each)."""
    match = new_match(game_type="double", best_of=3)
    reach(match, 11, 6)
    press(match, {"cmd": "server", "player": server})
    order = [serving(match.snapshot())]
    for _ in range(3):
        order.append(serving(play(match, rallies)))
    return order


def test_r7_doubles_game_2_order_when_y1_serves_first():
    """ITTF vector: Y1 first -> Y1->X1, X1->Y2, Y2->X2, X2->Y1."""
    order = game_2_order_after_choosing(server="Y1", rallies="12")
    assert order == ["Y1->X1", "X1->Y2", "Y2->X2", "X2->Y1"]


def test_r7_doubles_game_2_order_when_y2_serves_first():
    """ITTF vector: Y2 first -> Y2->X2, X2->Y1, Y1->X1, X1->Y2."""
    order = game_2_order_after_choosing(server="Y2", rallies="21")
    assert order == ["Y2->X2", "X2->Y1", "Y1->X1", "X1->Y2"]


def test_r7_game_3_first_receiver_is_who_served_to_the_chosen_server_in_game_2():
    match = new_match(game_type="double", best_of=5)
    reach(match, 11, 6)
    press(match, {"cmd": "server", "player": "Y2"})  # game 2: Y2->X2, X2->Y1, Y1->X1, X1->Y2
    reach(match, 2, 11)
    assert serving(match.snapshot()) == "X2->Y2"  # default: game 2's first receiver serves
    press(match, {"cmd": "server", "player": "X1"})
    assert serving(match.snapshot()) == "X1->Y1"  # Y1 served to X1 in game 2


def test_r7_server_choice_must_come_from_the_pair_due_to_serve():
    match = new_match(game_type="double", best_of=3)
    reach(match, 11, 6)
    with pytest.raises(Refused, match="not in the pair due to serve"):
        press(match, {"cmd": "server", "player": "X2"})
    with pytest.raises(Refused, match="no player named"):
        press(match, {"cmd": "server", "player": "Zed"})


def test_r7_server_choice_only_before_the_first_point_of_a_later_game():
    match = new_match(game_type="double", best_of=3)
    with pytest.raises(Refused, match="game 2 or later"):
        press(match, {"cmd": "server", "player": "X2"})
    reach(match, 11, 6)
    play(match, "1")
    with pytest.raises(Refused, match="game 2 or later"):
        press(match, {"cmd": "server", "player": "Y2"})


def test_r7_server_choice_is_refused_in_singles():
    match = new_match(best_of=3)
    reach(match, 11, 6)
    with pytest.raises(Refused, match="doubles"):
        press(match, {"cmd": "server", "player": "Bob"})


# ---------------------------------------------------------------- R8 doubles last game


def test_r8_deciding_game_receiving_order_changes_when_a_pair_reaches_5():
    """ITTF vector: deciding game from X1->Y1, at 5-2 the due Y2->X1 becomes Y2->X2, then
    X2->Y1, Y1->X1, X1->Y2."""
    match = new_match(game_type="double")  # best of 1: game 1 is the last possible game
    snapshot = play(match, "1111" + "22")
    assert score(snapshot) == (4, 2) and serving(snapshot) == "Y2->X1"
    order = [serving(play(match, "1"))]
    for _ in range(3):
        order.append(serving(play(match, "22")))
    assert order == ["Y2->X2", "X2->Y1", "Y1->X1", "X1->Y2"]


def test_r8_in_game_5_of_best_of_5():
    match = new_match(game_type="double", best_of=5)
    for game_score in [(11, 5), (5, 11), (11, 5), (5, 11)]:
        reach(match, *game_score)
    # game 5 starts like game 1: X1 serves to Y1
    assert serving(match.snapshot()) == "X1->Y1"
    snapshot = play(match, "1111222")
    assert score(snapshot) == (4, 3) and serving(snapshot) == "Y2->X1"
    # 5-3: X1 would serve to Y1; the pair due to receive changes order
    assert serving(play(match, "1")) == "X1->Y2"
    assert serving(play(match, "22")) == "Y2->X2"


def test_r8_does_not_apply_before_the_last_possible_game():
    match = new_match(game_type="double", best_of=3)
    assert serving(play(match, "1111122")) == "Y2->X1"


def test_r8_undo_of_the_fifth_point_restores_the_receiving_order():
    match = new_match(game_type="double")
    play(match, "1111221")
    assert serving(press(match, "undo").snapshot) == "Y2->X1"


# ---------------------------------------------------------------- R9 corrections


def test_r9_correcting_the_server_keeps_the_score_and_play_goes_on_from_it():
    match = new_match()
    snapshot = reach(match, 2, 1)  # the engine says Bob serves (s = 3)
    assert snapshot["game_data"]["server"] == 2
    snapshot = press(match, {"cmd": "correct", "server": 1}).snapshot
    assert score(snapshot) == (2, 1)
    assert serving(snapshot) == "Ann->Bob"
    assert play(match, "1")["game_data"]["server"] == 2  # 4 points: service changes as usual
    assert play(match, "11")["game_data"]["server"] == 1


def test_r9_correction_of_singles_server_by_name():
    match = new_match()
    assert serving(press(match, {"cmd": "correct", "server": "Bob"}).snapshot) == "Bob->Ann"


def test_r9_doubles_correction_names_server_and_receiver():
    match = new_match(game_type="double", best_of=3)
    reach(match, 1, 1)  # Y1->X2 by the engine
    snapshot = press(match, {"cmd": "correct", "server": "Y1", "receiver": "X1"}).snapshot
    assert serving(snapshot) == "Y1->X1"
    assert serving(play(match, "1")) == "Y1->X1"
    assert serving(play(match, "1")) == "X1->Y2"


def test_r9_correction_of_the_ends():
    match = new_match(best_of=3)
    reach(match, 3, 3)
    snapshot = press(match, {"cmd": "correct", "left_side": 2}).snapshot
    assert snapshot["left_side"] == 2 and score(snapshot) == (3, 3)
    assert play(match, "12")["left_side"] == 2
    snapshot = play(match, "1" * 7)
    assert snapshot["status"] == "between_games" and snapshot["games"] == [[11, 4]]
    assert snapshot["left_side"] == 1  # ends still change after the game


def test_r9_correction_in_game_1_carries_into_game_2s_first_server():
    match = new_match(best_of=3)
    reach(match, 1, 1)
    press(match, {"cmd": "correct", "server": 1})  # so side 2 really served first
    snapshot = play(match, "2" * 10)
    assert snapshot["status"] == "between_games"
    assert snapshot["game_data"]["server"] == 1  # game 1's first receiver serves first


def test_r9_undo_takes_back_the_correction_itself():
    match = new_match()
    reach(match, 2, 1)  # s = 3: Bob serves by the law
    assert press(match, {"cmd": "correct", "server": 1}).snapshot["game_data"]["server"] == 1
    snapshot = press(match, "undo").snapshot
    assert score(snapshot) == (2, 1) and snapshot["game_data"]["server"] == 2


def test_r9_correction_keeps_its_place_when_an_earlier_point_is_taken_back():
    match = new_match()
    reach(match, 2, 1)
    press(match, {"cmd": "correct", "server": 1})  # Ann serves service turn 1
    snapshot = press(match, "1-").snapshot  # the log again without Ann's 2nd point: 1-1
    assert score(snapshot) == (1, 1) and snapshot["game_data"]["server"] == 1
    assert play(match, "2")["game_data"]["server"] == 1  # still turn 1 at s = 3
    assert play(match, "2")["game_data"]["server"] == 2  # turn 2: the other side


def test_r9_correction_refusals():
    singles, doubles = new_match(), new_match(game_type="double")
    with pytest.raises(Refused, match="different sides"):
        press(doubles, {"cmd": "correct", "server": "X1", "receiver": "X2"})
    with pytest.raises(Refused, match="together"):
        press(doubles, {"cmd": "correct", "server": "X1"})
    with pytest.raises(Refused, match="by name"):
        press(doubles, {"cmd": "correct", "server": 1, "receiver": "Y1"})
    with pytest.raises(Refused, match="needs"):
        press(singles, {"cmd": "correct"})
    with pytest.raises(Refused, match="no player named"):
        press(singles, {"cmd": "correct", "server": "Zed"})
    assert singles.rev == 1 and doubles.rev == 1


# ---------------------------------------------------------------- R10 expedite


def test_r10_expedite_alternates_service_every_point_from_the_previous_receiver():
    match = new_match(best_of=3)
    reach(match, 2, 1)  # rally 3 was Bob->Ann; Bob would serve again
    snapshot = press(match, '{"cmd": "expedite"}').snapshot
    assert snapshot["expedite"] is True
    servers = [snapshot["game_data"]["server"]]
    for _ in range(4):
        servers.append(play(match, "2")["game_data"]["server"])
    assert servers == [1, 2, 1, 2, 1]


def test_r10_expedite_stays_on_for_the_next_games():
    match = new_match(best_of=3)
    press(match, {"cmd": "expedite"})
    snapshot = reach(match, 11, 3)
    assert snapshot["expedite"] is True and snapshot["game_data"]["server"] == 2
    assert [play(match, "1")["game_data"]["server"] for _ in range(3)] == [1, 2, 1]


def test_r10_expedite_is_refused_once_18_points_have_been_played_in_the_game():
    match = new_match()
    reach(match, 9, 9)
    with pytest.raises(Refused, match="18"):
        press(match, {"cmd": "expedite"})
    assert match.snapshot()["expedite"] is False


def test_r10_expedite_at_17_points_is_accepted():
    match = new_match()
    reach(match, 9, 8)
    assert press(match, {"cmd": "expedite"}).snapshot["expedite"] is True


def test_r10_second_expedite_is_refused():
    match = new_match()
    press(match, {"cmd": "expedite"})
    with pytest.raises(Refused, match="already on"):
        press(match, {"cmd": "expedite"})


def test_r10_expedite_between_games_starts_with_the_next_game():
    match = new_match(best_of=3)
    reach(match, 11, 9)
    press(match, {"cmd": "expedite"})
    assert [play(match, "1")["game_data"]["server"] for _ in range(3)] == [1, 2, 1]


def test_r10_expedite_doubles_order_moves_one_pairing_per_point():
    match = new_match(game_type="double", best_of=3)
    press(match, {"cmd": "expedite"})
    order = [serving(match.snapshot())] + [serving(play(match, "1")) for _ in range(4)]
    assert order == ["X1->Y1", "Y1->X2", "X2->Y2", "Y2->X1", "X1->Y1"]


def test_r10_undo_takes_back_the_expedite_system_itself():
    match = new_match()
    reach(match, 2, 1)
    press(match, {"cmd": "expedite"})
    assert press(match, "undo").snapshot["expedite"] is False


def test_r10_taking_back_points_from_before_expedite_keeps_it_on_from_the_new_score():
    match = new_match()
    reach(match, 2, 1)
    press(match, {"cmd": "expedite"})
    snapshot = press(match, "1-").snapshot  # 1-1: Ann served the last rally, Bob serves
    assert snapshot["expedite"] is True and snapshot["game_data"]["server"] == 2
    # alternating every point (without expedite it would be 2, 2, 1)
    assert [play(match, "2")["game_data"]["server"] for _ in range(2)] == [1, 2]


def test_r9_server_choice_between_games_replaces_a_correction_of_that_games_server():
    match = new_match(game_type="double", best_of=3)
    reach(match, 11, 6)
    press(match, {"cmd": "correct", "server": "Y2", "receiver": "X1"})
    assert serving(match.snapshot()) == "Y2->X1"
    press(match, {"cmd": "server", "player": "Y2"})
    assert serving(match.snapshot()) == "Y2->X2"


def test_r10_service_turn_under_expedite():
    assert [service_turn(s, 3) for s in range(3, 7)] == [2, 3, 4, 5]
    assert [service_turn(s, 4) for s in range(3, 7)] == [1, 2, 3, 4]
    assert [service_turn(s, 0) for s in range(4)] == [0, 1, 2, 3]


# ---------------------------------------------------------------- R11 timeouts


def test_r11_one_timeout_per_side_per_match():
    match = new_match(best_of=3)
    reach(match, 3, 2)
    outcome = press(match, {"cmd": "timeout", "side": 2})
    assert outcome.snapshot["timeouts_used"] == [0, 1]
    assert outcome.event["kind"] == "timeout" and outcome.event["side"] == 2
    with pytest.raises(Refused, match="already used"):
        press(match, {"cmd": "timeout", "side": 2})
    play(match, "2")
    press(match, {"cmd": "timeout", "side": 1})
    play(match, "1")
    assert match.snapshot()["timeouts_used"] == [1, 1]


def test_r11_timeout_is_refused_between_games_and_after_the_match():
    match = new_match(best_of=3)
    reach(match, 11, 2)
    with pytest.raises(Refused, match="between games"):
        press(match, {"cmd": "timeout", "side": 1})
    reach(match, 11, 2)
    with pytest.raises(Refused, match="over"):
        press(match, {"cmd": "timeout", "side": 1})


def test_r11_timeout_does_not_change_the_score_or_server():
    match = new_match()
    before = reach(match, 2, 1)
    after = press(match, {"cmd": "timeout", "side": 1}).snapshot
    for key in ("game_data", "server_player", "receiver_player", "left_side"):
        assert after[key] == before[key]
