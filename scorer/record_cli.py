"""``rallycast export`` and ``rallycast matches``: the record of play from the command line.

    rallycast export --club riverside                       # the club's matches, CSV, stdout
    rallycast export --club riverside --format json -o riverside.json
    rallycast export --club riverside --match 20261126-151300-a1b2c3 --format json
    rallycast matches list --club riverside [--player NAME] [--page N]
    rallycast matches delete --club riverside 20261126-151300-a1b2c3
    rallycast matches sync                                  # add what the record lacks

Each command first brings the record (data_dir/record.sqlite3) up to date with the store,
then applies ``record_retention_days``. Exit status: 0 done; 1 no such match (or it is not
ended); 2 a bad setting or an unknown club. The formats: docs/history.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scorer import export
from scorer.config import ConfigError, Settings, load_settings
from scorer.record import RecordWriter
from scorer.stats import match_stats

DATA_DIR_HELP = "data dir holding matches.sqlite3 (default: the data_dir setting)"


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--club", required=True, help="the club's id")
    parser.add_argument("--match", metavar="MATCH_ID", help="one match (with its point log)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")


def configure_matches(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the club's ended matches, newest first")
    listing.add_argument("--club", required=True)
    listing.add_argument("--player")
    listing.add_argument("--page", type=int, default=1)
    delete = actions.add_parser("delete", help="delete an ended match (record and log)")
    delete.add_argument("--club", required=True)
    delete.add_argument("match_id", metavar="MATCH_ID")
    sync = actions.add_parser("sync", help="add every ended match the record lacks")
    for action in (listing, delete, sync):
        action.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)


def _open(args: argparse.Namespace) -> tuple[Settings, RecordWriter]:
    settings = load_settings(getattr(args, "config", None), overrides={"data_dir": args.data_dir})
    club = getattr(args, "club", None)
    if club is not None and settings.club(club) is None:
        known = ", ".join(c.id for c in settings.clubs)
        raise ConfigError(f"no club {club!r} in the settings (clubs: {known})")
    data_dir = Path(settings.data_dir)
    if not (data_dir / "matches.sqlite3").exists():
        raise ConfigError(f"no match store in {data_dir}: give --data-dir or set data_dir")
    writer = RecordWriter(data_dir)
    writer.sync(retention_days=settings.record_retention_days)
    return settings, writer


def export_main(args: argparse.Namespace) -> int:
    _, writer = _open(args)
    try:
        reader = writer.reader
        if args.match:
            row = reader.match(args.club, args.match)
            if row is None:
                print(f"rallycast export: no ended match {args.match!r} in club {args.club!r}"
                      " (`rallycast matches list --club CLUB` lists them)", file=sys.stderr)  # fmt: skip
                return 1
            log = reader.log(args.match)
            stats = match_stats(args.match, log)
            text = (
                export.match_csv(stats) if args.format == "csv"
                else export.match_json(row, stats, log) + "\n"
            )  # fmt: skip
        else:
            rows, _ = reader.matches(args.club, per_page=10**9)
            text = (
                export.club_csv(rows) if args.format == "csv"
                else export.club_json(args.club, rows) + "\n"
            )  # fmt: skip
    finally:
        writer.close()
    if args.output and args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8", newline="")
    else:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    return 0


def matches_main(args: argparse.Namespace) -> int:
    _, writer = _open(args)
    try:
        if args.action == "sync":
            print("the record is up to date")
            return 0
        if args.action == "delete":
            if not writer.delete(args.club, args.match_id):
                print(f"rallycast matches: no ended match {args.match_id!r} in club "
                      f"{args.club!r} (a match in progress is not deleted)", file=sys.stderr)  # fmt: skip
                return 1
            print(f"deleted {args.match_id}")
            return 0
        rows, total = writer.reader.matches(args.club, page=args.page, player=args.player)
        for row in rows:
            data = row.as_json()
            games = " ".join(f"{a}-{b}" for a, b in row.games)
            print(f"{row.match_id}\t{data['ended_at']}\t{row.status}\t{row.players[0]}\t"
                  f"{row.players[1]}\t{row.games_won[0]}:{row.games_won[1]}\t{games}")  # fmt: skip
        print(f"{total} match(es)", file=sys.stderr)
        return 0
    finally:
        writer.close()
