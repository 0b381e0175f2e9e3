"""The record of play: every finished or abandoned match, summarized for the history pages,
the API, the ladder and the export.

The scorer service's store (``matches.sqlite3``, scorer/store.py) keeps each match's log and
stays the source of truth. This module keeps a derived index next to it, ``record.sqlite3``
in the data dir: one row per ended match (players, result, times) and one row per player and
match, indexed for the pages' reads. It is rebuilt from the logs at any time
(:func:`sync`), so losing it loses nothing. Writers: the service's match-end hook
(scorer/record_hooks.py, in a background thread) and the ``rallycast matches`` /
``rallycast export`` commands; the pages open both files read-only (``mode=ro``; WAL lets
them read while the service writes).

``table_id`` is the number of the club's table the match was played on ("1", "2", ...; the
store's ``matches.table_no``); NULL for rows summarized from a store written before tables
(those were all table 1). Pages name it with ``Club.table_name(int(table_id))``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorer.engine import ENDED_STATUSES, Refused
from scorer.files import create_whole, holds_database
from scorer.stats import match_stats
from scorer.store import STORE_FILE_NAME

RECORD_FILE_NAME = "record.sqlite3"
PAGE_SIZE = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    match_id TEXT PRIMARY KEY,
    club_id TEXT NOT NULL,
    table_id TEXT,                 -- the table number as text; NULL: before tables (table 1)
    status TEXT NOT NULL,          -- finished | abandoned | open (not ended: not listed)
    started_at REAL NOT NULL,
    ended_at REAL,
    player1 TEXT NOT NULL,
    player2 TEXT NOT NULL,
    doubles INTEGER NOT NULL,
    best_of INTEGER NOT NULL,
    games_won1 INTEGER NOT NULL,
    games_won2 INTEGER NOT NULL,
    winner INTEGER,
    games TEXT NOT NULL,           -- JSON [[a, b], ...]
    duration_s REAL NOT NULL
);
-- The list reads this index only (count, order, page offset), then PAGE_SIZE rows.
CREATE INDEX IF NOT EXISTS results_listed
    ON results (club_id, ended_at DESC, match_id DESC, status)
    WHERE status IN ('abandoned', 'finished');
CREATE TABLE IF NOT EXISTS result_players (
    club_id TEXT NOT NULL,
    name TEXT NOT NULL,
    match_id TEXT NOT NULL REFERENCES results(match_id) ON DELETE CASCADE,
    side INTEGER NOT NULL,
    ended_at REAL,
    PRIMARY KEY (match_id, name)
);
CREATE INDEX IF NOT EXISTS result_players_name
    ON result_players (club_id, name, ended_at DESC, match_id DESC);
"""

ENDED = tuple(sorted(ENDED_STATUSES))
# Written out (not bound) so SQLite can use the partial index results_listed.
LISTED = "r.status IN ('abandoned', 'finished')"
assert set(ENDED) == {"abandoned", "finished"}


@dataclass(frozen=True)
class MatchRow:
    """One ended match as the list shows it. Times in seconds since the epoch."""

    match_id: str
    club_id: str
    table: str | None
    status: str
    started_at: float
    ended_at: float | None
    players: tuple[str, str]
    doubles: bool
    best_of: int
    games_won: tuple[int, int]
    winner: int | None
    games: list[list[int]]
    duration_s: float

    def as_json(self) -> dict[str, Any]:
        """The API's shape (docs/api.md): ISO-8601 UTC times."""
        return {
            "match_id": self.match_id,
            "club": self.club_id,
            "table": self.table,
            "status": self.status,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "players": list(self.players),
            "game_type": "double" if self.doubles else "single",
            "best_of": self.best_of,
            "games_won": list(self.games_won),
            "winner": self.winner,
            "games": self.games,
            "duration_s": self.duration_s,
        }


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _row(values: tuple[Any, ...]) -> MatchRow:
    (match_id, club, table, status, started, ended, p1, p2, doubles, best_of, w1, w2, winner,
     games, duration) = values  # fmt: skip
    return MatchRow(
        match_id, club, table, status, started, ended, (p1, p2), bool(doubles), best_of,
        (w1, w2), winner, json.loads(games), duration,
    )  # fmt: skip


_COLUMNS = (
    "r.match_id, r.club_id, r.table_id, r.status, r.started_at, r.ended_at, r.player1, "
    "r.player2, r.doubles, r.best_of, r.games_won1, r.games_won2, r.winner, r.games, r.duration_s"
)


