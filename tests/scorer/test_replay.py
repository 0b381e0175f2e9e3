"""``rallycast replay`` through the real command line (a subprocess, as a user runs it), on
hand-written logs in tests/scorer/logs/ whose expected results are reasoned from the laws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scorer.engine import Match, Refused, fold

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path(__file__).resolve().parent / "logs"
DOUBLES_LOG = LOGS / "doubles_best_of_5.jsonl"
MISTAKES_LOG = LOGS / "singles_with_mistakes.jsonl"


def replay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "rallycast.cli", "replay", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def json_lines(output: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.decode("utf-8").splitlines()]


def serving(snapshot: dict[str, Any]) -> str:
    return f"{snapshot['server_player']}->{snapshot['receiver_player']}"


def test_full_best_of_5_doubles_match_replays_to_the_expected_final_snapshot():
    result = replay(str(DOUBLES_LOG), "--match-id", "club-final")
    assert result.returncode == 0, result.stderr.decode()
    expected = json.loads((LOGS / "doubles_best_of_5.expected.json").read_text("utf-8"))
    assert json_lines(result.stdout) == [expected]
    # the repeated id "fix" is ignored, not refused
    assert b"refused" not in result.stderr
    assert "ignored" in result.stderr.decode()


def test_each_prints_one_snapshot_per_accepted_command():
    result = replay("--each", str(DOUBLES_LOG))
    assert result.returncode == 0, result.stderr.decode()
    snapshots = json_lines(result.stdout)
    assert [snapshot["rev"] for snapshot in snapshots] == list(range(1, 100))
    assert {snapshot["match_id"] for snapshot in snapshots} == {"replay"}


# (rev, status, score, games won, "server->receiver", left side): reasoned from R4-R8 for
# the doubles log; see the comments in the log for where each rev falls.
DOUBLES_CHECKPOINTS = [
    (1, "in_progress", (0, 0), [0, 0], "Анна->Вера", 1),  # R3: first listed players
    (18, "in_progress", (8, 7), [0, 0], "Глеб->Анна", 1),  # s=15: 4th pairing of the cycle
    (22, "between_games", (11, 7), [1, 0], "Вера->Анна", 2),  # R5/R7 default, R6 ends
    (23, "between_games", (11, 7), [1, 0], "Глеб->Борис", 2),  # Глеб chosen: Борис served to him
    (45, "between_games", (9, 11), [1, 1], "Борис->Глеб", 1),  # game 3: game 2's first receiver
    (60, "between_games", (11, 4), [2, 1], "Глеб->Борис", 2),
    (77, "between_games", (6, 11), [2, 2], "Борис->Глеб", 1),  # the wrong press
    (78, "in_progress", (6, 10), [2, 1], "Глеб->Борис", 2),  # -1 reopens game 4 (s=16)
    (80, "between_games", (7, 11), [2, 2], "Борис->Глеб", 1),
    (81, "between_games", (7, 11), [2, 2], "Анна->Вера", 1),  # Вера served to Анна in game 4
    (87, "in_progress", (4, 2), [2, 2], "Глеб->Анна", 1),
    (88, "in_progress", (5, 2), [2, 2], "Глеб->Борис", 2),  # R8 + R6 at 5
    (89, "in_progress", (5, 3), [2, 2], "Борис->Вера", 2),
    (91, "in_progress", (5, 5), [2, 2], "Вера->Анна", 2),
    (92, "in_progress", (5, 4), [2, 2], "Борис->Вера", 2),  # undo
    (98, "in_progress", (10, 5), [2, 2], "Глеб->Борис", 2),
]


@pytest.mark.parametrize(("rev", "status", "score", "won", "pairing", "left"), DOUBLES_CHECKPOINTS)
def test_doubles_log_order_of_service_and_ends_at_checkpoints(
    rev, status, score, won, pairing, left
):
    snapshots = _doubles_each()
    snapshot = snapshots[rev - 1]
    assert snapshot["rev"] == rev
    assert snapshot["status"] == status
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == score
    assert snapshot["games_won"] == won
    assert serving(snapshot) == pairing
    assert snapshot["left_side"] == left


_each_cache: list[dict[str, Any]] = []


def _doubles_each() -> list[dict[str, Any]]:
    if not _each_cache:  # one subprocess for all the checkpoints
        result = replay("--each", str(DOUBLES_LOG))
        assert result.returncode == 0, result.stderr.decode()
        _each_cache.extend(json_lines(result.stdout))
    return _each_cache


def test_stdin_gives_the_same_result_as_the_file():
    from_file = replay(str(DOUBLES_LOG))
    from_stdin = replay("-", stdin=DOUBLES_LOG.read_bytes())
    assert from_stdin.returncode == 0
    assert from_stdin.stdout == from_file.stdout


def test_refused_lines_are_reported_with_their_number_and_the_exit_code_is_1():
    result = replay(str(MISTAKES_LOG))
    assert result.returncode == 1
    errors = result.stderr.decode("utf-8").splitlines()
    assert [line.split(":")[0] for line in errors] == [
        f"line {number}" for number in (5, 7, 9, 11, 13, 15)
    ]
    assert all(": refused: " in line for line in errors)
    assert (
        "line 5: refused: side 2 has no point to take back in game 1 [no_point_to_remove]" in errors
    )
    assert "line 9: refused: a match is in progress [match_in_progress]" in errors
    assert (
        "line 11: refused: side 1 has already used its timeout in this match [timeout_used]"
        in errors
    )
    assert any(line.startswith("line 15: refused: unknown field") for line in errors)
    [snapshot] = json_lines(result.stdout)  # the accepted lines still give the snapshot
    data = snapshot["game_data"]
    assert (data["score1"], data["score2"]) == (3, 2)
    assert data["player1"] == "Иван Иванов" and data["server"] == 1  # s=5: third turn, side 1
    assert snapshot["rev"] == 7 and snapshot["timeouts_used"] == [1, 0]
    # no "at" in this log: the fixed clock gives line k of commands the time k seconds
    assert snapshot["updated_at"] == "1970-01-01T00:00:12.000Z"


def test_each_skips_refused_lines():
    result = replay("--each", str(MISTAKES_LOG))
    assert result.returncode == 1
    assert [snapshot["rev"] for snapshot in json_lines(result.stdout)] == list(range(1, 8))


def test_output_is_the_same_on_every_run():
    assert replay("--each", str(MISTAKES_LOG)).stdout == replay("--each", str(MISTAKES_LOG)).stdout


def test_a_stored_match_log_replays_to_the_live_snapshot(tmp_path):
    """The service stores match.log as JSON Lines: replay must rebuild the same snapshot."""
    match = Match("live-1")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}, 1764170000.0)
    commands = ["1+", "2+", "1+", {"cmd": "expedite"}, "2-", "undo", "redo", "1-", "undo"]
    for number, command in enumerate(commands):
        match.apply(command, 1764170010.0 + number)
    path = tmp_path / "live.jsonl"
    path.write_text("".join(json.dumps(entry) + "\n" for entry in match.log), "utf-8")
    result = replay(str(path), "--match-id", "live-1")
    assert result.returncode == 0, result.stderr.decode()
    assert json_lines(result.stdout) == [match.snapshot()]


def test_an_empty_log_prints_null():
    result = replay("-", stdin=b"# nothing yet\n\n")
    assert result.returncode == 0
    assert result.stdout.strip() == b"null"


def test_a_missing_file_says_so_with_exit_code_2(tmp_path):
    missing = tmp_path / "no-such-log.jsonl"
    result = replay(str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr.decode() and "No such file" in result.stderr.decode()
    assert result.stdout == b""


def test_unreadable_input_says_so_with_exit_code_2(tmp_path):
    binary = tmp_path / "log.jsonl"
    binary.write_bytes(b'{"cmd": "start", "player1": "\xff", "player2": "B"}\n')
    result = replay(str(binary))
    assert result.returncode == 2
    assert "cannot read" in result.stderr.decode()
    assert replay(str(tmp_path)).returncode == 2  # a directory


def test_a_non_numeric_at_is_refused_on_its_line():
    log = b'{"cmd": "start", "player1": "A", "player2": "B", "at": "noon"}\n1+\n'
    result = replay("-", stdin=log)
    assert result.returncode == 1
    assert result.stderr.decode().startswith('line 1: refused: "at" must be a number')
    assert "[bad_command]" in result.stderr.decode()


# ---------------------------------------------------------------- issue 10's failing logs


def final(name: str) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    result = replay(str(LOGS / name))
    [snapshot] = json_lines(result.stdout)
    return result, snapshot


def test_undo_after_a_minus_one_takes_back_the_minus_one():
    result, snapshot = final("undo_after_minus_one.jsonl")
    assert result.returncode == 0, result.stderr.decode()
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (3, 2)
    assert snapshot["rev"] == 10 and snapshot["can_undo"] and snapshot["can_redo"]
    assert snapshot["server_player"] == "Ann"  # s = 5: third service turn, the first server's


def test_minus_one_derives_the_match_again_and_no_game_ends_9_12():
    result, snapshot = final("minus_one_derives_again_best_of_7.jsonl")
    assert result.returncode == 0, result.stderr.decode()
    assert snapshot["games"] == [[0, 11], [0, 11], [9, 11]]
    assert snapshot["games_won"] == [0, 3] and snapshot["status"] == "in_progress"
    assert snapshot["game_no"] == 4
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (0, 1)
    # R5: Bob serves first in even games; R6: after three games Bob's side is at the left
    assert snapshot["server_player"] == "Bob" and snapshot["left_side"] == 2


def test_minus_one_that_leaves_points_after_the_match_end_is_refused_and_undo_is_the_way():
    result, snapshot = final("minus_one_after_match_end.jsonl")
    assert result.returncode == 1
    assert result.stderr.decode("utf-8").splitlines() == [
        "line 29: refused: taking back side 2's point in game 1 would end the match before "
        "points that come after it: use undo to take back the latest presses first "
        "[points_after_match_end]"
    ]
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (11, 11)
    assert snapshot["status"] == "in_progress" and snapshot["server_player"] == "Ann"  # s = 22
    assert snapshot["left_side"] == 2  # R6: the one game is the last possible one: 5 reached


@pytest.mark.parametrize("path", sorted(LOGS.glob("*.jsonl")), ids=lambda path: path.name)
def test_every_log_replays_to_the_fold_of_its_accepted_entries(path):
    """The snapshot replay prints is the pure fold of the log it accepted."""
    match = Match("replay")
    clock = 0.0
    for line in path.read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            command = json.loads(line)
        except ValueError:
            command = line
        at = command.pop("at") if isinstance(command, dict) and "at" in command else None
        clock = clock + 1.0 if at is None else float(at)
        try:
            match.apply(command, clock)
        except Refused:
            pass
    assert fold("replay", match.log) == match.snapshot() == json_lines(replay(str(path)).stdout)[0]


def stored_match(data_dir: Path, club: str, match_id: str, commands: list[Any]) -> Match:
    """A match as the service stores it: each accepted command's log entry, in order."""
    from scorer.store import MatchStore

    store = MatchStore(data_dir)
    match = Match(match_id)
    try:
        for rev, command in enumerate(commands, start=1):
            match.apply(command, 1_700_000_000.0 + rev)
            if rev == 1:
                store.start_match(club, match_id, match.latest)
            else:
                store.append(match_id, rev, match.latest, club_id=club)
    finally:
        store.close()
    return match


