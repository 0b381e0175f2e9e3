"""The mapping layer: presses -> engine commands, with retained-replay suppression, duplicate
suppression, debounce and command ids. Pure: the tests pass the time."""

from __future__ import annotations

import pytest

from scorer.buttons.boards import parse_board
from scorer.buttons.decoders import DeviceMessage
from scorer.buttons.mapping import Board, parse_action
from scorer.engine import parse_command
from tests.scorer.buttons import payloads
from tests.scorer.buttons.payloads import for_club

# The recorded messages as the boards of club "alpha" publish them (club level after the root).
ESPHOME, RAW, SHELLY1, SHELLY2, TASMOTA, ZIGBEE = (
    for_club(kind, "alpha")
    for kind in (
        payloads.ESPHOME,
        payloads.RAW,
        payloads.SHELLY1,
        payloads.SHELLY2,
        payloads.TASMOTA,
        payloads.ZIGBEE,
    )
)

T0 = 1_764_170_000.0  # any wall-clock time; only differences matter


def board(**table) -> Board:
    table.setdefault("club", "alpha")
    return Board(parse_board(table))


def tasmota_board(**extra) -> Board:
    return board(kind="tasmota", topic="table1-buttons", buttons={"1": 1, "2": 2}, **extra)


def commands(verdicts) -> list[dict]:
    """The commands without their ids (ids are checked by their own tests)."""
    return [
        {k: v for k, v in verdict.command.items() if k != "id"}
        for verdict in verdicts
        if verdict.command is not None
    ]


def fed(target: Board, timeline) -> list[dict]:
    """The commands (as ``commands`` gives them) of ``target`` handling each
    ``(message, at)`` of ``timeline`` in turn."""
    return [command for message, at in timeline for command in commands(target.handle(message, at))]


# --- what a gesture does ------------------------------------------------------------------


def test_single_press_is_a_point_for_the_side_of_the_button() -> None:
    tasmota = tasmota_board()
    assert commands(tasmota.handle(TASMOTA["button1_single"], T0)) == [{"cmd": "point", "side": 1}]
    assert commands(tasmota.handle(TASMOTA["button2_single"], T0)) == [{"cmd": "point", "side": 2}]


def test_hold_is_undo_and_double_is_minus_one_for_that_side_by_default() -> None:
    tasmota = tasmota_board()
    assert commands(tasmota.handle(TASMOTA["button2_hold"], T0)) == [{"cmd": "undo"}]
    assert commands(tasmota.handle(TASMOTA["button1_double"], T0)) == [
        {"cmd": "point", "side": 1, "delta": -1}
    ]


def test_gestures_without_a_rule_do_nothing_and_say_so() -> None:
    (verdict,) = tasmota_board().handle(TASMOTA["button1_triple"], T0)
    assert verdict.command is None
    assert "triple" in verdict.reason


def test_board_gestures_and_button_options_override_the_defaults() -> None:
    custom = board(
        kind="tasmota",
        topic="table1-buttons",
        buttons={"1": 1, "2": {"side": 2, "double": "ignore", "triple": "timeout"}},
        gestures={"hold": "1-", "double": "undo"},
    )
    assert commands(custom.handle(TASMOTA["button2_hold"], T0)) == [
        {"cmd": "point", "side": 1, "delta": -1}
    ]
    assert commands(custom.handle(TASMOTA["button1_double"], T0)) == [{"cmd": "undo"}]
    assert commands(custom.handle(TASMOTA["button2_single"], T0)) == [{"cmd": "point", "side": 2}]
    double2 = DeviceMessage("stat/alpha/table1-buttons/RESULT", b'{"Button2":{"Action":"DOUBLE"}}')
    assert commands(custom.handle(double2, T0)) == []
    triple2 = DeviceMessage("stat/alpha/table1-buttons/RESULT", b'{"Button2":{"Action":"TRIPLE"}}')
    assert commands(custom.handle(triple2, T0)) == [{"cmd": "timeout", "side": 2}]


