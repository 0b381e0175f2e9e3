"""Run a ``rallycast bench`` command the way a user does, for the tests of its output."""

from __future__ import annotations

import pytest

from rallycast.cli import main as rallycast
from tests.conftest import require_program


def run_bench(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    """``rallycast bench ARGS...`` (embedded amqtt against mosquitto): its exit status and
    what it printed. Skipped (a failure under CI) without mosquitto and mosquitto_passwd."""
    require_program("mosquitto")
    require_program("mosquitto_passwd")
    status = rallycast(["bench", *args])
    return status, capsys.readouterr().out
