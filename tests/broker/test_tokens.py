"""Device tokens (issue 9, "Also"): the tokens file, the broker's login with a token, revocation
from the CLI (live connections dropped within seconds), and `passwd add` revoking a user's
tokens. Real embedded broker on loopback."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.tokens import (
    TOKEN_PREFIX,
    TokenFile,
    TokenFileError,
    device_label,
    looks_like_token,
    token_digest,
    tokens_path,
)
from rallycast.cli import main as rallycast

REVOKE_WITHIN_S = 3.0  # TOKEN_POLL_S is 1 s; the rest is slack for a busy shared machine


def tokens_of(endpoint: Any) -> TokenFile:
    return TokenFile(tokens_path(endpoint.data_dir / "passwd"))


def test_a_token_is_stored_only_as_its_hash_in_a_0600_file(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens")
    token, record = tokens.issue("alpha", "Chrome on Android")
    assert looks_like_token(token) and token.startswith(TOKEN_PREFIX)
    text = (tmp_path / "tokens").read_text()
    assert token not in text and token[len(TOKEN_PREFIX) :] not in text
    assert record.sha256 == token_digest(token) and record.sha256 in text
    assert stat.S_IMODE(os.stat(tmp_path / "tokens").st_mode) == 0o600
    assert tokens.find(token) == record
    assert tokens.find(token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_a_damaged_tokens_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("{not json")
    with pytest.raises(TokenFileError, match="not a tokens file"):
        TokenFile(tmp_path / "tokens").read()


@settings(max_examples=40, deadline=None)
@given(
    users=st.lists(st.sampled_from(["alpha", "beta", "gamma"]), min_size=1, max_size=8),
    pick=st.integers(min_value=0, max_value=7),
    every=st.booleans(),
)
def test_revoke_removes_exactly_the_chosen_tokens(
    tmp_path_factory: Any, users: list[str], pick: int, every: bool
) -> None:
    tokens = TokenFile(tmp_path_factory.mktemp("t") / "tokens")
    issued = [tokens.issue(user)[1] for user in users]
    chosen = issued[pick % len(issued)]
    removed = tokens.revoke(chosen.user, None if every else chosen.id)
    expected = [t for t in issued if t.user == chosen.user and (every or t.id == chosen.id)]
    assert removed == expected
    assert tokens.read() == [t for t in issued if t not in expected]


def test_device_labels_are_short_summaries() -> None:
    android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120 Mobile"
    assert device_label(android) == "Chrome on Android"
    assert device_label("") == "browser"
    assert len(device_label("x" * 5000)) <= 64


def test_the_broker_accepts_a_token_of_its_user_only(amqtt_broker: Any) -> None:
    token, _ = tokens_of(amqtt_broker).issue("alpha", "test")
    assert amqtt_broker.connack("alpha", token) == 0
    assert amqtt_broker.connack("beta", token) == 5  # club A's token never opens club B
    assert amqtt_broker.connack("alpha", TOKEN_PREFIX + "x" * 43) == 5  # not issued
    assert amqtt_broker.connack("alpha", amqtt_broker.users["alpha"]) == 0  # the password too


def test_a_revoked_tokens_connection_is_dropped_within_seconds(amqtt_broker: Any) -> None:
    tokens = tokens_of(amqtt_broker)
    token, record = tokens.issue("alpha", "test")
    other, _ = tokens.issue("alpha", "other phone")
    dropped = threading.Event()
    client = amqtt_broker.client("alpha", password=token)
    client.on_disconnect = lambda *args: dropped.set()
    kept = threading.Event()
    survivor = amqtt_broker.client("alpha", password=other)
    survivor.on_disconnect = lambda *args: kept.set()
    time.sleep(1.5)  # one poll of the tokens file passes with nothing revoked
    assert not dropped.is_set()
    started = time.monotonic()
    assert rallycast(["passwd", "--data-dir", str(amqtt_broker.data_dir),
                      "tokens", "revoke", "alpha", record.id]) == 0  # fmt: skip
    assert dropped.wait(REVOKE_WITHIN_S), "the revoked token's connection is still up"
    print(f"revoked token's connection dropped after {time.monotonic() - started:.2f} s")
    assert amqtt_broker.connack("alpha", token) == 5  # and it cannot log in again
    assert not kept.is_set()  # the other phone's token still works
    assert amqtt_broker.connack("alpha", other) == 0


def test_a_new_password_revokes_the_users_tokens_and_no_one_elses(
    amqtt_broker: Any, monkeypatch: Any, capsys: Any
) -> None:
    tokens = tokens_of(amqtt_broker)
    alpha, _ = tokens.issue("alpha")
    beta, _ = tokens.issue("beta")
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-password\n"))
    assert rallycast(["passwd", "--data-dir", str(amqtt_broker.data_dir),
                      "add", "alpha", "--password-stdin"]) == 0  # fmt: skip
    assert "revoked 1 device token(s) of alpha" in capsys.readouterr().err
    assert [t.user for t in tokens.read()] == ["beta"]
    assert amqtt_broker.connack("alpha", alpha) == 5
    assert amqtt_broker.connack("beta", beta) == 0
    assert amqtt_broker.connack("alpha", "a-new-password") == 0


def test_removing_a_user_ends_their_tokens(amqtt_broker: Any) -> None:
    token, _ = tokens_of(amqtt_broker).issue("alpha")
    assert rallycast(["passwd", "--data-dir", str(amqtt_broker.data_dir), "remove", "alpha"]) == 0
    assert amqtt_broker.connack("alpha", token) == 5


def watch_drop(endpoint: Any, user: str, password: str) -> threading.Event:
    """A connected client of ``user``; the event is set when its connection drops."""
    dropped = threading.Event()
    client = endpoint.client(user, password=password)
    client.on_disconnect = lambda *args: dropped.set()
    return dropped


def test_a_new_password_closes_the_connections_that_logged_in_with_the_old_one(
    amqtt_broker: Any, monkeypatch: Any
) -> None:
    # `rallycast passwd add` on a leaked password must lock the holder out now, not at the
    # holder's next reconnect.
    old = amqtt_broker.users["alpha"]
    dropped = watch_drop(amqtt_broker, "alpha", old)
    others = watch_drop(amqtt_broker, "beta", amqtt_broker.users["beta"])
    time.sleep(1.5)  # one poll of the files passes with nothing changed
    assert not dropped.is_set()
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-password\n"))
    assert rallycast(["passwd", "--data-dir", str(amqtt_broker.data_dir),
                      "add", "alpha", "--password-stdin"]) == 0  # fmt: skip
    assert dropped.wait(REVOKE_WITHIN_S), "the old password's connection is still up"
    assert amqtt_broker.connack("alpha", old) == 5
    assert amqtt_broker.connack("alpha", "a-new-password") == 0
    assert not others.is_set()  # another club's connection stays


def test_removing_a_user_closes_its_connections_by_password_and_by_token(
    amqtt_broker: Any,
) -> None:
    token, _ = tokens_of(amqtt_broker).issue("alpha")
    by_password = watch_drop(amqtt_broker, "alpha", amqtt_broker.users["alpha"])
    by_token = watch_drop(amqtt_broker, "alpha", token)
    others = watch_drop(amqtt_broker, "beta", amqtt_broker.users["beta"])
    assert rallycast(["passwd", "--data-dir", str(amqtt_broker.data_dir), "remove", "alpha"]) == 0
    assert by_password.wait(REVOKE_WITHIN_S) and by_token.wait(REVOKE_WITHIN_S)
    assert not others.is_set()


def test_tokens_list_and_revoke_say_what_they_did(amqtt_broker: Any, capsys: Any) -> None:
    tokens = tokens_of(amqtt_broker)
    _, record = tokens.issue("alpha", "Chrome on Android")
    tokens.issue("beta", "Firefox on Linux")
    data_dir = str(amqtt_broker.data_dir)
    assert rallycast(["passwd", "--data-dir", data_dir, "tokens", "list", "alpha"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{record.id}\talpha\tChrome on Android\t{record.created}\tnever"]
    assert rallycast(["passwd", "--data-dir", data_dir, "tokens", "revoke", "beta", record.id]) == 1
    assert "no device token" in capsys.readouterr().err
    assert rallycast(["passwd", "--data-dir", data_dir, "tokens", "revoke", "alpha", "nope"]) == 1
    assert "not a token id" in capsys.readouterr().err
    assert rallycast(["passwd", "--data-dir", data_dir, "tokens", "revoke", "alpha", "--all"]) == 0
    assert [t.user for t in tokens.read()] == ["beta"]


def test_the_broker_notes_when_a_token_was_last_used(amqtt_broker: Any) -> None:
    tokens = tokens_of(amqtt_broker)
    token, record = tokens.issue("alpha", "test")
    assert record.used is None
    assert amqtt_broker.connack("alpha", token) == 0
    deadline = time.monotonic() + REVOKE_WITHIN_S
    while tokens.find(token).used is None:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the broker did not note the token's use"
        time.sleep(0.1)


def test_passwd_add_refuses_a_password_that_is_a_token(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    # The broker treats a token-shaped password as a token only (no argon2 for it).
    import io

    token, _ = TokenFile(tmp_path / "tokens").issue("alpha")
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert rallycast(["passwd", "--data-dir", str(tmp_path),
                      "add", "alpha", "--password-stdin"]) == 1  # fmt: skip
    assert "that is a device token, not a password" in capsys.readouterr().err
    assert not (tmp_path / "passwd").exists()
