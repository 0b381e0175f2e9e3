"""The systemd units in deploy/systemd/: valid for systemd (``systemd-analyze verify``, with
the program path pointed at this checkout's ``rallycast``), each running as the user
``rallycast`` with a restart on failure and its output in the journal, and each ``ExecStart``
a command line ``rallycast`` accepts."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scorer.cli import build_parser
from scorer.config import load_settings
from tests.conftest import require_program

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
INSTALLED_PROGRAM = "/opt/rallycast/.venv/bin/rallycast"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys keep their case
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def environment(path: Path) -> dict[str, str]:
    """The unit's Environment= lines (configparser would keep only the last one)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 2)[1:] for line in lines if line.startswith("Environment="))


def service_section(path: Path) -> configparser.SectionProxy:
    return unit(path)["Service"]


def test_there_is_a_unit_for_up_and_for_each_part_of_the_split_layout():
    assert [path.name for path in UNITS] == [
        "rallycast-buttons.service",
        "rallycast-scorer.service",
        "rallycast-viewer.service",
        "rallycast.service",
    ]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_finds_nothing_to_say(path, tmp_path):
    analyze = require_program("systemd-analyze")
    program = shutil.which("rallycast", path=str(Path(sys.executable).parent))
    if program is None:
        pytest.skip("no rallycast program next to this Python (pip install -e .)")
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(INSTALLED_PROGRAM, program))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    # verify exits 0 on an unknown key but says so: any word from it is a fault.
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_as_rallycast_restarts_on_failure_and_logs_to_the_journal(path):
    service = service_section(path)
    assert (service["User"], service["Group"]) == ("rallycast", "rallycast")
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a bad setting: restarting repeats it
    assert "StandardOutput" not in service and "StandardError" not in service  # the journal
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert environment(path)["RALLYCAST_CONFIG"] == "/etc/rallycast/rallycast.toml"
    assert unit(path)["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_the_data_dir_is_the_state_directory_private_to_rallycast(path):
    service = service_section(path)
    data_dir = environment(path).get("RALLYCAST_DATA_DIR")
    if data_dir is None:  # the viewer and the buttons keep no data
        assert "StateDirectory" not in service
        return
    assert data_dir == f"/var/lib/{service['StateDirectory']}"
    assert service["StateDirectoryMode"] == "0700"
    assert service["UMask"] == "0077"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_exec_start_is_a_command_line_rallycast_accepts(path):
    words = shlex.split(service_section(path)["ExecStart"])
    assert words[0] == INSTALLED_PROGRAM
    # The CLI's own parser (argparse exits on an unknown flag or value; nothing is run).
    args = build_parser(words[1]).parse_args(words[1:])
    assert args.command == words[1]


def test_the_two_layouts_conflict_because_they_share_ports():
    by_name = {path.name: unit(path)["Unit"] for path in UNITS}
    assert set(by_name["rallycast.service"]["Conflicts"].split()) == {
        "rallycast-scorer.service",
        "rallycast-viewer.service",
    }
    for name in ("rallycast-scorer.service", "rallycast-viewer.service"):
        assert by_name[name]["Conflicts"] == "rallycast.service"
        assert "mosquitto.service" in by_name[name]["After"].split()


def test_the_sample_config_the_units_read_is_valid():
    settings = load_settings(REPO / "deploy" / "rallycast.toml", env={})
    assert [club.id for club in settings.clubs] == ["riverside"]


def test_the_readme_installs_every_unit_and_the_sample_config():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "cp deploy/systemd/*.service /etc/systemd/system/" in readme
    assert "deploy/rallycast.toml /etc/rallycast/rallycast.toml" in readme
    for path in UNITS:
        assert path.stem in readme, f"README.md does not mention {path.stem}"


def test_rallycast_service_as_systemd_starts_it_keeps_new_passwords_out_of_the_journal(tmp_path):
    """The unit's ExecStart with its Environment= (config and data dir moved to the test's,
    ports any free one) and $INVOCATION_ID, which systemd sets: it starts, and the club's new
    password is in data_dir/new-passwords (0600), not in what would go to the journal."""
    from tests.scorer.test_up_systemd import password_lines, run_up_until_ready, verify

    path = REPO / "deploy" / "systemd" / "rallycast.service"
    words = shlex.split(service_section(path)["ExecStart"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    env |= environment(path)
    data_dir = tmp_path / "var-lib-rallycast"
    moved = {
        "/etc/rallycast/rallycast.toml": str(REPO / "deploy" / "rallycast.toml"),
        "/var/lib/rallycast": str(data_dir),
    }
    env = {name: moved.get(value, value) for name, value in env.items()}
    env |= {
        "INVOCATION_ID": "f" * 32,
        "HOME": str(tmp_path / "home"),
        "RALLYCAST_BIND": "127.0.0.1",
        "RALLYCAST_MQTT_PORT": "0",
        "RALLYCAST_WS_PORT": "0",
        "RALLYCAST_HTTP_PORT": "0",
    }
    command = [sys.executable, "-m", "scorer.cli", *words[1:]]
    journal = run_up_until_ready(command, env, tmp_path / "journal.log")

    passwords = password_lines(data_dir / "new-passwords")
    assert list(passwords) == ["riverside"]  # the sample config's club
    assert verify(data_dir, "riverside", passwords["riverside"])
    assert stat.S_IMODE((data_dir / "new-passwords").stat().st_mode) == 0o600
    assert passwords["riverside"] not in journal
