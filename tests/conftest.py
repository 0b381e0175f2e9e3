"""Shared test plumbing. Broker fixtures (embedded amqtt and a real mosquitto on ephemeral
loopback ports) live in tests/brokers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["tests.brokers", "tests.cluster"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def require_program(path_or_name: str) -> str:
    """Path of a program the test needs. Missing: skipped on a developer's machine, but a
    failure under CI, where .ci/run installs it (a silent skip would hide a broken CI)."""
    found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{path_or_name} is not installed (./dev test installs it with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
