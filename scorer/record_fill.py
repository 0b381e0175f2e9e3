"""Fill a data dir's store with played matches: for the bench (10,000 matches) and tests.
Each match is real: played through the engine and stored as the service stores it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from scorer.engine import Match
from scorer.store import MatchStore

NAMES = (
    "Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou",
    "Иван Иванов", "Пётр Петров",
)  # fmt: skip


def played_log(
    player1: str,
    player2: str,
    winner: int,
    start_at: float,
    *,
    best_of: int = 3,
    rng: random.Random | None = None,
    abandon_after: int | None = None,
) -> list[dict[str, Any]]:
    """A whole match's log: ``winner`` wins every game; the loser scores a random 0-9 in each,
    a point every 8-20 s. ``abandon_after``: points after which it is abandoned instead."""
    rng = rng or random.Random(0)
    match = Match("fill")
    match.apply({"cmd": "start", "player1": player1, "player2": player2, "best_of": best_of},
                now=start_at)  # fmt: skip
    at = start_at
    played = 0
    loser = 3 - winner
    while match.status not in ("finished", "abandoned"):
        loser_points = rng.randint(0, 9)
        sides = [winner] * 11 + [loser] * loser_points
        rng.shuffle(sides)
        # the winner takes the last point, so the game ends at 11-x
        sides.remove(winner)
        sides.append(winner)
        for side in sides:
            at += rng.uniform(8, 20)
            match.apply({"cmd": "point", "side": side}, now=at)
            played += 1
            if abandon_after is not None and played == abandon_after:
                match.apply({"cmd": "end"}, now=at + 1)
                return match.log
        at += 60
    return match.log


def fill(
    data_dir: Path, club_id: str, count: int, *, seed: int = 1, start_at: float = 1.7e9
) -> list[str]:
    """Store ``count`` ended matches of ``club_id`` (about one an hour from ``start_at``);
    returns their ids, oldest first."""
    rng = random.Random(seed)
    store = MatchStore(data_dir)
    ids = []
    try:
        for number in range(count):
            one, two = rng.sample(NAMES, 2)
            log = played_log(one, two, rng.choice((1, 2)), start_at + number * 3600, rng=rng)
            match_id = f"fill-{number:06d}"
            statements = [
                ("INSERT INTO matches (match_id, club_id, created_at) VALUES (?, ?, ?)",
                 (match_id, club_id, log[0]["at"])),
            ]  # fmt: skip
            import json

            statements += [
                ("INSERT INTO entries (match_id, seq, entry) VALUES (?, ?, ?)",
                 (match_id, seq, json.dumps(entry, ensure_ascii=False)))
                for seq, entry in enumerate(log, start=1)
            ]  # fmt: skip
            store._write(statements)  # one transaction per match, as the service writes
            ids.append(match_id)
    finally:
        store.close()
    return ids


def store_log(data_dir: Path, club_id: str, match_id: str, log: list[dict[str, Any]]) -> None:
    """Store one match's log as the service does (start, appends, then not current)."""
    store = MatchStore(data_dir)
    try:
        store.start_match(club_id, match_id, dict(log[0]))
        for seq, entry in enumerate(log[1:], start=2):
            store.append(match_id, seq, entry)
        store.clear_current(club_id)
    finally:
        store.close()
