"""``rallycast up`` as a user runs it: one process, no configuration, ephemeral ports; score with
mosquitto_pub using the printed credentials, watch with mosquitto_sub; Ctrl-C stops it fast."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require_program
from tests.scorer.servicekit import ROOT

READY_TIMEOUT = 30.0  # seconds: first start hashes passwords (argon2) on a busy machine
STOP_PROMISE = 2.0


class Up:
    def __init__(self, data_dir: Path, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
        env["HOME"] = str(tmp_path / "home")  # nothing from the developer's own data dir
        self.output_path = tmp_path / f"up-{time.monotonic_ns()}.log"
        self._output = self.output_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scorer.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--bind",
                "127.0.0.1",
                "--mqtt-port",
                "0",
                "--ws-port",
                "0",
                "--http-port",
                "0",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while "Stop with Ctrl-C." not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"rallycast up did not start:\n{self.output()}")
            time.sleep(0.05)
        self.mqtt_port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", self.output()).group(1))
        self.http_url = re.search(r"club page:\s+(http://\S+)/clubs/demo", self.output()).group(1)

    def output(self) -> str:
        return self.output_path.read_text()

    def password(self) -> str | None:
        found = re.search(r"scorer login: user demo password (\S+)", self.output())
        return found.group(1) if found else None

    def interrupt(self) -> float:
        """SIGINT (Ctrl-C); returns how long it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        finally:
            self._output.close()
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._output.close()


def mosquitto_pub(up: Up, password: str, message: str) -> None:
    subprocess.run(
        [
            require_program("mosquitto_pub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(up.mqtt_port),
            "-u",
            "demo",
            "-P",
            password,
            "-q",
            "1",
            "-t",
            "clubs/demo/game/cmd",
            "-m",
            message,
        ],  # fmt: skip
        check=True,
        timeout=10,
    )


def retained_snapshot(up: Up) -> dict:
    result = subprocess.run(
        [
            require_program("mosquitto_sub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(up.mqtt_port),
            "-t",
            "clubs/demo/game",
            "-C",
            "1",
            "-W",
            "5",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_snapshot(up: Up, rev: int) -> dict:
    deadline = time.monotonic() + 10
    while True:
        snapshot = retained_snapshot(up)
        if snapshot["rev"] >= rev or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_up_scores_with_mosquitto_clients_and_stops_on_ctrl_c(tmp_path, data_dir):
    require_program("mosquitto_pub")
    up = Up(data_dir, tmp_path)
    try:
        password = up.password()
        assert password, up.output()
        assert (
            f"mosquitto_pub -h 127.0.0.1 -p {up.mqtt_port} -u demo -P '{password}'" in up.output()
        )
        for page in ("", "/score", "/display", "/overlay"):
            assert f"{up.http_url}/clubs/demo{page}" in up.output()
        with urllib.request.urlopen(f"{up.http_url}/clubs/demo", timeout=5) as response:
            assert response.status == 200

        mosquitto_pub(up, password, '{"cmd": "start", "player1": "Ann", "player2": "Bob"}')
        mosquitto_pub(up, password, "1+")
        mosquitto_pub(up, password, "1+")
        mosquitto_pub(up, password, "2+")
        snapshot = wait_for_snapshot(up, 4)
        assert snapshot["rev"] == 4
        assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (2, 1)

        took = up.interrupt()
        assert up.process.returncode == 0, up.output()
        assert took < STOP_PROMISE, f"stopping took {took:.2f} s"
    finally:
        up.kill()

    # The second start: no configuration again, credentials kept (not shown again), the
    # match restored from the store, the secret file private.
    again = Up(data_dir, tmp_path)
    try:
        assert again.password() is None
        assert "password set at first start" in again.output()
        assert wait_for_snapshot(again, 4)["rev"] == 4
        mosquitto_pub(again, password, "undo")
        assert wait_for_snapshot(again, 5)["game_data"]["score2"] == 0
        assert (data_dir / "service.secret").stat().st_mode & 0o077 == 0
        assert password not in (data_dir / "passwd").read_text()  # only its hash
        took = again.interrupt()
        assert took < STOP_PROMISE
    finally:
        again.kill()


def test_sigterm_stops_up_cleanly(tmp_path, data_dir):
    up = Up(data_dir, tmp_path)
    try:
        started = time.monotonic()
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(10) == 0
        assert time.monotonic() - started < STOP_PROMISE
    finally:
        up.kill()
