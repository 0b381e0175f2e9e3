"""The scorer service end to end on a real broker (embedded amqtt AND mosquitto): commands in,
retained snapshots, events and replies out; roles; clubs kept apart; recovery from the store."""

from __future__ import annotations

import json
import logging
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from scorer import topics
from scorer.engine import Match
from scorer.service import BAD_TOPIC_LOG_INTERVAL, ScorerService
from scorer.store import MatchStore
from tests.scorer.servicekit import (
    WAIT,
    Scorer,
    Watcher,
    current_snapshot,
    service_running,
    service_settings,
    wait_for,
)

START = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3, "first_server": 1}
VOLATILE = ("match_id", "updated_at")  # differ between the service's match and a reference


def accepted(command_id, rev: int, match_id, table: int = 1) -> dict:
    """The reply to an accepted command on ``table`` (docs/protocol.md)."""
    return {
        "id": command_id,
        "ok": True,
        "error": None,
        "code": None,
        "rev": rev,
        "match_id": match_id,
        "table": table,
    }


def without_volatile(snapshot: dict) -> dict:
    return {key: value for key, value in snapshot.items() if key not in VOLATILE}


@pytest.fixture
def service(any_broker, tmp_path):
    with service_running(any_broker, tmp_path / "service") as running:
        yield running


@pytest.fixture
def alpha(any_broker):
    scorer = Scorer(any_broker, "alpha")
    yield scorer
    scorer.close()


def test_each_accepted_command_publishes_one_retained_snapshot_equal_to_the_engines(
    any_broker, service, alpha
):
    commands = (
        [START]
        + [{"cmd": "point", "side": 1}] * 11
        + [
            {"cmd": "point", "side": 2},
            {"cmd": "point", "side": 1},
            {"cmd": "point", "side": 1, "delta": -1},
            {"cmd": "timeout", "side": 2},
            {"cmd": "undo"},
        ]
    )
    reference = Match("reference")
    for number, command in enumerate(commands, start=1):
        reply = alpha.send(command)
        assert reply["ok"] is True and reply["error"] is None and reply["rev"] == number
        reference.apply(command, now=0.0)

    published = [json.loads(m.payload) for m in alpha.watcher.pending(topics.game("alpha"))]
    assert [s["rev"] for s in published] == list(range(1, len(commands) + 1))
    shown = current_snapshot(any_broker, "alpha")
    assert shown == published[-1]
    # The engine's snapshot, and where it is played: table 1, named "Table 1" by default.
    table = {"table": 1, "table_name": "Table 1"}
    assert without_volatile(shown) == without_volatile({**reference.snapshot(), **table})
    # -1 took back side 1's point of game 2; undo reverses the latest change: the timeout.
    assert shown["games"] == [[11, 0]] and shown["status"] == "in_progress"
    assert shown["game_data"]["score2"] == 1 and shown["timeouts_used"] == [0, 0]

    # The store holds exactly what was published: the log rebuilds the same snapshot.
    store = MatchStore(service.settings.data_dir)
    try:
        rebuilt = Match.from_log(shown["match_id"], store.log(shown["match_id"]))
    finally:
        store.close()
    assert {**rebuilt.snapshot(), **table} == shown


def test_every_accepted_change_has_one_event_and_refusals_have_none(service, alpha):
    alpha.send(START)
    alpha.send({"cmd": "point", "side": 2})
    refused = alpha.send({"cmd": "point", "side": 2, "delta": -5})
    assert refused["ok"] is False
    alpha.send("undo")  # shorthand without id: reply id is null
    events = [json.loads(m.payload) for m in alpha.watcher.pending(topics.events("alpha"))]
    assert alpha.watcher.nothing_on(topics.events("alpha"))
    assert [e["kind"] for e in events] == ["start", "point", "undo"]
    assert [e["rev"] for e in events] == [1, 2, 3]