def test_replay_club_reads_the_services_store_read_only(tmp_path):
    data_dir = tmp_path / "data"
    start = {"cmd": "start", "player1": "Ann", "player2": "Bob"}
    older = stored_match(data_dir, "demo", "m-old", [start, "1+"])
    current = stored_match(data_dir, "demo", "m-new", [start, "1+", "2+", "2+"])
    stored_match(data_dir, "other", "m-other", [start])
    store = data_dir / "matches.sqlite3"
    before = store.read_bytes()

    result = replay("--club", "demo", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [current.snapshot()]
    result = replay("--club", "demo", "--match", "m-old", "--data-dir", str(data_dir))
    assert json_lines(result.stdout) == [older.snapshot()]
    assert store.read_bytes() == before

    for args, said in (
        (["--club", "demo", "--match", "m-other"], "club demo has no match m-other"),
        (["--club", "nobody"], "club nobody has no matches"),
    ):
        result = replay(*args, "--data-dir", str(data_dir))
        assert result.returncode == 2 and said in result.stderr.decode()
    result = replay("--club", "demo", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 2 and b"no store at" in result.stderr


def test_replaying_the_store_file_itself_points_at_club(tmp_path):
    stored_match(tmp_path, "demo", "m1", [{"cmd": "start", "player1": "A", "player2": "B"}])
    result = replay(str(tmp_path / "matches.sqlite3"))
    assert result.returncode == 2
    assert b"rallycast replay --club CLUB" in result.stderr


def test_replay_club_table_reads_that_tables_current_match(tmp_path):
    from scorer.store import MatchStore

    data_dir = tmp_path / "data"
    start = {"cmd": "start", "player1": "Ann", "player2": "Bob"}
    table1 = stored_match(data_dir, "demo", "m-t1", [start, "1+"])
    store = MatchStore(data_dir)
    table2 = Match("m-t2")
    try:
        for rev, command in enumerate([start, "2+", "2+"], start=1):
            table2.apply(command, 1_700_000_100.0 + rev)
            if rev == 1:
                store.start_match("demo", "m-t2", table2.latest, table=2)
            else:
                store.append("m-t2", rev, table2.latest, club_id="demo")
    finally:
        store.close()
    for flags, expected in (([], table1), (["--table", "1"], table1), (["--table", "2"], table2)):
        result = replay("--club", "demo", *flags, "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        assert json_lines(result.stdout) == [expected.snapshot()], flags
