"""``./dev``'s install decisions, run for real in a copy of the script with a stand-in virtual
environment: its pip, python, ruff and rallycast only record how they were called (no network,
no packages), and stand-in ``python3``/``dpkg-query`` say the system is ready."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "{log}"\n'


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository's ./dev and pyproject.toml, with a stand-in .venv."""
    root = tmp_path / "clone"
    root.mkdir()
    shutil.copy2(ROOT / "dev", root / "dev")
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    log = tmp_path / "calls.log"
    log.touch()
    for tool in ("python", "pip", "ruff", "rallycast"):
        executable(root / ".venv" / "bin" / tool, RECORDER.format(log=log))
    system = tmp_path / "system-bin"
    executable(system / "python3", "#!/bin/sh\nexit 0\n")  # "Python >= 3.11 with venv"
    executable(system / "dpkg-query", "#!/bin/sh\necho 'install ok installed'\n")
    return root


def dev(checkout: Path, *args: str) -> list[str]:
    """Run ./dev; returns the stand-ins' calls it made."""
    log = checkout.parent / "calls.log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{checkout.parent / 'system-bin'}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(checkout / "dev"), *args], cwd=checkout, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def pip_installs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("pip install") and "-e" in call.split()]


def test_up_after_test_does_not_reinstall(checkout):
    assert pip_installs(dev(checkout, "test")) == [
        "pip install --disable-pip-version-check -e .[test]"
    ]
    calls = dev(checkout, "up")
    assert pip_installs(calls) == []
    assert calls == ["rallycast up"]


def test_test_after_up_installs_the_test_extras_once(checkout):
    assert pip_installs(dev(checkout, "up")) == ["pip install --disable-pip-version-check -e ."]
    assert pip_installs(dev(checkout, "up")) == []
    assert pip_installs(dev(checkout, "test")) == [
        "pip install --disable-pip-version-check -e .[test]"
    ]
    assert pip_installs(dev(checkout, "test")) == []
    assert pip_installs(dev(checkout, "up")) == []


def test_a_changed_dependency_list_installs_again(checkout):
    dev(checkout, "test")
    with (checkout / "pyproject.toml").open("a") as pyproject:
        pyproject.write("\n# a new dependency\n")
    assert pip_installs(dev(checkout, "up")) == ["pip install --disable-pip-version-check -e ."]
    # The old test install no longer covers anything: only the current stamp is left.
    stamps = sorted(p.name for p in (checkout / ".venv").glob(".rallycast-*"))
    assert len(stamps) == 1 and stamps[0].startswith(".rallycast-run-")
    assert pip_installs(dev(checkout, "test")) == [
        "pip install --disable-pip-version-check -e .[test]"
    ]


def test_test_runs_the_linter_and_pytest_with_its_arguments(checkout):
    calls = dev(checkout, "test", "-k", "x")
    assert calls[-2:] == ["ruff check broker scorer viewer tests", "python -m pytest -k x"]
