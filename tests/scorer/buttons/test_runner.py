"""The button runner end to end on real brokers (embedded amqtt AND mosquitto): device messages
published as the club's user become commands on ``clubs/<club>/game/cmd``; with the scorer
service running, presses change the retained snapshot."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from scorer import topics
from scorer.buttons import ButtonRunner, parse_boards
from scorer.client import ConnectFailed
from scorer.config import Club, Settings
from scorer.service import ScorerService
from tests.scorer.buttons import payloads
from tests.scorer.buttons.payloads import for_club
from tests.scorer.servicekit import service_running

# The recorded messages as the boards of club "alpha" publish them (club level after the root).
ESPHOME, SHELLY1, TASMOTA, ZIGBEE = (
    for_club(kind, "alpha")
    for kind in (payloads.ESPHOME, payloads.SHELLY1, payloads.TASMOTA, payloads.ZIGBEE)
)

REPO = Path(__file__).resolve().parents[3]
WAIT = 5.0
QUIET = 0.8  # seconds of silence that show a command did NOT come
T0 = 1_764_170_000.0  # a fake wall clock for the runner (only differences matter)

TASMOTA_BOARD = {
    "name": "table1",
    "club": "alpha",
    "kind": "tasmota",
    "topic": "table1-buttons",
    "buttons": {"1": 1, "2": 2},
}


@contextmanager
def running(endpoint, *tables: dict, password: str | None = None) -> Iterator[ButtonRunner]:
    runner = ButtonRunner(
        parse_boards(list(tables)),
        broker=endpoint.url(),
        passwords={"alpha": endpoint.users["alpha"] if password is None else password},
        connect_timeout=WAIT,
    )
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def publish(device, message, *, retain: bool | None = None) -> None:
    """Publish a recorded device message as the device would (QoS 1 so it is not lost)."""
    info = device.publish(
        message.topic, message.payload, qos=1, retain=message.retain if retain is None else retain
    )
    info.wait_for_publish(WAIT)


def commands(recorder) -> list[dict]:
    """One command per press: a press the service has not answered is resent with the same
    id (no service runs in most of these tests), so copies of an id count once."""
    by_id: dict = {}
    for message in recorder.messages:
        if message.topic.endswith("/game/cmd"):
            command = json.loads(message.payload)
            by_id.setdefault(command["id"], command)
    return list(by_id.values())


def test_tasmota_press_becomes_a_command_on_the_clubs_command_topic(any_broker) -> None:
    service_view = any_broker.recorder([topics.commands("alpha")], user=any_broker.service_user)
    device = any_broker.client("alpha")
    with running(any_broker, TASMOTA_BOARD):
        publish(device, TASMOTA["button2_single"])
        received = service_view.wait_for(timeout=WAIT)
    command = json.loads(received.payload)
    assert {k: v for k, v in command.items() if k != "id"} == {"cmd": "point", "side": 2}
    assert command["id"].startswith("btn-table1-")
    assert received.qos == 1 and not received.retain


def test_retained_esphome_state_is_not_replayed_as_a_press_but_live_presses_count(
    any_broker,
) -> None:
    service_view = any_broker.recorder([topics.commands("alpha")], user=any_broker.service_user)
    device = any_broker.client("alpha")
    # ESPHome publishes its states retained: the broker keeps the last ON for new subscribers.
    publish(device, ESPHOME["left_on"], retain=True)
    board = {"club": "alpha", "kind": "esphome", "topic_prefix": "boards/alpha/table1", "side": 1}
    with running(any_broker, board):
        service_view.assert_nothing(QUIET)
        publish(device, ESPHOME["left_off"], retain=True)
        publish(device, ESPHOME["left_on"], retain=True)  # a live press, still sent retained
        service_view.wait_for(timeout=WAIT)
    assert [c["cmd"] for c in commands(service_view)] == ["point"]
    publish(device, ESPHOME["left_off"], retain=True)  # leave no retained ON behind


def test_zigbee2mqtt_press_on_both_of_its_topics_is_one_command(any_broker) -> None:
    service_view = any_broker.recorder([topics.commands("alpha")], user=any_broker.service_user)
    device = any_broker.client("alpha")
    board = {"club": "alpha", "kind": "zigbee2mqtt", "device": "table1-left", "side": 1}
    with running(any_broker, board):
        publish(device, ZIGBEE["state_single"])
        publish(device, ZIGBEE["action_single"])
        publish(device, ZIGBEE["state_empty_action"])
        service_view.wait_for(timeout=WAIT)
        time.sleep(QUIET)
    assert [(c["cmd"], c["side"]) for c in commands(service_view)] == [("point", 1)]


def test_bad_device_payloads_are_logged_and_the_next_press_still_counts(any_broker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rallycast.buttons")
    service_view = any_broker.recorder([topics.commands("alpha")], user=any_broker.service_user)
    device = any_broker.client("alpha")
    with running(any_broker, TASMOTA_BOARD):
        for junk in [b"\xff\xfe", b"{not json", b'{"Button1":{"Action":42}}', b"[]"]:
            device.publish("stat/alpha/table1-buttons/RESULT", junk, qos=1).wait_for_publish(WAIT)
        publish(device, TASMOTA["button1_single"])
        service_view.wait_for(timeout=WAIT)
    assert [c["side"] for c in commands(service_view)] == [1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        sum(
            "board table1: ignored a message on stat/alpha/table1-buttons/RESULT" in w
            for w in warnings
        )
        == 4
    )


def test_the_runner_subscribes_again_after_a_broker_restart(any_broker) -> None:
    with running(any_broker, TASMOTA_BOARD) as runner:
        link = runner.links["alpha"]
        any_broker.restart()
        deadline = time.monotonic() + 15
        while link.subscribed_count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.subscribed_count == 2, "the runner did not reconnect and subscribe again"
        service_view = any_broker.recorder([topics.commands("alpha")], user=any_broker.service_user)
        publish(any_broker.client("alpha"), TASMOTA["button1_single"])
        assert json.loads(service_view.wait_for(timeout=WAIT).payload)["side"] == 1


def test_a_wrong_club_password_is_a_clear_error(any_broker) -> None:
    with pytest.raises(ConnectFailed, match="refused"):
        with running(any_broker, TASMOTA_BOARD, password="not-the-password"):
            pass


@contextmanager
def buttons_process(endpoint, config: Path) -> Iterator[subprocess.Popen[str]]:
    """``rallycast buttons --config config`` as a subprocess with club alpha's password,
    yielded once its banner says its one board for alpha is connected; killed on the way out
    if the body left it running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    env["RALLYCAST_PASSWORD_ALPHA"] = endpoint.users["alpha"]
    process = subprocess.Popen(
        [sys.executable, "-m", "rallycast.cli", "buttons", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()  # printed once the runner is connected
        assert "1 board(s) for club(s) alpha" in banner, banner
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def latest_snapshot(spectator, rev: int) -> dict:
    message = spectator.wait_for(
        lambda m: m.payload and json.loads(m.payload).get("rev") == rev, timeout=WAIT
    )
    return json.loads(message.payload)


def test_presses_change_the_retained_snapshot_through_the_scorer_service(
    any_broker, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="rallycast.buttons")
    shelly_side2 = {
        "name": "right",
        "club": "alpha",
        "kind": "shelly1",
        "device": "shellybutton1-A4CF12F45301",
        "side": 2,
    }
    with (
        service_running(any_broker, tmp_path / "service"),
        running(any_broker, TASMOTA_BOARD, shelly_side2),
    ):
        spectator = any_broker.recorder([topics.game("alpha")])
        scorer = any_broker.recorder([topics.replies("alpha")], user="alpha")
        device = any_broker.client("alpha")

        # Before any match a press is refused by the service, and the runner says so.
        publish(device, TASMOTA["button2_single"])
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any(
            "refused by the scorer service" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
        assert any("refused by the scorer service" in r.getMessage() for r in caplog.records)

        start = {"cmd": "start", "player1": "Ann", "player2": "Bob", "id": "start-1"}
        scorer.client.publish(topics.commands("alpha"), json.dumps(start), qos=1)
        assert latest_snapshot(spectator, 1)["game_data"]["score1"] == 0

        publish(device, TASMOTA["button1_single"])
        assert latest_snapshot(spectator, 2)["game_data"]["score1"] == 1
        publish(device, SHELLY1["button_s"])  # Shelly event 12 on side 2
        publish(device, SHELLY1["button_s_again"])  # the same event again: no point
        after = latest_snapshot(spectator, 3)["game_data"]
        assert (after["score1"], after["score2"]) == (1, 1)
        publish(device, TASMOTA["button2_hold"])  # hold = undo the latest point
        after = latest_snapshot(spectator, 4)["game_data"]
        assert (after["score1"], after["score2"]) == (1, 0)

        time.sleep(QUIET)  # nothing else may have been accepted (the repeat was dropped)
        revs = [json.loads(m.payload)["rev"] for m in spectator.messages if m.payload]
        assert max(revs) == 4


def test_a_board_bound_to_table_2_scores_that_tables_match_only(any_broker, tmp_path) -> None:
    # Two boards of one club, one per table: each press goes to its own table's match.
    table2_board = {**TASMOTA_BOARD, "name": "court-b", "topic": "court-buttons", "table": 2}
    settings = Settings(
        data_dir=tmp_path / "service",
        broker_url=f"mqtt://{any_broker.host}:{any_broker.mqtt_port}",
        service_user=any_broker.service_user,
        clubs=(Club("alpha", tables=2),),
    )
    service = ScorerService(settings, password=any_broker.users[any_broker.service_user])
    service.start()
    try:
        assert service.wait_until_connected(WAIT)
        commands_seen = any_broker.recorder(
            [topics.commands("alpha"), topics.commands("alpha", 2)], user=any_broker.service_user
        )
        table1 = any_broker.recorder([topics.game("alpha")])
        table2 = any_broker.recorder([topics.game("alpha", 2)])
        scorer = any_broker.client("alpha")
        for table in (1, 2):
            start = {"cmd": "start", "player1": f"A{table}", "player2": "B", "id": f"s{table}"}
            scorer.publish(topics.commands("alpha", table), json.dumps(start), qos=1)
        latest_snapshot(table1, 1)
        latest_snapshot(table2, 1)
        device = any_broker.client("alpha")
        with running(any_broker, TASMOTA_BOARD, table2_board):
            court_b = TASMOTA["button2_single"]  # the same press, from the court-b device
            publish(device, replace(court_b, topic=court_b.topic.replace("table1-", "court-")))
            after = latest_snapshot(table2, 2)
            assert (after["table"], after["game_data"]["score2"]) == (2, 1)
            publish(device, TASMOTA["button1_single"])  # the table 1 board
            assert latest_snapshot(table1, 2)["game_data"]["score1"] == 1
            time.sleep(QUIET)
        by_topic = {m.topic for m in commands_seen.messages if b"btn-" in m.payload}
        assert by_topic == {topics.commands("alpha"), topics.commands("alpha", 2)}
        assert service.matches["alpha", 2].rev == 2 and service.matches["alpha"].rev == 2
    finally:
        service.stop()


def test_rallycast_buttons_command_runs_boards_until_sigint(any_broker, tmp_path) -> None:
    config = tmp_path / "buttons.toml"
    config.write_text(
        f"""
broker_url = "mqtt://{any_broker.host}:{any_broker.mqtt_port}"
[[boards]]
name = "esp32"
club = "alpha"
kind = "raw"
topic = "boards/alpha/table1/press"
[boards.payloads]
home = "1+"
opponent = "2+"
""",
        encoding="utf-8",
    )
    service_view = any_broker.recorder([topics.commands("alpha")], user=any_broker.service_user)
    with buttons_process(any_broker, config) as process:
        device = any_broker.client("alpha")
        device.publish("boards/alpha/table1/press", b"opponent", qos=1).wait_for_publish(WAIT)
        received = service_view.wait_for(timeout=WAIT)
        assert json.loads(received.payload)["side"] == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
    stderr = process.stderr.read() if process.stderr else ""
    assert "board esp32: button opponent single" in stderr
    assert "Traceback" not in stderr


def test_left_end_button_scores_for_whoever_stands_there_after_the_ends_change(
    any_broker, tmp_path
) -> None:
    ends_board = {
        "name": "ends",
        "club": "alpha",
        "kind": "tasmota",
        "topic": "table1-buttons",
        "buttons": {"1": "left", "2": "right"},
        "debounce_ms": 0,
    }
    with (
        service_running(any_broker, tmp_path / "service"),
        running(any_broker, ends_board) as runner,
    ):
        spectator = any_broker.recorder([topics.game("alpha")])
        scorer = any_broker.client("alpha")
        device = any_broker.client("alpha")
        start = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3, "id": "s1"}
        scorer.publish(topics.commands("alpha"), json.dumps(start), qos=1)
        assert latest_snapshot(spectator, 1)["left_side"] == 1
        for rev in range(2, 13):  # Ann (side 1, at the left end) wins game 1 11-0
            publish(device, TASMOTA["button1_single"])
            snapshot = latest_snapshot(spectator, rev)
        assert snapshot["games"] == [[11, 0]] and snapshot["left_side"] == 2

        board = runner.links["alpha"].boards[0]
        deadline = time.monotonic() + WAIT
        while board.left_side != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        publish(device, TASMOTA["button1_single"])  # the left end is Bob's now
        game2 = latest_snapshot(spectator, 13)
        assert (game2["game_no"], game2["game_data"]["score1"], game2["game_data"]["score2"]) == (
            2,
            0,
            1,
        )


# --- nothing invented: a device's periodic resend; end-to-end delivery of presses ----------


class Verdicts:
    """Every verdict the runner reaches, to wait on instead of sleeping."""

    def __init__(self) -> None:
        import queue

        self.queue: queue.Queue = queue.Queue()

    def __call__(self, board, message, verdict) -> None:
        self.queue.put(verdict)

    def next(self, timeout: float = WAIT):
        return self.queue.get(timeout=timeout)


SHELLY_IX3 = {
    "name": "ix3",
    "club": "alpha",
    "kind": "shelly1",
    "device": "shellyix3-XXXX",
    "buttons": {"0": 1},
}
IX3_TOPIC = "shellies/alpha/shellyix3-XXXX/input_event/0"
IX3_EVENT = b'{"event":"S","event_cnt":4}'


def ix3_runner(endpoint, clock, verdicts, state_dir) -> ButtonRunner:
    return ButtonRunner(
        parse_boards([SHELLY_IX3]),
        broker=endpoint.url(),
        passwords={"alpha": endpoint.users["alpha"]},
        connect_timeout=WAIT,
        clock=clock,
        on_verdict=verdicts,
        state_dir=state_dir,
    )


def test_a_shellys_periodic_resend_never_scores_in_this_match_nor_the_next(
    any_broker, tmp_path
) -> None:
    # The timeline: match A, the Shelly's event at t0, its resends at +30 s, +60 s
    # and +90 s, match B force-started at +35 s. Only the press at t0 scores (in A).
    now = [T0]
    verdicts = Verdicts()
    spectator = any_broker.recorder([topics.game("alpha")])
    scorer = any_broker.recorder([topics.replies("alpha")], user="alpha")
    device = any_broker.client("alpha")

    def command(body: dict, rev: int) -> dict:
        scorer.client.publish(topics.commands("alpha"), json.dumps(body), qos=1)
        return latest_snapshot(spectator, rev)

    def device_event(at: float):
        now[0] = T0 + at
        device.publish(IX3_TOPIC, IX3_EVENT, qos=1).wait_for_publish(WAIT)
        return verdicts.next()

    state_dir = tmp_path / "buttons"
    with service_running(any_broker, tmp_path / "service"):
        start = {"cmd": "start", "player1": "Ann", "player2": "Bob"}
        match_a = command(dict(start, id="a"), 1)["match_id"]
        runner = ix3_runner(any_broker, lambda: now[0], verdicts, state_dir)
        with runner:
            assert device_event(0).command is not None
            assert latest_snapshot(spectator, 2)["game_data"]["score1"] == 1
            assert device_event(30).command is None
            scorer.client.publish(
                topics.commands("alpha"), json.dumps(dict(start, id="b", force=True)), qos=1
            )
            match_b = json.loads(
                spectator.wait_for(
                    lambda m: m.payload and json.loads(m.payload)["match_id"] != match_a,
                    timeout=WAIT,
                ).payload
            )
            for at in (60, 90):
                verdict = device_event(at)
                assert verdict.command is None, (at, verdict.reason)
        # A restart of `rallycast buttons` remembers the counter (its state dir).
        with ix3_runner(any_broker, lambda: now[0], verdicts, state_dir):
            verdict = device_event(120)
            assert verdict.command is None and "has not moved" in verdict.reason
            device.publish(IX3_TOPIC, b'{"event":"S","event_cnt":5}', qos=1)
            assert verdicts.next().command is not None  # a real press still counts
            shown = json.loads(
                spectator.wait_for(
                    lambda m: (
                        m.payload
                        and json.loads(m.payload)["match_id"] != match_a
                        and json.loads(m.payload)["rev"] == 2
                    ),
                    timeout=WAIT,
                ).payload
            )
        assert shown["match_id"] == match_b["match_id"]
        assert (shown["game_data"]["score1"], shown["game_data"]["score2"]) == (1, 0)
    saved = json.loads((state_dir / "buttons-alpha.json").read_text())
    assert saved["ix3"][f"{IX3_TOPIC} 0"]["serial"] == "5"
    assert oct((state_dir / "buttons-alpha.json").stat().st_mode & 0o777) == "0o600"


def test_a_press_is_resent_with_its_id_until_the_service_answers(any_broker, tmp_path) -> None:
    # The service is not there when the press is made (a fresh data dir: no session at the
    # broker keeps the command for it). The runner resends the same id until the reply.
    verdicts = Verdicts()
    device = any_broker.client("alpha")
    spectator = any_broker.recorder([topics.game("alpha")])
    runner = ButtonRunner(
        parse_boards([TASMOTA_BOARD]),
        broker=any_broker.url(),
        passwords={"alpha": any_broker.users["alpha"]},
        connect_timeout=WAIT,
        on_verdict=verdicts,
    )
    with runner:
        link = runner.links["alpha"]
        publish(device, TASMOTA["button1_single"])
        press_id = verdicts.next().command["id"]
        assert link.pending() == [press_id]
        time.sleep(1.0)  # at least one resend goes nowhere meanwhile
        with service_running(any_broker, tmp_path / "service"):
            deadline = time.monotonic() + 10
            while link.pending() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert link.pending() == [] and link.done == 1  # refused (no match): answered
        assert link.given_up == 0
    spectator.assert_nothing(0.3)  # no match was invented by the resends