def test_a_one_button_device_can_score_both_sides_with_gestures() -> None:
    # One Zigbee button for a whole table: single = side 1, double = side 2, hold = undo.
    one_button = board(
        kind="zigbee2mqtt", device="table1-left", buttons={"1": {"single": "1+", "double": "2+"}}
    )
    assert commands(one_button.handle(ZIGBEE["state_single"], T0)) == [{"cmd": "point", "side": 1}]
    assert commands(one_button.handle(ZIGBEE["state_double"], T0)) == [{"cmd": "point", "side": 2}]
    assert commands(one_button.handle(ZIGBEE["state_hold"], T0)) == [{"cmd": "undo"}]


def test_board_side_covers_every_button_not_listed() -> None:
    shelly = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=2)
    assert commands(shelly.handle(SHELLY1["button_s"], T0)) == [{"cmd": "point", "side": 2}]
    assert commands(shelly.handle(SHELLY1["i3_channel2_sl"], T0)) == []  # gesture SL: no rule


def test_unmapped_button_gives_no_command_and_names_the_button() -> None:
    tasmota = board(kind="tasmota", topic="table1-buttons", buttons={"1": 1})
    (verdict,) = tasmota.handle(TASMOTA["button2_single"], T0)
    assert verdict.command is None
    assert "'2' is not mapped" in verdict.reason


def test_raw_board_maps_its_words_and_ignores_others() -> None:
    raw = board(
        kind="raw",
        topic="boards/alpha/table1/press",
        payloads={"home": "1+", "opponent": "2+", "home_undo": "1-"},
    )
    assert commands(raw.handle(RAW["home"], T0)) == [{"cmd": "point", "side": 1}]
    assert commands(raw.handle(RAW["opponent"], T0)) == [{"cmd": "point", "side": 2}]
    assert commands(raw.handle(RAW["home_undo"], T0)) == [{"cmd": "point", "side": 1, "delta": -1}]
    (unknown,) = raw.handle(RAW["unknown_word"], T0)
    assert unknown.command is None and "'reset' is not mapped" in unknown.reason


def test_raw_board_without_payloads_understands_the_rallycast_shorthands() -> None:
    raw = board(kind="raw", topic="boards/alpha/table2/press")
    assert commands(raw.handle(RAW["shorthand_2_plus"], T0)) == [{"cmd": "point", "side": 2}]
    assert commands(raw.handle(RAW["shorthand_undo"], T0)) == [{"cmd": "undo"}]


@pytest.mark.parametrize(
    ("text", "verb", "side"),
    [
        ("point", "point", None),
        ("minus", "minus", None),
        ("1+", "point", 1),
        ("2-", "minus", 2),
        (" Point 2 ", "point", 2),
        ("timeout 1", "timeout", 1),
        ("undo", "undo", None),
        ("none", "ignore", None),
    ],
)
def test_action_texts(text: str, verb: str, side: int | None) -> None:
    action = parse_action(text)
    assert (action.verb, action.side) == (verb, side)


@pytest.mark.parametrize("text", ["3+", "plus", "undo 1", "point 3", "", 1])
def test_unknown_action_texts_are_refused(text) -> None:
    with pytest.raises(ValueError, match="action"):
        parse_action(text)


def test_every_command_a_board_makes_is_valid_for_the_rules_engine() -> None:
    everything = board(
        kind="tasmota",
        topic="table1-buttons",
        buttons={"1": 1, "2": 2},
        gestures={"triple": "timeout", "quad": "2-", "penta": "undo"},
    )
    made = []
    for i, name in enumerate(
        ["button1_single", "button1_double", "button1_triple", "button1_quad", "button1_penta"]
    ):
        made += [v.command for v in everything.handle(TASMOTA[name], T0 + i) if v.command]
    assert len(made) == 5
    for command in made:
        assert parse_command(command)["id"] == command["id"]


# --- retained replays ---------------------------------------------------------------------


def test_retained_esphome_state_replayed_on_subscribe_is_not_a_press() -> None:
    esphome = board(kind="esphome", topic_prefix="boards/alpha/table1", buttons={"left_button": 1})
    (verdict,) = esphome.handle(ESPHOME["left_on_replayed"], T0)
    assert verdict.command is None and "retained" in verdict.reason
    assert commands(esphome.handle(ESPHOME["left_on"], T0 + 1)) == [{"cmd": "point", "side": 1}]


