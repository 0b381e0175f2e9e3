"""The password file, `rallycast passwd`, the role table and the access plugin's login guards
(broker/acl.py) on their own."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from amqtt.contexts import BaseContext
from argon2 import PasswordHasher
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from broker import acl as guards
from broker import passwd as broker_passwd
from broker.acl import RallycastAccessPlugin, Role, allowed, role_of
from broker.auth import PasswordFile, PasswordFileError
from broker.limits import LOGIN_BURST, LoginThrottle

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


def test_new_hashes_use_a_profile_whose_check_stays_under_20_mib(tmp_path):
    # Each argon2 check holds its memory cost while it runs: a login flood must not grow the
    # broker by more than ARGON_SLOTS x this (docs/security.md).
    from argon2 import extract_parameters

    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set("riverside", "s3cret-Pass")
    parameters = extract_parameters(passwords.hash_of("riverside"))
    assert parameters.memory_cost <= 20 * 1024  # KiB
    assert parameters.time_cost >= 2
    assert passwords.verify("riverside", "s3cret-Pass")


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


def test_password_file_write_is_atomic_a_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "passwd"
    passwords = PasswordFile(path, FAST)
    passwords.set("club-0", "pw")
    seen: list[int] = []  # number of users in each complete file a reader saw
    problems: list[str] = []
    done = threading.Event()
    read = threading.Condition()  # notified after each read

    def reader() -> None:
        while not done.is_set():
            text = path.read_text()
            lines = text.splitlines()
            if not text.endswith("\n") or not all(
                line.startswith("club-") and ":$argon2id$" in line for line in lines
            ):
                problems.append(text)
            with read:
                seen.append(len(lines))
                read.notify_all()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for index in range(1, 30):
            # The reader has read the file as it is now (index users) before the next write,
            # however the threads are scheduled: a read that began before the last write
            # ended would not do.
            with read:
                assert read.wait_for(lambda want=[index]: seen[-1:] == want, 10), (
                    "the reader stopped"
                )
            with path.open() as before:  # held open: the old file stays, whole, unlinked
                old_text = before.read()
                passwords.set(f"club-{index}", "pw")
                before.seek(0)
                assert before.read() == old_text  # not rewritten in place...
                assert os.fstat(before.fileno()).st_nlink == 0  # ...but replaced by a rename
                assert path.stat().st_ino != os.fstat(before.fileno()).st_ino
    finally:
        done.set()
        thread.join(10)
    assert not problems, f"a reader saw a partial file: {problems[0]!r}"
    # Whole files, never an older one after a newer, and each of the 29 states seen.
    assert seen == sorted(seen) and set(range(1, 30)) <= set(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]  # no temp file left


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


def test_default_hasher_is_argon2id_with_the_owasp_profile(tmp_path):
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set("alpha", "pw")
    assert passwords.hash_of("alpha").startswith("$argon2id$v=19$m=19456,t=2,p=1$")


# -- rallycast passwd ------------------------------------------------------------------------


def passwd(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rallycast.cli", "passwd", "--data-dir", str(data_dir), *args],
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


def test_passwd_list_labels_each_user_with_the_brokers_role(tmp_path, monkeypatch, capsys):
    # the same decision as the broker's (broker.acl.role_of), not a copy of it
    users = ["rallycast-service", "riverside", "Bob", "x" * 65]
    passwords = PasswordFile(tmp_path / "passwd", FAST)
    for user in users:
        passwords.set(user, "pw")
    decided = []

    def spy(user, service_user):
        decided.append(user)
        return role_of(user, service_user)

    monkeypatch.setattr(broker_passwd, "role_of", spy)
    args = SimpleNamespace(data_dir=str(tmp_path), action="list", config=None)
    assert broker_passwd.main(args) == 0
    listed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert sorted(decided) == sorted(users)
    assert listed == {u: broker_passwd.ROLE_LABELS[role_of(u, S)] for u in users}
    assert listed["x" * 65] == "no role"


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
        ("riverside", "publish", "tele/riverside/board/RESULT", True),  # its own boards only
        ("riverside", "publish", "tele/board/RESULT", False),  # (tests/broker/test_device_topics)
        ("riverside", "subscribe", "zigbee2mqtt/riverside/#", True),
        ("riverside", "subscribe", "zigbee2mqtt/#", False),
        ("riverside", "publish", "rallycast/status/scorer", False),
        # the service
        (S, "subscribe", "clubs/+/game/cmd", True),
        (S, "subscribe", "clubs/+/game", True),
        (S, "subscribe", "clubs/#", False),
        (S, "subscribe", "shellies/#", False),  # device topics are for the club's user
        (S, "receive", "tele/riverside/board/RESULT", False),
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
        # tables (issue 12): table n >= 2 on clubs/<club>/tables/<n>/game[/...]
        (None, "subscribe", "clubs/+/tables/+/game", True),
        (None, "subscribe", "clubs/riverside/tables/+/game/events", True),
        (None, "receive", "clubs/riverside/tables/2/game", True),
        (None, "subscribe", "clubs/riverside/tables/+/game/cmd", False),
        (None, "subscribe", "clubs/riverside/tables/2/game/reply", False),
        (None, "subscribe", "clubs/+/tables/#", False),
        (None, "publish", "clubs/riverside/tables/2/game", False),
        (None, "publish", "clubs/riverside/tables/2/game/cmd", False),
        ("riverside", "publish", "clubs/riverside/tables/2/game/cmd", True),
        ("riverside", "publish", "clubs/riverside/tables/64/game/cmd", True),
        ("riverside", "publish", "clubs/harbour/tables/2/game/cmd", False),
        ("riverside", "publish", "clubs/riverside/tables/2/game", False),
        ("riverside", "publish", "clubs/riverside/tables/2/game/reply", False),
        ("riverside", "publish", "clubs/riverside/tables/2/game/events", False),
        ("riverside", "subscribe", "clubs/riverside/tables/+/game", True),
        ("riverside", "subscribe", "clubs/riverside/tables/+/game/reply", True),
        ("riverside", "subscribe", "clubs/riverside/tables/3/game/events", True),
        ("riverside", "subscribe", "clubs/harbour/tables/2/game", False),
        ("riverside", "subscribe", "clubs/harbour/tables/+/game/reply", False),
        ("riverside", "subscribe", "clubs/+/tables/+/game", False),
        (S, "subscribe", "clubs/+/tables/+/game/cmd", True),
        (S, "subscribe", "clubs/+/tables/+/game", True),
        (S, "publish", "clubs/riverside/tables/3/game", True),
        (S, "publish", "clubs/riverside/tables/3/game/reply", True),
        (S, "publish", "clubs/riverside/tables/3/game/events", True),
        (S, "publish", "clubs/riverside/tables/3/game/cmd", False),
        # table levels are table numbers 2..64 (table 1 is clubs/<club>/game)
        ("riverside", "publish", "clubs/riverside/tables/1/game/cmd", False),
        ("riverside", "publish", "clubs/riverside/tables/02/game/cmd", False),
        ("riverside", "publish", "clubs/riverside/tables/65/game/cmd", False),
        ("riverside", "publish", "clubs/riverside/tables/two/game/cmd", False),
        (S, "publish", "clubs/riverside/tables//game", False),
        (S, "publish", "clubs/riverside/tables/+/game", False),
        # a named user without a role
        ("Admin", "subscribe", "clubs/+/game", False),
        ("Admin", "subscribe", "clubs/+/tables/+/game", False),
        ("Admin", "publish", "clubs/admin/game/cmd", False),
    ],
)
def test_role_table(user, action, topic, expected):
    assert decide(user, action, topic) is expected


# -- the access plugin's login guards --------------------------------------------------------


class CountingPasswords(PasswordFile):
    """A PasswordFile that counts argon2 verifications and can hold them (to fill the slots)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, FAST)
        self.checks = 0
        self.release = threading.Event()
        self.release.set()

    def verify_hash(self, hashed: str, password: str) -> bool:
        self.checks += 1
        self.release.wait(10)
        return super().verify_hash(hashed, password)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def access_plugin(tmp_path: Path) -> tuple[RallycastAccessPlugin, CountingPasswords, FakeClock]:
    passwords = CountingPasswords(tmp_path / "passwd")
    passwords.set("alpha", "right")
    context = BaseContext()
    context.config = RallycastAccessPlugin.Config(password_file=str(passwords.path))
    plugin = RallycastAccessPlugin(context)
    plugin._passwords = passwords
    plugin.throttle.clock = clock = FakeClock()
    return plugin, passwords, clock


