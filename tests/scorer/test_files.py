"""SQLite files that one part of Rallycast writes and another reads (scorer/dbfile.py): a
reader opens them at any moment, so a new file appears whole, with its schema, or not at
all."""

from __future__ import annotations

import ast
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scorer.files import create_whole, write_private_file
from scorer.record import RECORD_FILE_NAME, RecordReader, RecordWriter, _delete_from_store
from scorer.store import STORE_FILE_NAME, MatchStore

# Every read the pages, the API and the CLIs make of the two files (scorer/record.py).
READS: dict[str, Callable[[RecordReader], Any]] = {
    "matches": lambda r: r.matches("alpha"),
    "match": lambda r: r.match("alpha", "m1"),
    "version": lambda r: r.version("alpha"),
    "ladder_results": lambda r: r.ladder_results("alpha"),
    "players": lambda r: r.players("alpha"),
    "log": lambda r: r.log("m1"),
    "table_of": lambda r: r.table_of("m1"),
}


@pytest.mark.parametrize("left_empty", [False, True], ids=["no file", "an empty file"])
@pytest.mark.parametrize(
    ("make", "name"),
    [(MatchStore, STORE_FILE_NAME), (RecordWriter, RECORD_FILE_NAME)],
    ids=["store (scorer service)", "record (its hook)"],
)
def test_a_reader_never_sees_a_database_half_made(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path], Any],
    name: str,
    left_empty: bool,
) -> None:
    """Loop run B2 of session 7: a club page opened just as the service started answered 500
    (the record's file existed, its tables did not yet). Here every read runs in the middle of
    the creator's schema, at its first CREATE TABLE, and again once it is made; also over an
    empty file (an older version stopped between creating it and its schema)."""
    if left_empty:
        (tmp_path / name).touch(mode=0o600)
    reader = RecordReader(tmp_path)
    failures: list[str] = []
    checked: list[str] = []
    connect = sqlite3.connect

    def read_everything(when: str) -> None:
        for name, read in READS.items():
            try:
                read(reader)
            except sqlite3.Error as exc:
                failures.append(f"{when}: {name}: {exc}")
        checked.append(when)

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        if "mode=ro" not in str(args[0] if args else kwargs.get("database", "")):

            def on_statement(sql: str) -> None:
                if sql.lstrip().upper().startswith("CREATE TABLE") and not checked:
                    read_everything("mid-schema")

            db.set_trace_callback(on_statement)
        return db

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    made = make(tmp_path)
    monkeypatch.setattr(sqlite3, "connect", connect)
    read_everything("made")
    made.close()
    assert checked == ["mid-schema", "made"]
    assert failures == []


def test_the_first_creator_wins_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    errors: list[BaseException] = []

    def create(n: int) -> None:
        try:
            create_whole(path, f"CREATE TABLE IF NOT EXISTS t{n} (a INTEGER);")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    db = sqlite3.connect(path)
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master")]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert len(tables) == 1, tables  # one creator's whole schema, not a mix
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if ".new" in p.name] == []  # no file left behind


def test_an_existing_database_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE kept (a INTEGER)")
    db.execute("INSERT INTO kept VALUES (7)")
    db.commit()
    db.close()
    create_whole(path, "CREATE TABLE IF NOT EXISTS other (b TEXT);")
    db = sqlite3.connect(path)
    assert [name for (name,) in db.execute("SELECT name FROM sqlite_master")] == ["kept"]
    assert db.execute("SELECT a FROM kept").fetchall() == [(7,)]
    db.close()


def test_a_private_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "service.secret"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private_file(path, "new\n", prefix=".secret-")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["service.secret"]  # no temporary left


