"""Nothing lost, nothing invented (issue 8, service side), through the real service on real
brokers: a text the store cannot encode, retained commands, one id applied at most once per
club across matches and restarts, the ``match`` field, the reply's shape, file modes."""

from __future__ import annotations

import json
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer import topics
from scorer.commands import parse
from scorer.engine import Match, Refused
from scorer.store import COMMAND_IDS_PER_CLUB, STORE_FILE_NAME, MatchStore
from tests.scorer.servicekit import (
    Scorer,
    Watcher,
    current_snapshot,
    fail_store_encoding,
    service_running,
    wait_for,
)

START = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}
REPLY_KEYS = {"id", "ok", "error", "code", "rev", "match_id"}


def scores(snapshot: dict) -> tuple[int, int]:
    return snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]


def stored_rev(data_dir, club: str = "alpha") -> int:
    store = MatchStore(data_dir)
    try:
        return {m.club_id: len(m.log) for m in store.current_matches()}.get(club, 0)
    finally:
        store.close()


@pytest.fixture
def alpha(any_broker):
    scorer = Scorer(any_broker, "alpha")
    yield scorer
    scorer.close()


# -- 1. a text the store cannot encode ---------------------------------------------------------


LONE_SURROGATE_PAYLOADS = [
    # The input: the id is the bad string.
    '{"cmd": "point", "side": 1, "id": "\\ud800"}',
    '{"cmd": "start", "player1": "\\udfff", "player2": "Bob", "force": true}',
    '{"cmd": "start", "game_type": "double", "players1": ["A", "\\ud83d"], '
    '"players2": ["C", "D"], "force": true}',
    '{"cmd": "server", "player": "\\ud800x"}',
    '{"cmd": "correct", "server": "\\udc00"}',
    '{"cmd": "point", "side": 1, "match": "\\ud800"}',
    '{"cmd": "point", "side": 1, "\\ud800": 1}',
    '{"cmd": "\\ud800"}',
    '{"cmd": "delete", "id": "\\ud800"}',
]


@pytest.mark.parametrize("payload", LONE_SURROGATE_PAYLOADS)
def test_a_lone_surrogate_is_refused_as_a_bad_command_and_changes_nothing(
    any_broker, tmp_path, alpha, payload
):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir):
        alpha.send(START)
        alpha.send("1+")
        before = current_snapshot(any_broker, "alpha")
        alpha.send_raw(payload)
        reply = alpha.watcher.next_json(topics.replies("alpha"))
        assert (reply["ok"], reply["code"], reply["rev"]) == (False, "bad_command", 2), reply
        assert "Unicode" in reply["error"] and reply["id"] is None
        # The next commands work and count from where the match was.
        assert alpha.send("2+")["rev"] == 3
        assert alpha.send("2+")["rev"] == 4
        after = current_snapshot(any_broker, "alpha")
        assert after["match_id"] == before["match_id"] and scores(after) == (1, 2)
    assert stored_rev(data_dir) == 4
    with service_running(any_broker, data_dir):  # the store agrees: same rev after a restart
        again = wait_for(lambda: current_snapshot(any_broker, "alpha", 0.5))
        assert (again["rev"], scores(again)) == (4, (1, 2))


def test_a_bad_string_from_one_club_does_not_fail_the_next_command_of_another(
    any_broker, tmp_path, alpha
):
    beta = Scorer(any_broker, "beta")
    try:
        with service_running(any_broker, tmp_path / "service"):
            alpha.send(START)
            beta.send(START)
            alpha.send_raw('{"cmd": "point", "side": 1, "id": "\\ud800"}')
            assert alpha.watcher.next_json(topics.replies("alpha"))["code"] == "bad_command"
            reply = beta.send({"cmd": "point", "side": 2})
            assert (reply["ok"], reply["rev"]) == (True, 2), reply
    finally:
        beta.close()


def test_any_failure_inside_a_store_write_rolls_back_and_leaves_memory_as_it_was(
    any_broker, tmp_path, alpha, monkeypatch
):
    # Not only sqlite3.Error: a TypeError from json.dumps, an encoding error, anything.
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir) as service:
        alpha.send(START)
        fail_store_encoding(
            monkeypatch,
            TypeError("not JSON serializable"),
            UnicodeEncodeError("utf-8", "", 0, 1, "x"),
        )
        for _ in range(2):
            reply = alpha.send("1+")
            assert (reply["ok"], reply["code"], reply["rev"]) == (False, "store_failed", 1)
        assert not service._store._db.in_transaction
        assert alpha.send("1+")["rev"] == 2  # the store works again: nothing was left open
        assert scores(current_snapshot(any_broker, "alpha")) == (1, 0)
    assert stored_rev(data_dir) == 2


