"""Match logs on disk: every accepted command of every match, in SQLite in the data dir.

The scorer service appends a command here BEFORE it publishes the new snapshot, so a crash
can lose at most a command nobody was told about. WAL + synchronous=FULL makes each commit
durable (fsync) before ``append`` returns. The state of a match is never stored: it is rebuilt
from its log by the rules engine (``Match.from_log``).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorer.files import create_whole

STORE_FILE_NAME = "matches.sqlite3"
# Command ids remembered per club (with the reply they got), across matches and restarts.
COMMAND_IDS_PER_CLUB = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS matches (
    match_id TEXT PRIMARY KEY,
    club_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    table_no INTEGER NOT NULL DEFAULT 1  -- the club's table it was played on (1..64)
);
CREATE TABLE IF NOT EXISTS entries (
    match_id TEXT NOT NULL REFERENCES matches(match_id),
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (match_id, seq)
);
-- Each table's current match (the one on its retained topic); no row = no match.
CREATE TABLE IF NOT EXISTS current (
    club_id TEXT NOT NULL,
    table_no INTEGER NOT NULL DEFAULT 1,
    match_id TEXT NOT NULL REFERENCES matches(match_id),
    PRIMARY KEY (club_id, table_no)
);
-- The latest command ids each club's commands carried (on any of its tables), with the reply
-- they got: a resend is answered again and applied at most once, whatever match is current now.
CREATE TABLE IF NOT EXISTS command_ids (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    club_id TEXT NOT NULL,
    command_id TEXT NOT NULL,  -- JSON of the id: 7 and "7" are two ids
    reply TEXT NOT NULL,
    UNIQUE (club_id, command_id)
);
"""

# Stores written before tables (issue 12) have ``current (club_id PRIMARY KEY, match_id)`` and
# no ``matches.table_no``: each club's current match becomes its table 1's, in one transaction.
_MIGRATE_MATCHES = "ALTER TABLE matches ADD COLUMN table_no INTEGER NOT NULL DEFAULT 1"
_MIGRATE_CURRENT = [
    "CREATE TABLE current_tables (club_id TEXT NOT NULL, table_no INTEGER NOT NULL DEFAULT 1, "
    "match_id TEXT NOT NULL REFERENCES matches(match_id), PRIMARY KEY (club_id, table_no))",
    "INSERT INTO current_tables (club_id, table_no, match_id) "
    "SELECT club_id, 1, match_id FROM current",
    "DROP TABLE current",
    "ALTER TABLE current_tables RENAME TO current",
]


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class StoredMatch:
    club_id: str
    match_id: str
    log: list[dict[str, Any]]
    table: int = 1


