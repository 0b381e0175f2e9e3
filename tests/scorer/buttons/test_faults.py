"""Faults of the buttons runner found by attacking it (see tests/scorer/test_service_faults.py
for the service's). Real brokers on 127.0.0.1, bounded waits."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from scorer.client import stop_loop
from tests.scorer.buttons.test_runner import TASMOTA_BOARD, running


def test_a_spectator_cannot_throw_the_buttons_runner_off_the_broker(any_broker) -> None:
    with running(any_broker, TASMOTA_BOARD) as runner:
        link = runner.links["alpha"]
        lost: list[float] = []
        previous = link.client.on_disconnect

        def on_disconnect(*args):  # type: ignore[no-untyped-def]
            lost.append(time.monotonic())
            if previous is not None:
                previous(*args)

        link.client.on_disconnect = on_disconnect
        intruder = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="rallycast-buttons-alpha",  # guessed from the club id alone (the old id)
            protocol=mqtt.MQTTv311,
        )
        intruder.connect(any_broker.host, any_broker.mqtt_port, 30)
        intruder.loop_start()
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not lost:
                time.sleep(0.05)
        finally:
            intruder.disconnect()
            stop_loop(intruder)
        assert not lost, "an anonymous client with a guessed id threw the runner off"