def test_a_new_spectator_gets_the_current_snapshot_at_once(any_broker, service, alpha):
    alpha.send(START)
    alpha.send("1+")
    spectator = Watcher(any_broker, topics.game("alpha"))
    try:
        message = spectator.next(topics.game("alpha"), timeout=1.0)
    finally:
        spectator.close()
    assert message.retain
    snapshot = json.loads(message.payload)
    assert (snapshot["rev"], snapshot["game_data"]["score1"]) == (2, 1)


def test_spectators_can_publish_neither_commands_nor_snapshots(any_broker, service, alpha):
    alpha.send(START)
    before = current_snapshot(any_broker, "alpha")
    spectator = Watcher(any_broker)  # anonymous
    try:
        spectator.publish(topics.commands("alpha"), "1+")
        spectator.publish(topics.commands("alpha"), json.dumps({"id": "anon", "cmd": "end"}))
        forged = dict(before, rev=999, game_data=dict(before["game_data"], score1=10))
        spectator.publish(topics.game("alpha"), json.dumps(forged), retain=True)
    finally:
        spectator.close()
    assert alpha.watcher.nothing_on(topics.replies("alpha"))
    assert current_snapshot(any_broker, "alpha") == before
    assert alpha.send("1+")["rev"] == 2  # nothing was applied in between


def test_two_clubs_never_see_each_others_commands(any_broker, service, alpha):
    beta = Scorer(any_broker, "beta")
    try:
        assert alpha.send(START)["ok"]
        assert beta.send(dict(START, player1="Cy", player2="Di"))["ok"]
        beta.watcher.pending(topics.game("beta"))
        beta.watcher.pending(topics.events("beta"))
        for _ in range(3):
            assert alpha.send("1+")["ok"]
        # alpha's scorer also tries to score for beta: the broker drops or refuses it.
        alpha.watcher.publish(topics.commands("beta"), json.dumps({"cmd": "point", "side": 2}))
        assert beta.watcher.nothing_on(topics.replies("beta"))
        assert beta.watcher.pending(topics.game("beta")) == []
        assert beta.watcher.pending(topics.events("beta")) == []
        beta_now = current_snapshot(any_broker, "beta")
        assert (beta_now["rev"], beta_now["game_data"]["player1"]) == (1, "Cy")
        assert current_snapshot(any_broker, "alpha")["game_data"]["score1"] == 3
    finally:
        beta.close()


def test_a_resent_command_id_is_applied_once_and_answered_again(service, alpha):
    alpha.send(START)
    first = alpha.send({"id": "press-7", "cmd": "point", "side": 1})
    again = alpha.send({"id": "press-7", "cmd": "point", "side": 1})
    match_id = current_snapshot(alpha.watcher_endpoint, "alpha")["match_id"]
    assert first == again == accepted("press-7", 2, match_id)
    revs = [json.loads(m.payload)["rev"] for m in alpha.watcher.pending(topics.game("alpha"))]
    assert alpha.watcher.nothing_on(topics.game("alpha"))
    assert revs == [1, 2]
    alpha.send("2+")
    late = alpha.send({"id": "press-7", "cmd": "point", "side": 1})  # resent after another
    assert (late["ok"], late["rev"]) == (True, 2)  # the rev it was accepted at
    assert alpha.send("undo")["rev"] == 4
    alpha.watcher.pending(topics.game("alpha"))
    # A resent forced start does not start yet another match either.
    forced = {"id": "new-match", **START, "force": True}
    started = alpha.send(forced)
    match_id = json.loads(alpha.watcher.next(topics.game("alpha")).payload)["match_id"]
    assert alpha.send(forced) == started
    assert alpha.watcher.nothing_on(topics.game("alpha"))
    assert alpha.send("1+")["rev"] == 2
    assert json.loads(alpha.watcher.next(topics.game("alpha")).payload)["match_id"] == match_id


