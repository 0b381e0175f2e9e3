"""Statistics of a match, derived from its log by the rules engine. Pure: no I/O, no clock.

    stats = match_stats("m1", log)     # log as Match.log / the store gives it ("at" in each)

How it works: the log is folded with the engine's ``History`` (so undo, redo and -1 count as
the engine counts them); the changes still standing at the end are then replayed, in order,
into a fresh ``History``, and before each point we read who serves it (R4/R7/R10, as the
engine says: ``State.pairing``). Points taken back by -1 or undo are not in the record.

Definitions (docs/history.md says them for readers):

- a game's start: game 1 at the ``start`` command, game n at the point that ended game n-1
  (so the interval between games counts in the next game's first point);
- ``seconds`` of a point: the time since the previous point (or the game's start);
- ``duration_s`` of a game: its last point's time minus its start;
- won on serve / on receive: points a side won when it served / received that rally;
- longest run: most points in a row by one side within one game;
- largest lead overcome: the largest lead the other side held in a game this side won;
- deuce game: a game that reached 10-10;
- seconds per point: all points' ``seconds`` summed, divided by the number of points.
"""

from __future__ import annotations

from typing import Any

from scorer.engine import ABANDONED, History, Refused, State, parse_command


def _standing(log: list[dict[str, Any]]) -> tuple[History, list[Any], float, float]:
    """Fold the log: (history, standing changes, start time, time of the last entry)."""
    history = History(incremental=True)
    ids: set[str | int] = set()
    start_at = last_at = 0.0
    for number, entry in enumerate(log, start=1):
        command = dict(entry)
        at = command.pop("at", None)
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise Refused(f'log entry {number} has no "at" time', code="bad_command", field="at")
        parsed = parse_command(command)
        if parsed.get("id") is not None:
            if parsed["id"] in ids:
                continue
            ids.add(parsed["id"])
        try:
            history.step(parsed, float(at))
        except Refused as exc:
            raise Refused(f"log entry {number}: {exc}", exc.code, **exc.params) from None
        if parsed["cmd"] == "start":
            start_at = float(at)
        last_at = float(at)
    struck = {change.strike for change in history.changes if change.strike is not None}
    standing = [
        change
        for index, change in enumerate(history.changes)
        if change.strike is None and index not in struck
    ]
    return history, standing, start_at, last_at


