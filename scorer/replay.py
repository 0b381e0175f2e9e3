"""``rallycast replay FILE``: fold a match log through the rules engine and print the snapshot.

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
    parser.add_argument("file", metavar="FILE", help="match log (JSON Lines); - for stdin")
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
    try:
        text = _read_input(args.file)
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            reason = f"not UTF-8 text (byte {exc.start})"
        else:
            reason = exc.strerror or str(exc)
        print(f"rallycast replay: cannot read {args.file}: {reason}", file=sys.stderr)
        return 2
    out = _utf8(sys.stdout)
    match = Match(args.match_id)
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