def test_a_start_during_a_match_is_refused_unless_forced(any_broker, service, alpha):
    alpha.send(START)
    alpha.send("1+")
    first_id = current_snapshot(any_broker, "alpha")["match_id"]
    refused = alpha.send(START)
    assert refused["ok"] is False and "in progress" in refused["error"] and refused["rev"] == 2
    forced = alpha.send(dict(START, player1="Cy", force=True))
    assert forced["ok"] is True and forced["rev"] == 1
    now = current_snapshot(any_broker, "alpha")
    assert now["match_id"] != first_id and now["game_data"]["player1"] == "Cy"


def test_a_finished_match_makes_room_for_a_new_one(any_broker, service, alpha):
    alpha.send(dict(START, best_of=1))
    for _ in range(11):
        alpha.send("2+")
    finished = current_snapshot(any_broker, "alpha")
    assert finished["status"] == "finished" and finished["type"] == "game_end"
    assert finished["game_data"]["winner"] == "Bob"
    assert alpha.send("2+")["ok"] is False  # no point after the end
    assert alpha.send(START)["ok"] is True
    new = current_snapshot(any_broker, "alpha")
    assert new["match_id"] != finished["match_id"] and new["rev"] == 1


def test_delete_clears_the_retained_snapshot(any_broker, service, alpha):
    alpha.send(START)
    match_id = current_snapshot(any_broker, "alpha")["match_id"]
    alpha.watcher.pending(topics.events("alpha"))
    reply = alpha.send({"id": "d1", "cmd": "delete"})
    assert reply == accepted("d1", 0, None)
    assert alpha.watcher.next_json(topics.events("alpha")) == {
        "kind": "delete",
        "match_id": match_id,
        "rev": 0,
        "table": 1,
    }
    assert current_snapshot(any_broker, "alpha", timeout=0.7) is None
    refused = alpha.send("1+")
    assert refused["ok"] is False and "no match" in refused["error"]
    assert alpha.send({"cmd": "clear"})["ok"] is True  # nothing to clear: still fine
    assert alpha.send({"cmd": "delete", "force": True})["ok"] is False


def test_the_status_topic_says_online_then_offline(any_broker, tmp_path):
    watcher = Watcher(any_broker, topics.SCORER_STATUS)
    try:
        with service_running(any_broker, tmp_path / "service"):
            wait_for(lambda: watcher.next(topics.SCORER_STATUS).payload == b"online")
        assert watcher.next(topics.SCORER_STATUS).payload == b"offline"
    finally:
        watcher.close()
    later = Watcher(any_broker, topics.SCORER_STATUS)
    try:
        message = later.next(topics.SCORER_STATUS)
        assert (message.payload, message.retain) == (b"offline", True)
    finally:
        later.close()


@pytest.mark.parametrize(
    ("payload", "reason", "reply_id"),
    [
        (b'{"cmd": "point", "side": 1', "not valid JSON", None),
        (b"\xff\xfe\x00", "UTF-8", None),
        (b"[1, 2]", "JSON object", None),
        (b"", "empty", None),
        (b'{"id": "w1", "cmd": "warp"}', "unknown command", "w1"),
        (b'{"id": 7, "cmd": "point", "side": "1"}', "side", 7),
        (b'{"id": "x", "cmd": "point", "side": 1, "extra": true}', "unknown field", "x"),
        (b'{"id": "t", "cmd": "timeout"}', "side", "t"),
        (b'{"id": true, "cmd": "undo"}', "id", None),
        (b"3+", "not a command", None),
        # An id the engine refuses (over 128 characters) is not echoed back either.
        (b'{"id": "' + b"x" * 129 + b'", "cmd": "undo"}', "id", None),
        # Nested too deep for Python's JSON parser (RecursionError), and too long.
        (b'{"a": ' + b"[" * 10_000, "not valid JSON", None),
        (b"[" * 10_000, "too long", None),
    ],
)
def test_malformed_commands_get_a_reason_and_change_nothing(
    any_broker, service, alpha, payload, reason, reply_id
):
    alpha.send(START)
    before = current_snapshot(any_broker, "alpha")
    alpha.send_raw(payload)
    reply = alpha.watcher.next_json(topics.replies("alpha"))
    assert reply["ok"] is False and reason in reply["error"]
    assert (reply["id"], reply["rev"]) == (reply_id, 1)
    assert current_snapshot(any_broker, "alpha") == before


