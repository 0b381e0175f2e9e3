"""``rallycast broker --data-dir D`` as a user runs it: its hints name D, and a second broker
on D is refused (two would share broker.db)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.scorer.servicekit import ROOT


def broker_command(data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "broker.cli", "--bind", "127.0.0.1",
        "--mqtt-port", "0", "--ws-port", "0", "--data-dir", str(data_dir),
    ]  # fmt: skip


def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    environ["HOME"] = str(tmp_path / "home")
    environ.pop("XDG_DATA_HOME", None)
    return environ


def test_no_users_hint_names_the_data_dir_and_a_second_broker_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    first = subprocess.Popen(
        broker_command(data_dir), cwd=ROOT, env=env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert first.stdout.readline().startswith("listening mqtt://")
        second = subprocess.run(
            broker_command(data_dir), cwd=ROOT, env=env(tmp_path),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert (
            f"data dir {data_dir} is in use by rallycast broker (pid {first.pid})" in second.stderr
        )
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=10)
    assert f"`rallycast passwd add USER --data-dir {data_dir}`" in stderr
