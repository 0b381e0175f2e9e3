"""The laws of table tennis that turn a score into "who serves, who receives, which end":
pure functions of numbers, no state. The law numbers (ITTF Handbook, section 2) are listed in
docs/rules.md; ``scorer.engine`` folds a match's command log with them.

A player is ``(side, index)``: side 1 or 2, index 0 or 1 (the order the start command listed
the pair in; always 0 in singles)."""

from __future__ import annotations

Player = tuple[int, int]

GAME_POINTS = 11  # 2.11.1: first to 11 ...
GAME_MARGIN = 2  # ... with a lead of 2
BEST_OF_CHOICES = (1, 3, 5, 7)  # 2.12.1: an odd number of games
DEUCE_TOTAL = 20  # 10-10: from here service changes after every point (2.13.3)
ENDS_CHANGE_AT = 5  # 2.13.6-7: in the last possible game, when a side first reaches 5
EXPEDITE_MAX_TOTAL = 18  # 2.15.1: no expedite once 18 points have been scored in the game


def game_over(score1: int, score2: int) -> bool:
    """R1: 11 points and a 2-point lead; no cap (14-12 ends a game, 11-10 does not)."""
    return max(score1, score2) >= GAME_POINTS and abs(score1 - score2) >= GAME_MARGIN


def game_winner(score1: int, score2: int) -> int | None:
    if not game_over(score1, score2):
        return None
    return 1 if score1 > score2 else 2


def games_to_win(best_of: int) -> int:
    """R2: the first side to win (N+1)/2 games wins a best-of-N match."""
    return (best_of + 1) // 2


def other_side(side: int) -> int:
    return 3 - side


def normal_turn(total: int) -> int:
    """R4: the service turn of the rally played at ``total`` points: 2 points per turn, 1 point
    per turn from 10-10 (``total`` >= 20)."""
    return total // 2 if total < DEUCE_TOTAL else total - DEUCE_TOTAL // 2


def service_turn(total: int, expedite_from: int | None) -> int:
    """The service turn of the rally played at ``total`` points of a game.

    R10 (2.15.2): under the expedite system service changes after every point. It counts from
    the rally at ``expedite_from`` points, served by the player who received the rally before
    (expedite begins between rallies), so its turn is one after that rally's turn."""
    if expedite_from is None or total < expedite_from:
        return normal_turn(total)
    first = 0 if expedite_from == 0 else normal_turn(expedite_from - 1) + 1
    return first + (total - expedite_from)


def partner(player: Player, doubles: bool) -> Player:
    """The other player of the pair; in singles a player is its own partner, which makes the
    doubles order below serve singles too."""
    side, index = player
    return (side, 1 - index) if doubles else player


def service_cycle(server: Player, receiver: Player, doubles: bool) -> list[tuple[Player, Player]]:
    """R4/R7: the four (server, receiver) pairings that repeat, starting from one pairing:
    at each change the receiver becomes the server and the server's partner the receiver
    (X1->Y1, Y1->X2, X2->Y2, Y2->X1; in singles simply F->R, R->F)."""
    server2, receiver2 = partner(server, doubles), partner(receiver, doubles)
    return [(server, receiver), (receiver, server2), (server2, receiver2), (receiver2, server)]


def pairing_at(
    turn: int, anchor_turn: int, server: Player, receiver: Player, doubles: bool
) -> tuple[Player, Player]:
    """(server, receiver) at service ``turn``, given that ``server`` served to ``receiver`` at
    ``anchor_turn``."""
    return service_cycle(server, receiver, doubles)[(turn - anchor_turn) % 4]


def switch_point(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """R6/R8: the point that took the score from ``before`` to ``after`` made a side FIRST
    reach 5 in the game (the moment ends change and, in doubles, the receiving order changes,
    in the last possible game). Scores only grow within a game, so this happens once."""
    return max(before) < ENDS_CHANGE_AT <= max(after)


def left_side_by_law(game_no: int, best_of: int, score1: int, score2: int) -> int:
    """R6: the side standing at the left end. Side 1 starts game 1 at the left; ends change
    after every game, and once more in the last possible game when a side first reaches 5."""
    changes = game_no - 1
    if game_no == best_of and max(score1, score2) >= ENDS_CHANGE_AT:
        changes += 1
    return 1 if changes % 2 == 0 else 2
