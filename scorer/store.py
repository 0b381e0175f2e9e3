"""Match logs on disk: every accepted command of every match, in SQLite in the data dir.

The scorer service appends a command here BEFORE it publishes the new snapshot, so a crash
can lose at most a command nobody was told about. WAL + synchronous=FULL makes each commit
durable (fsync) before ``append`` returns. The state of a match is never stored: it is rebuilt
from its log by the rules engine (``Match.from_log``).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_FILE_NAME = "matches.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS matches (
    match_id TEXT PRIMARY KEY,
    club_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    match_id TEXT NOT NULL REFERENCES matches(match_id),
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (match_id, seq)
);
-- The club's current match (the one on its retained topic); no row = no match.
CREATE TABLE IF NOT EXISTS current (
    club_id TEXT PRIMARY KEY,
    match_id TEXT NOT NULL REFERENCES matches(match_id)
);
"""


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class StoredMatch:
    club_id: str
    match_id: str
    log: list[dict[str, Any]]


class MatchStore:
    """Thread-safe (one lock); meant for one process (the scorer service) per data dir."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / STORE_FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run statements in one transaction; committed (and synced) when this returns."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"could not save to {self.path}: {exc}") from exc

    def meta(self, key: str, default_factory: Any) -> str:
        """A stored value; on first use it is created with ``default_factory()`` and kept."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row:
            return str(row[0])
        value = str(default_factory())
        self._write([("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))])
        return self.meta(key, default_factory)

    def start_match(self, club_id: str, match_id: str, first_entry: dict[str, Any]) -> None:
        """Record a new match with its first command and make it the club's current one."""
        self._write(
            [
                (
                    "INSERT INTO matches (match_id, club_id, created_at) VALUES (?, ?, ?)",
                    (match_id, club_id, time.time()),
                ),
                (
                    "INSERT INTO entries (match_id, seq, entry) VALUES (?, 1, ?)",
                    (match_id, json.dumps(first_entry, ensure_ascii=False)),
                ),
                (
                    "INSERT INTO current (club_id, match_id) VALUES (?, ?) "
                    "ON CONFLICT (club_id) DO UPDATE SET match_id = excluded.match_id",
                    (club_id, match_id),
                ),
            ]
        )

    def append(self, match_id: str, seq: int, entry: dict[str, Any]) -> None:
        """Append the ``seq``-th accepted command (1-based) of a match."""
        self._write(
            [
                (
                    "INSERT INTO entries (match_id, seq, entry) VALUES (?, ?, ?)",
                    (match_id, seq, json.dumps(entry, ensure_ascii=False)),
                )
            ]
        )

    def clear_current(self, club_id: str) -> None:
        """The club has no match any more; the match's log stays in the store."""
        self._write([("DELETE FROM current WHERE club_id = ?", (club_id,))])

    def log(self, match_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT entry FROM entries WHERE match_id = ? ORDER BY seq", (match_id,)
            ).fetchall()
        return [json.loads(entry) for (entry,) in rows]

    def current_matches(self) -> list[StoredMatch]:
        with self._lock:
            rows = self._db.execute(
                "SELECT club_id, match_id FROM current ORDER BY club_id"
            ).fetchall()
        return [StoredMatch(club, match_id, self.log(match_id)) for club, match_id in rows]

    def matches_of(self, club_id: str) -> list[str]:
        """Every match id the club ever had, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT match_id FROM matches WHERE club_id = ? ORDER BY created_at, rowid",
                (club_id,),
            ).fetchall()
        return [match_id for (match_id,) in rows]


def new_match_id(now: float | None = None) -> str:
    """Readable, sortable, unique enough: ``20261126-151300-a1b2c3``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"