def login(
    plugin: RallycastAccessPlugin,
    user: str | None,
    password: str | None = None,
    will=None,
    *,
    address: str = "192.0.2.1",
    will_retain: bool = False,
):
    session = SimpleNamespace(
        username=user,
        password=password,
        is_anonymous=None,
        will_flag=will is not None,
        will_topic=will,
        will_retain=will_retain,
        remote_address=address,
    )
    return plugin.authenticate(session=session)


async def test_a_repeated_wrong_password_costs_one_argon2_check(tmp_path):
    plugin, passwords, _clock = access_plugin(tmp_path)
    for _ in range(50):
        assert await login(plugin, "alpha", "wrong") is False
    assert passwords.checks == 1
    assert await login(plugin, "alpha", "right") is True  # right after, not locked out
    assert passwords.checks == 2


async def test_a_flood_of_wrong_passwords_is_throttled_per_address_not_per_user(tmp_path):
    # Issue 9 item 3: 20 wrong passwords a second for `demo` locked the real scorer out.
    plugin, passwords, clock = access_plugin(tmp_path)
    for attempt in range(50):
        assert await login(plugin, "alpha", f"wrong-{attempt}", address="192.0.2.66") is False
    assert passwords.checks == LOGIN_BURST  # the rest refused without argon2
    # The real scorer, from another address, logs in at once.
    assert await login(plugin, "alpha", "right", address="192.0.2.7") is True
    # The flooding address waits for its bucket: 30 a minute = one every 2 s.
    assert await login(plugin, "alpha", "wrong-x", address="192.0.2.66") is False
    assert passwords.checks == LOGIN_BURST + 1
    clock.now += 2.0
    assert await login(plugin, "alpha", "wrong-y", address="192.0.2.66") is False
    assert passwords.checks == LOGIN_BURST + 2