def test_a_file_written_on_every_press_is_not_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boards' memory is saved on paho's thread before the press goes out: an fsync there
    would delay every press (tens of ms on a Raspberry Pi's SD card)."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_private_file(tmp_path / "boards.json", "{}", prefix=".boards-", durable=False)
    assert synced == []
    write_private_file(tmp_path / "service.secret", "s\n", prefix=".secret-")
    assert len(synced) == 2  # the file, then the directory holding its new name
    assert (tmp_path / "boards.json").read_text() == "{}"


def test_deleting_from_a_store_that_is_gone_never_creates_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store removed between the check and the delete must not come back as an empty file
    (the service would then start from an empty database in its place)."""
    store = tmp_path / STORE_FILE_NAME
    monkeypatch.setattr(Path, "exists", lambda self: True)  # removed right after the check
    with pytest.raises(sqlite3.OperationalError):
        _delete_from_store(store, "alpha", ["m1"])
    monkeypatch.undo()
    assert not store.exists()


# Where the product writes a file other than through scorer/files.py, and why that is safe:
# (module, what it calls) -> reason.
IN_PLACE_WRITES = {
    ("scorer/datadir_lock.py", "os.open"): "a lock file: its text is only a hint for a loser",
    ("broker/tokens.py", "os.open"): "the token file's lock file (flock)",
    ("broker/cluster.py", "open ab"): "nats.log, appended to by the child it is handed to",
    ("rallycast/up.py", "os.open"): "new passwords, appended (never rewritten), 0600 at creation",
    ("scorer/record_cli.py", "write_text"): "the export the user asked for, at their path",
    ("rallycast/bench/launch.py", "write_text"): "a bench broker's config, before it starts",
    ("rallycast/bench/launch.py", "open wb"): "a bench broker's stdout, handed to it",
    ("rallycast/bench/launch.py", "open ab"): "a bench broker's log, handed to it",
    ("rallycast/bench/launch.py", "os.open"): "free_ports' registry: empty files and a lock",
    ("rallycast/soak.py", "write_text"): "the soak's mosquitto config, before it starts",
    ("rallycast/soak.py", "open ab"): "a soak component's log, handed to it",
    ("rallycast/soak.py", "open w"): "the soak's own record of presses, for its report",
    ("rallycast/soak.py", "sqlite3.connect"): "mode=ro: reads the service's store",
    ("rallycast/bench/record.py", "sqlite3.connect"): "a bench's store, before its pages run",
    (
        "broker/persistence.py",
        "sqlite3.connect",
    ): "the broker's own database: nothing else reads it",
    ("scorer/store.py", "sqlite3.connect"): "the service's store, once create_whole made it",
    ("scorer/record.py", "sqlite3.connect"): "the record once create_whole made it; readers ro/rw",
}
PACKAGES = ("scorer", "broker", "viewer", "rallycast")
REPO = Path(__file__).resolve().parents[2]


def file_writes(source: str) -> set[str]:
    """What a module calls that writes a file: ``write_text``, ``write_bytes``, ``os.open``,
    ``os.replace``/``os.rename``/``Path.replace``/``Path.rename``, ``open``/``Path.open``
    with a writing mode (as ``open <mode>``), ``mkstemp``, ``NamedTemporaryFile``,
    ``touch``, ``shutil.copy``/``copy2``/``copyfile``/``move``, ``sqlite3.connect``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        on_os = isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "os"
        if name in ("write_text", "write_bytes", "mkstemp", "NamedTemporaryFile"):
            found.add(name)
        elif name in ("replace", "rename") and isinstance(func, ast.Attribute):
            # os.replace(a, b) / Path.replace(b); str.replace takes two arguments and
            # dataclasses.replace keywords.
            if on_os:
                found.add(f"os.{name}")
            elif len(node.args) == 1 and not node.keywords:
                found.add(name)
        elif name == "open" and on_os:
            found.add("os.open")
        elif name == "touch" and isinstance(func, ast.Attribute):
            found.add(name)
        elif (
            name in ("copy", "copy2", "copyfile", "move")
            and getattr(getattr(func, "value", None), "id", "") == "shutil"
        ):
            found.add(name)
        elif name == "connect" and getattr(getattr(func, "value", None), "id", "") == "sqlite3":
            found.add("sqlite3.connect")  # creates the file unless its URI says mode=ro/rw
        elif name == "open":
            # open(path, mode) / Path.open(mode)
            where = 0 if isinstance(func, ast.Attribute) else 1
            modes = [a.value for a in node.args[where : where + 1] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode"
                      and isinstance(k.value, ast.Constant)]  # fmt: skip
            found.update(f"open {m}" for m in modes if any(c in str(m) for c in "wax+"))
    return found


def test_the_checker_sees_every_way_of_writing_a_file() -> None:
    source = (
        "import os\nfrom pathlib import Path\n"
        "Path('a').write_text('x')\nos.replace('a', 'b')\nopen('c', 'w')\n"
        "open('d', mode='ab')\nos.open('e', os.O_CREAT)\n'text'.replace('a', 'b')\nopen('f')\n"
        "Path('g').open('a')\nPath('h').touch()\nimport shutil, sqlite3\nshutil.copy('a', 'b')\n"
        "sqlite3.connect('i')\nPath('j').open()\n"
    )
    assert file_writes(source) == {
        "write_text", "os.replace", "open w", "open ab", "os.open", "open a", "touch", "copy",
        "sqlite3.connect",
    }  # fmt: skip


def test_nothing_else_in_the_product_writes_a_file_in_place() -> None:
    """A file another part reads (a secret, a password or token file, a config, a database)
    is written by scorer/files.py, whole or not at all; every other write is listed above
    with its reason."""
    found = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "node_modules" in path.parts or path == REPO / "scorer" / "files.py":
                continue
            module = path.relative_to(REPO).as_posix()
            found |= {(module, call) for call in file_writes(path.read_text(encoding="utf-8"))}
    assert found - set(IN_PLACE_WRITES) == set()
    assert set(IN_PLACE_WRITES) - found == set(), "listed but gone: drop it from the list"


@pytest.mark.parametrize("make", [MatchStore, RecordWriter], ids=["store", "record"])
def test_an_existing_database_readable_by_others_is_made_private(
    tmp_path: Path, make: Callable[[Path], Any]
) -> None:
    """A store or record copied in with a wide mode (a restore, an older version)."""
    made = make(tmp_path)
    made.close()
    files = [p for p in tmp_path.iterdir() if p.suffix == ".sqlite3" or "-" in p.name]
    for path in files:
        path.chmod(0o644)
    make(tmp_path).close()
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.exists()} == {
        p.name: 0o600 for p in files if p.exists()
    }
