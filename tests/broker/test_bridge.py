"""The sample bridge of docs/broker.md, run as written: a club's mosquitto (our config plus
the sample) bridged, with the club's own user, to a central broker: the embedded one or a
mosquitto (``any_broker``)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.brokers import serve_mosquitto
from tests.support.endpoints import BrokerEndpoint

DOC = Path(__file__).resolve().parents[2] / "docs" / "broker.md"


def sample_bridge_config() -> str:
    blocks = re.findall(r"```conf\n(.*?)```", DOC.read_text(), flags=re.S)
    sample = [block for block in blocks if block.startswith("# rallycast-bridge-sample")]
    assert len(sample) == 1, "docs/broker.md lost its bridge sample"
    return sample[0]


@pytest.fixture
def club_broker(any_broker, broker_test_users, tmp_path):
    """The hall's broker (mosquitto, our config) for club `alpha`, bridged to any_broker."""
    config = (
        sample_bridge_config()
        .replace("riverside", "alpha")
        .replace("scores.example.org:1883", f"127.0.0.1:{any_broker.mqtt_port}")
        .replace("CHANGE-ME", any_broker.users["alpha"])
    )
    if any_broker.kind == "amqtt":
        # as docs/broker.md says for an embedded central broker (saves a refused attempt)
        config = config.replace("try_private true", "try_private false")
    yield from serve_mosquitto(tmp_path / "club-broker", broker_test_users, config)


def bridge_up(central: BrokerEndpoint, club: BrokerEndpoint, snapshot: bytes):
    """Publish a snapshot centrally and wait until the hall sees it: the bridge is up.
    The hall spectator subscribes first, so it gets the snapshot whether the bridge
    subscribed before the publish (live) or after (retained)."""
    hall = club.recorder(["clubs/alpha/game"], transport="websockets")
    service = central.recorder(["clubs/+/game/cmd"], user=central.service_user)
    service.client.publish("clubs/alpha/game", snapshot, qos=1, retain=True).wait_for_publish(5)
    hall.wait_for(lambda m: m.payload == snapshot, timeout=15)
    return hall, service


def test_sample_bridge_carries_commands_out_and_snapshots_in(any_broker, club_broker):
    hall, service = bridge_up(any_broker, club_broker, b'{"rev": 5}')
    # a scorer in the hall sends a command to the club broker: it reaches the central service
    club_broker.client("alpha").publish("clubs/alpha/game/cmd", b"1+", qos=1).wait_for_publish(5)
    command = service.wait_for(timeout=10)
    assert (command.topic, command.payload) == ("clubs/alpha/game/cmd", b"1+")
    # the service's reply and the next snapshot come back live
    alpha_in_hall = club_broker.recorder(["clubs/alpha/game/reply"], user="alpha")
    time.sleep(0.3)  # the subscription is local; the bridge already carries the topic
    service.client.publish("clubs/alpha/game/reply", b'{"ok": true}', qos=1)
    service.client.publish("clubs/alpha/game", b'{"rev": 6}', qos=1, retain=True)
    hall.wait_for(lambda m: m.payload == b'{"rev": 6}', timeout=10)
    assert alpha_in_hall.wait_for(timeout=10).payload == b'{"ok": true}'


def test_a_late_spectator_in_the_hall_gets_the_newest_snapshot(any_broker, club_broker, request):
    if any_broker.kind == "amqtt":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="MQTT 3.1.1 clears the retain flag on live deliveries and the embedded "
                "broker does not speak mosquitto's bridge extension (try_private), so a "
                "snapshot that crosses the bridge live is not retained in the hall",
            )
        )
    hall, service = bridge_up(any_broker, club_broker, b'{"rev": 5}')
    service.client.publish("clubs/alpha/game", b'{"rev": 6}', qos=1, retain=True)
    hall.wait_for(lambda m: m.payload == b'{"rev": 6}', timeout=10)
    late = club_broker.recorder(["clubs/alpha/game"])
    assert late.wait_for(timeout=3).payload == b'{"rev": 6}'


def test_bridge_does_not_open_other_clubs(any_broker, club_broker):
    _hall, service = bridge_up(any_broker, club_broker, b"up")
    # beta's commands typed at alpha's hall broker are not bridged: the service sees only
    # alpha's sentinel
    club_broker.client("beta").publish("clubs/beta/game/cmd", b"nope", qos=1).wait_for_publish(5)
    club_broker.client("alpha").publish(
        "clubs/alpha/game/cmd", b"sentinel", qos=1
    ).wait_for_publish(5)
    service.wait_for(lambda m: m.payload == b"sentinel", timeout=10)
    assert [m.payload for m in service.messages] == [b"sentinel"]