def test_retained_tasmota_press_from_buttonretain_is_not_a_press() -> None:
    assert commands(tasmota_board().handle(TASMOTA["button1_single_retained"], T0)) == []


def test_retained_zigbee2mqtt_state_is_not_a_press() -> None:
    z2m = board(kind="zigbee2mqtt", device="table1-left", side=1)
    assert commands(z2m.handle(ZIGBEE["state_single_retained"], T0)) == []


# --- duplicates ---------------------------------------------------------------------------


def test_zigbee2mqtt_press_on_both_topics_counts_once_in_either_order() -> None:
    z2m = board(kind="zigbee2mqtt", device="table1-left", side=1)
    first = z2m.handle(ZIGBEE["state_single"], T0)
    second = z2m.handle(ZIGBEE["action_single"], T0 + 0.004)
    assert commands(first) == [{"cmd": "point", "side": 1}]
    assert commands(second) == [] and "other topic" in second[0].reason

    later = T0 + 5
    assert len(commands(z2m.handle(ZIGBEE["action_single"], later))) == 1
    assert commands(z2m.handle(ZIGBEE["state_single"], later + 0.003)) == []


def test_zigbee2mqtt_two_real_presses_reported_on_both_topics_count_twice() -> None:
    # Presses 0.5 s apart (past the debounce), copies interleaved: state, state, action, action.
    z2m = board(kind="zigbee2mqtt", device="table1-left", side=1)
    sent = fed(
        z2m,
        [
            (ZIGBEE["state_single"], T0),
            (ZIGBEE["state_single"], T0 + 0.5),
            (ZIGBEE["action_single"], T0 + 0.51),
            (ZIGBEE["action_single"], T0 + 0.52),
        ],
    )
    assert sent == [{"cmd": "point", "side": 1}] * 2


def test_zigbee2mqtt_with_only_the_state_topic_counts_every_press() -> None:
    z2m = board(kind="zigbee2mqtt", device="table1-left", side=1)
    sent = []
    for i in range(3):
        sent += commands(z2m.handle(ZIGBEE["state_single"], T0 + i))
        sent += commands(z2m.handle(ZIGBEE["state_empty_action"], T0 + i + 0.01))
    assert sent == [{"cmd": "point", "side": 1}] * 3


def test_shelly_gen1_repeated_event_count_is_one_press() -> None:
    shelly = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    assert len(commands(shelly.handle(SHELLY1["button_s"], T0))) == 1
    repeat = shelly.handle(SHELLY1["button_s_again"], T0 + 2)  # past the debounce
    assert commands(repeat) == [] and "repeat of device event 12" in repeat[0].reason
    assert len(commands(shelly.handle(SHELLY1["button_s_next"], T0 + 4))) == 1


def test_shelly_gen1_count_that_has_not_moved_is_never_a_press_however_late() -> None:
    # A Shelly resends its last input_event about every 30 s: the same event_cnt.
    shelly = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    (first,) = shelly.handle(SHELLY1["button_s"], T0)
    assert first.command is not None
    for later in (30, 60, 90, 600, 86_400):
        (again,) = shelly.handle(SHELLY1["button_s_again"], T0 + later)
        assert again.command is None and "has not moved" in again.reason, later


def test_shelly_gen1_counter_that_starts_again_after_a_restart_makes_new_ids() -> None:
    shelly = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    (first,) = shelly.handle(SHELLY1["button_s"], T0)  # event_cnt 12
    (reset,) = shelly.handle(SHELLY1["after_restart"], T0 + 100)  # event_cnt 0, no event
    assert reset.command is None and "reset" in reset.reason
    (again,) = shelly.handle(SHELLY1["button_s"], T0 + 200)  # event_cnt 12 again: a press
    assert again.command is not None and again.command["id"] != first.command["id"]


def test_a_board_restored_from_its_memory_does_not_press_the_last_event_again() -> None:
    first = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    assert commands(first.handle(SHELLY1["button_s"], T0))
    second = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    second.restore(first.memory())
    assert commands(second.handle(SHELLY1["button_s_again"], T0 + 45)) == []
    assert commands(second.handle(SHELLY1["button_s_next"], T0 + 50))
    second.restore({"x": "junk", 3: {}, "y": {"serial": 5, "generation": "n"}})  # no crash


