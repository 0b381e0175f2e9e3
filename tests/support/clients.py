"""MQTT clients for tests: a paho subscriber that records (waits are on the message or the
SUBACK, bounded in time), and the raw client of ``rallycast/bench/wire.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from rallycast.bench.wire import RawClient, raw_client, ws_frame, ws_socket

__all__ = ["RawClient", "Received", "Recorder", "raw_client", "ws_frame", "ws_socket"]


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Recorder:
    """A connected subscriber that records everything it receives."""

    def __init__(self) -> None:
        self.client: mqtt.Client  # set by BrokerEndpoint.recorder once connected
        self.messages: list[Received] = []
        self.granted: list[int] = []
        self._changed = threading.Condition()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(
                Received(message.topic, message.payload, message.qos, bool(message.retain))
            )
            self._changed.notify_all()

    def subscribe(self, topics: list[str], qos: int = 1, timeout: float = 5.0) -> list[int]:
        """Subscribe and wait for the SUBACK; returns its codes (0-2 granted QoS, 128 refused)."""
        done = threading.Event()
        codes: list[int] = []

        def on_subscribe(_c: Any, _u: Any, _mid: int, reason_codes: list[Any], _p: Any) -> None:
            codes.extend(int(getattr(rc, "value", rc)) for rc in reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        result, _mid = self.client.subscribe([(topic, qos) for topic in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        assert done.wait(timeout), f"no SUBACK for {topics} within {timeout} s"
        self.granted = codes
        return codes

    def wait_for(
        self, match: Callable[[Received], bool] = lambda _m: True, timeout: float = 5.0
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:60]) for m in self.messages]
                    raise AssertionError(f"no matching message within {timeout} s; got {seen}")
                self._changed.wait(left)

    def assert_nothing(self, timeout: float = 1.0) -> None:
        time.sleep(timeout)
        with self._changed:
            assert not self.messages, f"expected no message, got {self.messages}"
