"""The service and the broker going away mid-match: nothing accepted is lost, commands sent
meanwhile are applied once, undo still reaches back. Real processes, real SIGKILL."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from scorer import topics
from scorer.client import stop_loop
from tests.scorer.servicekit import (
    Scorer,
    ServiceProcess,
    Watcher,
    current_snapshot,
    service_running,
    wait_for,
)

START = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}
PROCESS_START = 20.0  # seconds: a Python subprocess on a busy 2-core machine


def scores(snapshot: dict) -> tuple[int, int]:
    return snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]


def wait_status(watcher: Watcher, wanted: bytes, timeout: float = PROCESS_START) -> None:
    wait_for(lambda: watcher.next(topics.SCORER_STATUS, timeout).payload == wanted, timeout)


@pytest.fixture
def status(any_broker_process):
    watcher = Watcher(any_broker_process, topics.SCORER_STATUS)
    yield watcher
    watcher.close()


def test_kill_9_mid_match_loses_nothing_and_undo_still_works(any_broker_process, tmp_path, status):
    broker = any_broker_process
    service = ServiceProcess(broker, tmp_path / "service")
    alpha = Scorer(broker, "alpha")
    try:
        service.start()
        wait_status(status, b"online")
        alpha.send(START)
        for side in (1, 1, 2, 1):
            assert alpha.send({"cmd": "point", "side": side})["ok"]
        before = current_snapshot(broker, "alpha")
        assert (before["rev"], scores(before)) == (5, (3, 1))

        service.kill()
        wait_status(status, b"offline", 10)  # the broker published the last will
        # Sent while the service is away: the broker keeps it for the service's session.
        alpha.send_raw(json.dumps({"id": "while-away", "cmd": "point", "side": 2}))
        service.start()
        wait_status(status, b"online")
        # The last press before the kill may come again first (its PUBACK died with the
        # service): reply_to checks it is answered as before, not applied twice.
        reply = alpha.reply_to("while-away", PROCESS_START)
        assert (reply["ok"], reply["rev"]) == (True, 6)
        assert reply["match_id"] == before["match_id"]

        assert alpha.send("undo")["rev"] == 7  # takes back the point sent while away
        assert alpha.send("undo")["rev"] == 8  # and one from before the kill
        after = current_snapshot(broker, "alpha")
        assert scores(after) == (2, 1) and after["match_id"] == before["match_id"]
        assert service.stop() == 0
    finally:
        alpha.close()
        service.stop()
        print(service.output())


class Board:
    """A button board: persistent session (fixed client id, clean_session False), QoS 1, an
    id per press. Its network loop is driven by the test, so the test decides when it comes
    back after the broker restarts; until then paho keeps its presses queued."""

    def __init__(self, broker) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="board-alpha-1",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set("alpha", broker.users["alpha"])
        self.client.connect(broker.host, broker.mqtt_port)
        self.client.loop_start()
        wait_for(self.client.is_connected)

    def lose_broker(self) -> None:
        wait_for(lambda: not self.client.is_connected())
        stop_loop(self.client)  # no automatic reconnect: the test brings it back

    def press(self, number: int, side: int) -> None:
        command = {"id": f"board-press-{number}", "cmd": "point", "side": side}
        self.client.publish(topics.commands("alpha"), json.dumps(command), qos=1)

    def come_back(self) -> None:
        self.client.reconnect()
        self.client.loop_start()
        wait_for(self.client.is_connected)

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


def start_match_with_one_point(broker) -> None:
    alpha = Scorer(broker, "alpha")
    try:
        alpha.send(START)
        alpha.send("1+")
    finally:
        alpha.close()


def assert_presses_applied_once(broker) -> None:
    snapshot = wait_for(
        lambda: (s := current_snapshot(broker, "alpha", 0.5)) and s["rev"] >= 5 and s,
        PROCESS_START,
    )
    assert snapshot["rev"] == 5 and scores(snapshot) == (2, 2)
    check = Scorer(broker, "alpha")  # a resend of a press changes nothing more
    try:
        assert check.send({"id": "board-press-3", "cmd": "point", "side": 1})["rev"] == 5
        assert current_snapshot(broker, "alpha")["rev"] == 5
    finally:
        check.close()


def press_while_the_broker_restarts(broker, board: Board) -> None:
    """The broker stops; the board, which lost it, queues presses 1-3 (sides 2, 2, 1); the
    broker starts again on the same ports and store."""
    broker.stop()
    board.lose_broker()
    for number, side in enumerate((2, 2, 1), start=1):
        board.press(number, side)
    broker.start()


def test_presses_queued_by_a_board_during_a_broker_restart_are_applied_once(
    any_broker_process, tmp_path
):
    broker = any_broker_process
    with service_running(broker, tmp_path / "service") as service:
        start_match_with_one_point(broker)
        board = Board(broker)
        try:
            press_while_the_broker_restarts(broker, board)
            wait_for(service.connected.is_set, PROCESS_START)  # the service reconnects itself
            board.come_back()
            assert_presses_applied_once(broker)
        finally:
            board.close()


def test_presses_that_reach_a_restarted_broker_before_the_service_are_kept_for_it(
    any_broker_process, tmp_path
):
    broker = any_broker_process
    data_dir = tmp_path / "service"
    with service_running(broker, data_dir):
        start_match_with_one_point(broker)
        board = Board(broker)
    try:
        press_while_the_broker_restarts(broker, board)
        board.come_back()  # delivered to the broker while the service is still away
        with service_running(broker, data_dir):
            assert_presses_applied_once(broker)
    finally:
        board.close()
