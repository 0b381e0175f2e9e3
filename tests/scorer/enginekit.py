"""Shared by the engine tests: a clock that only moves forward, a started match, presses."""

from __future__ import annotations

import itertools
from typing import Any

from scorer.engine import Match, Outcome

_clock = itertools.count(1)


def tick() -> float:
    """The next whole second (UNIX time) on one clock for every engine test: never back."""
    return float(next(_clock))


def start_match(match_id: str, start: dict[str, Any], **changes: Any) -> Match:
    """A new match ``match_id`` after the ``start`` command with ``changes`` merged in."""
    match = Match(match_id)
    match.apply({**start, **changes}, tick())
    return match


def press(match: Match, *commands: Any) -> Outcome:
    """Applies ``commands`` in order, one tick apart; the last one's outcome (at least one)."""
    outcome = None
    for command in commands:
        outcome = match.apply(command, tick())
    assert outcome is not None
    return outcome
