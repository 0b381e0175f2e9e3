"""The password file, `rallycast passwd`, and the role table (broker/acl.py) on its own."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from broker.acl import Role, allowed, role_of
from broker.auth import PasswordFile, PasswordFileError

REPO = Path(__file__).resolve().parents[2]
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


# -- PasswordFile ----------------------------------------------------------------------------


def test_password_file_stores_argon2_hashes_never_the_password(tmp_path):
    passwords = PasswordFile(tmp_path / "passwd", FAST)
    passwords.set("riverside", "s3cret-Pass")
    text = (tmp_path / "passwd").read_text()
    assert "s3cret-Pass" not in text
    assert text.startswith("riverside:$argon2id$")
    assert passwords.verify("riverside", "s3cret-Pass")
    assert not passwords.verify("riverside", "s3cret-pass")
    assert not passwords.verify("nobody", "s3cret-Pass")


def test_password_file_is_private_to_its_owner(tmp_path):
    passwords = PasswordFile(tmp_path / "passwd", FAST)
    passwords.set("alpha", "pw")
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600


def test_password_file_set_replaces_and_remove_deletes(tmp_path):
    passwords = PasswordFile(tmp_path / "passwd", FAST)
    passwords.set("alpha", "one")
    passwords.set("beta", "two")
    passwords.set("alpha", "three")
    assert passwords.users() == ["alpha", "beta"]
    assert passwords.verify("alpha", "three") and not passwords.verify("alpha", "one")
    assert passwords.remove("alpha") is True
    assert passwords.remove("alpha") is False
    assert passwords.users() == ["beta"]


def test_password_file_write_is_atomic_no_temp_files_left(tmp_path):
    passwords = PasswordFile(tmp_path / "passwd", FAST)
    for index in range(5):
        passwords.set(f"club-{index}", "pw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


def test_missing_password_file_means_no_users(tmp_path):
    passwords = PasswordFile(tmp_path / "absent", FAST)
    assert passwords.users() == []
    assert not passwords.verify("alpha", "pw")


@pytest.mark.parametrize("user", ["", "a:b", "has space", "tab\tname"])
def test_bad_user_names_are_refused(tmp_path, user):
    with pytest.raises(PasswordFileError):
        PasswordFile(tmp_path / "passwd", FAST).set(user, "pw")


def test_empty_password_is_refused(tmp_path):
    with pytest.raises(PasswordFileError):
        PasswordFile(tmp_path / "passwd", FAST).set("alpha", "")


def test_malformed_line_names_the_file_and_line(tmp_path):
    (tmp_path / "passwd").write_text("alpha:$argon2id$x\ngarbage\n")
    with pytest.raises(PasswordFileError, match="line 2"):
        PasswordFile(tmp_path / "passwd").users()


def test_default_hasher_is_argon2id_with_rfc9106_parameters(tmp_path):
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set("alpha", "pw")
    assert passwords.hash_of("alpha").startswith("$argon2id$v=19$m=65536,t=3,p=4$")


# -- rallycast passwd ------------------------------------------------------------------------


def passwd(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorer.cli", "passwd", "--data-dir", str(data_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_passwd_add_from_stdin_then_list_and_remove(tmp_path):
    result = passwd(tmp_path, "add", "riverside", "--password-stdin", stdin="pw-one\n")
    assert result.returncode == 0, result.stderr
    assert "pw-one" not in result.stdout + result.stderr
    assert PasswordFile(tmp_path / "passwd").verify("riverside", "pw-one")
    passwd(tmp_path, "add", "rallycast-service", "--password-stdin", stdin="pw-two\n")
    listed = passwd(tmp_path, "list")
    assert listed.stdout.splitlines() == ["rallycast-service\tservice", "riverside\tclub scorer"]
    assert passwd(tmp_path, "remove", "riverside").returncode == 0
    assert passwd(tmp_path, "remove", "riverside").returncode == 1
    assert PasswordFile(tmp_path / "passwd").users() == ["rallycast-service"]


def test_passwd_generate_prints_the_new_password_once_and_it_verifies(tmp_path):
    result = passwd(tmp_path, "add", "alpha", "--generate")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("password for"))
    password = line.split(": ", 1)[1]
    assert len(password) >= 20
    assert PasswordFile(tmp_path / "passwd").verify("alpha", password)


def test_passwd_warns_about_a_user_without_a_role(tmp_path):
    result = passwd(tmp_path, "add", "Bob", "--password-stdin", stdin="pw\n")
    assert result.returncode == 0
    assert "no rights" in result.stderr


# -- the role table --------------------------------------------------------------------------

S = "rallycast-service"


def decide(user: str | None, action: str, topic: str) -> bool:
    return allowed(user, role_of(user, S), action, topic)


def test_roles_follow_the_user_name():
    assert role_of(None, S) is Role.ANONYMOUS
    assert role_of("", S) is Role.ANONYMOUS
    assert role_of(S, S) is Role.SERVICE
    assert role_of("riverside", S) is Role.CLUB
    assert role_of("Riverside", S) is Role.NONE


@pytest.mark.parametrize(
    ("user", "action", "topic", "expected"),
    [
        # spectators
        (None, "subscribe", "clubs/riverside/game", True),
        (None, "subscribe", "clubs/+/game", True),
        (None, "subscribe", "clubs/+/game/events", True),
        (None, "subscribe", "rallycast/status/#", True),
        (None, "subscribe", "rallycast/status/scorer", True),
        (None, "subscribe", "clubs/riverside/game/cmd", False),
        (None, "subscribe", "clubs/riverside/game/reply", False),
        (None, "subscribe", "clubs/#", False),
        (None, "subscribe", "#", False),
        (None, "subscribe", "clubs/+/#", False),
        (None, "subscribe", "rallycast/#", False),
        (None, "subscribe", "tele/#", False),
        (None, "publish", "clubs/riverside/game/cmd", False),
        (None, "publish", "clubs/riverside/game", False),
        (None, "receive", "clubs/riverside/game", True),
        (None, "receive", "clubs/riverside/game/cmd", False),
        # a club user
        ("riverside", "publish", "clubs/riverside/game/cmd", True),
        ("riverside", "publish", "clubs/harbour/game/cmd", False),
        ("riverside", "publish", "clubs/riverside/game", False),
        ("riverside", "subscribe", "clubs/riverside/game", True),
        ("riverside", "subscribe", "clubs/riverside/game/reply", True),
        ("riverside", "subscribe", "clubs/riverside/game/events", True),
        ("riverside", "subscribe", "clubs/harbour/game", False),
        ("riverside", "subscribe", "clubs/+/game", False),
        ("riverside", "subscribe", "clubs/riverside/game/cmd", False),
        ("riverside", "subscribe", "rallycast/status/#", True),
        ("riverside", "publish", "tele/board/RESULT", True),
        ("riverside", "subscribe", "zigbee2mqtt/#", True),
        ("riverside", "publish", "rallycast/status/scorer", False),
        # the service
        (S, "subscribe", "clubs/+/game/cmd", True),
        (S, "subscribe", "clubs/+/game", True),
        (S, "subscribe", "clubs/#", False),
        (S, "subscribe", "shellies/#", True),
        (S, "publish", "clubs/riverside/game", True),
        (S, "publish", "clubs/riverside/game/reply", True),
        (S, "publish", "clubs/riverside/game/events", True),
        (S, "publish", "rallycast/status/scorer", True),
        (S, "publish", "clubs/riverside/game/cmd", False),
        (S, "publish", "tele/board/RESULT", False),
        # club levels must be club ids
        (S, "publish", "clubs/River_side/game", False),
        (S, "publish", "clubs//game", False),
        (S, "publish", "clubs/" + "x" * 65 + "/game", False),
        (S, "publish", "clubs/" + "x" * 64 + "/game", True),
        (None, "subscribe", "clubs//game", False),
        (None, "subscribe", "clubs/UP/game", False),
        # a named user without a role
        ("Admin", "subscribe", "clubs/+/game", False),
        ("Admin", "publish", "clubs/admin/game/cmd", False),
    ],
)
def test_role_table(user, action, topic, expected):
    assert decide(user, action, topic) is expected
