"""Boards follow their club's device topics only (issue 9): every decoder a board config builds
subscribes under ``<root>/<club>/``, reads presses there and nothing of another club; a board
configured on the old shared topics (or another club's) is a config error naming the setting
and the value to use; and a Tasmota press on a club's topic scores through `rallycast buttons`
on the embedded broker, while another club's user publishing the same press scores nothing.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from scorer import topics
from scorer.buttons import parse_boards
from scorer.buttons.boards import parse_board
from scorer.config import ConfigError
from tests.scorer.buttons import payloads
from tests.scorer.buttons.payloads import for_club
from tests.scorer.buttons.test_runner import (
    QUIET,
    WAIT,
    buttons_process,
    latest_snapshot,
)
from tests.scorer.servicekit import service_running


# One board per kind, as a club would configure it after issue 9 (the club level filled in).
def boards_for(club: str) -> list[dict]:
    return [
        {"club": club, "kind": "tasmota", "topic": "table1-buttons", "side": 1},
        {"club": club, "kind": "esphome", "topic_prefix": f"boards/{club}/table1", "side": 1},
        {"club": club, "kind": "zigbee2mqtt", "device": "table1-left", "side": 1},
        {"club": club, "kind": "shelly1", "device": "shellybutton1-A4CF12F45301", "side": 1},
        {"club": club, "kind": "shelly2", "topic_prefix": f"shellies/{club}/table1", "side": 1},
        {"club": club, "kind": "raw", "topic": f"boards/{club}/table1/press"},
    ]


# A recorded press per kind (tests/scorer/buttons/payloads), topic without the club level.
PRESSES = {
    "tasmota": payloads.TASMOTA["button1_single"],
    "esphome": payloads.ESPHOME["left_on"],
    "zigbee2mqtt": payloads.ZIGBEE["state_single"],
    "shelly1": payloads.SHELLY1["button_s"],
    "shelly2": payloads.SHELLY2["single_push"],
    "raw": payloads.RAW["home"],
}


def scoped(message, club: str):
    return for_club({"m": message}, club)["m"]


def test_every_kind_follows_only_its_clubs_device_topics():
    for table in boards_for("riverside"):
        spec = parse_board(table)
        for topic_filter in spec.decoder.subscriptions():
            assert topic_filter.startswith(topics.device_prefixes("riverside")), topic_filter


def test_every_kind_reads_a_press_on_its_clubs_topic_and_not_on_another_clubs():
    for table in boards_for("riverside"):
        decoder = parse_board(table).decoder
        press = PRESSES[table["kind"]]
        own = scoped(press, "riverside")
        assert decoder.decode(own), (table["kind"], own.topic)
        for elsewhere in (press, scoped(press, "harbour")):  # shared root, another club
            assert not decoder.decode(elsewhere), (table["kind"], elsewhere.topic)


@given(
    club=st.from_regex(r"[a-z0-9][a-z0-9-]{0,11}", fullmatch=True),
    other=st.from_regex(r"[a-z0-9][a-z0-9-]{0,11}", fullmatch=True),
)
def test_no_board_of_one_club_follows_a_topic_of_another(club, other):
    if club == other:
        return
    try:
        specs = [parse_board(t) for t in boards_for(club)]
    except ConfigError:  # a reserved club id: refused for every board, nothing to follow
        return
    for spec in specs:
        for topic_filter in spec.decoder.subscriptions():
            for prefix in topics.device_prefixes(other):
                assert not topic_matches_sub(topic_filter, prefix + "x/y/z")
            assert topics.device_club_of(topic_filter.replace("+", "x")) == club


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (  # ESPHome left on the old shared prefix
            {"kind": "esphome", "topic_prefix": "boards/table1", "side": 1},
            ["is not under club 'riverside'", "topic_prefix", "'boards/riverside/table1'"],
        ),
        (  # ESPHome's default prefix (the node name)
            {"kind": "esphome", "topic_prefix": "table1", "side": 1},
            ["ESPHome's mqtt topic_prefix to 'boards/riverside/table1'"],
        ),
        (
            {"kind": "shelly2", "topic_prefix": "shellyplusi4-a8032ab1", "side": 1},
            ["the Shelly's MQTT topic prefix to 'boards/riverside/shellyplusi4-a8032ab1'"],
        ),
        (
            {"kind": "tasmota", "topic": "t1", "full_topic": "%prefix%/%topic%/", "side": 1},
            ["'stat/t1/+'", "FullTopic to '%prefix%/riverside/%topic%/'", "leave full_topic out"],
        ),
        (
            {"kind": "zigbee2mqtt", "device": "b1", "base_topic": "zigbee2mqtt", "side": 1},
            ["'zigbee2mqtt/b1'", "base_topic to 'zigbee2mqtt/riverside'"],
        ),
        (  # another club's topics
            {"kind": "raw", "topic": "boards/harbour/table1/press"},
            ["'boards/harbour/table1/press' is not under club 'riverside'", "boards/riverside/#"],
        ),
        (
            {"kind": "raw", "topic": "stat/+/RESULT"},
            ["'stat/+/RESULT' is not under club 'riverside'"],
        ),
    ],
)
def test_a_board_outside_its_clubs_topics_is_refused_naming_the_value_to_use(table, words):
    with pytest.raises(ConfigError) as caught:
        parse_boards([{"name": "b", "club": "riverside", **table}])
    message = str(caught.value)
    assert message.startswith("board 'b': ")
    for word in words:
        assert word in message, message


# -- end to end: a Tasmota press through `rallycast buttons` on the embedded broker -----------


def test_tasmota_press_on_the_clubs_topic_scores_and_another_clubs_fake_does_not(
    amqtt_broker, tmp_path
):
    config = tmp_path / "buttons.toml"
    config.write_text(
        f"""