def test_a_retained_event_sets_the_counter_so_its_live_resend_is_no_press() -> None:
    shelly = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    retained = DeviceMessage(SHELLY1["button_s"].topic, SHELLY1["button_s"].payload, True)
    (verdict,) = shelly.handle(retained, T0)
    assert verdict.command is None and "retained" in verdict.reason
    assert commands(shelly.handle(SHELLY1["button_s_again"], T0 + 30)) == []
    assert commands(shelly.handle(SHELLY1["button_s_next"], T0 + 31))


def test_esphome_on_published_again_without_an_off_is_no_press() -> None:
    # ESPHome publishes its states again after a reconnect.
    esphome = board(kind="esphome", topic_prefix="boards/alpha/table1", side=1)
    assert commands(esphome.handle(ESPHOME["left_on"], T0))
    (again,) = esphome.handle(ESPHOME["left_on"], T0 + 5)
    assert again.command is None and "no change" in again.reason
    assert commands(esphome.handle(ESPHOME["left_off"], T0 + 6)) == []
    assert commands(esphome.handle(ESPHOME["left_on"], T0 + 7))


def test_shelly_gen2_repeated_frame_is_one_press_and_one_frame_can_score_both_sides() -> None:
    shelly = board(kind="shelly2", topic_prefix="shellies/alpha/table1", buttons={"0": 1, "1": 2})
    assert commands(shelly.handle(SHELLY2["single_push"], T0)) == [{"cmd": "point", "side": 1}]
    assert commands(shelly.handle(SHELLY2["single_push_again"], T0 + 1)) == []
    assert commands(shelly.handle(SHELLY2["two_inputs_one_frame"], T0 + 2)) == [
        {"cmd": "point", "side": 1},
        {"cmd": "point", "side": 2},
    ]
    assert commands(shelly.handle(SHELLY2["down_up"], T0 + 3)) == []  # not gestures we map


# --- debounce -----------------------------------------------------------------------------


def test_same_press_within_the_debounce_window_counts_once() -> None:
    tasmota = tasmota_board()
    assert len(commands(tasmota.handle(TASMOTA["button1_single"], T0))) == 1
    bounced = tasmota.handle(TASMOTA["button1_single"], T0 + 0.150)
    assert commands(bounced) == [] and "debounced" in bounced[0].reason
    assert len(commands(tasmota.handle(TASMOTA["button1_single"], T0 + 0.301))) == 1


def test_debounce_is_per_button_and_per_gesture() -> None:
    tasmota = tasmota_board()
    assert len(commands(tasmota.handle(TASMOTA["button1_single"], T0))) == 1
    assert len(commands(tasmota.handle(TASMOTA["button2_single"], T0 + 0.01))) == 1
    assert len(commands(tasmota.handle(TASMOTA["button1_double"], T0 + 0.02))) == 1


def test_debounce_window_is_configurable_per_board() -> None:
    slow = tasmota_board(debounce_ms=1000)
    assert len(commands(slow.handle(TASMOTA["button1_single"], T0))) == 1
    assert commands(slow.handle(TASMOTA["button1_single"], T0 + 0.8)) == []
    none = tasmota_board(debounce_ms=0)
    assert len(commands(none.handle(TASMOTA["button1_single"], T0))) == 1
    assert len(commands(none.handle(TASMOTA["button1_single"], T0 + 0.001))) == 1


def test_esphome_contact_bounce_on_off_on_counts_once() -> None:
    esphome = board(kind="esphome", topic_prefix="boards/alpha/table1", side=1)
    sent = fed(
        esphome,
        [
            (ESPHOME["left_on"], T0),
            (ESPHOME["left_off"], T0 + 0.02),
            (ESPHOME["left_on"], T0 + 0.04),
            (ESPHOME["left_off"], T0 + 0.2),
        ],
    )
    assert sent == [{"cmd": "point", "side": 1}]


# --- ids ----------------------------------------------------------------------------------


