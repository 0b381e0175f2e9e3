"""The rules engine: a match is an append-only log of accepted commands and its state is
derived from that log. Pure: no I/O and no clock (the caller passes ``now``).

    match = Match("m1")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}, now=0.0)
    outcome = match.apply("1+", now=1.0)      # Outcome(snapshot, event, duplicate)
    Match.from_log("m1", match.log).snapshot() == match.snapshot() == fold("m1", match.log)

``fold(match_id, log)`` is THE definition of a match: one pure pass over the log that keeps
the stack of changes (undo pops it, redo pushes back, -1 strikes a point in it) and derives the
state from the changes still standing. ``Match`` applies the same steps incrementally (it keeps
the state after every change, so undo, redo and -1 need not start from the first point); the
property tests hold the two equal.

Commands, snapshot fields, events, refusal codes and the law behind each behaviour:
docs/rules.md."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

# The parser lives in scorer/commands.py; these names stay importable from here.
from scorer.commands import (
    MAX_COMMAND_CHARS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    SHORTHANDS,
    Command,
    Refused,
    check_command_id,
    clean_name,
    parse,
    parse_command,
)
from scorer.rules import (
    EXPEDITE_MAX_TOTAL,
    Player,
    game_over,
    games_to_win,
    left_side_by_law,
    other_side,
    pairing_at,
    partner,
    service_turn,
    switch_point,
)

SCHEMA = 1
IN_PROGRESS = "in_progress"
BETWEEN_GAMES = "between_games"
FINISHED = "finished"
ABANDONED = "abandoned"
ENDED_STATUSES = frozenset({FINISHED, ABANDONED})


def _bad(message: str, **params: Any) -> Refused:
    """A command the engine finds not well formed (code ``bad_command``; ``field`` names the
    culprit): a log entry without a time, a correction that names nobody in doubles."""
    return Refused(message, code="bad_command", **params)


@dataclass(frozen=True)
class Outcome:
    snapshot: dict[str, Any]
    event: dict[str, Any] | None
    duplicate: bool = False


# --------------------------------------------------------------------------- state
#
# Everything below is immutable: a change makes a new State, so the state after
# any prefix of the changes can be kept and shared (undo is a pop, not a recomputation).


@dataclass(frozen=True)
class Game:
    """One game as its changes left it. When a game ends and the match goes on, the next game
    is created at once (with no points), so choices and corrections made between games
    belong to it."""

    number: int
    # The first pairing by R5/R7 or the server choice; it names the pair due to serve.
    first_server: Player
    first_receiver: Player
    # The latest fixed point of the order of service: (service turn, server, receiver). Set by
    # the first pairing, an R9 correction, and the R8 change of receiving order.
    anchor: tuple[int, Player, Player]
    score: tuple[int, int] = (0, 0)
    # (index of the change in the change stack, side) of each point standing, in order.
    points: tuple[tuple[int, int], ...] = ()
    # R10: points played when the expedite system began in this game (0: from the start).
    expedite_from: int | None = None
    ended_at: float | None = None  # the time of the point that ended the game

    @property
    def total(self) -> int:
        return self.score[0] + self.score[1]

    @property
    def over(self) -> bool:
        return game_over(*self.score)

    def turn(self, total: int) -> int:
        return service_turn(total, self.expedite_from)


@dataclass(frozen=True)
class Setup:
    doubles: bool
    names: dict[Player, str]  # every player's name
    best_of: int


@dataclass(frozen=True)
class State:
    """The match after some changes: a pure value."""

    setup: Setup
    games: tuple[Game, ...]
    won: tuple[int, int] = (0, 0)
    timeouts: tuple[int, int] = (0, 0)
    expedite: bool = False
    ends_swaps: int = 0  # R9 corrections of the ends made so far (each one swaps them)
    abandoned: bool = False

    @property
    def current(self) -> Game:
        return self.games[-1]

    @property
    def winner(self) -> int | None:
        needed = games_to_win(self.setup.best_of)
        for side in (1, 2):
            if self.won[side - 1] >= needed:
                return side
        return None

    @property
    def status(self) -> str:
        if self.abandoned:
            return ABANDONED
        if self.winner is not None:
            return FINISHED
        if len(self.games) > 1 and not self.games[-1].points:
            return BETWEEN_GAMES
        return IN_PROGRESS

    @property
    def shown(self) -> Game:
        """The game a scoreboard shows: between games, the one that just ended."""
        return self.games[-2] if self.status == BETWEEN_GAMES else self.games[-1]

    @property
    def left_side(self) -> int:
        game = self.current
        by_law = left_side_by_law(game.number, self.setup.best_of, *game.score)
        return by_law if self.ends_swaps % 2 == 0 else other_side(by_law)

    def pairing(self) -> tuple[Player, Player]:
        """R4/R7: (server, receiver) of the next rally of the current game."""
        game = self.current
        return _pairing_at_total(game, game.total, self.setup.doubles)

    def side_name(self, side: int) -> str:
        names = self.setup.names
        if not self.setup.doubles:
            return names[(side, 0)]
        return f"{names[(side, 0)]} / {names[(side, 1)]}"

    def player(self, name: str) -> Player:
        for player, player_name in self.setup.names.items():
            if player_name == name:
                return player
        raise Refused(
            f"there is no player named {name!r} in this match", code="unknown_player", player=name
        )

    def with_current(self, game: Game) -> State:
        return replace(self, games=(*self.games[:-1], game))


def _pairing_at_total(game: Game, total: int, doubles: bool) -> tuple[Player, Player]:
    anchor_turn, server, receiver = game.anchor
    return pairing_at(game.turn(total), anchor_turn, server, receiver, doubles)


def _first_pairing(game: Game, doubles: bool) -> tuple[Player, Player]:
    """Who served first to whom in ``game``, as its (possibly corrected) order implies."""
    anchor_turn, server, receiver = game.anchor
    return pairing_at(0, anchor_turn, server, receiver, doubles)


@dataclass(frozen=True)
class Change:
    """One entry of the change stack: a command that changes the match (a point, -1,
    timeout, expedite, server choice, correction). For -1, ``strike`` is the stack index of
    the point it takes back."""

    command: dict[str, Any]
    at: float
    strike: int | None = None


# --------------------------------------------------------------------------- the rules


def _start_state(command: dict[str, Any]) -> State:
    doubles = command["game_type"] == "double"
    if doubles:
        names = {
            (side, index): command[f"players{side}"][index] for side in (1, 2) for index in (0, 1)
        }
    else:
        names = {(side, 0): command[f"player{side}"] for side in (1, 2)}
    server, receiver = (command["first_server"], 0), (other_side(command["first_server"]), 0)
    first = Game(1, server, receiver, anchor=(0, server, receiver))
    return State(Setup(doubles, names, command["best_of"]), (first,))


def _require_playing(state: State, action: str) -> None:
    if state.abandoned:
        raise Refused(f"the match was abandoned: {action} is not possible", code="match_abandoned")
    if state.winner is not None:
        raise Refused(
            f"the match is over: {action} is not possible (undo or -1 can take back the "
            "winning point)",
            code="match_over",
        )


def _apply(state: State, change: Change, index: int) -> tuple[State, dict[str, Any]]:
    """One change (not undo, redo or -1) applied to ``state``: the new state and the event
    (without rev and match id). ``index`` is the change's place in the change stack. Raises
    Refused when the rules do not allow it; ``state`` is never modified."""
    command = change.command
    name = command["cmd"]
    if name == "point":
        return _point(state, command["side"], index, change.at)
    if name == "timeout":
        return _timeout(state, command["side"])
    if name == "expedite":
        return _expedite(state)
    if name == "server":
        return _server(state, command["player"])
    if name == "correct":
        return _correct(state, command)
    raise AssertionError(f"not a change: {name}")


def _point(state: State, side: int, index: int, at: float) -> tuple[State, dict[str, Any]]:
    _require_playing(state, "a point")
    game = state.current
    before = game.score
    after = (before[0] + 1, before[1]) if side == 1 else (before[0], before[1] + 1)
    game = replace(game, score=after, points=(*game.points, (index, side)))
    doubles = state.setup.doubles
    event = {"kind": "point", "side": side, "game_no": game.number, "score": list(after)}
    if game.number == state.setup.best_of and switch_point(before, after):
        # R8: a pair first reached 5 in the last possible game: the pair due to receive
        # changes its order (the receiver's partner receives from the same server).
        server, receiver = _pairing_at_total(game, game.total, doubles)
        game = replace(game, anchor=(game.turn(game.total), server, partner(receiver, doubles)))
    if not game.over:
        return state.with_current(game), event
    game = replace(game, ended_at=at)
    won = (state.won[0] + 1, state.won[1]) if side == 1 else (state.won[0], state.won[1] + 1)
    state = replace(state.with_current(game), won=won)
    if state.winner is not None:
        event["kind"] = "match_end"
        return state, event
    event["kind"] = "game_end"
    # R5/R7: the side that received first serves first; by default (doubles) the previous
    # first receiver serves, to the player who served to them.
    first_server, first_receiver = _first_pairing(game, doubles)
    following = Game(
        number=game.number + 1,
        first_server=first_receiver,
        first_receiver=first_server,
        anchor=(0, first_receiver, first_server),
        expedite_from=0 if state.expedite else None,
    )
    return replace(state, games=(*state.games, following)), event


def _timeout(state: State, side: int) -> tuple[State, dict[str, Any]]:
    _require_playing(state, "a timeout")
    if state.status == BETWEEN_GAMES:
        raise Refused(
            "a timeout is called between rallies of a game, not between games",
            code="timeout_between_games",
            side=side,
        )
    if state.timeouts[side - 1]:
        raise Refused(
            f"side {side} has already used its timeout in this match",
            code="timeout_used",
            side=side,
        )
    timeouts = (1, state.timeouts[1]) if side == 1 else (state.timeouts[0], 1)
    game = state.current
    event = {"kind": "timeout", "side": side, "game_no": game.number, "score": list(game.score)}
    return replace(state, timeouts=timeouts), event


def _expedite(state: State) -> tuple[State, dict[str, Any]]:
    _require_playing(state, "the expedite system")
    if state.expedite:
        raise Refused(
            "the expedite system is already on (it stays on until the match ends)",
            code="expedite_on",
        )
    game = state.current
    if game.total >= EXPEDITE_MAX_TOTAL:
        raise Refused(
            f"the expedite system cannot start: {game.total} points have been played in "
            f"this game ({EXPEDITE_MAX_TOTAL} or more)",
            code="expedite_too_late",
            points=game.total,
            limit=EXPEDITE_MAX_TOTAL,
        )
    # The service turn changes meaning from here; keep the order of service where it is.
    state = replace(state.with_current(replace(game, expedite_from=game.total)), expedite=True)
    event = {"kind": "expedite", "game_no": game.number, "score": list(game.score)}
    return state, event


def _server(state: State, name: str) -> tuple[State, dict[str, Any]]:
    _require_playing(state, "choosing the server")
    if not state.setup.doubles:
        raise Refused(
            "choosing the server is for doubles; in singles it follows from the first server",
            code="not_doubles",
        )
    if state.status != BETWEEN_GAMES:
        raise Refused(
            "the server is chosen before the first point of game 2 or later",
            code="server_choice_too_late",
        )
    player = state.player(name)
    game = state.current
    if player[0] != game.first_server[0]:
        raise Refused(
            f"{name} is not in the pair due to serve",
            code="not_in_serving_pair",
            player=name,
            side=game.first_server[0],
        )
    previous_server, previous_receiver = _first_pairing(state.games[-2], True)
    # R7: the first receiver is the player who served to the chosen server last game.
    receiver = previous_server if player == previous_receiver else partner(previous_server, True)
    # The latest word on this game's first server wins over an earlier correction.
    game = replace(game, first_server=player, first_receiver=receiver, anchor=(0, player, receiver))
    event = {"kind": "server", "side": player[0], "game_no": game.number, "score": [0, 0]}
    return state.with_current(game), event


def _correct(state: State, command: dict[str, Any]) -> tuple[State, dict[str, Any]]:
    _require_playing(state, "a correction")
    doubles = state.setup.doubles
    game = state.current
    if "server" in command:
        server = command["server"]
        if isinstance(server, int):
            if doubles:
                raise _bad('in doubles, correct "server" and "receiver" by name', field="server")
            server_player: Player = (server, 0)
        else:
            server_player = state.player(server)
        if "receiver" in command:
            receiver_player = state.player(command["receiver"])
            if receiver_player[0] == server_player[0]:
                raise Refused(
                    "the server and the receiver must be on different sides", code="same_side"
                )
        elif doubles:
            raise _bad('in doubles, correct "server" together with "receiver"', field="receiver")
        else:
            receiver_player = (other_side(server_player[0]), 0)
        game = replace(game, anchor=(game.turn(game.total), server_player, receiver_player))
        state = state.with_current(game)
    if "left_side" in command and command["left_side"] != state.left_side:
        state = replace(state, ends_swaps=state.ends_swaps + 1)
    shown = state.shown
    return state, {"kind": "correct", "game_no": shown.number, "score": list(shown.score)}


def _minus_one_target(state: State, side: int) -> tuple[int, int]:
    """-1: (stack index, game number) of ``side``'s latest point in the game of the latest
    point (between games or after the match: the game that just ended)."""
    _require_not_abandoned(state, "taking back a point")
    game = next((each for each in reversed(state.games) if each.points), None)
    if game is not None:
        for index, point_side in reversed(game.points):
            if point_side == side:
                return index, game.number
    number = game.number if game is not None else state.current.number
    raise Refused(
        f"side {side} has no point to take back in game {number}",
        code="no_point_to_remove",
        side=side,
        game_no=number,
    )


def _require_not_abandoned(state: State, action: str) -> None:
    if state.abandoned:
        raise Refused(f"the match was abandoned: {action} is not possible", code="match_abandoned")


def _derive(start: State, changes: list[Change], first: int, struck: set[int]) -> State:
    """The state after ``changes[first:]`` applied to ``start`` (the state before
    ``changes[first]``), skipping the -1 entries and the points they strike."""
    state = start
    for index in range(first, len(changes)):
        change = changes[index]
        if change.strike is None and index not in struck:
            try:
                state, _ = _apply(state, change, index)
            except Refused as exc:
                exc.params.setdefault("cmd", change.command["cmd"])  # which change broke
                raise
    return state


def _replay_from(changes: list[Change], target: int) -> int:
    """The earliest change from which a new strike of ``changes[target]`` must be derived
    again: the state kept before it must not hold a point that a later -1 strikes (that state
    was kept before the -1 was made)."""
    first = target
    moved = True
    while moved:
        moved = False
        for index in range(first + 1, len(changes)):
            strike = changes[index].strike
            if strike is not None and strike < first:
                first, moved = strike, True
    return first


def _event_fields(change: Change) -> dict[str, Any]:
    command = change.command
    what = "point_removed" if change.strike is not None else command["cmd"]
    fields: dict[str, Any] = {"change": what}
    if "side" in command:
        fields["side"] = command["side"]
    return fields


class History:
    """The fold's accumulator: the change stack, what undo took back (for redo), and the
    current state. ``step`` is the fold's step; it checks everything before it changes
    anything, so a refused command leaves the history as it was.

    ``incremental`` keeps the state after every change (undo pops it; redo pushes back the
    state it had; -1 derives again only from the struck point on). Without it every undo,
    redo and -1 derives the state from the start: the plain definition, kept for the
    property tests and ``fold``."""

    def __init__(self, incremental: bool = True) -> None:
        self.incremental = incremental
        self.base: State | None = None  # the state right after the start
        self.changes: list[Change] = []
        self.states: list[State] = []  # incremental: states[i] = after changes[: i + 1]
        self.redo: list[tuple[Change, State | None]] = []
        self.state: State | None = None
        self.ends_changed = False
        self.last_at = 0.0

    def step(self, command: dict[str, Any], at: float) -> dict[str, Any]:
        """Apply one normalized command at ``at``: returns its event (without rev and match
        id). Raises Refused (nothing changed)."""
        name = command["cmd"]
        if name == "start":
            return self._start(command, at)
        state = self.state
        if state is None:
            raise Refused("no match has started: send a start command first", code="no_match")
        before_left = state.left_side
        if name == "undo":
            event = self._undo(state)
        elif name == "redo":
            event = self._redo(state)
        elif name == "end":
            _require_playing(state, "abandoning it")
            self.state = replace(state, abandoned=True)
            self.redo.clear()
            event = {
                "kind": "abandon",
                "game_no": state.shown.number,
                "score": list(state.shown.score),
            }
        elif name == "point" and command["delta"] < 0:
            event = self._minus_one(state, Change(command, at))
        else:
            change = Change(command, at)
            self.state, event = _apply(state, change, len(self.changes))
            self._push(change, self.state)
            self.redo.clear()
        assert self.state is not None
        self.ends_changed = self.state.left_side != before_left
        self.last_at = at
        return event

    def copy(self) -> History:
        """A history that shares no mutable part with this one (states and changes are
        immutable values, shared)."""
        copied = History(self.incremental)
        copied.base, copied.state = self.base, self.state
        copied.changes = list(self.changes)
        copied.states = list(self.states)
        copied.redo = list(self.redo)
        copied.ends_changed, copied.last_at = self.ends_changed, self.last_at
        return copied

    def _start(self, command: dict[str, Any], at: float) -> dict[str, Any]:
        if self.state is not None:
            if self.state.status in ENDED_STATUSES:
                raise Refused("this match is over: a start begins a new match", code="match_over")
            raise Refused("a match is in progress", code="match_in_progress")
        self.base = self.state = _start_state(command)
        self.last_at = at
        return {"kind": "start", "game_no": 1, "score": [0, 0]}

    def _push(self, change: Change, state: State) -> None:
        self.changes.append(change)
        if self.incremental:
            self.states.append(state)

    def _state_before(self, index: int) -> State:
        """The state before changes[index] (incremental)."""
        assert self.base is not None
        return self.states[index - 1] if index > 0 else self.base

    def _from_scratch(self, changes: list[Change]) -> State:
        assert self.base is not None
        struck = {change.strike for change in changes if change.strike is not None}
        return _derive(self.base, changes, 0, struck)

    def _undo(self, state: State) -> dict[str, Any]:
        _require_not_abandoned(state, "undo")
        if not self.changes:
            raise Refused("there is nothing to undo", code="nothing_to_undo")
        change = self.changes.pop()
        undone = self.states.pop() if self.incremental else None
        self.redo.append((change, undone))
        self.state = (
            self._state_before(len(self.changes))
            if self.incremental
            else self._from_scratch(self.changes)
        )
        shown = self.state.shown
        return {
            "kind": "undo",
            **_event_fields(change),
            "game_no": shown.number,
            "score": list(shown.score),
        }

    def _redo(self, state: State) -> dict[str, Any]:
        _require_not_abandoned(state, "redo")
        if not self.redo:
            raise Refused("there is nothing to redo", code="nothing_to_redo")
        change, redone = self.redo.pop()
        self.changes.append(change)
        if self.incremental:
            assert redone is not None  # the stack below is as it was when undo took it
            self.states.append(redone)
            self.state = redone
        else:
            self.state = self._from_scratch(self.changes)
        shown = self.state.shown
        return {
            "kind": "redo",
            **_event_fields(change),
            "game_no": shown.number,
            "score": list(shown.score),
        }

    def _minus_one(self, state: State, change: Change) -> dict[str, Any]:
        side = change.command["side"]
        target, game_no = _minus_one_target(state, side)
        change = replace(change, strike=target)
        changes = [*self.changes, change]
        struck = {each.strike for each in changes if each.strike is not None}
        try:
            if self.incremental:
                first = _replay_from(changes, target)
                derived = _derive(self._state_before(first), changes, first, struck)
            else:
                derived = self._from_scratch(changes)
        except Refused as exc:
            if exc.code == "match_over" and exc.params.get("cmd") == "point":
                raise Refused(
                    f"taking back side {side}'s point in game {game_no} would end the match "
                    "before points that come after it: use undo to take back the latest "
                    "presses first",
                    code="points_after_match_end",
                    side=side,
                    game_no=game_no,
                ) from None
            raise Refused(
                f"taking back side {side}'s point in game {game_no} would make a later "
                f"command impossible ({exc}): use undo to take back the latest presses first",
                code="later_change_conflicts",
                side=side,
                game_no=game_no,
                reason=exc.code,
            ) from None
        self._push(change, derived)
        self.redo.clear()
        self.state = derived
        game = derived.games[game_no - 1]
        return {
            "kind": "point_removed",
            "side": side,
            "game_no": game_no,
            "score": list(game.score),
        }

    # ------------------------------------------------------------- the snapshot

    def snapshot(self, match_id: str, rev: int) -> dict[str, Any] | None:
        """What a scoreboard shows (None before the start). See docs/rules.md."""
        state = self.state
        if state is None:
            return None
        setup = state.setup
        status = state.status
        shown = state.shown
        ended = status in ENDED_STATUSES
        winner = state.winner
        server = receiver = None
        if not ended:
            server, receiver = state.pairing()
        playing = not state.abandoned
        top = self.changes[-1] if self.changes else None
        timeout = None
        if status == IN_PROGRESS and top is not None and top.command["cmd"] == "timeout":
            timeout = {"side": top.command["side"], "started_at": _iso_utc(top.at)}
        last_game = None
        if status in (BETWEEN_GAMES, FINISHED):
            game = state.games[-2] if status == BETWEEN_GAMES else state.games[-1]
            game_winner = 1 if game.score[0] > game.score[1] else 2
            last_game = {
                "game_no": game.number,
                "winner": game_winner,
                "winner_name": state.side_name(game_winner),
                "score": list(game.score),
                "ended_at": _iso_utc(game.ended_at) if game.ended_at is not None else "",
            }
        return {
            "type": "game_end" if ended else "game_update",
            "game_data": {
                "game_type": "double" if setup.doubles else "single",
                "score1": shown.score[0],
                "score2": shown.score[1],
                "player1": state.side_name(1),
                "player2": state.side_name(2),
                "is_finished": ended,
                "server": server[0] if server else None,
                "winner": state.side_name(winner) if winner else None,
            },
            "schema": SCHEMA,
            "rev": rev,
            "match_id": match_id,
            "best_of": setup.best_of,
            "games": [list(game.score) for game in state.games if game.over],
            "games_won": list(state.won),
            "game_no": shown.number,
            "status": status,
            "server_player": setup.names[server] if server else None,
            "receiver_player": setup.names[receiver] if receiver else None,
            "left_side": state.left_side,
            "expedite": state.expedite,
            "timeouts_used": list(state.timeouts),
            "can_undo": playing and bool(self.changes),
            "can_redo": playing and bool(self.redo),
            "timeout": timeout,
            "last_game": last_game,
            "ends_changed": self.ends_changed,
            "updated_at": _iso_utc(self.last_at),
        }


def _timed_entries(log: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any], float]]:
    """Each log entry as (its number from 1, the command without ``"at"``, ``"at"`` in
    seconds). Raises Refused (bad_command, field ``at``) at an entry with no number there."""
    for number, entry in enumerate(log, start=1):
        command = dict(entry)
        at = command.pop("at", None)
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise _bad(f'log entry {number} has no "at" time', field="at")
        yield number, command, float(at)


@contextmanager
def _naming_entry(number: int) -> Iterator[None]:
    """A Refused raised in the body says which log entry it is about (same code, params)."""
    try:
        yield
    except Refused as exc:
        raise Refused(f"log entry {number}: {exc}", exc.code, **exc.params) from None


def fold(match_id: str, log: list[dict[str, Any]]) -> dict[str, Any] | None:
    """THE definition of a match: its log (``match.log`` entries, each with ``"at"``) folded
    from scratch into the snapshot (None before a start). Pure. Raises Refused if an entry is
    not acceptable, which means the log was not written by this engine. ``Match`` gives the
    same snapshot incrementally (tests/scorer/test_engine_properties.py)."""
    history = History(incremental=False)
    ids: set[str | int] = set()
    rev = 0
    for number, command, at in _timed_entries(log):
        with _naming_entry(number):
            parsed = parse_command(command)
            if parsed.get("id") is not None and parsed["id"] in ids:
                continue  # a duplicate is never logged; ignored like apply does
            history.step(parsed, at)
        if parsed.get("id") is not None:
            ids.add(parsed["id"])
        rev += 1
    return history.snapshot(match_id, rev)


class Match:
    """A match: its log, and the state folded from it (incrementally). Public API:
    ``applied`` (a parsed ``Command`` -> a new Match; this one unchanged), ``apply`` (the
    same in place, from any form ``parse`` takes), ``from_log``, ``log``, ``latest``,
    ``rev``, ``rev_of``, ``status``, ``snapshot``."""

    def __init__(self, match_id: str) -> None:
        self.match_id = match_id
        self._log: list[dict[str, Any]] = []
        self._rev_by_id: dict[str | int, int] = {}  # command id -> rev that accepted it
        self._history = History(incremental=True)

    @classmethod
    def from_log(cls, match_id: str, log: list[dict[str, Any]]) -> Match:
        """The match rebuilt from its log (as ``match.log`` returns it). Raises Refused if
        an entry is not acceptable, which means the log was not written by this engine."""
        match = cls(match_id)
        for number, command, at in _timed_entries(log):
            with _naming_entry(number):
                parsed = parse(command)
                if parsed.id is None or parsed.id not in match._rev_by_id:
                    match._accept(parsed, at)
        return match

    @property
    def log(self) -> list[dict[str, Any]]:
        """The accepted commands, normalized, each with ``"at"``: the match's source of truth."""
        return [dict(entry) for entry in self._log]

    @property
    def rev(self) -> int:
        return len(self._log)

    @property
    def latest(self) -> dict[str, Any] | None:
        """The latest log entry (a copy, like ``log``), without copying the whole log."""
        return dict(self._log[-1]) if self._log else None

    def rev_of(self, command_id: str | int) -> int | None:
        """The rev at which the command with this id was accepted (None: not seen)."""
        if isinstance(command_id, bool):  # True == 1 as a dict key; never a command id
            return None
        return self._rev_by_id.get(command_id)

    @property
    def status(self) -> str | None:
        """None before the start, else in_progress, between_games, finished or abandoned."""
        state = self._history.state
        return None if state is None else state.status

    def apply(self, command: Command | bytes | str | dict[str, Any], now: float) -> Outcome:
        """Apply one command at time ``now`` (seconds since the epoch), in place. A command
        whose id this match has accepted already changes nothing (``duplicate``). Raises
        Refused (bad_command for a command ``parse`` refuses) and leaves the match unchanged
        when the rules do not allow it."""
        parsed = command if isinstance(command, Command) else parse(command)
        if parsed.id is not None and parsed.id in self._rev_by_id:
            snapshot = self.snapshot()
            assert snapshot is not None  # an id was accepted, so the match has started
            return Outcome(snapshot=snapshot, event=None, duplicate=True)
        event = self._accept(parsed, float(now))
        snapshot = self.snapshot()
        assert snapshot is not None  # a command was accepted, so the match has started
        return Outcome(snapshot=snapshot, event=event)

    def applied(self, command: Command, now: float) -> tuple[Match, Outcome]:
        """The match after ``command`` at ``now``, as a new Match, and what it publishes;
        this match stays as it was (also when the command is refused), so a caller can
        keep it until the new one is saved. Ids are the caller's to check (a command is
        applied as given). Costs a pointer per log entry, never a copy of the states (they
        are immutable values). Raises Refused."""
        after = self._copy()
        event = after._accept(command, float(now))
        snapshot = after.snapshot()
        assert snapshot is not None  # a command was accepted, so the match has started
        return after, Outcome(snapshot=snapshot, event=event)

    def _copy(self) -> Match:
        """A match that shares no mutable part with this one: the lists and dicts are
        copied, the log entries (never changed once appended) and states (frozen) shared."""
        copied = Match(self.match_id)
        copied._log = list(self._log)
        copied._rev_by_id = dict(self._rev_by_id)
        copied._history = self._history.copy()
        return copied

    def _accept(self, command: Command, now: float) -> dict[str, Any]:
        """Apply a parsed command: its event. Raises Refused (nothing changed)."""
        parsed = command.as_dict()
        event = self._history.step(parsed, now)
        self._log.append({**parsed, "at": now})
        if command.id is not None:
            self._rev_by_id[command.id] = self.rev
        return {"kind": event.pop("kind"), **event, "rev": self.rev, "match_id": self.match_id}

    def snapshot(self) -> dict[str, Any] | None:
        """What a scoreboard shows (None before the start). See docs/rules.md."""
        return self._history.snapshot(self.match_id, self.rev)


def begins_new_match(current: Match | None, command: Command) -> bool:
    """Whether ``command`` starts a new match in place of ``current`` (the table's match, or
    None): a start does when no match is current, when the current one has ended (finished
    or abandoned), or when it says ``"force": true`` (the match in progress is replaced).
    Any other start is refused by the current match (``match_in_progress``)."""
    if command.cmd != "start":
        return False
    return current is None or current.status in ENDED_STATUSES or command.args.get("force") is True


def _iso_utc(at: float) -> str:
    """``at`` (seconds since the epoch) as ISO-8601 UTC with milliseconds, e.g.
    2026-11-26T15:13:00.250Z; empty if it is not a representable time."""
    if not math.isfinite(at):
        return ""
    try:
        moment = datetime.fromtimestamp(at, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = [
    "ABANDONED",
    "BETWEEN_GAMES",
    "ENDED_STATUSES",
    "FINISHED",
    "IN_PROGRESS",
    "MAX_COMMAND_CHARS",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "SCHEMA",
    "SHORTHANDS",
    "Command",
    "History",
    "Match",
    "Outcome",
    "Refused",
    "State",
    "begins_new_match",
    "check_command_id",
    "clean_name",
    "fold",
    "parse",
    "parse_command",
]
