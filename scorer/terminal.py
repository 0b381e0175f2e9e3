"""``rallycast score``: score a club's match from a laptop's keyboard (``--table N`` for a
club with several tables; default table 1).

Single keys on a terminal (no Enter needed); when stdin is not a terminal (a pipe, a test)
it reads one key or command per line instead, so the same tool scripts well:

    printf 'a\\na\\nk\\nu\\nq\\n' | rallycast score --club demo --player1 Ann --player2 Bob

It shows every snapshot it receives and the service's answer to each command it sends.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TextIO

from scorer import topics
from scorer.client import (
    RESEND,
    ConnectFailed,
    NoReply,
    NotConnected,
    ScoreClient,
    add_url_flag,
    join_urls,
    resolve_address,
    shorthand_to_command,
)
from scorer.config import Settings, default_data_dir, load_settings
from scorer.engine import ENDED_STATUSES
from scorer.rules import BEST_OF_CHOICES

PASSWORD_ENV = "RALLYCAST_PASSWORD"

# key -> (command, what it does)
KEYS: dict[str, tuple[dict[str, Any], str]] = {
    "a": ({"cmd": "point", "side": 1}, "+1 side 1"),
    "z": ({"cmd": "point", "side": 1, "delta": -1}, "-1 side 1"),
    "k": ({"cmd": "point", "side": 2}, "+1 side 2"),
    "m": ({"cmd": "point", "side": 2, "delta": -1}, "-1 side 2"),
    "u": ({"cmd": "undo"}, "undo the latest change"),
    "r": ({"cmd": "redo"}, "redo what undo took back"),
    "t": ({"cmd": "timeout", "side": 1}, "timeout side 1"),
    "y": ({"cmd": "timeout", "side": 2}, "timeout side 2"),
    "e": ({"cmd": "expedite"}, "expedite system on"),
    "X": ({"cmd": "end"}, "abandon the match"),
}
QUIT_KEYS = {"q", "\x04"}  # q or Ctrl-D
NEW_MATCH_KEY = "n"
HELP_KEYS = {"h", "?"}


def help_text() -> str:
    keys = "  ".join(f"{key}={what}" for key, (_, what) in KEYS.items())
    return f"keys: {keys}  {NEW_MATCH_KEY}=new match  h=help  q=quit"


def format_snapshot(snapshot: dict[str, Any] | None) -> str:
    """One line for a snapshot: what a scorer glances at."""
    if not snapshot:
        return "no match"
    data = snapshot.get("game_data") or {}
    games_won = snapshot.get("games_won") or [0, 0]
    line = (
        f"{data.get('player1')} {data.get('score1')} : {data.get('score2')} {data.get('player2')}"
        f"  | game {snapshot.get('game_no')} of best of {snapshot.get('best_of')}"
        f", games {games_won[0]}-{games_won[1]}"
    )
    status = snapshot.get("status")
    if status in ENDED_STATUSES:
        winner = data.get("winner")
        line += f"  | match {status}" + (f", winner {winner}" if winner else "")
    else:
        line += f"  | serves: {snapshot.get('server_player') or 'side ' + str(data.get('server'))}"
        if status == "between_games":
            line += " (next game)"
    return line + f"  [rev {snapshot.get('rev')}]"


class Screen:
    """Prints from two threads (keys here, snapshots from paho) without mixing lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()


def start_command(args: argparse.Namespace, player1: str, player2: str) -> dict[str, Any]:
    command: dict[str, Any] = {
        "cmd": "start",
        "best_of": args.best_of,
        "first_server": args.first_server,
    }
    if args.doubles:
        command["game_type"] = "double"
        command["players1"] = [name.strip() for name in player1.split("/")]
        command["players2"] = [name.strip() for name in player2.split("/")]
    else:
        command["game_type"] = "single"
        command["player1"], command["player2"] = player1, player2
    if args.force:
        command["force"] = True
    return command


def ask(prompt: str, default: str = "") -> str:
    answer = input(f"{prompt}{f' [{default}]' if default else ''}: ").strip()
    return answer or default


