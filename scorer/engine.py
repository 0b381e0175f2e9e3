"""The rules engine: a match is an append-only log of accepted commands and its state is
derived from that log. Pure: no I/O and no clock (the caller passes ``now``).

    match = Match("m1")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}, now=0.0)
    outcome = match.apply("1+", now=1.0)      # Outcome(snapshot, event, duplicate)
    Match.from_log("m1", match.log).snapshot() == match.snapshot()

Commands, snapshot fields, events and the law behind each behaviour: docs/rules.md."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scorer.rules import (
    BEST_OF_CHOICES,
    EXPEDITE_MAX_TOTAL,
    Player,
    game_over,
    game_winner,
    games_to_win,
    left_side_by_law,
    other_side,
    pairing_at,
    partner,
    service_turn,
    switch_total,
)

SCHEMA = 1
MAX_NAME_CHARS = 64
MAX_ID_CHARS = 128
MAX_COMMAND_CHARS = 4096

# Text shorthands for devices that can only send a fixed string.
SHORTHANDS: dict[str, dict[str, Any]] = {
    "1+": {"cmd": "point", "side": 1, "delta": 1},
    "1-": {"cmd": "point", "side": 1, "delta": -1},
    "2+": {"cmd": "point", "side": 2, "delta": 1},
    "2-": {"cmd": "point", "side": 2, "delta": -1},
    "undo": {"cmd": "undo"},
}

IN_PROGRESS = "in_progress"
BETWEEN_GAMES = "between_games"
FINISHED = "finished"
ABANDONED = "abandoned"
ENDED_STATUSES = frozenset({FINISHED, ABANDONED})


class Refused(Exception):
    """A command the rules do not allow; ``str(exc)`` is the reason, for people to read.
    The match is unchanged."""


@dataclass(frozen=True)
class Outcome:
    snapshot: dict[str, Any]
    event: dict[str, Any] | None
    duplicate: bool = False


# --------------------------------------------------------------------------- parsing


def parse_command(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A command as bytes, text (JSON or a shorthand) or a dict -> the normalized command dict
    (only known fields, defaults filled in, names trimmed). Raises Refused."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("a command must be UTF-8 text") from None
    if isinstance(raw, str):
        raw = _parse_text(raw)
    if not isinstance(raw, dict):
        raise Refused('a command must be a JSON object such as {"cmd": "point", "side": 1}')
    name = raw.get("cmd")
    if not isinstance(name, str):
        raise Refused('a command needs "cmd" (a string), e.g. {"cmd": "point", "side": 1}')
    spec = _COMMANDS.get(name)
    if spec is None:
        raise Refused(f"unknown command {name!r}: use one of {', '.join(_COMMANDS)}")
    allowed, normalize = spec
    unknown = sorted(str(key) for key in set(raw) - allowed - {"cmd", "id"})
    if unknown:
        raise Refused(f"unknown field(s) for {name!r}: {', '.join(unknown)}")
    command: dict[str, Any] = {"cmd": name}
    command.update(normalize(raw))
    if "id" in raw:
        command["id"] = check_command_id(raw["id"])
    return command


def _parse_text(text: str) -> Any:
    text = text.strip()
    if len(text) > MAX_COMMAND_CHARS:
        raise Refused(f"the command is too long (over {MAX_COMMAND_CHARS} characters)")
    shorthand = SHORTHANDS.get(text.lower())
    if shorthand is not None:
        return dict(shorthand)
    if not text:
        raise Refused("empty command")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise Refused(
            'not a command: send JSON such as {"cmd": "point", "side": 1}, '
            "or one of 1+ 1- 2+ 2- undo"
        ) from None


def check_command_id(value: Any) -> str | int:
    """A command's ``"id"``: a string of 1 to MAX_ID_CHARS characters or an integer (not a
    bool). Raises Refused."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Refused('"id" must be a string or an integer')
    if isinstance(value, str) and not 1 <= len(value) <= MAX_ID_CHARS:
        raise Refused(f'"id" must have 1 to {MAX_ID_CHARS} characters')
    return value