def match_stats(match_id: str, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the match page shows, from the log alone.

    Returns ``{"match_id", "status", "best_of", "doubles", "players": [side 1, side 2],
    "winner": 1|2|None, "games_won": [a, b], "started_at", "ended_at" (seconds since the
    epoch; ended_at None while in progress), "duration_s", "games": [game...], "totals"}``.
    A game is ``{"game_no", "score", "winner" (None if unfinished), "started_at",
    "ended_at", "duration_s", "deuce", "expedite_from" (points played when the expedite
    system began in it, or None), "timeouts": [{"side", "after"}] (after = points played),
    "points": [{"side", "server" (side), "server_name", "score" [a, b] after it, "lead"
    (a - b), "at", "seconds"}]}``. ``totals``: ``points_won``, ``served``, ``won_on_serve``,
    ``received``, ``won_on_receive``, ``longest_run``, ``largest_lead_overcome`` (each [side
    1, side 2]), ``deuce_games``, ``seconds_per_point`` (None without points).

    Raises Refused when the log was not written by this engine (or has no start)."""
    history, standing, start_at, last_at = _standing(log)
    final = history.state
    if final is None or history.base is None:
        raise Refused("the log has no start command", code="no_match")
    setup = final.setup
    replay = History(incremental=True)
    replay.base = replay.state = history.base
    games: dict[int, dict[str, Any]] = {}

    def game_entry(state: State) -> dict[str, Any]:
        number = state.current.number
        if number not in games:
            previous = games.get(number - 1)
            begun = start_at if previous is None else previous["ended_at"]
            games[number] = {
                "game_no": number, "score": [0, 0], "winner": None, "started_at": begun,
                "ended_at": None, "duration_s": 0.0, "deuce": False, "expedite_from": None,
                "timeouts": [], "points": [],
            }  # fmt: skip
        return games[number]

    for change in standing:
        state = replay.state
        assert state is not None
        game = game_entry(state)
        command = change.command
        if command["cmd"] == "point":
            server, _ = state.pairing()
            previous_at = game["points"][-1]["at"] if game["points"] else game["started_at"]
            replay.step(command, change.at)
            after = replay.state
            assert after is not None
            played = next(g for g in after.games if g.number == game["game_no"])
            score = list(played.score)
            game["points"].append(
                {
                    "side": command["side"],
                    "server": server[0],
                    "server_name": setup.names[server],
                    "score": score,
                    "lead": score[0] - score[1],
                    "at": change.at,
                    "seconds": round(change.at - previous_at, 3),
                }
            )
            game["score"] = score
            if score[0] >= 10 and score[1] >= 10:
                game["deuce"] = True
            if played.over:
                game["winner"] = 1 if score[0] > score[1] else 2
                game["ended_at"] = change.at
            continue
        if command["cmd"] == "timeout":
            game["timeouts"].append({"side": command["side"], "after": state.current.total})
        replay.step(command, change.at)
    rebuilt = replay.state
    assert rebuilt is not None
    for played in rebuilt.games:
        if played.expedite_from is not None and played.number in games:
            games[played.number]["expedite_from"] = played.expedite_from
    ordered = [games[number] for number in sorted(games) if games[number]["points"]]
    for game in ordered:
        end = game["points"][-1]["at"]
        game["duration_s"] = round(end - game["started_at"], 3)
    status = final.status
    ended_at: float | None = None
    if status == ABANDONED:
        ended_at = last_at
    elif final.winner is not None:
        ended_at = ordered[-1]["ended_at"] if ordered else last_at
    return {
        "match_id": match_id,
        "status": status,
        "best_of": setup.best_of,
        "doubles": setup.doubles,
        "players": [final.side_name(1), final.side_name(2)],
        "winner": final.winner,
        "games_won": list(final.won),
        "started_at": start_at,
        "ended_at": ended_at,
        "duration_s": round((ended_at if ended_at is not None else last_at) - start_at, 3),
        "games": ordered,
        "totals": _totals(ordered),
    }


def _totals(games: list[dict[str, Any]]) -> dict[str, Any]:
    won = [0, 0]
    served = [0, 0]
    won_on_serve = [0, 0]
    received = [0, 0]
    won_on_receive = [0, 0]
    longest_run = [0, 0]
    overcome = [0, 0]
    seconds = 0.0
    count = 0
    for game in games:
        run_side, run = 0, 0
        most_behind = [0, 0]  # the largest lead the other side held over each side
        for point in game["points"]:
            side, server = point["side"], point["server"]
            receiver = 3 - server
            won[side - 1] += 1
            served[server - 1] += 1
            received[receiver - 1] += 1
            if side == server:
                won_on_serve[side - 1] += 1
            else:
                won_on_receive[side - 1] += 1
            run = run + 1 if side == run_side else 1
            run_side = side
            longest_run[side - 1] = max(longest_run[side - 1], run)
            lead = point["lead"]
            most_behind[0] = max(most_behind[0], -lead)
            most_behind[1] = max(most_behind[1], lead)
            seconds += point["seconds"]
            count += 1
        if game["winner"] is not None:
            winner = game["winner"]
            overcome[winner - 1] = max(overcome[winner - 1], most_behind[winner - 1])
    return {
        "points_won": won,
        "served": served,
        "won_on_serve": won_on_serve,
        "received": received,
        "won_on_receive": won_on_receive,
        "longest_run": longest_run,
        "largest_lead_overcome": overcome,
        "deuce_games": sum(1 for game in games if game["deuce"]),
        "seconds_per_point": round(seconds / count, 3) if count else None,
    }