def test_a_command_over_the_size_limit_is_refused(any_broker, tmp_path, alpha):
    # The service's own limit (the broker's is higher here, so the service sees it).
    with service_running(any_broker, tmp_path / "service", max_payload_bytes=200):
        alpha.send(START)
        big = json.dumps({"id": "big", "cmd": "point", "side": 1, "pad": "x" * 300})
        alpha.send_raw(big)
        reply = alpha.watcher.next_json(topics.replies("alpha"))
        assert reply["ok"] is False and "too large" in reply["error"] and reply["rev"] == 1


def test_a_size_limit_of_0_means_no_limit(any_broker, tmp_path, alpha):
    # As for the broker: 0 = no limit (it used to refuse every command).
    with service_running(any_broker, tmp_path / "service", max_payload_bytes=0):
        reply = alpha.send(START)
        assert reply["ok"] is True and reply["rev"] == 1


def test_deeply_nested_json_is_refused_as_malformed_without_a_traceback(
    any_broker, service, alpha, caplog
):
    caplog.set_level(logging.INFO, logger="rallycast.scorer")
    alpha.send(START)
    for payload in (
        '{"a": ' + "[" * 10_000,
        '{"id": "deep", "cmd": "point", "side": ' + "[" * 5_000 + "]" * 5_000 + "}",
    ):
        alpha.send_raw(payload)
        reply = alpha.watcher.next_json(topics.replies("alpha"))
        assert reply["ok"] is False and "not valid JSON" in reply["error"], reply
        assert reply["rev"] == 1
    assert alpha.send("1+")["rev"] == 2  # still serving
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_command_handled_while_the_service_stops_is_saved_and_published(
    any_broker, tmp_path, alpha, caplog
):
    # stop() used to forget the client before paho's thread had finished the command in
    # hand: the command was saved, then publishing it raised ("internal error" + traceback).
    caplog.set_level(logging.DEBUG, logger="rallycast.scorer")
    slow, handling = threading.Event(), threading.Event()

    def clock() -> float:
        if slow.is_set():
            slow.clear()
            handling.set()
            time.sleep(0.5)  # stop() runs meanwhile
        return time.time()

    data_dir = tmp_path / "service"
    service = ScorerService(
        service_settings(any_broker, data_dir),
        password=any_broker.users[any_broker.service_user],
        clock=clock,
    )
    service.start()
    try:
        assert service.wait_until_connected(WAIT)
        alpha.send(START)
        slow.set()
        alpha.send_raw(json.dumps({"id": "last", "cmd": "point", "side": 1}))
        assert handling.wait(WAIT)
        service.stop()
    finally:
        service.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert "accepted point -> rev 2" in caplog.text
    # (The broker may drop what arrives just before the DISCONNECT; what it passes on is
    # the answer to the command, never an error.)
    time.sleep(0.3)
    for message in alpha.watcher.pending(topics.replies("alpha")):
        reply = json.loads(message.payload)
        assert (reply["id"], reply["ok"], reply["code"], reply["rev"]) == ("last", True, None, 2)
    store = MatchStore(data_dir)
    try:
        (stored,) = store.current_matches()
    finally:
        store.close()
    assert [entry["cmd"] for entry in stored.log] == ["start", "point"]


def test_commands_do_not_copy_the_match_log(service, alpha, monkeypatch):
    # Match.log copies every entry: reading it per command made each command cost O(log).
    reads = []
    copy_log = Match.log.fget
    monkeypatch.setattr(Match, "log", property(lambda match: reads.append(1) or copy_log(match)))
    alpha.send(START)
    for number in range(20):
        assert alpha.send({"id": f"p{number}", "cmd": "point", "side": 1})["ok"]
    assert alpha.send({"id": "p3", "cmd": "point", "side": 1})["rev"] == 5  # resent: seen
    assert reads == []