broker_url = "mqtt://{amqtt_broker.host}:{amqtt_broker.mqtt_port}"
[[boards]]
name = "table1"
club = "alpha"
kind = "tasmota"
topic = "table1"          # FullTopic %prefix%/alpha/%topic%/ on the device
debounce_ms = 0
[boards.buttons]
1 = 1
2 = 2
""",
        encoding="utf-8",
    )
    press = b'{"Button1":{"Action":"SINGLE"}}'
    with service_running(amqtt_broker, tmp_path / "service"):
        spectator = amqtt_broker.recorder([topics.game("alpha")])
        scorer = amqtt_broker.client("alpha")
        start = {"cmd": "start", "player1": "Ann", "player2": "Bob", "id": "start-1"}
        scorer.publish(topics.commands("alpha"), json.dumps(start), qos=1)
        assert latest_snapshot(spectator, 1)["game_data"]["score1"] == 0
        with buttons_process(amqtt_broker, config) as process:
            # club beta's user fakes alpha's press; a device left on the shared topic too
            faker = amqtt_broker.client("beta")
            for topic in ("stat/alpha/table1/RESULT", "stat/table1/RESULT"):
                faker.publish(topic, press, qos=1).wait_for_publish(WAIT)
            amqtt_broker.client("alpha").publish(
                "stat/table1/RESULT", press, qos=1
            ).wait_for_publish(WAIT)
            # the real device, scoped to its club
            device = amqtt_broker.client("alpha")
            device.publish("stat/alpha/table1/RESULT", press, qos=1).wait_for_publish(WAIT)
            after = latest_snapshot(spectator, 2)["game_data"]
            assert (after["score1"], after["score2"]) == (1, 0)
            time.sleep(QUIET)  # the fakes, had they counted, would show as rev 3 and 4
            revs = [json.loads(m.payload)["rev"] for m in spectator.messages if m.payload]
            assert max(revs) == 2
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=5) == 0
    stderr = process.stderr.read() if process.stderr else ""
    assert "Traceback" not in stderr
    assert "stat/alpha/table1/+" in stderr  # the topic it follows, in its start-up log
