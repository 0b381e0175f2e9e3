"""``rallycast replay FILE``: fold a match log through the rules engine and print the snapshot.

``rallycast replay --club CLUB [--match ID] [--data-dir D]`` does the same for a match in the
scorer service's store (``matches.sqlite3`` in the data dir, opened read-only, so it is safe
while the service runs): the club's current match, else its latest, unless ``--match`` names
one (``rallycast matches`` lists them).

The log is JSON Lines, one command per line: a bare command (``{"cmd": "point", "side": 1}``,
or a shorthand such as ``1+``) or a stored log entry (the same with ``"at"``, seconds since the
epoch). Blank lines and lines starting with ``#`` are skipped; ``-`` reads standard input.
Lines without ``"at"`` get a fixed clock (one second after the previous command line; the
first at epoch second 1), so the output is the same on every run.

Exit status: 0 all lines accepted; 1 some line was refused (each is reported on stderr as
``line N: refused: <reason> [<code>]``); 2 the input could not be read."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from scorer.engine import Match, Refused

DEFAULT_MATCH_ID = "replay"
CLOCK_STEP = 1.0  # seconds between lines that carry no "at"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", nargs="?", help="match log (JSON Lines); - for stdin"
    )
    parser.add_argument("--club", help="replay a match of this club from the service's store")
    parser.add_argument(
        "--match", metavar="ID", help="with --club: this match (default: current, else latest)"
    )
    parser.add_argument(
        "--table",
        type=int,
        default=1,
        help="with --club and no --match: the current match of this table (default 1)",
    )
    parser.add_argument("--data-dir", help="with --club: the data dir (default: the setting)")
    parser.add_argument(
        "--each",
        action="store_true",
        help="print the snapshot after every accepted command (JSON Lines)",
    )
    parser.add_argument(
        "--match-id",
        default=DEFAULT_MATCH_ID,
        help=f"match_id in the snapshots (default: {DEFAULT_MATCH_ID})",
    )


def main(args: argparse.Namespace) -> int:
    club = getattr(args, "club", None)
    if (args.file is None) == (club is None):
        print("rallycast replay: give a FILE or --club CLUB (not both)", file=sys.stderr)
        return 2
    match_id = args.match_id
    if club is not None:
        try:
            match_id, text = _from_store(args, club)
        except StoreNotReadable as exc:
            print(f"rallycast replay: {exc}", file=sys.stderr)
            return 2
        if args.match_id != DEFAULT_MATCH_ID:
            match_id = args.match_id
    else:
        try:
            text = _read_input(args.file)
        except (OSError, UnicodeDecodeError) as exc:
            if isinstance(exc, UnicodeDecodeError):
                reason = f"not UTF-8 text (byte {exc.start})"
                if _is_sqlite(args.file):
                    reason = (
                        "an SQLite file, not a JSON Lines log; for the service's store use"
                        " rallycast replay --club CLUB [--match ID] [--data-dir DIR]"
                    )
            else:
                reason = exc.strerror or str(exc)
            print(f"rallycast replay: cannot read {args.file}: {reason}", file=sys.stderr)
            return 2
    out = _utf8(sys.stdout)
    match = Match(match_id)
    refused = 0
    clock = 0.0
    for number, command, at in _commands(text):
        clock = clock + CLOCK_STEP if at is None else at
        try:
            if isinstance(command, BadTime):
                raise Refused(
                    '"at" must be a number: seconds since the epoch', code="bad_command", field="at"
                )
            outcome = match.apply(command, clock)
        except Refused as exc:
            refused += 1
            print(f"line {number}: refused: {exc} [{exc.code}]", file=sys.stderr)
            continue
        if outcome.duplicate:
            print(f"line {number}: ignored: its id was already accepted", file=sys.stderr)
        elif args.each:
            out.write(_json(outcome.snapshot) + "\n")
    if not args.each:
        out.write(_json(match.snapshot()) + "\n")
    out.flush()
    return 1 if refused else 0


class StoreNotReadable(RuntimeError):
    """The store, the club or the match is not there (the message says which)."""


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _from_store(args: argparse.Namespace, club: str) -> tuple[str, str]:
    """(match id, its log as JSON Lines) from the data dir's store, read-only."""
    import sqlite3

    from scorer.config import load_settings
    from scorer.record import RecordReader, _connect_ro

    data_dir = load_settings(args.config, overrides={"data_dir": args.data_dir}).data_dir
    reader = RecordReader(data_dir)
    if not reader.store_path.exists():
        raise StoreNotReadable(f"no store at {reader.store_path} (see --data-dir)")
    try:
        db = _connect_ro(reader.store_path)
        try:
            if args.match is not None:
                row = db.execute(
                    "SELECT match_id FROM matches WHERE club_id = ? AND match_id = ?",
                    (club, args.match),
                ).fetchone()
                if row is None:
                    raise StoreNotReadable(
                        f"club {club} has no match {args.match} in {reader.store_path}"
                        f" (rallycast matches list --club {club} lists the ended ones)"
                    )
            else:
                table = getattr(args, "table", 1)
                try:
                    current = db.execute(
                        "SELECT match_id FROM current WHERE club_id = ? AND table_no = ?",
                        (club, table),
                    ).fetchone()
                except sqlite3.OperationalError:  # a store from before tables: all table 1
                    current = (
                        db.execute(
                            "SELECT match_id FROM current WHERE club_id = ?", (club,)
                        ).fetchone()
                        if table == 1
                        else None
                    )
                row = (
                    current
                    or db.execute(
                        "SELECT match_id FROM matches WHERE club_id = ? "
                        "ORDER BY created_at DESC, rowid DESC LIMIT 1",
                        (club,),
                    ).fetchone()
                )
                if row is None:
                    raise StoreNotReadable(f"club {club} has no matches in {reader.store_path}")
        finally:
            db.close()
        match_id = str(row[0])
        entries = reader.log(match_id)
    except sqlite3.Error as exc:
        raise StoreNotReadable(f"cannot read {reader.store_path}: {exc}") from exc
    return match_id, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)


def _read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.buffer.read().decode("utf-8")
    with open(path, encoding="utf-8") as file:
        return file.read()


def _commands(text: str) -> Iterator[tuple[int, Any, float | None]]:
    """(line number, command, its "at" or None) for each line that holds a command. A line
    that is not JSON is passed on as text (a shorthand, or refused by the engine)."""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            command: Any = json.loads(stripped)
        except ValueError:
            yield number, stripped, None
            continue
        at = None
        if isinstance(command, dict) and "at" in command:
            command = dict(command)
            at = command.pop("at")
            if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
                yield number, BadTime(), None
                continue
            at = float(at)
        yield number, command, at


class BadTime:
    """Stands for a line whose "at" is not a time; applying it is refused."""


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _utf8(stream: TextIO) -> TextIO:
    # Names are often not ASCII (the seed's players are Иван and Петр): never fail on them.
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(encoding="utf-8")
        except (ValueError, OSError):
            pass
    return stream