class MatchStore:
    """Thread-safe (one lock); meant for one process (the scorer service) per data dir.

    The data dir is made 0700 and the store's files 0600 (SQLite gives its -wal and -shm
    files the database's mode): other local users must not read the logs nor the service's
    MQTT client id."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.path = data_dir / STORE_FILE_NAME
        create_whole(self.path, _SCHEMA)  # whole or not at all: the pages read it any time
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        # The file this connection writes: a write after it was deleted or replaced (a
        # cleaner in the data dir, a restore over it) would go to a file no restart reads.
        self._identity = _identity(self.path)

    def _migrate(self) -> None:
        """Bring a store of an older schema to this one (in one transaction: a failure
        leaves the file as it was and raises sqlite3.Error)."""

        def columns(table: str) -> set[str]:
            return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

        statements = []
        if "table_no" not in columns("matches"):
            statements.append(_MIGRATE_MATCHES)
        if "table_no" not in columns("current"):
            statements.extend(_MIGRATE_CURRENT)
        if not statements:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(
        self,
        statements: list[tuple[str, tuple[Any, ...]]]
        | Callable[[], list[tuple[str, tuple[Any, ...]]]],
    ) -> None:
        """Run statements in one transaction; committed (and synced) when this returns.
        Any failure (SQLite, a text SQLite cannot encode, ...) rolls everything back and
        raises StoreError: the store is as it was."""
        with self._lock:
            try:
                if callable(statements):  # built here, so encoding errors roll back too
                    statements = statements()
                if _identity(self.path) != self._identity:
                    raise StoreError(
                        f"{self.path} was deleted or replaced while the service runs: what "
                        "it saved now would be lost at the next start (restart the service)"
                    )
                self._db.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except Exception as exc:
                try:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection is unusable; the next write says so
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

    def start_match(
        self,
        club_id: str,
        match_id: str,
        first_entry: dict[str, Any],
        *,
        table: int = 1,
        command_id: str | int | None = None,
        reply: dict[str, Any] | None = None,
    ) -> None:
        """Record a new match with its first command and make it the current one of the
        club's ``table`` (and remember ``command_id`` with its ``reply``, in the same
        transaction)."""
        self._write(
            lambda: [
                (
                    "INSERT INTO matches (match_id, club_id, created_at, table_no) "
                    "VALUES (?, ?, ?, ?)",
                    (match_id, club_id, time.time(), table),
                ),
                (
                    "INSERT INTO entries (match_id, seq, entry) VALUES (?, 1, ?)",
                    (match_id, _encode(first_entry)),
                ),
                (
                    "INSERT INTO current (club_id, table_no, match_id) VALUES (?, ?, ?) "
                    "ON CONFLICT (club_id, table_no) DO UPDATE SET match_id = excluded.match_id",
                    (club_id, table, match_id),
                ),
                *self._remember(club_id, command_id, reply),
            ]
        )

    def append(
        self,
        match_id: str,
        seq: int,
        entry: dict[str, Any],
        *,
        club_id: str | None = None,
        command_id: str | int | None = None,
        reply: dict[str, Any] | None = None,
    ) -> None:
        """Append the ``seq``-th accepted command (1-based) of a match (and remember
        ``command_id`` of ``club_id`` with its ``reply``, in the same transaction)."""
        self._write(
            lambda: [
                (
                    "INSERT INTO entries (match_id, seq, entry) VALUES (?, ?, ?)",
                    (match_id, seq, _encode(entry)),
                ),
                *self._remember(club_id, command_id, reply),
            ]
        )

    def clear_current(
        self,
        club_id: str,
        *,
        table: int = 1,
        command_id: str | int | None = None,
        reply: dict[str, Any] | None = None,
    ) -> None:
        """The club's ``table`` has no match any more; the match's log stays in the store."""
        self._write(
            lambda: [
                ("DELETE FROM current WHERE club_id = ? AND table_no = ?", (club_id, table)),
                *self._remember(club_id, command_id, reply),
            ]
        )

    def remember(self, club_id: str, command_id: str | int, reply: dict[str, Any]) -> None:
        """Remember a command id with its reply alone (a refusal: nothing else changes)."""
        self._write(lambda: self._remember(club_id, command_id, reply))

    @staticmethod
    def _remember(
        club_id: str | None, command_id: str | int | None, reply: dict[str, Any] | None
    ) -> list[tuple[str, tuple[Any, ...]]]:
        if club_id is None or command_id is None or reply is None:
            return []
        return [
            (
                "INSERT OR REPLACE INTO command_ids (club_id, command_id, reply) VALUES (?, ?, ?)",
                (club_id, command_id_key(command_id), _encode(reply)),
            ),
            (
                "DELETE FROM command_ids WHERE club_id = ? AND seq NOT IN "
                "(SELECT seq FROM command_ids WHERE club_id = ? ORDER BY seq DESC LIMIT ?)",
                (club_id, club_id, COMMAND_IDS_PER_CLUB),
            ),
        ]

    def command_replies(self, club_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The club's remembered ``(command_id_key, reply)``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT command_id, reply FROM command_ids WHERE club_id = ? ORDER BY seq",
                (club_id,),
            ).fetchall()
        return [(key, json.loads(reply)) for key, reply in rows]

    def clubs_with_command_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT club_id FROM command_ids").fetchall()
        return [club for (club,) in rows]

    def log(self, match_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT entry FROM entries WHERE match_id = ? ORDER BY seq", (match_id,)
            ).fetchall()
        return [json.loads(entry) for (entry,) in rows]

    def current_matches(self) -> list[StoredMatch]:
        with self._lock:
            rows = self._db.execute(
                "SELECT club_id, table_no, match_id FROM current ORDER BY club_id, table_no"
            ).fetchall()
        return [
            StoredMatch(club, match_id, self.log(match_id), table) for club, table, match_id in rows
        ]

    def matches_of(self, club_id: str) -> list[str]:
        """Every match id the club ever had, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT match_id FROM matches WHERE club_id = ? ORDER BY created_at, rowid",
                (club_id,),
            ).fetchall()
        return [match_id for (match_id,) in rows]


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def command_id_key(command_id: str | int) -> str:
    """How a command id is keyed: its JSON (the int 7 and the string "7" are two ids)."""
    return json.dumps(command_id, ensure_ascii=False)


def _encode(value: Any) -> str:
    """JSON text SQLite can store: a string that is not valid Unicode (a lone surrogate)
    raises here, inside the transaction, and the write is rolled back."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    return text


def new_match_id(now: float | None = None) -> str:
    """Readable, sortable, unique enough: ``20261126-151300-a1b2c3``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"