def test_the_engine_knows_the_rev_of_each_command_id():
    match = Match("m")
    match.apply({"id": 1, **START}, now=0.0)
    match.apply({"id": "1", "cmd": "point", "side": 1}, now=1.0)
    match.apply("2+", now=2.0)
    assert (match.rev_of(1), match.rev_of("1"), match.rev_of("nope")) == (1, 2, None)
    assert match.rev_of(True) is None  # True == 1, but it is never a command id
    assert match.latest == match.log[-1] and match.latest is not match.latest


def test_messages_on_bad_club_topics_are_logged_not_fatal(service, alpha, caplog):
    caplog.set_level(logging.WARNING, logger="rallycast.scorer")
    for topic in (b"clubs/Not Valid/game/cmd", b"clubs//game/cmd", b"elsewhere/x"):
        message = mqtt.MQTTMessage(topic=topic)
        message.payload = b"1+"
        service._on_message(service._client, None, message)
    assert "not valid club topics" in caplog.text
    assert alpha.send(START)["ok"] is True


def test_a_flood_on_bad_club_topics_logs_one_line_a_minute_with_the_count(service, caplog):
    caplog.set_level(logging.WARNING, logger="rallycast.scorer")
    service._bad_topic_logged_at = float("-inf")  # as at start

    def bad(n: int) -> None:
        for i in range(n):
            message = mqtt.MQTTMessage(topic=f"clubs/Bad{i}/game/cmd".encode())
            message.payload = b"1+"
            service._on_message(service._client, None, message)

    bad(1000)
    lines = [r.getMessage() for r in caplog.records if "not valid club topics" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("ignored 1 message(s)"), lines
    service._bad_topic_logged_at -= BAD_TOPIC_LOG_INTERVAL  # a minute later
    bad(1)
    lines = [r.getMessage() for r in caplog.records if "not valid club topics" in r.getMessage()]
    assert len(lines) == 2 and lines[1].startswith("ignored 1000 message(s)"), lines


def test_a_restarted_service_rebuilds_matches_and_undo_reaches_back(any_broker, tmp_path, alpha):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir):
        alpha.send(START)
        for side in (1, 1, 2):
            alpha.send({"cmd": "point", "side": side})
    # Wipe the retained copy, so only a republish from the store can bring it back.
    wiper = Watcher(any_broker, user=any_broker.service_user)
    wiper.publish(topics.game("alpha"), b"", retain=True)
    wiper.close()
    assert current_snapshot(any_broker, "alpha", timeout=0.5) is None
    with service_running(any_broker, data_dir):
        restored = wait_for(lambda: current_snapshot(any_broker, "alpha", timeout=0.5))
        assert restored["rev"] == 4
        assert (restored["game_data"]["score1"], restored["game_data"]["score2"]) == (2, 1)
        assert alpha.send("undo")["rev"] == 5
        assert alpha.send("undo")["rev"] == 6
        after = current_snapshot(any_broker, "alpha")
        assert (after["game_data"]["score1"], after["game_data"]["score2"]) == (1, 0)
        assert after["match_id"] == restored["match_id"]


def test_stale_retained_snapshots_are_corrected_at_start(any_broker, tmp_path, alpha):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir):
        alpha.send(START)
        alpha.send("1+")
        real = current_snapshot(any_broker, "alpha")
    # A crashed instance (or a restored broker) left snapshots the store does not back.
    ghost = Watcher(any_broker, user=any_broker.service_user)
    ghost.publish(
        topics.game("alpha"), json.dumps(dict(real, rev=40, match_id="ghost")), retain=True
    )
    ghost.publish(topics.game("beta"), json.dumps(dict(real, match_id="ghost")), retain=True)
    ghost.close()
    with service_running(any_broker, data_dir):
        wait_for(lambda: (current_snapshot(any_broker, "alpha") or {}).get("rev") == 2)
        wait_for(lambda: current_snapshot(any_broker, "beta", timeout=0.3) is None)
        assert current_snapshot(any_broker, "alpha") == real