def _int_choice(
    raw: dict[str, Any], key: str, choices: tuple[int, ...], default: int | None = None
) -> int:
    if key not in raw:
        if default is None:
            raise Refused(f'"{key}" is missing')
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f'"{key}" must be a whole number: one of {", ".join(map(str, choices))}')
    if value not in choices:
        raise Refused(f'"{key}" must be one of {", ".join(map(str, choices))}, not {value}')
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Refused(f"{what} must be a name (a string)")
    name = value.strip()
    if not name:
        raise Refused(f"{what} is empty")
    if len(name) > MAX_NAME_CHARS:
        raise Refused(f"{what} is longer than {MAX_NAME_CHARS} characters")
    return name


def _pair(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 2:
        raise Refused(f"{what} must be a list of two names")
    return [_name(item, f"a name in {what}") for item in value]


def _normalize_start(raw: dict[str, Any]) -> dict[str, Any]:
    game_type = raw.get("game_type", "single")
    if game_type not in ("single", "double"):
        raise Refused('"game_type" must be "single" or "double"')
    if game_type == "single":
        if "players1" in raw or "players2" in raw:
            raise Refused(
                'singles take "player1" and "player2"; "players1"/"players2" are for doubles'
            )
        names = {
            "player1": _name(raw.get("player1"), '"player1"'),
            "player2": _name(raw.get("player2"), '"player2"'),
        }
        everyone = list(names.values())
    else:
        if "player1" in raw or "player2" in raw:
            raise Refused('doubles take "players1" and "players2" (two names each)')
        names = {
            "players1": _pair(raw.get("players1"), '"players1"'),
            "players2": _pair(raw.get("players2"), '"players2"'),
        }
        everyone = names["players1"] + names["players2"]
    if len(set(everyone)) != len(everyone):
        raise Refused("two players have the same name: give each player a different name")
    if (
        "best_of" in raw
        and isinstance(raw["best_of"], int)
        and not isinstance(raw["best_of"], bool)
    ):
        if raw["best_of"] % 2 == 0:
            raise Refused(f'"best_of" must be odd (1, 3, 5 or 7), not {raw["best_of"]}')
    command: dict[str, Any] = {"game_type": game_type, **names}
    command["best_of"] = _int_choice(raw, "best_of", BEST_OF_CHOICES, default=1)
    command["first_server"] = _int_choice(raw, "first_server", (1, 2), default=1)
    if "force" in raw:
        if not isinstance(raw["force"], bool):
            raise Refused('"force" must be true or false')
        if raw["force"]:
            command["force"] = True
    return command


def _normalize_point(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "side": _int_choice(raw, "side", (1, 2)),
        "delta": _int_choice(raw, "delta", (1, -1), default=1),
    }


def _normalize_side(raw: dict[str, Any]) -> dict[str, Any]:
    return {"side": _int_choice(raw, "side", (1, 2))}


def _normalize_nothing(raw: dict[str, Any]) -> dict[str, Any]:
    return {}


def _normalize_server(raw: dict[str, Any]) -> dict[str, Any]:
    return {"player": _name(raw.get("player"), '"player"')}


def _normalize_correct(raw: dict[str, Any]) -> dict[str, Any]:
    command: dict[str, Any] = {}
    if "server" in raw:
        server = raw["server"]
        command["server"] = (
            _int_choice(raw, "server", (1, 2))
            if isinstance(server, int) and not isinstance(server, bool)
            else _name(server, '"server"')
        )
    if "receiver" in raw:
        command["receiver"] = _name(raw["receiver"], '"receiver"')
    if "left_side" in raw:
        command["left_side"] = _int_choice(raw, "left_side", (1, 2))
    if "receiver" in command and "server" not in command:
        raise Refused('"receiver" is corrected together with "server"')
    if "server" not in command and "left_side" not in command:
        raise Refused('"correct" needs "server" (with "receiver" in doubles) and/or "left_side"')
    return command


Normalizer = Callable[[dict[str, Any]], dict[str, Any]]

_COMMANDS: dict[str, tuple[set[str], Normalizer]] = {
    "start": (
        {
            "game_type",
            "player1",
            "player2",
            "players1",
            "players2",
            "best_of",
            "first_server",
            "force",
        },
        _normalize_start,
    ),
    "point": ({"side", "delta"}, _normalize_point),
    "undo": (set(), _normalize_nothing),
    "timeout": ({"side"}, _normalize_side),
    "expedite": (set(), _normalize_nothing),
    "end": (set(), _normalize_nothing),
    "server": ({"player"}, _normalize_server),
    "correct": ({"server", "receiver", "left_side"}, _normalize_correct),
}


# --------------------------------------------------------------------------- state


@dataclass
class Game:
    """One game: the sides that won its rallies, in order, and what decides its order of
    service. When a game ends and the match goes on, the next game is created at once (with
    no points), so choices and corrections made between games belong to it."""

    number: int
    first_server: Player
    first_receiver: Player
    points: list[int] = field(default_factory=list)
    # R9 corrections of the order: (points played when made, server, receiver).
    order_fixes: list[tuple[int, Player, Player]] = field(default_factory=list)
    # R9 corrections of the ends: points played when made (each one swaps the ends).
    ends_fixes: list[int] = field(default_factory=list)
    # R10: points played when the expedite system began in this game (0: from the start).
    expedite_from: int | None = None

    @property
    def total(self) -> int:
        return len(self.points)

    @property
    def score(self) -> tuple[int, int]:
        won_by_1 = self.points.count(1)
        return won_by_1, len(self.points) - won_by_1

    @property
    def over(self) -> bool:
        return game_over(*self.score)

    def forget_after(self, total: int) -> None:
        """Points were taken back down to ``total``: corrections made at a later score no
        longer apply (they belong to the score at which they were made)."""
        self.order_fixes = [fix for fix in self.order_fixes if fix[0] <= total]
        self.ends_fixes = [made_at for made_at in self.ends_fixes if made_at <= total]
        if self.expedite_from is not None and self.expedite_from > total:
            self.expedite_from = total


@dataclass(frozen=True)
class Setup:
    doubles: bool
    names: dict[Player, str]  # every player's name
    best_of: int


class Match:
    def __init__(self, match_id: str) -> None:
        self.match_id = match_id
        self._log: list[dict[str, Any]] = []
        self._rev_by_id: dict[str | int, int] = {}  # command id -> rev that accepted it
        self._setup: Setup | None = None
        self._games: list[Game] = []
        self._timeouts = [0, 0]
        self._expedite = False
        self._abandoned = False

    # ----------------------------------------------------------------- public API

    @classmethod
    def from_log(cls, match_id: str, log: list[dict[str, Any]]) -> Match:
        """The match rebuilt from its log (as ``match.log`` returns it). Raises Refused if
        an entry is not acceptable, which means the log was not written by this engine."""
        match = cls(match_id)
        for number, entry in enumerate(log, start=1):
            command = dict(entry)
            at = command.pop("at", None)
            if isinstance(at, bool) or not isinstance(at, int | float):
                raise Refused(f'log entry {number} has no "at" time')
            try:
                match.apply(command, float(at))
            except Refused as exc:
                raise Refused(f"log entry {number}: {exc}") from None
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
        if self._setup is None:
            return None
        if self._abandoned:
            return ABANDONED
        if self._match_winner() is not None:
            return FINISHED
        if len(self._games) > 1 and not self._games[-1].points:
            return BETWEEN_GAMES
        return IN_PROGRESS

    def apply(self, command: bytes | str | dict[str, Any], now: float) -> Outcome:
        """Apply one command at time ``now`` (seconds since the epoch). Raises Refused and
        leaves the match unchanged when the rules do not allow it."""
        parsed = parse_command(command)
        command_id = parsed.get("id")
        if command_id is not None and command_id in self._rev_by_id:
            snapshot = self.snapshot()
            assert snapshot is not None  # an accepted command carried this id
            return Outcome(snapshot=snapshot, event=None, duplicate=True)
        handler = getattr(self, f"_do_{parsed['cmd']}")
        event = handler(parsed)  # checks everything before it changes anything
        self._log.append({**parsed, "at": float(now)})
        if command_id is not None:
            self._rev_by_id[command_id] = self.rev
        event = {"kind": event.pop("kind"), **event, "rev": self.rev, "match_id": self.match_id}
        snapshot = self.snapshot()
        assert snapshot is not None
        return Outcome(snapshot=snapshot, event=event, duplicate=False)

    def snapshot(self) -> dict[str, Any] | None:
        """What a scoreboard shows (None before the start). See docs/rules.md."""
        setup = self._setup
        if setup is None:
            return None
        status = self.status
        assert status is not None
        current = self._games[-1]
        shown = self._games[-2] if status == BETWEEN_GAMES else current
        score1, score2 = shown.score
        ended = status in (FINISHED, ABANDONED)
        winner_side = self._match_winner()
        server = receiver = None
        if not ended:
            server, receiver = self._pairing(current)
        games = [list(game.score) for game in self._games if game.over]
        return {
            "type": "game_end" if ended else "game_update",
            "game_data": {
                "game_type": "double" if setup.doubles else "single",
                "score1": score1,
                "score2": score2,
                "player1": self._side_name(1),
                "player2": self._side_name(2),
                "is_finished": ended,
                "server": server[0] if server else None,
                "winner": self._side_name(winner_side) if winner_side else None,
            },
            "schema": SCHEMA,
            "rev": self.rev,
            "match_id": self.match_id,
            "best_of": setup.best_of,
            "games": games,
            "games_won": self._games_won(),
            "game_no": shown.number,
            "status": status,
            "server_player": setup.names[server] if server else None,
            "receiver_player": setup.names[receiver] if receiver else None,
            "left_side": self._left_side(),
            "expedite": self._expedite,
            "timeouts_used": list(self._timeouts),
            "updated_at": _iso_utc(self._log[-1]["at"]),
        }

    # ----------------------------------------------------------------- derived state

    def _games_won(self) -> list[int]:
        won = [0, 0]
        for game in self._games:
            winner = game_winner(*game.score)
            if winner:
                won[winner - 1] += 1
        return won

    def _match_winner(self) -> int | None:
        if self._setup is None:
            return None
        needed = games_to_win(self._setup.best_of)
        won = self._games_won()
        for side in (1, 2):
            if won[side - 1] >= needed:
                return side
        return None

    def _side_name(self, side: int) -> str:
        assert self._setup is not None
        if not self._setup.doubles:
            return self._setup.names[(side, 0)]
        return f"{self._setup.names[(side, 0)]} / {self._setup.names[(side, 1)]}"

    def _doubles(self) -> bool:
        return self._setup is not None and self._setup.doubles

    def _anchor(self, game: Game) -> tuple[int, Player, Player]:
        """The latest fixed point of the game's order of service at its current score:
        (service turn, server, receiver). Folds, in order of score: the game's first
        pairing, R9 corrections, and the R8 change of receiving order."""
        assert self._setup is not None
        doubles = self._setup.doubles

        def turn(total: int) -> int:
            return service_turn(total, game.expedite_from)

        anchor = (0, game.first_server, game.first_receiver)
        switch_at = switch_total(game.points) if game.number == self._setup.best_of else None
        fixes = list(game.order_fixes)
        if switch_at is not None:
            # Corrections made at the switching score came after it (the point came first).
            before = [fix for fix in fixes if fix[0] < switch_at]
            after = [fix for fix in fixes if fix[0] >= switch_at]
            for made_at, server, receiver in before:
                anchor = (turn(made_at), server, receiver)
            # R8: the pair due to receive next changes its order: the receiver's partner
            # receives from the same server.
            server, receiver = pairing_at(turn(switch_at), anchor[0], anchor[1], anchor[2], doubles)
            anchor = (turn(switch_at), server, partner(receiver, doubles))
            fixes = after
        for made_at, server, receiver in fixes:
            anchor = (turn(made_at), server, receiver)
        return anchor

    def _pairing(self, game: Game) -> tuple[Player, Player]:
        """R4/R7: (server, receiver) of the next rally of ``game``."""
        turn_now = service_turn(game.total, game.expedite_from)
        anchor_turn, server, receiver = self._anchor(game)
        return pairing_at(turn_now, anchor_turn, server, receiver, self._doubles())

    def _first_pairing(self, game: Game) -> tuple[Player, Player]:
        """Who served first to whom in ``game``, as its (possibly corrected) order implies."""
        anchor_turn, server, receiver = self._anchor(game)
        return pairing_at(0, anchor_turn, server, receiver, self._doubles())

    def _left_side(self) -> int:
        assert self._setup is not None
        game = self._games[-1]
        by_law = left_side_by_law(game.number, self._setup.best_of, *game.score)
        swaps = sum(len(each.ends_fixes) for each in self._games)
        return by_law if swaps % 2 == 0 else other_side(by_law)

    def _next_game(self) -> Game:
        """R5/R7: the game after the current one. The side that received first serves first;
        by default (doubles) the previous first receiver serves, to the player who served to
        them."""
        previous = self._games[-1]
        first_server, first_receiver = self._first_pairing(previous)
        return Game(
            number=previous.number + 1,
            first_server=first_receiver,
            first_receiver=first_server,
            expedite_from=0 if self._expedite else None,
        )

    # ----------------------------------------------------------------- checks

    def _require_started(self) -> Setup:
        if self._setup is None:
            raise Refused("no match has started: send a start command first")
        return self._setup

    def _require_playing(self, action: str) -> Setup:
        setup = self._require_started()
        status = self.status
        if status == ABANDONED:
            raise Refused(f"the match was abandoned: {action} is not possible")
        if status == FINISHED:
            raise Refused(f"the match is over: {action} is not possible")
        return setup

    def _player_by_name(self, name: str) -> Player:
        assert self._setup is not None
        for player, player_name in self._setup.names.items():
            if player_name == name:
                return player
        raise Refused(f"there is no player named {name!r} in this match")

    # ----------------------------------------------------------------- commands

    def _do_start(self, command: dict[str, Any]) -> dict[str, Any]:
        if self._setup is not None:
            if self.status in (FINISHED, ABANDONED):
                raise Refused("this match is over: a start begins a new match")
            raise Refused("a match is in progress")
        doubles = command["game_type"] == "double"
        if doubles:
            names = {
                (side, index): command[f"players{side}"][index]
                for side in (1, 2)
                for index in (0, 1)
            }
        else:
            names = {(side, 0): command[f"player{side}"] for side in (1, 2)}
        first = command["first_server"]
        self._setup = Setup(doubles, names, command["best_of"])
        self._games = [
            Game(number=1, first_server=(first, 0), first_receiver=(other_side(first), 0))
        ]
        return {"kind": "start", "game_no": 1, "score": [0, 0]}

    def _do_point(self, command: dict[str, Any]) -> dict[str, Any]:
        if command["delta"] < 0:
            return self._take_back(command["side"], "point_removed")
        self._require_playing("a point")
        side = command["side"]
        game = self._games[-1]
        game.points.append(side)
        event = {"kind": "point", "side": side, "game_no": game.number, "score": list(game.score)}
        if game.over:
            if self._match_winner() is not None:
                event["kind"] = "match_end"
            else:
                event["kind"] = "game_end"
                self._games.append(self._next_game())
        return event

    def _do_undo(self, command: dict[str, Any]) -> dict[str, Any]:
        return self._take_back(None, "undo")

    def _take_back(self, side: int | None, kind: str) -> dict[str, Any]:
        """Remove the latest point (undo), or side's latest point in the game of the latest
        point (-1), even after the match ended, so a wrong game-winning press can be fixed."""
        self._require_started()
        if self._abandoned:
            raise Refused("the match was abandoned: points can no longer be taken back")
        games = self._games
        target = games[-2] if len(games) > 1 and not games[-1].points else games[-1]
        if not target.points:
            raise Refused("there is no point to take back")
        if side is None:
            side = target.points[-1]
        if side not in target.points:
            raise Refused(f"side {side} has no point to take back in game {target.number}")
        position = len(target.points) - 1 - target.points[::-1].index(side)
        del target.points[position]
        target.forget_after(target.total)
        if target is not games[-1] and not target.over:
            games.pop()  # the game reopens: the next one, not yet begun, goes with its choices
        elif target is games[-1] and target.over and self._match_winner() is None:
            # -1 of the trailing side can end a game (10-11 -> 9-11): the next one is due.
            games.append(self._next_game())
        if self._expedite and target.expedite_from is None and not target.over:
            target.expedite_from = target.total  # R10: once on, it stays on
        return {"kind": kind, "side": side, "game_no": target.number, "score": list(target.score)}

    def _do_timeout(self, command: dict[str, Any]) -> dict[str, Any]:
        self._require_playing("a timeout")
        side = command["side"]
        if self.status == BETWEEN_GAMES:
            raise Refused("a timeout is called between rallies of a game, not between games")
        if self._timeouts[side - 1]:
            raise Refused(f"side {side} has already used its timeout in this match")
        self._timeouts[side - 1] = 1
        game = self._games[-1]
        return {"kind": "timeout", "side": side, "game_no": game.number, "score": list(game.score)}

    def _do_expedite(self, command: dict[str, Any]) -> dict[str, Any]:
        self._require_playing("the expedite system")
        if self._expedite:
            raise Refused("the expedite system is already on (it stays on until the match ends)")
        game = self._games[-1]
        if game.total >= EXPEDITE_MAX_TOTAL:
            raise Refused(
                f"the expedite system cannot start: {game.total} points have been played in "
                f"this game ({EXPEDITE_MAX_TOTAL} or more)"
            )
        self._expedite = True
        game.expedite_from = game.total
        return {"kind": "expedite", "game_no": game.number, "score": list(game.score)}

    def _do_end(self, command: dict[str, Any]) -> dict[str, Any]:
        self._require_playing("abandoning it")
        self._abandoned = True
        game = self._games[-1]
        return {"kind": "abandon", "game_no": game.number, "score": list(game.score)}

    def _do_server(self, command: dict[str, Any]) -> dict[str, Any]:
        setup = self._require_playing("choosing the server")
        if not setup.doubles:
            raise Refused(
                "choosing the server is for doubles; in singles it follows from the first server"
            )
        if self.status != BETWEEN_GAMES:
            raise Refused("the server is chosen before the first point of game 2 or later")
        player = self._player_by_name(command["player"])
        game = self._games[-1]
        previous_first_server, previous_first_receiver = self._first_pairing(self._games[-2])
        if player[0] != game.first_server[0]:
            raise Refused(f"{command['player']} is not in the pair due to serve")
        # R7: the first receiver is the player who served to the chosen server last game.
        if player == previous_first_receiver:
            receiver = previous_first_server
        else:
            receiver = partner(previous_first_server, True)
        game.first_server, game.first_receiver = player, receiver
        game.order_fixes.clear()  # the latest word on this game's first server wins
        return {"kind": "server", "side": player[0], "game_no": game.number, "score": [0, 0]}

    def _do_correct(self, command: dict[str, Any]) -> dict[str, Any]:
        setup = self._require_playing("a correction")
        game = self._games[-1]
        if "server" in command:
            server = command["server"]
            if isinstance(server, int):
                if setup.doubles:
                    raise Refused('in doubles, correct "server" and "receiver" by name')
                server_player: Player = (server, 0)
            else:
                server_player = self._player_by_name(server)
            if "receiver" in command:
                receiver_player = self._player_by_name(command["receiver"])
                if receiver_player[0] == server_player[0]:
                    raise Refused("the server and the receiver must be on different sides")
            elif setup.doubles:
                raise Refused('in doubles, correct "server" together with "receiver"')
            else:
                receiver_player = (other_side(server_player[0]), 0)
            game.order_fixes.append((game.total, server_player, receiver_player))
        if "left_side" in command and command["left_side"] != self._left_side():
            game.ends_fixes.append(game.total)
        shown = self._games[-2] if self.status == BETWEEN_GAMES else game
        return {"kind": "correct", "game_no": shown.number, "score": list(shown.score)}


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
