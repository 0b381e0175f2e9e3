"""scorer/ladder.py: Elo for a known sequence, worked by hand (docs/history.md)."""

from __future__ import annotations

import pytest

from scorer.ladder import START, expected, ladder


def test_first_match_between_newcomers_moves_16_points() -> None:
    rungs = {r.name: r for r in ladder([("Ann", "Bob", 1)])}
    assert rungs["Ann"].rating == pytest.approx(1516.0)
    assert rungs["Bob"].rating == pytest.approx(1484.0)


def test_known_sequence() -> None:
    # 1: Ann beats Bob: 1516 / 1484. 2: Bob beats Cid (1500): E(Bob) = 1/(1+10^(16/400))
    # = 0.476982..., Bob 1484 + 32 * 0.523018 = 1500.7366, Cid 1500 - 16.7366 = 1483.2634.
    # 3: Cid beats Ann: E(Cid) = 1/(1+10^((1516-1483.2634)/400)) = 0.453 026...,
    # Cid + 32 * 0.546974 = 1500.7666, Ann 1516 - 17.5032 = 1498.4968.
    rungs = ladder([("Ann", "Bob", 1), ("Bob", "Cid", 1), ("Cid", "Ann", 1)])
    by_name = {r.name: r for r in rungs}
    assert by_name["Bob"].rating == pytest.approx(1500.7366, abs=1e-3)
    assert by_name["Cid"].rating == pytest.approx(1500.7666, abs=1e-3)
    assert by_name["Ann"].rating == pytest.approx(1498.4968, abs=1e-3)
    assert [r.name for r in rungs] == ["Cid", "Bob", "Ann"]
    assert (by_name["Ann"].played, by_name["Ann"].won) == (2, 1)


def test_ratings_are_zero_sum() -> None:
    rungs = ladder([("A", "B", 2), ("A", "C", 1), ("B", "C", 2), ("C", "A", 1)] * 5)
    assert sum(r.rating for r in rungs) == pytest.approx(3 * START)
    assert expected(1600, 1400) == pytest.approx(0.759746, abs=1e-6)
