"""Files that one part of Rallycast writes and another reads at any moment (the pages, the
broker, nats-server, the next run): each appears whole or not at all, private to its owner
(mode 0600) from its first byte.

    write_private_file(data_dir / "service.secret", secret + "\n", prefix=".secret-")
    create_whole(data_dir / "record.sqlite3", SCHEMA)   # then sqlite3.connect(...) as usual

Writing a file in place (or opening a new SQLite file with ``O_CREAT`` and then running its
schema) left a window where a reader found it empty or half made: a club page answered 500
as the service started, its record's tables not made yet. ``tests/scorer/test_files.py``
checks that nothing else in the product writes such a file."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from pathlib import Path

_COMPANIONS = ("", "-wal", "-shm", "-journal")


def write_private_file(path: Path, text: str, *, prefix: str, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically: written to a temporary file named
    ``prefix...`` beside it, fsynced, renamed over it (the directory fsynced too), mode 0600.
    A reader or a crash sees the old file or the new one, never half of one. ``durable=False``
    skips both fsyncs (a file written on every press, whose loss costs little: a crash may
    then leave the old one). Raises OSError."""
    # mkstemp creates the file with mode 0600 before anything is written into it.
    fd, temp_name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temp_name, 0o600)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def holds_database(path: Path) -> bool:
    """Whether ``path`` holds a database yet: an empty file (an older version stopped between
    creating it and its schema; :func:`create_whole` replaces it) reads as none."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def create_whole(path: Path, schema: str) -> None:
    """Make the SQLite database ``path`` (mode 0600, WAL journal) with ``schema`` (SQL
    statements) unless it holds one. It is built beside ``path`` under a temporary name and
    linked into place, so a reader sees no file or the whole schema, never part of it; when
    two creators race, the first one's file stays and the other's is dropped. An existing
    database is left as it is (its owner migrates it) but made private with its -wal/-shm;
    an empty file is replaced. Raises sqlite3.Error or OSError."""
    if holds_database(path):
        for suffix in _COMPANIONS:  # SQLite gives -wal and -shm the database's mode
            companion = Path(f"{path}{suffix}")
            if companion.exists():
                os.chmod(companion, 0o600)
        return
    empty = path.exists()  # left by an older version's O_CREAT, or a `touch`: no data in it
    building = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.new")
    os.close(os.open(building, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        db = sqlite3.connect(building, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
            db.executescript(schema)
        finally:
            db.close()  # checkpoints: everything is in the main file now
        try:
            if empty:
                os.replace(building, path)  # an empty file holds nothing to keep
            else:
                os.link(building, path)  # fails if it exists: the first creator's file stays
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: not atomic against a 2nd creator
            if not path.exists():
                os.replace(building, path)
        _fsync_dir(path.parent)
    finally:
        for suffix in _COMPANIONS:
            Path(f"{building}{suffix}").unlink(missing_ok=True)