async def test_a_password_already_verified_logs_in_from_a_throttled_address(tmp_path):
    plugin, passwords, _clock = access_plugin(tmp_path)
    assert await login(plugin, "alpha", "right") is True
    for attempt in range(20):
        await login(plugin, "alpha", f"wrong-{attempt}")
    assert await login(plugin, "alpha", "right") is True
    assert passwords.checks == LOGIN_BURST


def test_login_throttle_refills_at_its_rate_and_forgets_the_oldest_addresses():
    clock = FakeClock()
    throttle = LoginThrottle(per_minute=60, burst=3, table_size=4, clock=clock)
    assert [throttle.take("198.51.100.1") for _ in range(5)] == [True] * 3 + [False] * 2
    clock.now += 1.0  # one token a second
    assert throttle.take("198.51.100.1") is True
    assert throttle.take("198.51.100.1") is False
    for n in range(2, 10):
        throttle.take(f"198.51.100.{n}")
    assert len(throttle) == 4  # bounded
    # One IPv6 host usually holds a /64: it is one bucket.
    v6 = [throttle.take(f"2001:db8::{n:x}") for n in range(5)]
    assert v6 == [True] * 3 + [False] * 2


def test_login_throttle_with_rate_zero_is_off():
    throttle = LoginThrottle(per_minute=0)
    assert all(throttle.take("198.51.100.1") for _ in range(100))


async def test_wrong_password_memory_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(guards, "FAILED_CACHE_SIZE", 5)
    plugin, _passwords, _clock = access_plugin(tmp_path)
    for attempt in range(20):
        await login(plugin, "alpha", f"wrong-{attempt}", address=f"198.51.100.{attempt}")
    assert len(plugin._failed) == 5


async def test_logins_beyond_the_argon2_queue_are_refused_at_once(tmp_path):
    plugin, passwords, _clock = access_plugin(tmp_path)
    passwords.release.clear()  # every argon2 check hangs until released
    busy = guards.ARGON_SLOTS + guards.ARGON_QUEUE
    waiting = [
        asyncio.ensure_future(login(plugin, "alpha", f"pw-{n}", address=f"198.51.100.{n}"))
        for n in range(busy)
    ]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await login(plugin, "alpha", "right") is False
    # At once: a queued login would wait until the release below (forever); 1 s is only
    # room for a loaded machine (2 cores, 4 test workers) to schedule this process.
    assert time.monotonic() - started < 1.0
    assert passwords.checks == guards.ARGON_SLOTS  # the queued ones wait for a slot
    passwords.release.set()
    assert await asyncio.gather(*waiting) == [False] * busy
    assert await login(plugin, "alpha", "right") is True  # room again


