"""``rallycast up`` under systemd: its output is the journal, so a new scorer password goes to
a file only the service's user may read, and the output says where (never the password)."""

from __future__ import annotations

import re
import stat
import subprocess
import time
from pathlib import Path

from tests.scorer.servicekit import ROOT
from tests.scorer.test_up import READY_TIMEOUT, up_command, up_env


def run_up_until_ready(command: list[str], env: dict[str, str], log: Path) -> str:
    """Start ``up``, wait for its banner, stop it with SIGTERM; returns everything it wrote."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while "Stop with Ctrl-C." not in log.read_text():
                assert process.poll() is None, f"up stopped:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"up did not start:\n{log.read_text()}"
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(10)
    return log.read_text()


def password_lines(path: Path) -> dict[str, str]:
    found = re.findall(r"^scorer login: user (\S+) password (\S+)$", path.read_text(), re.M)
    return dict(found)


def verify(data_dir: Path, user: str, password: str) -> bool:
    from broker.auth import PasswordFile

    return PasswordFile(data_dir / "passwd").verify(user, password)


def test_under_systemd_new_passwords_go_to_a_0600_file_not_to_the_journal(tmp_path):
    data_dir = tmp_path / "data"
    env = up_env(tmp_path) | {"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}
    output = run_up_until_ready(up_command(data_dir), env, tmp_path / "first.log")

    secrets_file = data_dir / "new-passwords"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    passwords = password_lines(secrets_file)
    assert list(passwords) == ["demo"]
    assert verify(data_dir, "demo", passwords["demo"]), "the file holds the real password"
    assert passwords["demo"] not in output
    assert f"written to {secrets_file}" in output
    assert f"scorer login: user demo, new password in {secrets_file}" in output

    # A second start creates no password: the file keeps the first one, nothing is added.
    again = run_up_until_ready(up_command(data_dir), env, tmp_path / "second.log")
    assert password_lines(secrets_file) == passwords
    assert "new-passwords" not in again and passwords["demo"] not in again


def test_passwords_file_flag_appends_and_tightens_the_mode(tmp_path):
    data_dir = tmp_path / "data"
    target = tmp_path / "secrets" / "noted.txt"
    target.parent.mkdir()
    target.write_text("# kept: an earlier line\n")
    target.chmod(0o644)
    command = up_command(data_dir) + ["--passwords-file", str(target)]
    output = run_up_until_ready(command, up_env(tmp_path), tmp_path / "up.log")

    assert target.read_text().startswith("# kept: an earlier line\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    password = password_lines(target)["demo"]
    assert verify(data_dir, "demo", password) and password not in output


def test_a_terminal_start_still_prints_the_password(tmp_path):
    data_dir = tmp_path / "data"
    output = run_up_until_ready(up_command(data_dir), up_env(tmp_path), tmp_path / "up.log")
    printed = re.search(r"scorer login: user demo password (\S+)", output)
    assert printed and verify(data_dir, "demo", printed.group(1))
    assert not (data_dir / "new-passwords").exists()
