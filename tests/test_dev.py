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
    (root / ".venv" / ".venv-complete").touch()  # a finished `python3 -m venv`
    system = tmp_path / "system-bin"
    # "Python >= 3.11 with venv"; `python3 -m venv DIR` makes a stand-in venv and says so.
    venv_maker = "".join(
        f'  printf \'{RECORDER.format(log=log)}\' > "$3/bin/{tool}"; chmod +x "$3/bin/{tool}"\n'
        for tool in ("python", "pip", "ruff", "rallycast")
    )
    executable(
        system / "python3",
        '#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then\n'
        f'  echo "python3 -m venv $3" >> "{log}"; mkdir -p "$3/bin"\n{venv_maker}fi\nexit 0\n',
    )
    executable(system / "dpkg-query", "#!/bin/sh\necho 'install ok installed'\n")
    return root


def run_dev(
    checkout: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    log = checkout.parent / "calls.log"
    log.write_text("")
    base = {k: v for k, v in os.environ.items() if k != "RALLYCAST_TEST_WORKERS"}
    path = f"{checkout.parent / 'system-bin'}:{os.environ['PATH']}"
    env = {**base, "PATH": path, **(env or {})}
    return subprocess.run(
        ["bash", str(checkout / "dev"), *args], cwd=cwd or checkout, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def dev(
    checkout: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> list[str]:
    """Run ./dev; returns the stand-ins' calls it made."""
    result = run_dev(checkout, *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return (checkout.parent / "calls.log").read_text().splitlines()


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


def test_test_runs_the_linter_then_pytest_on_4_xdist_workers_then_the_nats_cluster_alone(
    checkout,
):
    calls = dev(checkout, "test", "-k", "x")
    assert calls[-3:] == [
        "ruff check broker rallycast scorer viewer tests",
        "python -m pytest -n 4 --dist loadgroup --nats-cluster=skip -k x",
        "python -m pytest --nats-cluster=only -k x",
    ]


def failing_python(checkout: Path, codes: dict[str, int]) -> None:
    """A stand-in python that records its call and exits with codes[the --nats-cluster value]."""
    log = checkout.parent / "calls.log"
    cases = "".join(f"  *--nats-cluster={k}*) code={v} ;;\n" for k, v in codes.items())
    executable(
        checkout / ".venv" / "bin" / "python",
        f'#!/bin/sh\necho "$(basename "$0") $*" >> "{log}"\ncode=0\n'
        f'case "$*" in\n{cases}esac\nexit $code\n',
    )


@pytest.mark.parametrize(
    ("skip", "only", "expected"),
    [(0, 0, 0), (1, 0, 1), (0, 1, 1), (0, 5, 0), (5, 0, 0), (5, 5, 5), (1, 5, 1)],
)
def test_test_fails_when_either_run_fails_and_runs_both(checkout, skip, only, expected):
    failing_python(checkout, {"skip": skip, "only": only})
    result = run_dev(checkout, "test")
    assert result.returncode == expected, result.stderr
    calls = (checkout.parent / "calls.log").read_text().splitlines()
    assert [c.split("--nats-cluster=")[1] for c in calls if "--nats-cluster" in c] == [
        "skip",
        "only",
    ]


@pytest.mark.parametrize(
    "args",
    [["-n", "2"], ["-n2"], ["--numprocesses=3"], ["-p", "no:xdist"], ["--pdb"], ["-x", "--trace"]],
)
def test_test_leaves_the_worker_count_to_arguments_that_choose_it(checkout, args):
    calls = dev(checkout, "test", *args)
    assert calls[-1] == "python -m pytest " + " ".join(args)


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ("0", ["python -m pytest tests/x.py"]),
        (
            "2",
            [
                "python -m pytest -n 2 --dist loadgroup --nats-cluster=skip tests/x.py",
                "python -m pytest --nats-cluster=only tests/x.py",
            ],
        ),
    ],
)
def test_test_takes_the_worker_count_from_rallycast_test_workers(checkout, workers, expected):
    calls = dev(checkout, "test", "tests/x.py", env={"RALLYCAST_TEST_WORKERS": workers})
    assert calls[-len(expected) :] == expected
    assert not any("pytest" in call for call in calls[: -len(expected)])


def test_test_runs_once_when_the_arguments_choose_the_nats_cluster_tests(checkout):
    calls = dev(checkout, "test", "--nats-cluster=only")
    assert calls[-1] == "python -m pytest -n 4 --dist loadgroup --nats-cluster=only"
    assert sum("pytest" in call for call in calls) == 1


@pytest.mark.parametrize("left", ["pip", "python", "nothing but a directory"])
def test_an_interrupted_venv_creation_is_made_again(checkout, left):
    """Ctrl-C during `python3 -m venv` leaves .venv without pip (or python), and no mark."""
    venv = checkout / ".venv"
    (venv / ".venv-complete").unlink()
    if left == "pip":
        (venv / "bin" / "pip").unlink()
    elif left == "python":
        (venv / "bin" / "python").unlink()
    else:
        shutil.rmtree(venv / "bin")
    calls = dev(checkout, "up")
    assert calls[0] == f"python3 -m venv {venv}"
    assert pip_installs(calls) == ["pip install --disable-pip-version-check -e ."]
    assert (venv / ".venv-complete").exists()
    assert dev(checkout, "up") == ["rallycast up"]  # recovered for good


def test_a_venv_made_before_the_mark_with_an_install_is_kept(checkout):
    dev(checkout, "up")
    (checkout / ".venv" / ".venv-complete").unlink()
    assert dev(checkout, "up") == ["rallycast up"]


def test_ctrl_c_during_pip_install_says_interrupted_not_network(checkout):
    # pip as it behaves on Ctrl-C: the terminal's SIGINT reaches ./dev too; pip exits 1.
    executable(
        checkout / ".venv" / "bin" / "pip",
        '#!/bin/sh\nkill -INT $PPID\necho "ERROR: Operation cancelled by user" >&2\nexit 1\n',
    )
    result = run_dev(checkout, "up")
    assert result.returncode != 0
    assert "interrupted; run ./dev up again" in result.stderr
    assert "network" not in result.stderr


def test_up_runs_in_the_callers_directory(checkout, tmp_path):
    """Relative --config / --data-dir / RALLYCAST_CONFIG mean the caller's directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    executable(
        checkout / ".venv" / "bin" / "rallycast",
        f'#!/bin/sh\necho "rallycast $* in $(pwd)" >> "{tmp_path / "calls.log"}"\n',
    )
    calls = dev(checkout, "up", "--config", "rallycast.toml", cwd=elsewhere)
    assert calls[-1] == f"rallycast up --config rallycast.toml in {elsewhere}"


def test_options_before_up_are_passed_to_rallycast(checkout):
    assert dev(checkout, "--config", "r.toml", "up", "--bind", "127.0.0.1")[-1] == (
        "rallycast --config r.toml up --bind 127.0.0.1"
    )
    assert dev(checkout, "--config=r.toml", "up")[-1] == "rallycast --config=r.toml up"


@pytest.mark.parametrize("args", [["upp"], ["--config", "r.toml", "upp"]])
def test_an_unknown_command_is_named(checkout, args):
    result = run_dev(checkout, *args)
    assert result.returncode == 2
    assert "unknown command: upp" in result.stderr
    assert "./dev up" in result.stderr  # and the usage


def test_no_command_prints_usage(checkout):
    result = run_dev(checkout)
    assert result.returncode == 2 and "./dev up" in result.stderr