def test_two_identical_presses_at_different_times_get_different_ids() -> None:
    tasmota = tasmota_board()
    (a,) = tasmota.handle(TASMOTA["button1_single"], T0)
    (b,) = tasmota.handle(TASMOTA["button1_single"], T0 + 5)
    assert a.command["id"] != b.command["id"]
    assert a.command["id"].startswith("btn-table1-buttons-")


def test_a_device_event_resent_to_a_fresh_runner_gets_the_same_id() -> None:
    # The same Shelly event (same event_cnt) seen by two runs of the runner without their
    # memory, minutes apart: the service sees one id and applies it once (its id index).
    first = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    second = board(kind="shelly1", device="shellybutton1-A4CF12F45301", side=1)
    (a,) = first.handle(SHELLY1["button_s"], T0)
    (b,) = second.handle(SHELLY1["button_s_again"], T0 + 120)
    assert a.command["id"] == b.command["id"]


def test_ids_of_different_boards_never_collide() -> None:
    left = board(name="left", kind="tasmota", topic="table1-buttons", side=1)
    right = board(name="right", kind="tasmota", topic="table1-buttons", side=1)
    (a,) = left.handle(TASMOTA["button1_single"], T0)
    (b,) = right.handle(TASMOTA["button1_single"], T0)
    assert a.command["id"] != b.command["id"]


def test_identical_presses_in_the_same_millisecond_without_debounce_get_different_ids() -> None:
    eager = tasmota_board(debounce_ms=0)
    (a,) = eager.handle(TASMOTA["button1_single"], T0)
    (b,) = eager.handle(TASMOTA["button1_single"], T0)
    assert a.command["id"] != b.command["id"]


# --- left / right ends --------------------------------------------------------------------


def test_left_and_right_buttons_follow_the_side_at_each_end() -> None:
    ends = board(kind="tasmota", topic="table1-buttons", buttons={"1": "left", "2": "right"})
    assert commands(ends.handle(TASMOTA["button1_single"], T0)) == [{"cmd": "point", "side": 1}]
    assert commands(ends.handle(TASMOTA["button2_single"], T0)) == [{"cmd": "point", "side": 2}]
    ends.left_side = 2  # ends changed after a game
    assert commands(ends.handle(TASMOTA["button1_single"], T0 + 1)) == [{"cmd": "point", "side": 2}]
    assert commands(ends.handle(TASMOTA["button1_double"], T0 + 1)) == [
        {"cmd": "point", "side": 2, "delta": -1}
    ]
    assert commands(ends.handle(TASMOTA["button2_single"], T0 + 1)) == [{"cmd": "point", "side": 1}]


def test_actions_may_name_an_end_instead_of_a_side() -> None:
    action = parse_action("timeout right")
    assert (action.verb, action.side) == ("timeout", "right")
    assert action.command(None, left_side=1) == {"cmd": "timeout", "side": 2}
    assert action.command(None, left_side=2) == {"cmd": "timeout", "side": 1}


def test_shelly_gen2_frame_resent_long_after_is_no_press() -> None:
    shelly = board(kind="shelly2", topic_prefix="shellies/alpha/table1", buttons={"0": 1, "1": 2})
    assert commands(shelly.handle(SHELLY2["single_push"], T0))
    for later in (61, 600):
        assert commands(shelly.handle(SHELLY2["single_push_again"], T0 + later)) == [], later


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "tasmota", "topic": "table1-buttons", "side": 1}, TASMOTA["button1_single"]),
        ({"kind": "esphome", "topic_prefix": "boards/alpha/table1", "side": 1}, ESPHOME["left_on"]),
        ({"kind": "zigbee2mqtt", "device": "table1-left", "side": 1}, ZIGBEE["state_single"]),
        (
            {"kind": "shelly1", "device": "shellybutton1-A4CF12F45301", "side": 1},
            SHELLY1["button_s"],
        ),
        (
            {"kind": "shelly2", "topic_prefix": "shellies/alpha/table1", "side": 1},
            SHELLY2["single_push"],
        ),
    ],
)
def test_every_kind_ignores_a_stored_state_replayed_at_subscribe(table, message) -> None:
    replayed = DeviceMessage(message.topic, message.payload, retain=True)
    verdicts = board(**table).handle(replayed, T0)
    assert commands(verdicts) == [] and "retained" in verdicts[0].reason