def test_the_store_files_are_0600_and_the_data_dir_0700(any_broker, tmp_path, alpha):
    data_dir = tmp_path / "service"
    data_dir.mkdir(mode=0o755)
    with service_running(any_broker, data_dir):
        alpha.send(START)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = [p for p in data_dir.iterdir() if p.name.startswith(STORE_FILE_NAME)]
        assert len(files) >= 2  # the database and its WAL
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# -- 2. retained commands ----------------------------------------------------------------------


def test_a_retained_command_counts_once_live_and_never_again_on_restarts(
    mosquitto_broker, tmp_path
):
    broker = mosquitto_broker
    data_dir = tmp_path / "service"
    alpha = Scorer(broker, "alpha")
    try:
        with service_running(broker, data_dir):
            alpha.send(START)
            # mosquitto keeps a retained message on the command topic; the live copy reaches
            # the subscribed service with retain 0: it is a live press and counts once.
            alpha.watcher.publish(topics.commands("alpha"), "1+", retain=True)
            wait_for(lambda: (current_snapshot(broker, "alpha", 0.5) or {}).get("rev") == 2)
        for _ in range(3):
            with service_running(broker, data_dir) as service:
                # The replayed copy arrives with retain 1 at each (re)subscribe: ignored.
                wait_for(lambda: service._retained_logged, 5)
                assert alpha.send({"cmd": "point", "side": 2})["ok"]
                assert alpha.send("undo")["ok"]
        shown = current_snapshot(broker, "alpha")
        assert scores(shown) == (1, 0) and shown["rev"] == 8
        assert stored_rev(data_dir) == 8
    finally:
        alpha.watcher.publish(topics.commands("alpha"), b"", retain=True)
        alpha.close()


def test_a_retained_command_with_an_unknown_id_is_answered_with_retained_command(
    mosquitto_broker, tmp_path
):
    broker = mosquitto_broker
    alpha = Scorer(broker, "alpha")
    try:
        # Retained while no service session exists: only the retained copy ever arrives.
        command = json.dumps({"id": "kept", **START})
        alpha.watcher.publish(topics.commands("alpha"), command, retain=True)
        with service_running(broker, tmp_path / "service"):
            reply = alpha.watcher.next_json(topics.replies("alpha"))
            assert (reply["id"], reply["ok"], reply["code"]) == ("kept", False, "retained_command")
            assert current_snapshot(broker, "alpha", 0.5) is None
    finally:
        alpha.watcher.publish(topics.commands("alpha"), b"", retain=True)
        alpha.close()


# -- 4. an id is applied at most once per club, across matches and restarts ----------------------


def test_a_resend_after_a_forced_new_match_is_answered_not_applied_to_the_new_match(
    any_broker, tmp_path, alpha
):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir):
        alpha.send(START)
        first = alpha.send({"id": "press-1", "cmd": "point", "side": 1})
        old_match = first["match_id"]
        new = alpha.send(dict(START, force=True))
        assert new["match_id"] != old_match
        again = alpha.send({"id": "press-1", "cmd": "point", "side": 1})
        assert again == first  # the original reply: old match, its rev
        assert scores(current_snapshot(any_broker, "alpha")) == (0, 0)
    with service_running(any_broker, data_dir):  # and after a restart
        assert alpha.send({"id": "press-1", "cmd": "point", "side": 1}) == first
        shown = current_snapshot(any_broker, "alpha")
        assert shown["rev"] == 1 and shown["match_id"] == new["match_id"]


def test_a_resent_delete_does_not_delete_the_next_match_even_after_a_restart(
    any_broker, tmp_path, alpha
):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir):
        alpha.send(START)
        deleted = alpha.send({"id": "del-1", "cmd": "delete"})
    with service_running(any_broker, data_dir):
        started = alpha.send(START)
        assert alpha.send({"id": "del-1", "cmd": "delete"}) == deleted
        assert current_snapshot(any_broker, "alpha")["match_id"] == started["match_id"]