def ask_choice(prompt: str, choices: tuple[int, ...], default: int) -> int:
    """One of ``choices``, asked again until the answer is one."""
    while True:
        answer = ask(f"{prompt} ({', '.join(map(str, choices))})", str(default))
        try:
            value = int(answer)
        except ValueError:
            value = None
        if value in choices:
            return value
        print(f"{answer!r} is not one of {', '.join(map(str, choices))}; try again")


def prompt_start(
    args: argparse.Namespace, current: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Ask for a new match's players (terminal only); None when the scorer declines.
    ``current`` is the club's snapshot: with a match in progress the first question is
    whether to replace it (a start with ``force``), before any name is asked."""
    if current and current.get("status") not in ENDED_STATUSES:
        question = f"a match is in progress ({format_snapshot(current)}); replace it? (y/n)"
        if ask(question, "n").lower() not in ("y", "yes"):
            return None
        args.force = True
    elif ask("start a new match? (y/n)", "y").lower() not in ("y", "yes"):
        return None
    args.doubles = ask("singles or doubles? (s/d)", "s").lower().startswith("d")
    hint = " (two names: Ann / Ada)" if args.doubles else ""
    player1 = ask(f"side 1{hint}")
    player2 = ask(f"side 2{hint}")
    args.best_of = ask_choice("best of", BEST_OF_CHOICES, args.best_of)
    args.first_server = ask_choice("first server", (1, 2), args.first_server)
    return start_command(args, player1, player2)


@contextmanager
def single_keys(stream: TextIO) -> Iterator[None]:
    """Terminal in cbreak mode (keys arrive without Enter, output unchanged)."""
    import termios
    import tty

    saved = termios.tcgetattr(stream.fileno())
    try:
        tty.setcbreak(stream.fileno())
        yield
    finally:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)


def read_inputs(stream: TextIO, interactive: bool) -> Iterator[str]:
    """Keys from a terminal, or whole lines (a key, a shorthand like ``1+``, or JSON)."""
    if interactive:
        while True:
            key = stream.read(1)
            if not key:
                return
            yield key
    else:
        for line in stream:
            text = line.strip()
            if text:
                yield text


def command_for(entry: str) -> dict[str, Any] | str | None:
    """The command an input stands for; a str is an error message; None = not a command."""
    if entry in KEYS:
        return dict(KEYS[entry][0])
    if entry.startswith("{"):
        try:
            parsed = json.loads(entry)
        except ValueError as exc:
            return f"not valid JSON: {exc}"
        return parsed if isinstance(parsed, dict) else "a JSON command must be an object"
    try:
        return shorthand_to_command(entry)
    except ValueError:
        return None


def new_password_command(settings: Settings, user: str) -> str:
    """``rallycast passwd add USER --generate``, with ``--data-dir`` when this machine's data
    dir is not the default one (a bare ``rallycast passwd`` writes to the default one)."""
    command = f"rallycast passwd add {shlex.quote(user)} --generate"
    if settings.data_dir.expanduser().resolve() != default_data_dir().resolve():
        command += f" --data-dir {shlex.quote(str(settings.data_dir))}"
    return command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--club", required=True, help="club id")
    parser.add_argument(
        "--table",
        default="1",
        help="the club's table to score (1-64, up to the club's configured tables; default 1)",
    )
    add_url_flag(parser)
    parser.add_argument("--user", help="MQTT user (default: the club id)")
    parser.add_argument("--password", help=f"MQTT password (or ${PASSWORD_ENV}; asked if missing)")
    parser.add_argument("--player1", help="side 1's player (doubles: 'Ann / Ada'); starts a match")
    parser.add_argument("--player2", help="side 2's player (doubles: 'Bob / Ben')")
    parser.add_argument("--doubles", action="store_true", help="a doubles match")
    parser.add_argument(
        "--best-of", type=int, default=1, help="games in the match (odd; default 1)"
    )
    parser.add_argument("--first-server", type=int, default=1, choices=(1, 2))
    parser.add_argument("--force", action="store_true", help="replace a match in progress")
    parser.add_argument(
        "--timeout",
        type=float,
        default=RESEND.total,
        help=f"seconds to wait (resending) for each reply (default {RESEND.total:g})",
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, overrides={"broker_url": join_urls(args.url)})
    interactive = sys.stdin.isatty()
    screen = Screen(sys.stdout)
    address = resolve_address(settings, user=args.user, password=args.password)
    password = address.password or os.environ.get(PASSWORD_ENV)
    if password is None and interactive:
        password = getpass.getpass(f"password for {address.user or args.club}: ")
    if not password:
        # Without one the broker answers only "Not authorized" (anonymous may publish nothing).
        screen.say(f"rallycast score: no password given: use --password or ${PASSWORD_ENV}")
        return 2
    if (args.player1 is None) != (args.player2 is None):
        screen.say("rallycast score: give both --player1 and --player2 (or neither)")
        return 2
    try:
        table = topics.check_table(args.table)
    except topics.BadTable as exc:
        screen.say(f"rallycast score: --table: {exc}")
        return 2
    club = settings.club(args.club)
    if club is not None and table > club.tables:
        screen.say(
            f"rallycast score: --table {table}: club {args.club} has {club.tables} table(s) in "
            f"the config; use --table 1-{club.tables}, or raise tables in its [[clubs]] entry"
        )
        return 2

    def show_snapshot(snapshot: dict[str, Any] | None) -> None:
        screen.say(format_snapshot(snapshot))

    try:
        client = ScoreClient(
            address,
            args.club,
            table=table,
            password=password,
            on_snapshot=show_snapshot,
            resend=replace(RESEND, total=args.timeout),
        )
    except ConnectFailed as exc:
        screen.say(f"rallycast score: {exc}")
        if "refused the connection" in str(exc):
            user = address.user or args.club
            screen.say(
                f"  wrong user or password? On the broker's machine, a new password for {user}:"
                f" {new_password_command(settings, user)}"
            )
        return 1

    def send(command: dict[str, Any], label: str | None = None) -> bool:
        # Done = the service's reply for this command's id; until then the client resends
        # the same id (docs/protocol.md, "End-to-end delivery").
        what = label or str(command.get("cmd"))
        try:
            reply = client.send(
                command, on_pending=lambda: screen.say(f"pending... ({what}: no reply yet)")
            )
        except ValueError as exc:  # CommandTooLarge, text that is not valid Unicode
            screen.say(f"not sent: {exc}")
            return False
        except NotConnected as exc:
            screen.say(f"not sent yet: {exc}")
            return False
        except NoReply as exc:
            screen.say(f"no reply: {exc}")
            return False
        if reply.get("ok"):
            screen.say(f"done ({what}, rev {reply.get('rev')})")
            return True
        screen.say(f"refused: {reply.get('error')}")
        return False

    with client:
        snapshot = client.wait_for_snapshot(1.0)
        if args.player1 is not None:
            send(start_command(args, args.player1, args.player2))
        elif interactive and (not snapshot or snapshot.get("status") in ENDED_STATUSES):
            command = prompt_start(args)
            if command is not None:
                send(command)
        screen.say(help_text())
        with single_keys(sys.stdin) if interactive else _nothing():
            for entry in read_inputs(sys.stdin, interactive):
                if entry in QUIT_KEYS or entry.lower() == "quit":
                    break
                if entry in HELP_KEYS:
                    screen.say(help_text())
                    continue
                if entry == NEW_MATCH_KEY and interactive:
                    with _cooked(sys.stdin):
                        command = prompt_start(args, client.snapshot)
                    if command is not None:
                        send(command)
                    continue
                command = command_for(entry)
                if command is None:
                    screen.say(f"unknown key {entry!r} ({help_text()})")
                elif isinstance(command, str):
                    screen.say(command)
                else:
                    send(command, KEYS[entry][1] if entry in KEYS else entry)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _cooked(stream: TextIO) -> Iterator[None]:
    """Normal line input for prompts while single-key mode is on."""
    import termios

    saved = termios.tcgetattr(stream.fileno())
    cooked = termios.tcgetattr(stream.fileno())
    cooked[3] |= termios.ICANON | termios.ECHO
    termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, cooked)
    try:
        yield
    finally:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)
