"""One logging setup (scorer/logs.py): every entry point logs in the same format, the level
is checked, and the lines say where each listener really listens. Real processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rallycast.bench.launch import embedded_command, stop_process
from scorer.config import ConfigError
from scorer.logs import setup_logging
from tests.rallycast.test_cli import rallycast
from tests.scorer.servicekit import ROOT

# scorer.logs.FORMAT as it prints: local time with milliseconds, level, logger, message.
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
)
START_TIMEOUT = 30.0


def test_an_unknown_level_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="log_level"):
        setup_logging("LOUD")


def test_setting_it_up_twice_keeps_one_handler_and_the_last_level():
    code = (
        "import logging; from scorer.logs import setup_logging;"
        "setup_logging('info'); setup_logging('WARNING');"
        "logging.getLogger('a').info('hidden'); logging.getLogger('a').warning('shown')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]) and lines[0].endswith("WARNING a: shown")


def run_until(command: list[str], wanted: re.Pattern[str], tmp_path: Path) -> str:
    """Start ``command``, wait (bounded) until its stderr has a line matching ``wanted``,
    stop it with SIGTERM; returns stdout + stderr."""
    err_path = tmp_path / f"err-{time.monotonic_ns()}"
    with err_path.open("w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not wanted.search(err_path.read_text()):
                assert process.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.05)
        finally:
            stop_process(process, grace=10)  # (stdout is a few lines: the pipe cannot fill)
            out = process.stdout.read()
            process.stdout.close()
    # Stopped at its first sign of life, it still stops cleanly (its handlers come first).
    assert process.returncode == 0, (process.returncode, err_path.read_text())
    return out, err_path.read_text()


def test_the_broker_logs_in_the_one_format_and_says_where_it_listens(tmp_path):
    out, err = run_until(
        embedded_command(tmp_path / "data"),
        re.compile(r"broker listening on"),
        tmp_path,
    )
    port = re.search(r"^listening mqtt://127\.0\.0\.1:(\d+) ", out, re.M)[1]
    assert f"(from this machine; bound to 127.0.0.1 only, port {port})" in out
    logged = [line for line in err.splitlines() if "rallycast.broker:" in line]
    assert logged and all(LINE.match(line) for line in logged), err
    assert any(f"listening on 127.0.0.1 only, MQTT port {port} and" in line for line in logged)


def test_the_viewer_logs_in_the_one_format_and_says_where_it_listens(tmp_path):
    out, err = run_until(
        [
            sys.executable,
            "-m",
            "rallycast.cli",
            "viewer",
            "--bind",
            "127.0.0.1",
            "--http-port",
            "0",
        ],
        re.compile(r"pages listening on"),
        tmp_path,
    )
    line = next(line for line in err.splitlines() if "pages listening on" in line)
    assert LINE.match(line) and "INFO rallycast.viewer: pages listening on 127.0.0.1 only" in line
    port = re.search(r"port (\d+) \(http://127\.0\.0\.1:(\d+) from this machine\)", line)
    assert port and port[1] == port[2]
    assert f"(listening on 127.0.0.1 only, port {port[1]})" in out


@pytest.mark.parametrize(
    "command",
    [["up", "--data-dir", "{d}"], ["broker", "--data-dir", "{d}"], ["viewer"],
     ["scorer", "--data-dir", "{d}"], ["passwd", "list", "--data-dir", "{d}"]],
    ids=lambda words: words[0],
)  # fmt: skip
def test_a_bad_log_level_is_one_line_for_every_entry_point(tmp_path, command):
    words = [word.format(d=tmp_path / "d") for word in command]
    result = rallycast(*words, env={"RALLYCAST_LOG_LEVEL": "LOUD", "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"rallycast {command[0]}: setting 'log_level' = 'LOUD' (from $RALLYCAST_LOG_LEVEL): "
        "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL\n"
    )
    assert not (tmp_path / "d").exists()