def test_the_id_index_is_bounded_per_club_and_keeps_the_latest(any_broker, tmp_path, alpha):
    data_dir = tmp_path / "service"
    store = MatchStore(data_dir)
    try:
        for number in range(COMMAND_IDS_PER_CLUB + 5):
            store.clear_current("alpha", command_id=number, reply={"id": number, "ok": True})
        kept = store.command_replies("alpha")
    finally:
        store.close()
    assert len(kept) == COMMAND_IDS_PER_CLUB
    assert kept[0][0] == "5" and kept[-1][0] == str(COMMAND_IDS_PER_CLUB + 4)


def test_a_refused_id_resent_later_gets_the_same_refusal(any_broker, tmp_path, alpha):
    with service_running(any_broker, tmp_path / "service"):
        alpha.send(START)
        refused = alpha.send({"id": "minus", "cmd": "point", "side": 1, "delta": -1})
        assert refused["ok"] is False
        alpha.send("1+")
        # A lost reply's resend must not take back the point scored meanwhile.
        assert alpha.send({"id": "minus", "cmd": "point", "side": 1, "delta": -1}) == refused
        assert scores(current_snapshot(any_broker, "alpha")) == (1, 0)


def test_the_match_field_refuses_a_press_meant_for_another_match(any_broker, tmp_path, alpha):
    with service_running(any_broker, tmp_path / "service"):
        first = alpha.send(START)
        ok = alpha.send({"cmd": "point", "side": 1, "match": first["match_id"]})
        assert ok["ok"] and ok["rev"] == 2
        second = alpha.send(dict(START, force=True))
        late = alpha.send({"cmd": "point", "side": 1, "match": first["match_id"]})
        assert (late["ok"], late["code"], late["rev"]) == (False, "wrong_match", 1)
        assert late["match_id"] == second["match_id"]
        assert late["params"] == {"match": first["match_id"]}
        assert scores(current_snapshot(any_broker, "alpha")) == (0, 0)
        bad = alpha.send({"cmd": "point", "side": 1, "match": 7})
        assert bad["code"] == "bad_command"


def test_every_reply_has_the_contracts_shape(any_broker, tmp_path, alpha):
    with service_running(any_broker, tmp_path / "service"):
        replies = [
            alpha.send("1+"),  # no match
            alpha.send(START),
            alpha.send("1-"),
            alpha.send({"cmd": "point", "side": 9}),
            alpha.send("1+"),
        ]
        alpha.send_raw(b"\xff")
        replies.append(alpha.watcher.next_json(topics.replies("alpha")))
    for reply in replies:
        assert REPLY_KEYS <= set(reply), reply
        if reply["ok"]:
            assert reply["code"] is None and reply["error"] is None and reply["match_id"]
        else:
            assert isinstance(reply["code"], str) and reply["code"].islower()
            assert isinstance(reply["params"], dict) and reply["error"]
    assert [r["code"] for r in replies] == [
        "no_match",
        None,
        replies[2]["code"],
        "bad_command",
        None,
        "bad_command",
    ]


def test_a_status_watcher_sees_online(any_broker, tmp_path):
    watcher = Watcher(any_broker, topics.SCORER_STATUS)
    try:
        with service_running(any_broker, tmp_path / "service"):
            wait_for(lambda: watcher.next(topics.SCORER_STATUS).payload == b"online")
    finally:
        watcher.close()


# -- the new match a command makes, beside the current one -------------------------------------

COMMANDS = st.sampled_from(
    [
        {"cmd": "point", "side": 1},
        {"cmd": "point", "side": 2},
        {"cmd": "point", "side": 1, "delta": -1},
        {"cmd": "point", "side": 2, "delta": -1},
        {"cmd": "undo"},
        {"cmd": "redo"},
        {"cmd": "timeout", "side": 1},
        {"cmd": "expedite"},
    ]
)


@settings(max_examples=60, deadline=None)
@given(before=st.lists(COMMANDS, max_size=60), then=COMMANDS)
def test_a_command_applied_beside_the_match_leaves_the_match_as_it_was(before, then):
    match = Match("m")
    match.apply(dict(START, best_of=3), now=0.0)
    for number, command in enumerate(before):
        try:
            match.apply(command, now=float(number))
        except Refused:
            pass
    snapshot, log = match.snapshot(), match.log
    try:
        trial, _ = match.applied(parse(then), now=100.0)
        applied = True
    except Refused:
        applied = False
    assert match.snapshot() == snapshot and match.log == log  # the original is untouched
    reference = Match.from_log("m", log)
    try:
        reference.apply(then, now=100.0)
    except Refused:
        assert not applied
    else:
        assert applied and reference.snapshot() == trial.snapshot()
