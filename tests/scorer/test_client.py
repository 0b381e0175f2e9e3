"""scorer/client.py: broker URLs, and request/reply against a real broker and service."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scorer.client import (
    BrokerUrlError,
    CommandTooLarge,
    ConnectFailed,
    NoReply,
    NotConnected,
    ResendPolicy,
    ScoreClient,
    make_client,
    parse_broker_url,
    resolve_address,
    send_command,
    shorthand_to_command,
    stop_loop,
)
from scorer.config import Club, Settings
from scorer.engine import SHORTHANDS, parse_command
from scorer.topics import BadTable
from tests.scorer.servicekit import current_snapshot, service_running, wait_for

START = {"cmd": "start", "player1": "Ann", "player2": "Bob"}


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "transport", "tls", "path"),
    [
        ("mqtt://127.0.0.1", "mqtt", "127.0.0.1", 1883, "tcp", False, "/mqtt"),
        ("mqtt://broker.example:1884", "mqtt", "broker.example", 1884, "tcp", False, "/mqtt"),
        ("mqtts://broker.example", "mqtts", "broker.example", 8883, "tcp", True, "/mqtt"),
        ("ws://10.0.0.2:9001/mqtt", "ws", "10.0.0.2", 9001, "websockets", False, "/mqtt"),
        ("ws://club.example", "ws", "club.example", 80, "websockets", False, "/mqtt"),
        (
            "wss://club.example/live/mqtt",
            "wss",
            "club.example",
            443,
            "websockets",
            True,
            "/live/mqtt",
        ),
        ("MQTT://[::1]:1883", "mqtt", "::1", 1883, "tcp", False, "/mqtt"),
    ],
)
def test_broker_urls_give_transport_port_and_path(url, scheme, host, port, transport, tls, path):
    address = parse_broker_url(url)
    assert (address.scheme, address.host, address.port) == (scheme, host, port)
    assert (address.transport, address.tls, address.path) == (transport, tls, path)
    assert address.user is None and address.password is None


def test_credentials_in_a_url_are_percent_decoded_and_masked_when_shown():
    address = parse_broker_url("mqtt://riverside:p%40ss%3Aword@127.0.0.1:1883")
    assert (address.user, address.password) == ("riverside", "p@ss:word")
    assert "p@ss" not in address.url()
    assert address.url(with_password=True) == "mqtt://riverside:p@ss:word@127.0.0.1:1883"
    assert "p@ss" not in repr(address) and "password" not in repr(address)


@pytest.mark.parametrize(
    "url",
    ["mqtt://[::1]:1883", "mqtt://u:***@[2001:db8::7]:1884", "ws://[::1]:9001/mqtt"],
)
def test_ipv6_hosts_are_bracketed_so_the_url_parses_again(url):
    address = parse_broker_url(url)
    assert ":" in address.host and "[" not in address.host
    assert address.url() == url
    assert parse_broker_url(address.url()).host == address.host


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:1883", "scheme"),
        ("127.0.0.1:1883", "scheme"),
        ("mqtt://", "no host"),
        ("mqtt://host:99999", "not valid"),
        ("mqtt://host:1883/some/path", "no path"),
    ],
)
def test_unusable_broker_urls_say_what_is_wrong(url, complaint):
    with pytest.raises(BrokerUrlError, match=complaint):
        parse_broker_url(url)


def test_explicit_user_and_password_win_over_the_url_and_settings_give_the_url():
    settings = Settings(broker_url="mqtt://a:b@127.0.0.1:2000")
    address = resolve_address(settings, user="riverside", password="secret")
    assert (address.host, address.port, address.user, address.password) == (
        "127.0.0.1",
        2000,
        "riverside",
        "secret",
    )
    kept = resolve_address("mqtt://a:b@127.0.0.1:2000")
    assert (kept.user, kept.password) == ("a", "b")


def test_websocket_clients_use_the_url_path_and_mqtt_311():
    client = make_client(parse_broker_url("ws://127.0.0.1:9001/mqtt"))
    assert client.transport == "websockets"
    assert client.protocol == 4  # MQTT 3.1.1


def test_shorthands_become_json_commands_so_they_can_carry_an_id():
    assert shorthand_to_command(" 1+ ") == {"cmd": "point", "side": 1, "delta": 1}
    assert shorthand_to_command("2-") == {"cmd": "point", "side": 2, "delta": -1}
    assert shorthand_to_command("UNDO") == {"cmd": "undo"}
    with pytest.raises(ValueError, match="unknown shorthand"):
        shorthand_to_command("3+")
    # The engine's shorthands, so they mean exactly what the text means to the service.
    for text in SHORTHANDS:
        assert shorthand_to_command(text) == parse_command(text)


# -- against a real broker ------------------------------------------------------------------


@pytest.fixture
def running_service(any_broker, tmp_path):
    with service_running(any_broker, tmp_path / "service") as service:
        yield service


def test_send_command_gets_the_services_reply(any_broker, running_service):
    club_password = any_broker.users["alpha"]
    url = f"mqtt://127.0.0.1:{any_broker.mqtt_port}"
    reply = send_command(
        url,
        "alpha",
        {"cmd": "start", "player1": "Ann", "player2": "Bob"},
        user="alpha",
        password=club_password,
    )
    assert reply["ok"] is True and reply["error"] is None and reply["rev"] == 1
    refused = send_command(url, "alpha", {"cmd": "point", "side": 3}, password=club_password)
    assert refused["ok"] is False and "side" in refused["error"] and refused["rev"] == 1


def test_score_client_keeps_the_latest_snapshot(any_broker, running_service):
    url = f"mqtt://alpha:{any_broker.users['alpha']}@127.0.0.1:{any_broker.mqtt_port}"
    with ScoreClient(url, "alpha") as scorer:
        assert scorer.wait_for_snapshot(0.5) is None  # no match yet
        scorer.send({"cmd": "start", "player1": "Ann", "player2": "Bob"})
        scorer.send("1+")
        reply = scorer.send("2+")
        assert reply["rev"] == 3
    with ScoreClient(url, "alpha") as later:
        snapshot = later.wait_for_snapshot(5)
    assert snapshot is not None and snapshot["rev"] == 3
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (1, 1)


def test_a_score_client_never_takes_an_older_snapshot_so_presses_stay_on_the_current_match(
    any_broker,
):
    # A lagging cluster node or a bridge catching up can serve an old retained copy: a
    # client that took its match would send the next press to a replaced match.
    def snap(match: str, rev: int, updated: str) -> dict:
        return {"match_id": match, "rev": rev, "updated_at": updated, "game_data": {}}

    current = snap("m2", 3, "2026-11-30T20:00:05.000Z")
    seen: list[tuple[str, int]] = []
    url = f"mqtt://alpha:{any_broker.users['alpha']}@127.0.0.1:{any_broker.mqtt_port}"
    commands: list[bytes] = []
    service = any_broker.client(
        any_broker.service_user, on_message=lambda _c, _u, m: commands.append(m.payload)
    )
    service.subscribe("clubs/alpha/game/cmd", qos=1)
    game = "clubs/alpha/game"
    with ScoreClient(
        url, "alpha", on_snapshot=lambda s: seen.append((s["match_id"], s["rev"]))
    ) as scorer:
        scorer.wait_for_snapshot(0.5)
        for stale_then_new in (
            current,
            snap("m1", 40, "2026-11-30T20:00:04.999Z"),  # another match, updated earlier
            snap("m2", 2, "2026-11-30T20:00:04.000Z"),  # this match, a lower rev
            snap("m2", 4, "2026-11-30T20:00:06.000Z"),
        ):
            service.publish(game, json.dumps(stale_then_new), qos=1, retain=True).wait_for_publish(
                5
            )
        # One publisher, one topic, QoS 1: delivered in order, so rev 4 comes last.
        wait_for(lambda: seen and seen[-1] == ("m2", 4), timeout=5)
        assert seen == [("m2", 3), ("m2", 4)]
        assert scorer.snapshot is not None and scorer.snapshot["rev"] == 4
        # The next press names the current match (no service runs: nobody answers).
        with pytest.raises(NoReply):
            scorer.send("1+", timeout=0.3)
        sent = wait_for(lambda: commands and commands[0], timeout=5)
        assert json.loads(sent)["match"] == "m2"
    service.publish(game, b"", qos=1, retain=True).wait_for_publish(5)


def test_a_score_client_for_table_2_scores_and_follows_that_table_only(any_broker, tmp_path):
    url = f"mqtt://alpha:{any_broker.users['alpha']}@127.0.0.1:{any_broker.mqtt_port}"
    clubs = (Club("alpha", tables=2, table_names=("", "Court B")),)
    with service_running(any_broker, tmp_path / "service", clubs=clubs):
        with ScoreClient(url, "alpha", table=2) as second, ScoreClient(url, "alpha") as first:
            assert second.wait_for_snapshot(0.5) is None
            started = second.send({"cmd": "start", "player1": "Cy", "player2": "Di"})
            assert (started["ok"], started["table"]) == (True, 2)
            assert second.send("2+")["rev"] == 2
            shown = wait_for(lambda: second.snapshot)
            assert (shown["table"], shown["table_name"]) == (2, "Court B")
            assert first.wait_for_snapshot(0.5) is None  # table 1 has no match
            assert first.send("1+")["code"] == "no_match"
        reply = send_command(url, "alpha", "2+", table=2)
        assert (reply["ok"], reply["rev"], reply["table"]) == (True, 3, 2)
        refused = send_command(url, "alpha", "2+", table=3)
        assert (refused["code"], refused["table"]) == ("no_such_table", 3)
    snapshot = current_snapshot(any_broker, "alpha", table=2)
    assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (0, 2)


@pytest.mark.parametrize("table", [0, 65, -1, True, "02", 2.0, None, "\u00b2", "9" * 5000])
def test_a_score_client_refuses_a_table_outside_1_to_64_before_connecting(table):
    with pytest.raises(BadTable, match="table"):
        ScoreClient("mqtt://127.0.0.1:1", "alpha", table=table, timeout=0.1)


def test_a_score_client_given_settings_refuses_a_table_the_club_does_not_have():
    settings = Settings(clubs=(Club("alpha", tables=2),), broker_url="mqtt://127.0.0.1:1")
    with pytest.raises(BadTable, match="club alpha has 2 table"):
        ScoreClient(settings, "alpha", table=3, timeout=0.1)


def test_a_wrong_password_is_a_clear_connect_failure(any_broker):
    with pytest.raises(ConnectFailed, match="refused"):
        send_command(
            f"mqtt://127.0.0.1:{any_broker.mqtt_port}", "alpha", "1+", password="wrong", timeout=3
        )


def test_another_clubs_user_can_neither_score_nor_follow_a_club(any_broker, running_service):
    # amqtt refuses the subscription (SUBACK 0x80); mosquitto grants it but delivers nothing
    # and drops the publish: either way no reply, and the club's state does not change.
    with pytest.raises((ConnectFailed, NoReply)):
        send_command(
            f"mqtt://127.0.0.1:{any_broker.mqtt_port}",
            "alpha",
            {"cmd": "start", "player1": "Eve", "player2": "Mallory"},
            user="beta",
            password=any_broker.users["beta"],
            timeout=1.5,
        )
    assert current_snapshot(any_broker, "alpha", timeout=0.7) is None


def test_no_service_means_no_reply_in_time(any_broker):
    with pytest.raises(NoReply, match="is it running"):
        send_command(
            f"mqtt://127.0.0.1:{any_broker.mqtt_port}",
            "alpha",
            "1+",
            password=any_broker.users["alpha"],
            timeout=1,
        )


def test_commands_also_go_over_websocket(any_broker, running_service):
    reply = send_command(
        any_broker.url("alpha", transport="websockets"),
        "alpha",
        {"cmd": "start", "player1": "Ann", "player2": "Bob"},
    )
    assert reply["ok"] is True and reply["rev"] == 1
    assert current_snapshot(any_broker, "alpha")["game_data"]["player2"] == "Bob"


def test_a_score_client_follows_the_club_again_after_the_broker_restarts(
    any_broker, running_service
):
    # A clean session loses its subscriptions with the connection: the client subscribes
    # again on each reconnect, or it never sees a reply nor a snapshot again.
    snapshots: queue.Queue = queue.Queue()
    with ScoreClient(any_broker.url("alpha"), "alpha", on_snapshot=snapshots.put) as scorer:
        assert scorer.send(START)["rev"] == 1
        assert wait_for(lambda: snapshots.get(timeout=5)["rev"] == 1)
        any_broker.restart()
        again = snapshots.get(timeout=20)  # retained: comes with the new subscription
        assert again["rev"] == 1
        reply = scorer.send({"cmd": "point", "side": 1}, timeout=15)
        assert reply["ok"] is True and reply["rev"] == 2


def test_a_command_sent_while_the_broker_is_away_is_queued_then_sent(any_broker, running_service):
    with ScoreClient(any_broker.url("alpha"), "alpha") as scorer:
        assert scorer.send(START)["rev"] == 1
        any_broker.stop()
        wait_for(lambda: not scorer._client.is_connected())
        with pytest.raises(NotConnected, match="queued"):
            scorer.send({"id": "while-away", "cmd": "point", "side": 2}, timeout=0.5)
        any_broker.start()
        # paho kept the QoS 1 command and sent it after reconnecting: the service applied it.
        shown = wait_for(lambda: (scorer.snapshot or {}).get("rev") == 2 and scorer.snapshot, 20)
        assert (shown["game_data"]["score1"], shown["game_data"]["score2"]) == (0, 1)
        assert scorer.send({"id": "while-away", "cmd": "point", "side": 2})["rev"] == 2  # once


# -- end-to-end delivery: resend the same id until the reply ---------------------------------


def test_a_command_the_service_missed_is_resent_with_the_same_id_until_it_answers(
    any_broker, tmp_path
):
    # A fresh data dir has no session at the broker yet: a command published before the
    # service subscribes goes nowhere. Only a resend of the same id can reach it.
    with ScoreClient(any_broker.url("alpha"), "alpha", watch_snapshot=False) as scorer:
        outcome: queue.Queue = queue.Queue()
        sender = threading.Thread(
            target=lambda: outcome.put(scorer.send({"id": "late", **START}, timeout=20))
        )
        sender.start()
        wait_for(lambda: scorer.resends >= 1, 10)  # the first copy went nowhere
        with service_running(any_broker, tmp_path / "service"):
            sender.join(20)
            reply = outcome.get_nowait()
            assert (reply["id"], reply["ok"], reply["rev"]) == ("late", True, 1)
            # The resends after the first accepted copy were answered, not applied again.
            assert scorer.send({"cmd": "point", "side": 1})["rev"] == 2
        assert current_snapshot(any_broker, "alpha")["rev"] == 2


def test_a_reply_arrives_once_per_resend_but_the_command_is_applied_once(
    any_broker, running_service
):
    replies: list = []
    slow = ResendPolicy(first=0.05, longest=0.05, total=5)
    with ScoreClient(any_broker.url("alpha"), "alpha", on_reply=replies.append) as scorer:
        assert scorer.send(START)["rev"] == 1
        scorer.resend = slow
        scorer._publish(json.dumps({"id": "twice", "cmd": "point", "side": 1}).encode())
        reply = scorer.send({"id": "twice", "cmd": "point", "side": 1})
        assert (reply["ok"], reply["rev"]) == (True, 2)
        wait_for(lambda: len([r for r in replies if r.get("id") == "twice"]) >= 2)
    assert current_snapshot(any_broker, "alpha")["rev"] == 2


def test_an_oversized_command_is_refused_before_it_is_published_and_the_client_goes_on(
    any_broker, running_service
):
    # On mosquitto a QoS 1 publish over message_size_limit gets the client disconnected,
    # and paho resends it on every reconnect: it would strand the client for good.
    with ScoreClient(any_broker.url("alpha"), "alpha") as scorer:
        with pytest.raises(CommandTooLarge, match="too large"):
            scorer.send(dict(START, player1="A" * 20_000), timeout=3)
        assert scorer.send(START, timeout=10)["rev"] == 1
        assert scorer.connected
    with pytest.raises(CommandTooLarge):
        send_command(any_broker.url("alpha"), "alpha", {"cmd": "undo", "pad": "x" * 17_000})


def test_the_resend_schedule_doubles_to_its_cap():
    policy = ResendPolicy()
    intervals = [policy.first]
    while len(intervals) < 7:
        intervals.append(policy.next_interval(intervals[-1]))
    assert intervals == [0.5, 1, 2, 4, 4, 4, 4] and policy.total == 30


def test_a_waiting_command_is_resent_at_once_after_a_reconnect(any_broker, tmp_path):
    # Timed resends are 20 s apart here: only the resend right after the reconnect can bring
    # the reply within the wait below.
    patient = ResendPolicy(first=20, longest=20, total=40)
    with ScoreClient(any_broker.url("alpha"), "alpha", resend=patient) as scorer:
        outcome: queue.Queue = queue.Queue()
        sender = threading.Thread(
            target=lambda: outcome.put(scorer.send({"id": "after-blip", **START}))
        )
        sender.start()
        wait_for(lambda: scorer._waiting)  # published (to nobody: no service session yet)
        with service_running(any_broker, tmp_path / "service") as service:
            started = time.monotonic()
            any_broker.restart()
            wait_for(service.connected.is_set, 15)
            sender.join(15)
            reply = outcome.get_nowait()
            assert (reply["id"], reply["ok"]) == ("after-blip", True)
            assert time.monotonic() - started < 15 and scorer.resends >= 1


def _connected(endpoint: Any) -> Any:
    client = make_client(parse_broker_url(endpoint.url("alpha")), client_id="stop-loop")
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", endpoint.mqtt_port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client


def _disconnect_ending_inside_loop_stop(monkeypatch: pytest.MonkeyPatch, client: Any) -> Any:
    """DISCONNECT ``client`` and make paho's race certain: the network thread is held in
    ``on_disconnect`` (so it is alive at ``loop_stop``'s check of ``client._thread``) and let
    go, then waited for, inside ``threading.current_thread()``, which ``loop_stop`` calls
    between that check and its ``join``. Returns the network thread."""
    thread, real, release = client._thread, threading.current_thread, threading.Event()
    assert thread is not None and thread.is_alive()
    client.on_disconnect = lambda *args: release.wait(10)
    # Only the caller's loop_stop: the patch is process-wide, and the broker's threads (the
    # store's executor starting a worker) call current_thread too.
    caller = threading.get_ident()

    def current_thread() -> threading.Thread:
        if threading.get_ident() == caller and not release.is_set():
            release.set()
            thread.join(10)
        return real()

    monkeypatch.setattr(threading, "current_thread", current_thread)
    client.disconnect()
    return thread


def test_stopping_a_disconnected_client_survives_its_network_thread_ending_first(
    amqtt_broker, monkeypatch
):
    # paho 2.2 itself: its thread clears client._thread as it ends, and loop_stop reads the
    # attribute twice. When this stops raising, paho has fixed it: drop scorer.client.stop_loop.
    client = _connected(amqtt_broker)
    thread = _disconnect_ending_inside_loop_stop(monkeypatch, client)
    with pytest.raises(AttributeError):
        client.loop_stop()  # paho's own, on purpose
    assert not thread.is_alive()
    monkeypatch.undo()

    client = _connected(amqtt_broker)
    thread = _disconnect_ending_inside_loop_stop(monkeypatch, client)
    stop_loop(client)  # returns: the thread it waits for has ended
    assert not thread.is_alive()


def test_every_paho_network_thread_is_stopped_through_stop_loop():
    # The race above hits any disconnect() followed by loop_stop(): no module calls paho's
    # loop_stop but stop_loop itself.
    root = Path(__file__).resolve().parents[2]
    callers = []
    for path in sorted(root.glob("*/**/*.py")):
        if path.parts[len(root.parts)] in {".venv", "node_modules"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.loop_stop\b", line) and "paho's own, on purpose" not in line:
                callers.append(f"{path.relative_to(root)}:{number}")
    assert len(callers) == 1 and callers[0].startswith("scorer/client.py:"), callers
    lines = (root / "scorer" / "client.py").read_text().splitlines()
    within = lines[: int(callers[0].split(":")[1])]
    assert next(line for line in reversed(within) if line.startswith("def ")).startswith(
        "def stop_loop("
    ), callers
