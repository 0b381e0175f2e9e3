"""The club ladder: Elo ratings from the club's finished singles, in the order they ended.
Pure: no I/O.

Every player starts at 1500. After a match between A (rating Ra) and B (Rb)::

    expected_a = 1 / (1 + 10 ** ((Rb - Ra) / 400))
    Ra' = Ra + K * (score_a - expected_a)      score_a = 1 if A won, else 0
    Rb' = Rb + K * ((1 - score_a) - (1 - expected_a))

with K = 32 (the same for everyone; abandoned matches and doubles do not count). The ladder
lists players by rating, highest first (ties by name). Ratings are kept as floats and shown
rounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

START = 1500.0
K = 32.0


@dataclass(frozen=True)
class Rung:
    name: str
    rating: float
    played: int
    won: int


def expected(rating: float, other: float) -> float:
    """The Elo expected score of a player rated ``rating`` against ``other`` (0..1)."""
    return 1.0 / (1.0 + 10.0 ** ((other - rating) / 400.0))


def ladder(results: Iterable[tuple[str, str, int]]) -> list[Rung]:
    """``results``: ``(player1, player2, winner side 1|2)`` oldest first -> the ladder."""
    ratings: dict[str, float] = {}
    played: dict[str, int] = {}
    won: dict[str, int] = {}
    for one, two, winner in results:
        r1, r2 = ratings.get(one, START), ratings.get(two, START)
        e1 = expected(r1, r2)
        s1 = 1.0 if winner == 1 else 0.0
        ratings[one] = r1 + K * (s1 - e1)
        ratings[two] = r2 + K * ((1.0 - s1) - (1.0 - e1))
        for name, did_win in ((one, winner == 1), (two, winner == 2)):
            played[name] = played.get(name, 0) + 1
            won[name] = won.get(name, 0) + int(did_win)
    rungs = [Rung(name, rating, played[name], won[name]) for name, rating in ratings.items()]
    return sorted(rungs, key=lambda rung: (-rung.rating, rung.name))
