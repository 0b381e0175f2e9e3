"""The status tells the truth: ``online`` means commands are being applied. A service whose
connection stops delivering (a frozen proxy between it and the broker) says ``stalled``
within ~6 s and ``online`` again once messages flow."""

from __future__ import annotations

import time

from amqtt.contexts import Action

import broker.acl as acl
from scorer import topics
from scorer.service import PROBE_INTERVAL, PROBE_TIMEOUT, ScorerService
from tests.scorer.servicekit import (
    WAIT,
    FreezableProxy,
    Scorer,
    Watcher,
    service_settings,
)

START = {"cmd": "start", "player1": "Ann", "player2": "Bob"}


def next_status(watcher: Watcher, timeout: float) -> bytes:
    return watcher.next(topics.SCORER_STATUS, timeout).payload


def test_a_service_whose_subscription_stalls_says_stalled_then_online(any_broker, tmp_path):
    proxy = FreezableProxy(any_broker.host, any_broker.mqtt_port)
    status = Watcher(any_broker, topics.SCORER_STATUS)
    alpha = Scorer(any_broker, "alpha")
    service = ScorerService(
        service_settings(any_broker, tmp_path / "service"),
        url=f"mqtt://127.0.0.1:{proxy.port}",
        password=any_broker.users[any_broker.service_user],
    )
    service.start()
    try:
        assert service.wait_until_connected(WAIT)
        assert next_status(status, WAIT) == b"online"
        # Both brokers' ACLs let the service read its probe; without it there is no stalled.
        assert service._probe_enabled
        assert alpha.send(START)["ok"]
        # Healthy: probes flow, the status stays online for longer than the probe timeout.
        assert status.nothing_on(topics.SCORER_STATUS, PROBE_TIMEOUT + 2)

        proxy.freeze()  # the service still publishes, but nothing reaches it
        frozen_at = time.monotonic()
        assert next_status(status, 10) == b"stalled"
        took = time.monotonic() - frozen_at
        # About 5 s; the rest is room for a loaded machine to run the probe's timer.
        assert took <= PROBE_INTERVAL + PROBE_TIMEOUT + 4.0, took
        alpha.send_raw('{"id": "during", "cmd": "point", "side": 1}')

        proxy.thaw()
        assert next_status(status, 10) == b"online"
        reply = alpha.reply_to("during", 10)  # after the START's reply, if its PUBACK was held
        assert (reply["ok"], reply["rev"]) == (True, 2)
    finally:
        service.stop()
        proxy.close()
        status.close()
        alpha.close()
    print(f"stalled reported {took:.1f} s after the freeze")


def test_a_healthy_service_stays_online_and_its_probes_are_not_retained(any_broker, tmp_path):
    status = Watcher(any_broker, topics.SCORER_STATUS)
    service = ScorerService(
        service_settings(any_broker, tmp_path / "service"),
        password=any_broker.users[any_broker.service_user],
    )
    service.start()
    try:
        assert service.wait_until_connected(WAIT)
        assert next_status(status, WAIT) == b"online"
        assert status.nothing_on(topics.SCORER_STATUS, PROBE_TIMEOUT + 3)
        assert service.status == "online"
    finally:
        service.stop()
        status.close()
    later = Watcher(any_broker, "rallycast/status/#")
    try:
        retained = later.pending("rallycast/status/scorer")
        assert later.nothing_on(service._probe_topic, 0.5)
        assert all(m.payload == b"offline" for m in retained)
    finally:
        later.close()


def test_a_service_that_cannot_keep_up_with_its_commands_says_stalled(any_broker, tmp_path):
    # Commands and probes come through the same paho thread: while one command takes 8 s
    # (a slow disk), the probes wait behind it, and the status says so.
    import threading

    slow = threading.Event()

    def clock() -> float:
        if slow.is_set():
            slow.clear()
            time.sleep(PROBE_INTERVAL + PROBE_TIMEOUT + 3)
        return time.time()

    status = Watcher(any_broker, topics.SCORER_STATUS)
    alpha = Scorer(any_broker, "alpha")
    service = ScorerService(
        service_settings(any_broker, tmp_path / "service"),
        password=any_broker.users[any_broker.service_user],
        clock=clock,
    )
    service.start()
    try:
        assert service.wait_until_connected(WAIT)
        assert next_status(status, WAIT) == b"online"
        assert service._probe_enabled
        alpha.send(START)
        slow.set()
        alpha.send_raw('{"id": "slow", "cmd": "point", "side": 1}')
        assert next_status(status, 10) == b"stalled"
        assert alpha.reply_to("slow", 15)["ok"]
        assert next_status(status, 10) == b"online"
    finally:
        service.stop()
        status.close()
        alpha.close()


def test_a_refused_subscription_is_tried_again_and_the_status_says_online_only_once_granted(
    amqtt_broker, tmp_path, monkeypatch
):
    """A broker that refuses the service's games filter for a moment (NATS while JetStream
    elects its leaders after a node loss: loop run B3 on 3fd569f) must not leave the service
    connected and deaf with the status offline: it subscribes again, with the reconnect
    delays, and says online once the broker grants the filters."""
    real = acl.RallycastAccessPlugin.topic_filtering
    refused: list[float] = []

    async def refusing_twice(self, *, session=None, topic=None, action=None):  # type: ignore[no-untyped-def]
        if action == Action.SUBSCRIBE and topic == topics.ALL_GAMES and len(refused) < 2:
            refused.append(time.monotonic())
            return False
        return await real(self, session=session, topic=topic, action=action)

    monkeypatch.setattr(acl.RallycastAccessPlugin, "topic_filtering", refusing_twice)
    status = Watcher(amqtt_broker, topics.SCORER_STATUS)
    alpha = Scorer(amqtt_broker, "alpha")
    service = ScorerService(
        service_settings(amqtt_broker, tmp_path / "service"),
        password=amqtt_broker.users[amqtt_broker.service_user],
    )
    service.start()
    try:
        assert service.wait_until_connected(6 * WAIT), "the service never subscribed again"
        assert len(refused) == 2
        # The reconnect delays: 1 s, then 2 s (scorer/timing.py).
        assert refused[1] - refused[0] >= 0.9
        assert next_status(status, WAIT) == b"online"
        assert alpha.send(START)["rev"] == 1
    finally:
        service.stop()
        alpha.close()
        status.close()