def _connect_ro(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=2000")
    return db


class RecordReader:
    """Read-only queries for the pages and the API. Opens nothing until first used; a data
    dir without a record yet reads as empty. Thread-safe enough for Starlette's threadpool:
    one connection per call (SQLite's open is cheap next to a page)."""

    def __init__(self, data_dir: Path) -> None:
        self.record_path = data_dir / RECORD_FILE_NAME
        self.store_path = data_dir / STORE_FILE_NAME

    @contextmanager
    def _record(self) -> Iterator[sqlite3.Connection | None]:
        if not holds_database(self.record_path):
            yield None
            return
        db = _connect_ro(self.record_path)
        try:
            yield db
        finally:
            db.close()

    def matches(
        self, club_id: str, *, page: int = 1, player: str | None = None, per_page: int = PAGE_SIZE
    ) -> tuple[list[MatchRow], int]:
        """The club's ended matches, newest first: (rows of ``page`` (1-based), total count)."""
        with self._record() as db:
            if db is None:
                return [], 0
            offset = max(page - 1, 0) * per_page
            if player:
                # The player's index gives the order; each row's status comes from its match.
                keys = (
                    "SELECT p.match_id FROM result_players p JOIN results r "
                    "ON r.match_id = p.match_id WHERE p.club_id = ? AND p.name = ? "
                    f"AND {LISTED} ORDER BY p.ended_at DESC, p.match_id DESC"
                )
                params: tuple[Any, ...] = (club_id, player)
            else:
                keys = (
                    f"SELECT r.match_id FROM results r WHERE r.club_id = ? AND {LISTED} "
                    "ORDER BY r.ended_at DESC, r.match_id DESC"
                )
                params = (club_id,)
            total = db.execute(f"SELECT count(*) FROM ({keys})", params).fetchone()[0]
            # The page's keys from the index alone, then only those rows.
            page_keys = db.execute(f"{keys} LIMIT ? OFFSET ?", (*params, per_page, offset))
            wanted = [key for (key,) in page_keys]
            by_id = {
                row[0]: row
                for row in db.execute(
                    f"SELECT {_COLUMNS} FROM results r WHERE r.match_id IN "
                    f"({','.join('?' * len(wanted))})",
                    wanted,
                )
            }
            rows = [by_id[key] for key in wanted if key in by_id]
        return [_row(row) for row in rows], int(total)

    def match(self, club_id: str, match_id: str) -> MatchRow | None:
        with self._record() as db:
            if db is None:
                return None
            row = db.execute(
                f"SELECT {_COLUMNS} FROM results r WHERE r.match_id = ? AND r.club_id = ? "
                f"AND r.status IN ({','.join('?' * len(ENDED))})",
                (match_id, club_id, *ENDED),
            ).fetchone()
        return _row(row) if row else None

    def table_of(self, match_id: str) -> int | None:
        """The club's table the match was played on, from the service's store; None when
        the store does not say (no such match, or a store from before tables)."""
        if not holds_database(self.store_path):
            return None
        db = _connect_ro(self.store_path)
        try:
            row = db.execute(
                "SELECT table_no FROM matches WHERE match_id = ?", (match_id,)
            ).fetchone()
        except sqlite3.OperationalError:  # no table_no column: the service migrates it
            return None
        finally:
            db.close()
        return int(row[0]) if row and row[0] is not None else None

    def log(self, match_id: str) -> list[dict[str, Any]]:
        """The match's log from the service's store (read-only)."""
        if not holds_database(self.store_path):
            return []
        db = _connect_ro(self.store_path)
        try:
            rows = db.execute(
                "SELECT entry FROM entries WHERE match_id = ? ORDER BY seq", (match_id,)
            ).fetchall()
        finally:
            db.close()
        return [json.loads(entry) for (entry,) in rows]

    def players(self, club_id: str, prefix: str = "", limit: int = 50) -> list[str]:
        """Names the club has used (most recent first), for the start form's autocomplete."""
        with self._record() as db:
            if db is None:
                return []
            rows = db.execute(
                "SELECT name FROM result_players WHERE club_id = ? AND name LIKE ? ESCAPE '\\' "
                "GROUP BY name ORDER BY max(ended_at) DESC LIMIT ?",
                (club_id, _like_prefix(prefix), limit),
            ).fetchall()
        return [name for (name,) in rows]

    def head_to_head(self, club_id: str, name: str) -> list[dict[str, Any]]:
        """``[{"opponent", "won", "lost"}]`` of ``name``'s finished singles, most played first."""
        with self._record() as db:
            if db is None:
                return []
            rows = db.execute(
                "SELECT CASE WHEN p.side = 1 THEN r.player2 ELSE r.player1 END AS opponent, "
                "sum(r.winner = p.side), sum(r.winner != p.side) "
                "FROM result_players p JOIN results r ON r.match_id = p.match_id "
                "WHERE p.club_id = ? AND p.name = ? AND r.status = 'finished' AND r.doubles = 0 "
                "GROUP BY opponent ORDER BY count(*) DESC, opponent",
                (club_id, name),
            ).fetchall()
        return [{"opponent": o, "won": int(w), "lost": int(lost)} for o, w, lost in rows]

    def ladder_results(self, club_id: str) -> list[tuple[str, str, int]]:
        """Finished singles in the order they ended: ``(player1, player2, winner side)``."""
        with self._record() as db:
            if db is None:
                return []
            rows = db.execute(
                "SELECT player1, player2, winner FROM results WHERE club_id = ? "
                "AND status = 'finished' AND doubles = 0 ORDER BY ended_at, match_id",
                (club_id,),
            ).fetchall()
        return [(p1, p2, int(w)) for p1, p2, w in rows]

    def version(self, club_id: str) -> tuple[int, float]:
        """(count, latest end) of the club's ended matches: changes when the ladder may."""
        with self._record() as db:
            if db is None:
                return (0, 0.0)
            count, latest = db.execute(
                "SELECT count(*), coalesce(max(r.ended_at), 0) FROM results r "
                f"WHERE r.club_id = ? AND {LISTED}",
                (club_id,),
            ).fetchone()
        return int(count), float(latest)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class RecordWriter:
    """Keeps record.sqlite3 in step with the store. One writer at a time per call (SQLite
    locks); safe to run while the service writes the store."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.reader = RecordReader(data_dir)
        path = data_dir / RECORD_FILE_NAME
        # Like the store: other local users read neither (0600).
        create_whole(path, _SCHEMA)  # whole or not at all: the pages read it any time
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Derived data (rebuilt from the store by sync): no fsync per match needed.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, club_id: str, match_id: str, log: list[dict[str, Any]]) -> str | None:
        """Summarize one match from its log; returns its status (None: the log is not
        readable; such a match is left out of the record)."""
        try:
            stats = match_stats(match_id, log)
        except Refused:
            return None
        status = stats["status"] if stats["status"] in ENDED_STATUSES else "open"
        table = self.reader.table_of(match_id)
        self._put(club_id, stats, status, None if table is None else str(table))
        return status

    def _put(self, club_id: str, stats: dict[str, Any], status: str, table: str | None) -> None:
        games = [game["score"] for game in stats["games"]]
        ended = stats["ended_at"]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (
                    stats["match_id"], club_id, table, status, stats["started_at"], ended,
                    stats["players"][0], stats["players"][1], int(stats["doubles"]),
                    stats["best_of"], stats["games_won"][0], stats["games_won"][1],
                    stats["winner"], json.dumps(games), stats["duration_s"],
                ),
            )  # fmt: skip
            self._db.execute("DELETE FROM result_players WHERE match_id = ?", (stats["match_id"],))
            for side, names in ((1, stats["players"][0]), (2, stats["players"][1])):
                for name in names.split(" / ") if stats["doubles"] else [names]:
                    self._db.execute(
                        "INSERT OR IGNORE INTO result_players VALUES (?, ?, ?, ?, ?)",
                        (club_id, name, stats["match_id"], side, ended),
                    )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def sync(self, *, retention_days: int = 0, now: float | None = None) -> int:
        """Add every match of the store that the record lacks or holds as open (and is not a
        club's current match unless it ended), then apply the retention. Returns how many
        matches were (re)summarized."""
        store = self.reader.store_path
        if not holds_database(store):
            return 0
        db = _connect_ro(store)
        try:
            known = {m: s for m, s in self._db.execute("SELECT match_id, status FROM results")}
            todo = [
                (club, match_id)
                for match_id, club in db.execute("SELECT match_id, club_id FROM matches")
                if known.get(match_id, "open") == "open"
            ]
        finally:
            db.close()
        for club, match_id in todo:
            self.add(club, match_id, self.reader.log(match_id))
        if retention_days > 0:
            self.expire(retention_days, now=now)
        return len(todo)

    def delete(self, club_id: str, match_id: str) -> bool:
        """Remove an ended match from the record AND its log from the store. Refuses (False)
        a match that is not ended or is not the club's."""
        row = self._db.execute(
            "SELECT status FROM results WHERE match_id = ? AND club_id = ?", (match_id, club_id)
        ).fetchone()
        if row is None or row[0] not in ENDED_STATUSES:
            return False
        _delete_from_store(self.reader.store_path, club_id, [match_id])
        self._db.execute("DELETE FROM results WHERE match_id = ?", (match_id,))
        return True

    def expire(self, retention_days: int, *, now: float | None = None) -> list[str]:
        """Delete every ended match that ended more than ``retention_days`` ago."""
        cutoff = (time.time() if now is None else now) - retention_days * 86400
        rows = self._db.execute(
            f"SELECT club_id, match_id FROM results WHERE status IN "
            f"({','.join('?' * len(ENDED))}) AND ended_at < ?",
            (*ENDED, cutoff),
        ).fetchall()
        for club_id, match_id in rows:
            _delete_from_store(self.reader.store_path, club_id, [match_id])
            self._db.execute("DELETE FROM results WHERE match_id = ?", (match_id,))
        return [match_id for _, match_id in rows]


def _delete_from_store(store: Path, club_id: str, match_ids: list[str]) -> None:
    """Delete ended matches' logs from the service's store (never a club's current match)."""
    if not store.exists():
        return
    # mode=rw: a store removed meanwhile is an error here, not a new empty file.
    db = sqlite3.connect(f"{store.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("BEGIN IMMEDIATE")
        for match_id in match_ids:
            if db.execute("SELECT 1 FROM current WHERE match_id = ?", (match_id,)).fetchone():
                continue
            db.execute("DELETE FROM entries WHERE match_id = ?", (match_id,))
            db.execute(
                "DELETE FROM matches WHERE match_id = ? AND club_id = ?", (match_id, club_id)
            )
        db.execute("COMMIT")
    finally:
        db.close()
