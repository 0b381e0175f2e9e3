"""``rallycast score``: keys in (lines from a pipe when stdin is not a terminal), commands out,
snapshots and refusals shown. Through the real command line against a real broker + service."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

import pytest

from rallycast.cli import build_parser
from scorer import terminal
from scorer.client import ScoreClient
from scorer.config import Club
from scorer.engine import Match
from scorer.terminal import KEYS, command_for, format_snapshot, prompt_start
from tests.scorer.servicekit import ROOT, current_snapshot, service_running, wait_for

ANN_BOB = ("--player1", "Ann", "--player2", "Bob")  # the players of a new match


def score_argv(endpoint, *flags: str, password: str | None = None) -> list[str]:
    """``rallycast score`` words for club alpha on ``endpoint``, then ``flags``."""
    return [
        "score",
        "--club",
        "alpha",
        "--url",
        f"mqtt://{endpoint.host}:{endpoint.mqtt_port}",
        "--password",
        password or endpoint.users["alpha"],
        *flags,
    ]


def run_score(
    endpoint, *flags: str, keys: str, password: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    command = [
        sys.executable,
        "-m",
        "rallycast.cli",
        *score_argv(endpoint, *flags, password=password),
    ]
    return subprocess.run(
        command, input=keys, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


@pytest.fixture
def service(amqtt_broker, tmp_path):
    with service_running(amqtt_broker, tmp_path / "service") as running:
        yield running


def test_keys_from_a_pipe_score_a_match_and_show_snapshots_and_refusals(amqtt_broker, service):
    result = run_score(
        amqtt_broker,
        *ANN_BOB,
        "--best-of",
        "3",
        keys='a\na\nk\nu\nm\n2+\n{"cmd": "point", "side": 3}\nq\na\n',
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "done (start, rev 1)" in out
    assert "Ann 2 : 1 Bob" in out  # a a k
    assert "refused: " in out and "side" in out  # -1 at 0 for side 2, then side 3
    assert out.count("refused: ") == 2
    snapshot = current_snapshot(amqtt_broker, "alpha")
    # a a k u m(refused) 2+ -> 2:1; the "a" after q was never sent
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (2, 1)
    assert snapshot["rev"] == 6


def test_without_players_it_follows_the_current_match(amqtt_broker, service):
    run_score(amqtt_broker, *ANN_BOB, keys="k\nq\n")
    result = run_score(amqtt_broker, keys="k\nt\nt\n")  # ends at end of input, no q needed
    assert result.returncode == 0, result.stderr
    assert "Ann 0 : 1 Bob" in result.stdout  # the retained snapshot it joined with
    assert "Ann 0 : 2 Bob" in result.stdout
    assert "refused: " in result.stdout  # the second timeout of side 1
    assert current_snapshot(amqtt_broker, "alpha")["timeouts_used"] == [1, 0]


def test_table_flag_scores_that_table_of_the_club(amqtt_broker, tmp_path):
    clubs = (Club("alpha", tables=2),)
    with service_running(amqtt_broker, tmp_path / "service", clubs=clubs):
        result = run_score(
            amqtt_broker, "--table", "2", "--player1", "Cy", "--player2", "Di", keys="a\nk\nk\n"
        )
        assert result.returncode == 0, result.stderr
        assert "done (start, rev 1)" in result.stdout and "Cy 1 : 2 Di" in result.stdout
        on_two = current_snapshot(amqtt_broker, "alpha", table=2)
        assert (on_two["table"], on_two["rev"], on_two["game_data"]["player1"]) == (2, 4, "Cy")
        assert current_snapshot(amqtt_broker, "alpha", timeout=0.5) is None  # table 1 untouched


@pytest.mark.parametrize("table", ["0", "65", "two", "02", "\u00b2", "\u0663", "9" * 5000])
def test_a_table_outside_1_to_64_is_refused_before_connecting(amqtt_broker, table):
    result = run_score(amqtt_broker, "--table", table, keys="q\n")
    assert result.returncode == 2
    assert "--table" in result.stdout and "1-64" in result.stdout


def test_a_table_beyond_the_configured_tables_is_refused_with_the_clubs_count(
    amqtt_broker, tmp_path
):
    config = tmp_path / "rallycast.toml"
    config.write_text('[[clubs]]\nid = "alpha"\ntables = 2\n', encoding="utf-8")
    result = run_score(amqtt_broker, "--table", "3", "--config", str(config), keys="q\n")
    assert result.returncode == 2
    assert "club alpha has 2 table(s)" in result.stdout and "--table 1-2" in result.stdout


def test_a_wrong_password_is_said_plainly(amqtt_broker):
    result = run_score(amqtt_broker, keys="q\n", password="not-it")
    assert result.returncode == 1
    assert "refused the connection" in result.stdout


def test_a_wrong_password_suggests_a_new_one_for_the_club(amqtt_broker):
    result = run_score(amqtt_broker, keys="q\n", password="not-it")
    assert "rallycast passwd add alpha --generate" in result.stdout


def test_no_password_is_said_before_connecting(amqtt_broker):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    result = subprocess.run(
        [
            sys.executable, "-m", "rallycast.cli", "score", "--club", "alpha",
            "--url", f"mqtt://{amqtt_broker.host}:{amqtt_broker.mqtt_port}",
        ],
        input="q\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no password given: use --password or $RALLYCAST_PASSWORD" in result.stdout
    assert "Not authorized" not in result.stdout


def test_every_key_maps_to_a_command_the_engine_accepts_the_shape_of():
    from scorer.engine import parse_command

    for key, (command, _what) in KEYS.items():
        assert parse_command(command_for(key)) == parse_command(command), key
    assert command_for("1+") == {"cmd": "point", "side": 1, "delta": 1}
    assert command_for('{"cmd": "undo"}') == {"cmd": "undo"}
    assert command_for("{oops").startswith("not valid JSON")
    assert command_for("w") is None


def test_the_snapshot_line_shows_score_games_and_server():
    match = Match("m")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}, now=0)
    for _ in range(11):
        match.apply("2+", now=1)
    line = format_snapshot(match.snapshot())
    assert line.startswith("Ann 0 : 11 Bob")
    assert "game 1 of best of 3, games 0-1" in line and "(next game)" in line
    assert format_snapshot(None) == "no match"


def test_a_number_that_is_not_one_is_asked_again(monkeypatch, capsys):
    answers = iter(["y", "s", "Ann", "Bob", "three", "4", "3", "x", "2"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    args = argparse.Namespace(best_of=1, first_server=1, doubles=False, force=False)
    command = prompt_start(args)
    assert command is not None
    assert (command["best_of"], command["first_server"]) == (3, 2)
    assert (command["player1"], command["player2"]) == ("Ann", "Bob")
    assert capsys.readouterr().out.count("try again") == 3  # "three", "4" and "x"
    assert next(answers, None) is None


def test_new_match_during_a_match_asks_to_replace_it_first_and_then_forces(monkeypatch):
    match = Match("m")
    match.apply({"cmd": "start", "player1": "Ann", "player2": "Bob"}, now=0)
    args = argparse.Namespace(best_of=1, first_server=1, doubles=False, force=False)
    declined = iter(["n"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(declined))
    assert prompt_start(args, match.snapshot()) is None  # one question, not six
    assert next(declined, None) is None and not args.force
    answers = iter(["y", "s", "Cy", "Di", "1", "1"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    command = prompt_start(args, match.snapshot())
    assert command is not None and command["force"] is True
    assert (command["player1"], command["player2"]) == ("Cy", "Di")


class Keys:
    """stdin from a pipe whose lines come one by one; a callable in ``steps`` runs between
    two lines (the program has handled every line before it by then)."""

    def __init__(self, *steps) -> None:
        self.steps = steps

    def isatty(self) -> bool:
        return False

    def __iter__(self):
        for step in self.steps:
            if callable(step):
                step()
            else:
                yield step + "\n"


def test_a_key_pressed_while_the_broker_is_away_is_queued_not_a_crash(
    amqtt_broker, service, monkeypatch, capsys
):
    for name in [name for name in os.environ if name.startswith("RALLYCAST_")]:
        monkeypatch.delenv(name)
    clients: list[ScoreClient] = []

    class Recorded(ScoreClient):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            clients.append(self)

    def broker_away() -> None:
        amqtt_broker.stop()
        wait_for(lambda: not clients[0]._client.is_connected())

    def broker_back() -> None:
        amqtt_broker.start()
        wait_for(lambda: (clients[0].snapshot or {}).get("rev") == 3, timeout=20)

    monkeypatch.setattr(terminal, "ScoreClient", Recorded)
    monkeypatch.setattr(sys, "stdin", Keys("a", broker_away, "k", broker_back, "a", "q"))
    args = build_parser("score").parse_args(score_argv(amqtt_broker, *ANN_BOB, "--timeout", "1"))
    assert terminal.main(args) == 0
    out = capsys.readouterr().out
    assert "not sent yet: " in out and "queued" in out  # "k", while away
    assert "done (+1 side 1, rev 4)" in out  # the "a" after the broker came back
    snapshot = current_snapshot(amqtt_broker, "alpha")
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (2, 1)


def test_a_key_shows_pending_until_the_service_answers_then_done(amqtt_broker, tmp_path, capsys):
    # The service is down when the key is pressed: the press is resent (same id) until the
    # service, started meanwhile, answers; the scorer sees "pending..." then "done".
    started: list = []
    said: list[str] = []

    class Watching(terminal.Screen):
        def say(self, text: str) -> None:
            said.append(text)
            super().say(text)
            if text.startswith("pending...") and not started:
                running = service_running(amqtt_broker, tmp_path / "service")
                started.append(running)
                threading.Thread(target=running.__enter__).start()

    args = build_parser("score").parse_args(score_argv(amqtt_broker, *ANN_BOB, "--timeout", "20"))
    import unittest.mock as mock

    with (
        mock.patch.object(terminal, "Screen", Watching),
        mock.patch.object(sys, "stdin", Keys("a", "q")),
    ):
        try:
            assert terminal.main(args) == 0
        finally:
            for running in started:
                running.__exit__(None, None, None)
    pending = [n for n, line in enumerate(said) if line.startswith("pending...")]
    done = [n for n, line in enumerate(said) if line.startswith("done (start, rev 1)")]
    assert pending and done and pending[0] < done[0], said
    assert any(line.startswith("done (+1 side 1, rev 2)") for line in said), said


def test_a_command_that_cannot_be_sent_is_said_and_the_next_key_works(amqtt_broker, service):
    result = run_score(
        amqtt_broker,
        *ANN_BOB,
        keys='{"cmd": "server", "player": "\\ud800"}\n'
        + '{"cmd": "server", "player": "'
        + "x" * 20_000
        + '"}\na\n',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("not sent: ") == 2, result.stdout
    assert "not valid Unicode" in result.stdout and "too large" in result.stdout
    assert "done (+1 side 1, rev 2)" in result.stdout
