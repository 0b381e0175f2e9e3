"""viewer/static/announce.js over every kind of change the rules engine makes: seeded random
matches (points, -1, undo, redo, timeouts, expedite, abandon; best of 1, 3, 5) folded by the
real engine, each consecutive pair of snapshots classified in Chromium. Whatever the sequence:
no change of the shown score goes unannounced, the match end is announced as such, a game end
only when a game really ended, and the spoken score puts the server's score first."""

from __future__ import annotations

import random
from typing import Any

import pytest

from scorer.engine import Match, Refused
from viewer.assets import STATIC_DIR

pytestmark = pytest.mark.browser

SEEDS = range(40)
COMMANDS = [
    ({"cmd": "point", "side": 1}, 20),
    ({"cmd": "point", "side": 2}, 20),
    ({"cmd": "point", "side": 1, "delta": -1}, 2),
    ({"cmd": "point", "side": 2, "delta": -1}, 2),
    ({"cmd": "undo"}, 2),
    ({"cmd": "redo"}, 2),
    ({"cmd": "timeout", "side": 1}, 1),
    ({"cmd": "timeout", "side": 2}, 1),
    ({"cmd": "expedite"}, 1),
    ({"cmd": "end"}, 0.3),
]


def random_match(seed: int) -> list[dict[str, Any]]:
    """The snapshots one random match goes through, one per accepted command."""
    rng = random.Random(seed)
    match = Match(f"m{seed}")
    now = 1_800_000_000.0
    start = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": rng.choice([1, 3, 5])}
    match.apply(start, now)
    snapshots = [match.snapshot()]
    for _ in range(rng.randint(20, 160)):
        now += 1
        command = rng.choices([c for c, _ in COMMANDS], [w for _, w in COMMANDS])[0]
        try:
            match.apply(dict(command), now)
        except Refused:
            continue
        snapshots.append(match.snapshot())
    return snapshots


def served_first(s: dict[str, Any]) -> str:
    g = s["game_data"]
    mine, theirs = (g["score1"], g["score2"]) if g["server"] == 1 else (g["score2"], g["score1"])
    return f"{mine}–{theirs}, {s['server_player']} serves"


def test_every_change_of_any_random_match_is_announced_as_what_it_is(open_page: Any) -> None:
    page = open_page("about:blank")
    page.add_script_tag(path=str(STATIC_DIR / "announce.js"))
    checked = {"point": 0, "game": 0, "match": 0, None: 0}
    for seed in SEEDS:
        snapshots = random_match(seed)
        results = page.evaluate(
            """(list) => list.slice(1).map((after, i) => {
                 const kind = RallycastAnnounce.change(list[i], after);
                 return [kind, kind ? RallycastAnnounce.speechText(kind, after, 'en') : ''];
               })""",
            snapshots,
        )
        for (kind, text), before, after in zip(results, snapshots[:-1], snapshots[1:], strict=True):
            where = f"seed {seed}, rev {after['rev']}: {kind!r} {text!r}"
            b, a = before["game_data"], after["game_data"]
            score_moved = (b["score1"], b["score2"]) != (a["score1"], a["score2"])
            ended_now = before["type"] == "game_update" and after["type"] == "game_end"
            game_over = len(after["games"]) > len(before["games"])
            if ended_now:
                assert kind == "match", where
                name = a["winner"]
                if name is None:
                    assert text == "Match abandoned", where
                else:
                    assert text.startswith(f"{name} wins the match, "), where
            elif after["type"] == "game_end":
                assert kind is None, where  # nothing moves after the end but the end itself
            elif game_over:
                assert kind == "game" and after["status"] == "between_games", where
                last = after["last_game"]
                assert text == (
                    f"Game {last['game_no']} to {last['winner_name']}, "
                    f"{max(last['score'])}–{min(last['score'])}"
                ), where
            elif score_moved:
                assert kind == "point", where
                if after["status"] == "in_progress":
                    assert text == served_first(after), where
            else:
                assert kind is None, where  # a timeout, an expedite: the score did not move
            checked[kind] += 1
    # The seeds reach every kind (else the test would prove less than it says).
    assert all(checked.values()), checked
