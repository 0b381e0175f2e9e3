"""The ``rallycast`` command as a user types it: a real process each time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rallycast.cli import SUBCOMMANDS
from tests.scorer.servicekit import ROOT


def rallycast(
    *args: str, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    return subprocess.run(
        [sys.executable, "-m", "rallycast.cli", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_top_help_is_whole_sentences_and_lists_every_command():
    result = rallycast("-h")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    description = text.split("options:")[0].split("...", 1)[1].strip()
    assert description.endswith(".") and description[0].isupper(), description
    for name, (_module, help_text) in SUBCOMMANDS.items():
        assert f"{name} {help_text}" in text, name
    assert "rallycast COMMAND -h" in text


HELP_COMMANDS = [[name] for name in SUBCOMMANDS] + [
    ["passwd", verb] for verb in ("add", "remove", "list")
]


@pytest.mark.parametrize("words", HELP_COMMANDS, ids=" ".join)
def test_every_command_has_working_help(words):
    result = rallycast(*words, "-h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: rallycast {' '.join(words)}"), result.stdout
    assert "--config" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_bad_setting_from_the_command_line_is_one_line_and_exit_2(tmp_path: Path):
    result = rallycast("up", "--mqtt-port", "70000", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert result.stderr == (
        "rallycast up: setting 'mqtt_port' = 70000 (from the command line): "
        "must be a port number 0-65535\n"
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "command, flag, what",
    [
        (["broker", "--mqtt-port", "{port}", "--ws-port", "0"], "--mqtt-port", "broker"),
        (["broker", "--ws-port", "{port}", "--mqtt-port", "0"], "--ws-port", "broker"),
        (["viewer", "--http-port", "{port}"], "--http-port", "web server"),
    ],
    ids=["broker-mqtt", "broker-ws", "viewer"],
)
def test_a_taken_port_is_one_sentence_not_a_traceback(tmp_path: Path, command, flag, what):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        words = [word.format(port=port) for word in command]
        if words[0] == "broker":
            words += ["--data-dir", str(tmp_path / "data")]
        result = rallycast(*words, "--bind", "127.0.0.1", env={"HOME": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"rallycast {words[0]}: port {port} is in use: stop the other {what} or pass {flag}"
    )


@pytest.mark.parametrize("where", ["flag", "env"])
def test_a_missing_config_file_points_at_the_sample(tmp_path: Path, where: str):
    missing = tmp_path / "missing.toml"
    if where == "flag":
        result = rallycast("up", "--config", str(missing), "--data-dir", str(tmp_path / "d"))
    else:
        result = rallycast("up", env={"RALLYCAST_CONFIG": str(missing)})
    assert result.returncode == 2
    assert f"config file {missing} does not exist" in result.stderr
    assert f"(a sample to copy: {ROOT / 'deploy' / 'rallycast.toml'})" in result.stderr
    assert not (tmp_path / "d").exists()


def test_a_second_scorer_on_one_data_dir_is_refused_and_a_broker_may_share_it(tmp_path: Path):
    data_dir = tmp_path / "data"
    home = {"HOME": str(tmp_path / "home")}
    # Nothing listens on this port: the first scorer keeps retrying, holding its lock.
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    scorer = ["scorer", "--url", f"mqtt://127.0.0.1:{port}", "--data-dir", str(data_dir)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    first = subprocess.Popen(
        [sys.executable, "-m", "rallycast.cli", *scorer], cwd=ROOT, env={**clean, **home},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "rallycast scorer: serving" in first.stdout.readline()
        second = rallycast(*scorer, env=home)
        assert second.returncode == 1
        assert (
            f"data dir {data_dir} is in use by rallycast scorer (pid {first.pid})" in second.stderr
        )
        assert "Traceback" not in second.stderr
        # The split layout's broker on the same machine shares the data dir.
        from scorer.datadir_lock import lock_data_dir

        lock_data_dir(data_dir, "broker", "this test").close()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=10)
