"""Each device family's decoder against recorded example payloads (tests/scorer/payloads/),
written from the vendors' documented formats."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer.buttons.decoders import (
    BadPayload,
    DeviceMessage,
    ESPHomeDecoder,
    Press,
    RawDecoder,
    ShellyGen1Decoder,
    ShellyGen2Decoder,
    TasmotaDecoder,
    Zigbee2MqttDecoder,
    split_zigbee_action,
)
from tests.scorer.payloads import ESPHOME, RAW, SHELLY1, SHELLY2, TASMOTA, ZIGBEE

# --- Tasmota ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "button", "gesture"),
    [
        ("button1_single", "1", "single"),
        ("button2_single", "2", "single"),
        ("button1_double", "1", "double"),
        ("button1_triple", "1", "triple"),
        ("button1_quad", "1", "quad"),
        ("button1_penta", "1", "penta"),
        ("button2_hold", "2", "hold"),
        ("button2_single_setoption4", "2", "single"),
        ("pre91_button1_single", "1", "single"),
        ("pre91_button2_hold", "2", "hold"),
    ],
)
def test_tasmota_decodes_each_documented_action(example: str, button: str, gesture: str) -> None:
    decoder = TasmotaDecoder("table1-buttons")
    assert decoder.decode(TASMOTA[example]) == [Press(button, gesture)]


@pytest.mark.parametrize("example", ["relay_power_result", "relay_power_state", "other_device"])
def test_tasmota_relay_states_and_other_devices_are_not_presses(example: str) -> None:
    assert TasmotaDecoder("table1-buttons").decode(TASMOTA[example]) == []


def test_tasmota_follows_its_stat_topics_and_a_custom_full_topic() -> None:
    assert TasmotaDecoder("table1-buttons").subscriptions() == ["stat/table1-buttons/+"]
    custom = TasmotaDecoder("t1", full_topic="boards/%topic%/%prefix%/")
    assert custom.subscriptions() == ["boards/t1/stat/+"]
    message = DeviceMessage("boards/t1/stat/RESULT", b'{"Button3":{"Action":"SINGLE"}}')
    assert custom.decode(message) == [Press("3", "single")]


def test_tasmota_action_that_is_not_a_word_is_a_bad_payload() -> None:
    message = DeviceMessage("stat/table1-buttons/RESULT", b'{"Button1":{"Action":7}}')
    with pytest.raises(BadPayload, match="action"):
        TasmotaDecoder("table1-buttons").decode(message)


def test_tasmota_result_that_is_not_json_is_a_bad_payload() -> None:
    message = DeviceMessage("stat/table1-buttons/RESULT", b"Button1 SINGLE")
    with pytest.raises(BadPayload, match="not JSON"):
        TasmotaDecoder("table1-buttons").decode(message)


# --- ESPHome ------------------------------------------------------------------------------


def test_esphome_on_is_a_press_of_the_named_sensor_and_off_its_release() -> None:
    decoder = ESPHomeDecoder("boards/table1")
    assert decoder.subscriptions() == ["boards/table1/binary_sensor/+/state"]
    assert decoder.decode(ESPHOME["left_on"]) == [Press("left_button", "single", level="on")]
    assert decoder.decode(ESPHOME["right_on"]) == [Press("right_button", "single", level="on")]
    # The release carries the state, so an ON published again without an OFF is no press.
    assert decoder.decode(ESPHOME["left_off"]) == [Press("left_button", "release", level="off")]
    assert decoder.decode(ESPHOME["status_online"]) == []


def test_esphome_state_other_than_on_off_is_a_bad_payload() -> None:
    with pytest.raises(BadPayload, match="neither ON nor OFF"):
        ESPHomeDecoder("boards/table1").decode(ESPHOME["not_a_state"])


# --- Zigbee2MQTT --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "button", "gesture"),
    [
        ("state_single", "1", "single"),
        ("state_double", "1", "double"),
        ("state_long", "1", "hold"),
        ("state_hold", "1", "hold"),
        ("state_release", "1", "release"),
        ("aqara_single_left", "left", "single"),
        ("aqara_double_right", "right", "double"),
        ("ikea_on", "on", "single"),
        ("ikea_brightness_move_up", "brightness_move_up", "single"),
        ("sonoff_single_button_2", "2", "single"),
    ],
)
def test_zigbee2mqtt_state_action_names_become_button_and_gesture(
    example: str, button: str, gesture: str
) -> None:
    decoder = Zigbee2MqttDecoder("table1-left")
    assert decoder.decode(ZIGBEE[example]) == [Press(button, gesture, via="state")]


def test_zigbee2mqtt_action_topic_carries_the_same_press_marked_as_the_other_topic() -> None:
    decoder = Zigbee2MqttDecoder("table1-left")
    assert decoder.subscriptions() == ["zigbee2mqtt/table1-left", "zigbee2mqtt/table1-left/action"]
    assert decoder.decode(ZIGBEE["action_single"]) == [Press("1", "single", via="action")]


@pytest.mark.parametrize(
    "example", ["state_empty_action", "action_empty", "state_battery_only", "bridge_state"]
)
def test_zigbee2mqtt_empty_actions_and_reports_are_not_presses(example: str) -> None:
    assert Zigbee2MqttDecoder("table1-left").decode(ZIGBEE[example]) == []


def test_zigbee2mqtt_action_that_is_not_text_is_a_bad_payload() -> None:
    with pytest.raises(BadPayload, match="not a text"):
        Zigbee2MqttDecoder("table1-left").decode(ZIGBEE["action_not_text"])


def test_zigbee2mqtt_custom_base_topic() -> None:
    decoder = Zigbee2MqttDecoder("hall/table1", base_topic="zigbee2mqtt/club")
    message = DeviceMessage("zigbee2mqtt/club/hall/table1/action", b"double")
    assert decoder.decode(message) == [Press("1", "double", via="action")]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("single", ("1", "single")),
        ("button_3_hold", ("3", "hold")),
        ("1_double", ("1", "double")),
        ("on_press_release", ("on", "release")),
        ("single_both", ("both", "single")),
        ("toggle", ("toggle", "single")),
    ],
)
def test_zigbee2mqtt_action_names_split_into_button_and_gesture(
    action: str, expected: tuple[str, str]
) -> None:
    assert split_zigbee_action(action) == expected


# --- Shelly Gen1 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "button", "gesture", "serial"),
    [
        ("button_s", "0", "single", "12"),
        ("button_ss", "0", "double", "14"),
        ("button_sss", "0", "triple", "15"),
        ("button_l", "0", "hold", "16"),
        ("i3_channel2_sl", "2", "single_hold", "3"),
    ],
)
def test_shelly_gen1_input_events_carry_their_event_count(
    example: str, button: str, gesture: str, serial: str
) -> None:
    decoder = ShellyGen1Decoder("shellybutton1-A4CF12F45301")
    assert decoder.decode(SHELLY1[example]) == [Press(button, gesture, serial=serial)]


def test_shelly_gen1_restart_message_and_battery_are_not_presses() -> None:
    decoder = ShellyGen1Decoder("shellybutton1-A4CF12F45301")
    assert decoder.subscriptions() == ["shellies/shellybutton1-A4CF12F45301/input_event/+"]
    # No gesture: only the counter, which starts again after the restart.
    assert decoder.decode(SHELLY1["after_restart"]) == [Press("0", "", serial="0")]
    assert decoder.decode(SHELLY1["battery"]) == []


def test_shelly_gen1_event_count_that_is_not_a_number_is_a_bad_payload() -> None:
    with pytest.raises(BadPayload, match="event_cnt"):
        ShellyGen1Decoder("shellybutton1-A4CF12F45301").decode(SHELLY1["count_not_number"])


# --- Shelly Gen2+ -------------------------------------------------------------------------


def test_shelly_gen2_notify_event_pushes_become_presses_with_their_timestamp() -> None:
    decoder = ShellyGen2Decoder("shellies/table1")
    assert decoder.subscriptions() == ["shellies/table1/events/rpc"]
    assert decoder.decode(SHELLY2["single_push"]) == [Press("0", "single", serial="1764170000.12")]
    assert decoder.decode(SHELLY2["double_push_input1"]) == [
        Press("1", "double", serial="1764170003.4")
    ]
    assert decoder.decode(SHELLY2["long_push"]) == [Press("0", "hold", serial="1764170007.01")]


def test_shelly_gen2_one_frame_with_several_events_gives_each_press() -> None:
    decoder = ShellyGen2Decoder("shellies/table1")
    assert decoder.decode(SHELLY2["two_inputs_one_frame"]) == [
        Press("0", "single", serial="1764170019.98"),
        Press("1", "single", serial="1764170020.0"),
    ]
    assert [p.gesture for p in decoder.decode(SHELLY2["down_up"])] == ["down", "up"]


def test_shelly_gen2_status_and_system_events_are_not_presses() -> None:
    decoder = ShellyGen2Decoder("shellies/table1")
    assert decoder.decode(SHELLY2["config_changed"]) == []
    assert decoder.decode(SHELLY2["notify_status"]) == []


def test_shelly_gen2_events_that_are_not_a_list_are_a_bad_payload() -> None:
    with pytest.raises(BadPayload, match="events"):
        ShellyGen2Decoder("shellies/table1").decode(SHELLY2["events_not_list"])


# --- raw ----------------------------------------------------------------------------------


def test_raw_payload_word_is_the_button_trimmed_and_case_folded() -> None:
    decoder = RawDecoder("boards/table1/press")
    assert decoder.decode(RAW["home"]) == [Press("home", "single")]
    assert decoder.decode(RAW["home_shouted"]) == [Press("home", "single")]
    assert decoder.decode(RAW["empty"]) == []
    assert decoder.decode(RAW["shorthand_2_plus"]) == []  # another topic


# --- robustness ---------------------------------------------------------------------------

DECODERS_AND_TOPICS = [
    (TasmotaDecoder("table1-buttons"), "stat/table1-buttons/RESULT"),
    (TasmotaDecoder("table1-buttons"), "stat/table1-buttons/BUTTON1"),
    (ESPHomeDecoder("boards/table1"), "boards/table1/binary_sensor/left/state"),
    (Zigbee2MqttDecoder("table1-left"), "zigbee2mqtt/table1-left"),
    (Zigbee2MqttDecoder("table1-left"), "zigbee2mqtt/table1-left/action"),
    (ShellyGen1Decoder("sb1"), "shellies/sb1/input_event/0"),
    (ShellyGen2Decoder("shellies/t1"), "shellies/t1/events/rpc"),
    (RawDecoder("boards/t1"), "boards/t1"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Payloads near the real ones: the documented keys with values of any JSON type.
shaped = st.fixed_dictionaries(
    {},
    optional={
        "Button1": st.dictionaries(st.sampled_from(["Action", "x"]), json_values, max_size=2),
        "ACTION": json_values,
        "action": json_values,
        "event": json_values,
        "event_cnt": json_values,
        "method": st.sampled_from(["NotifyEvent", "NotifyStatus"]) | json_values,
        "params": st.fixed_dictionaries(
            {}, optional={"ts": json_values, "events": st.lists(json_values, max_size=3)}
        )
        | json_values,
    },
)
payloads = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | shaped.map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(DECODERS_AND_TOPICS), payload=payloads)
def test_any_payload_decodes_to_presses_or_a_bad_payload_never_another_error(case, payload) -> None:
    decoder, topic = case
    try:
        presses = decoder.decode(DeviceMessage(topic, payload))
    except BadPayload:
        return
    assert all(isinstance(p, Press) and p.button and p.gesture for p in presses)


def test_deeply_nested_json_is_a_bad_payload_not_a_crash():
    from scorer.buttons.decoders import BadPayload, _json_object

    with pytest.raises(BadPayload, match="nested too deeply"):
        _json_object(b"[" * 10_000)