async def test_unknown_user_or_empty_password_never_reaches_argon2(tmp_path):
    plugin, passwords, _clock = access_plugin(tmp_path)
    assert await login(plugin, "nobody", "x") is False
    assert await login(plugin, "alpha", "") is False
    assert passwords.checks == 0


@pytest.mark.parametrize(
    ("user", "password", "will", "expected"),
    [
        (None, None, None, True),
        (None, None, "clubs/alpha/game", False),
        (None, None, "rallycast/status/scorer", False),
        ("alpha", "right", "clubs/beta/game/cmd", False),
        ("alpha", "right", "clubs/alpha/game", False),
        ("alpha", "right", "clubs/alpha/game/cmd", True),
        ("alpha", "right", "tele/alpha/board/LWT", True),  # its own device topics only
        ("alpha", "right", "tele/beta/board/LWT", False),
        ("alpha", "right", "tele/board/LWT", False),
        ("alpha", "wrong", "clubs/alpha/game/cmd", False),
        (S, "svc", "rallycast/status/scorer", True),
        (S, "svc", "clubs/alpha/game/cmd", False),
        (S, "svc", "clubs/Bad_Id/game", False),
    ],
)
async def test_a_last_will_is_checked_like_a_publish(tmp_path, user, password, will, expected):
    plugin, passwords, _clock = access_plugin(tmp_path)
    passwords.set(S, "svc")
    assert await login(plugin, user, password, will) is expected


async def test_a_retained_last_will_on_a_command_topic_is_refused(tmp_path):
    # Issue 9 item 7: a retained command replays on every restart; a will is no way around.
    plugin, _passwords, _clock = access_plugin(tmp_path)
    will = "clubs/alpha/game/cmd"
    assert await login(plugin, "alpha", "right", will, will_retain=False) is True
    assert await login(plugin, "alpha", "right", will, will_retain=True) is False


# -- tables: the role table holds for every table of every club (issue 12) ----------------------

CLUB_IDS = st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True).filter(lambda c: c != S)


@settings(max_examples=300, deadline=None)
@given(club=CLUB_IDS, other=CLUB_IDS, table=st.integers(1, 64))
def test_every_table_of_a_club_is_its_scorers_alone_and_every_snapshot_is_public(
    club: str, other: str, table: int
) -> None:
    from scorer import topics

    assume(club != other)
    game = topics.game(club, table)
    # The club's scorer: commands and replies of every table of its own club only.
    assert decide(club, "publish", game + "/cmd")
    assert decide(club, "subscribe", game + "/reply")
    assert decide(club, "subscribe", game)
    assert not decide(other, "publish", game + "/cmd")
    assert not decide(other, "subscribe", game + "/reply")
    assert not decide(other, "receive", game)
    # Only the service writes snapshots, replies and events; it never sends commands.
    for suffix in ("", "/reply", "/events"):
        assert decide(S, "publish", game + suffix)
        assert not decide(club, "publish", game + suffix)
        assert not decide(None, "publish", game + suffix)
    assert not decide(S, "publish", game + "/cmd")
    assert decide(S, "receive", game + "/cmd")
    # Spectators read every table's snapshot and events, never its commands or replies.
    assert decide(None, "receive", game) and decide(None, "receive", game + "/events")
    assert not decide(None, "receive", game + "/cmd")
    assert not decide(None, "receive", game + "/reply")
    # The two filters that follow every table of a club.
    assert all(decide(None, "subscribe", f) for f in topics.club_game_filters(club))


@settings(max_examples=200, deadline=None)
@given(club=CLUB_IDS, level=st.text(min_size=0, max_size=4))
def test_a_table_level_the_scheme_does_not_have_is_refused_to_everyone(
    club: str, level: str
) -> None:
    from scorer import topics

    topic = f"clubs/{club}/tables/{level}/game"
    assume("/" not in level and "#" not in level and "+" not in level)
    is_table = topics.table_of(topic) is not None
    for user, action, suffix in (
        (club, "publish", "/cmd"),
        (S, "publish", ""),
        (None, "receive", ""),
    ):
        assert decide(user, action, topic + suffix) is is_table, (user, topic)
