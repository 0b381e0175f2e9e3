"""Device decoders: one MQTT message from an off-the-shelf button -> the presses it reports.

Pure: no I/O, no clock. Each device family has a decoder built from the board's settings (its
topic or device name); ``subscriptions()`` lists the topic filters to follow and
``decode(message)`` turns a message into ``Press`` values. A message that is not about a press
(a relay state, a battery report, a config change) decodes to ``[]``; a message that should be a
press but cannot be read raises ``BadPayload``.

What each family publishes (checked against the vendors' documentation and sources):

- Tasmota 9.1+ with ``SetOption73 1``: ``stat/<topic>/RESULT`` (or ``stat/<topic>/BUTTON<n>``
  with ``SetOption4 1``) carrying ``{"Button1":{"Action":"SINGLE"}}``; actions SINGLE, DOUBLE,
  TRIPLE, QUAD, PENTA and HOLD (HOLD is ``StateText4``, so it can be renamed). Before 9.1 the
  topic was ``stat/<topic>/BUTTON<n>`` with ``{"ACTION":"SINGLE"}``.
- ESPHome: ``<topic_prefix>/binary_sensor/<name>/state`` with ``ON``/``OFF``; a press is ``ON``.
  These are retained by default: the runner drops retained messages before decoding.
- Zigbee2MQTT: ``<base>/<friendly_name>`` with a JSON state that has ``"action"`` on a press
  (and ``""`` right after it with legacy triggers), and, with the Home Assistant integration,
  ``<base>/<friendly_name>/action`` with the bare action: one press, two messages.
- Shelly Gen1: ``shellies/<id>/input_event/<channel>`` with ``{"event": "S", "event_cnt": 7}``
  (S, SS, SSS, L, and SL/LS on the i3); ``event_cnt`` counts events, so a repeat is visible.
- Shelly Gen2+: ``<prefix>/events/rpc`` with JSON-RPC notifications; presses are ``NotifyEvent``
  entries ``{"component": "input:0", "event": "single_push", "ts": ...}``, several per message.
- Home-made boards ("raw"): any payload text on one topic; the board's config maps it.

Club level (issue 9): on Rallycast's broker each club's devices publish under
``<root>/<club>/...`` (``scorer.topics.device_prefixes``). Given ``club``, the decoders of the
families with a fixed root put the club level in themselves: Tasmota ``stat/<club>/<topic>/``
(FullTopic ``%prefix%/<club>/%topic%/``), Zigbee2MQTT ``zigbee2mqtt/<club>/<device>``
(base_topic ``zigbee2mqtt/<club>``), Shelly Gen1 ``shellies/<club>/<device>/...`` (custom MQTT
id ``<club>/<device>``). ESPHome, Shelly Gen2 and raw boards take a whole prefix or topic, which
the board config checks is under the club's prefixes (e.g. ``boards/<club>/table1``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from paho.mqtt.client import topic_matches_sub

# Larger payloads are not button messages; refuse them before parsing.
MAX_DEVICE_PAYLOAD = 65536


@dataclass(frozen=True)
class DeviceMessage:
    """One MQTT message as it reached us (``retain`` set = a replay of a stored message)."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class Press:
    """One gesture on one button of a device.

    ``button``: the device's name for the button ("1" for Tasmota's Button1, "0" for a Shelly's
    input 0, the binary_sensor name for ESPHome, ...). ``gesture``: single, double, triple,
    quad, penta, hold, release, down, up, or the device's own word when it is none of those.
    ``serial``: the device's own counter or timestamp for this event when it sends one (Shelly),
    so a repeat of the same event can be recognised. ``via``: which of the device's topics
    carried it, for devices that report one press on two topics (Zigbee2MQTT). ``level``:
    for devices that publish a button's state (ESPHome ``ON``/``OFF``), the state this message
    reports, so a state published again (after a reconnect) is not taken for a new press.

    ``gesture`` ``""`` is no gesture: a report of the device's counter only (a Shelly that
    restarted publishes ``{"event": "", "event_cnt": 0}``).
    """

    button: str
    gesture: str
    serial: str | None = None
    via: str = ""
    level: str | None = None


class BadPayload(ValueError):
    """A message on a device topic that cannot be read; the message says why."""


class Decoder(Protocol):
    kind: ClassVar[str]

    def subscriptions(self) -> list[str]: ...

    def decode(self, message: DeviceMessage) -> list[Press]: ...


def _text(payload: bytes) -> str:
    if len(payload) > MAX_DEVICE_PAYLOAD:
        raise BadPayload(f"payload of {len(payload)} bytes is too large for a button message")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload("payload is not UTF-8 text") from exc


def _json_object(payload: bytes) -> dict[str, Any]:
    text = _text(payload)
    try:
        data = json.loads(text)
    except RecursionError as exc:  # e.g. thousands of nested brackets
        raise BadPayload("payload is JSON nested too deeply") from exc
    except ValueError as exc:
        raise BadPayload(f"payload is not JSON ({exc.args[0] if exc.args else exc})") from exc
    if not isinstance(data, dict):
        raise BadPayload(f"payload is JSON but not an object: {type(data).__name__}")
    return data


def _check_level(value: str, what: str) -> str:
    """A topic part from the config: no wildcards, no empty levels at either end."""
    if not isinstance(value, str) or not value.strip("/"):
        raise ValueError(f"{what} must be a non-empty text")
    if "+" in value or "#" in value:
        raise ValueError(f"{what} {value!r} must not contain MQTT wildcards (+ or #)")
    if value != value.strip("/") or "//" in value:
        raise ValueError(f"{what} {value!r} must not start or end with '/' or contain '//'")
    return value


# --- Tasmota ------------------------------------------------------------------------------

TASMOTA_ACTIONS = {
    "single": "single",
    "double": "double",
    "triple": "triple",
    "quad": "quad",
    "penta": "penta",
    "hold": "hold",
}
_TASMOTA_BUTTON_KEY = re.compile(r"button(\d+)", re.IGNORECASE)


class TasmotaDecoder:
    kind: ClassVar[str] = "tasmota"

    def __init__(self, topic: str, full_topic: str | None = None, *, club: str | None = None):
        self.topic = _check_level(topic, "topic")
        if full_topic is None:  # Tasmota's default, with the club level when there is a club
            full_topic = "%prefix%/%topic%/" if club is None else f"%prefix%/{club}/%topic%/"
        if "%prefix%" not in full_topic or "%topic%" not in full_topic:
            raise ValueError(f"full_topic {full_topic!r} must contain %prefix% and %topic%")
        base = full_topic.replace("%prefix%", "stat").replace("%topic%", topic)
        self.base = base if base.endswith("/") else base + "/"

    def subscriptions(self) -> list[str]:
        return [self.base + "+"]

    def decode(self, message: DeviceMessage) -> list[Press]:
        if not message.topic.startswith(self.base):
            return []
        last = message.topic[len(self.base) :]
        topic_button = _TASMOTA_BUTTON_KEY.fullmatch(last)
        if last != "RESULT" and topic_button is None:
            return []  # POWER, STATUS, ... are not button presses
        data = _json_object(message.payload)
        presses: list[Press] = []
        for key, value in data.items():
            match = _TASMOTA_BUTTON_KEY.fullmatch(key)
            if match and isinstance(value, dict):
                action = next((v for k, v in value.items() if k.lower() == "action"), None)
                if action is not None:
                    presses.append(Press(match.group(1), self._gesture(action)))
            elif key.upper() == "ACTION":  # before Tasmota 9.1: {"ACTION": "SINGLE"}
                button = topic_button.group(1) if topic_button else "1"
                presses.append(Press(button, self._gesture(value)))
        return presses

    @staticmethod
    def _gesture(action: Any) -> str:
        if not isinstance(action, str) or not action.strip():
            raise BadPayload(f"Tasmota button action {action!r} is not a word")
        word = action.strip().lower()
        return TASMOTA_ACTIONS.get(word, word)


# --- ESPHome ------------------------------------------------------------------------------


class ESPHomeDecoder:
    kind: ClassVar[str] = "esphome"

    def __init__(self, topic_prefix: str, *, club: str | None = None) -> None:
        # the whole prefix comes from the config (the board config checks its club level)
        self.prefix = _check_level(topic_prefix, "topic_prefix")
        self.base = f"{self.prefix}/binary_sensor/"

    def subscriptions(self) -> list[str]:
        return [self.base + "+/state"]

    def decode(self, message: DeviceMessage) -> list[Press]:
        if not (message.topic.startswith(self.base) and message.topic.endswith("/state")):
            return []
        name = message.topic[len(self.base) : -len("/state")]
        if not name or "/" in name:
            return []
        state = _text(message.payload).strip().upper()
        if state == "ON":
            return [Press(name, "single", level="on")]
        if state == "OFF":
            return [Press(name, "release", level="off")]
        raise BadPayload(f"ESPHome binary_sensor state {state[:40]!r} is neither ON nor OFF")


# --- Zigbee2MQTT --------------------------------------------------------------------------

# Words Zigbee2MQTT devices use for a gesture, alone ("single") or joined to a button name
# ("single_left", "1_double", "button_2_hold", "on_press_release").
ZIGBEE_GESTURES = {
    "single": "single",
    "click": "single",
    "press": "single",
    "short": "single",
    "double": "double",
    "double_click": "double",
    "triple": "triple",
    "quadruple": "quad",
    "hold": "hold",
    "long": "hold",
    "long_press": "hold",
    "release": "release",
    "hold_release": "release",
    "press_release": "release",
    "long_release": "release",
}


def split_zigbee_action(action: str) -> tuple[str, str]:
    """``"single"`` -> ("1", "single"); ``"single_left"`` -> ("left", "single");
    ``"button_2_hold"`` -> ("2", "hold"); a word that names no gesture (``"on"``, ``"toggle"``)
    -> (that word, "single"): such devices have one action per button."""
    word = action.strip().lower()
    if word in ZIGBEE_GESTURES:
        return "1", ZIGBEE_GESTURES[word]
    parts = word.split("_")
    for cut in range(1, len(parts)):  # longest gesture suffix first
        head, tail = "_".join(parts[:cut]), "_".join(parts[cut:])
        if tail in ZIGBEE_GESTURES:
            return _button_name(head), ZIGBEE_GESTURES[tail]
    for cut in range(len(parts) - 1, 0, -1):  # then a gesture prefix
        head, tail = "_".join(parts[:cut]), "_".join(parts[cut:])
        if head in ZIGBEE_GESTURES:
            return _button_name(tail), ZIGBEE_GESTURES[head]
    return word, "single"


def _button_name(name: str) -> str:
    return name.removeprefix("button_") or "1"


class Zigbee2MqttDecoder:
    kind: ClassVar[str] = "zigbee2mqtt"

    def __init__(
        self, device: str, base_topic: str | None = None, *, club: str | None = None
    ) -> None:
        if base_topic is None:  # Zigbee2MQTT's default, with the club level when there is one
            base_topic = "zigbee2mqtt" if club is None else f"zigbee2mqtt/{club}"
        self.device = _check_level(device, "device")
        self.base_topic = _check_level(base_topic, "base_topic")
        self.state_topic = f"{self.base_topic}/{self.device}"
        self.action_topic = f"{self.state_topic}/action"

    def subscriptions(self) -> list[str]:
        return [self.state_topic, self.action_topic]

    def decode(self, message: DeviceMessage) -> list[Press]:
        if message.topic == self.action_topic:
            return self._press(_text(message.payload), "action")
        if message.topic != self.state_topic:
            return []
        data = _json_object(message.payload)
        # "click" is the older name some converters still send when there is no "action".
        action = data.get("action", data.get("click"))
        if action is None:
            return []  # a battery or link-quality report
        if not isinstance(action, str):
            raise BadPayload(f"Zigbee2MQTT action {action!r} is not a text")
        return self._press(action, "state")

    @staticmethod
    def _press(action: str, via: str) -> list[Press]:
        if not action.strip():
            return []  # legacy triggers send an empty action after each press
        button, gesture = split_zigbee_action(action)
        return [Press(button, gesture, via=via)]


# --- Shelly Gen1 --------------------------------------------------------------------------

SHELLY1_EVENTS = {
    "S": "single",
    "SS": "double",
    "SSS": "triple",
    "L": "hold",
    "SL": "single_hold",
    "LS": "hold_single",
}


class ShellyGen1Decoder:
    kind: ClassVar[str] = "shelly1"

    def __init__(self, device: str, *, club: str | None = None) -> None:
        # Gen1 firmware fixes the "shellies/" root; only the id level can be set (its custom
        # MQTT id), so the club level goes there: id "<club>/<device>" (docs/buttons.md).
        self.device = _check_level(device, "device")
        self.club = club
        root = "shellies" if club is None else f"shellies/{club}"
        self.base = f"{root}/{self.device}/input_event/"

    def subscriptions(self) -> list[str]:
        return [self.base + "+"]

    def decode(self, message: DeviceMessage) -> list[Press]:
        if not message.topic.startswith(self.base):
            return []
        channel = message.topic[len(self.base) :]
        if not channel.isdigit():
            return []
        data = _json_object(message.payload)
        event = data.get("event")
        count = data.get("event_cnt")
        if not isinstance(event, str):
            raise BadPayload(f"Shelly input_event has no text 'event' (got {event!r})")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise BadPayload(f"Shelly event_cnt {count!r} is not a whole number")
        if not event:
            # Published after a restart: no press, but the counter starts again from here.
            return [] if count is None else [Press(channel, "", serial=str(count))]
        gesture = SHELLY1_EVENTS.get(event.upper(), event.lower())
        return [Press(channel, gesture, serial=None if count is None else str(count))]


# --- Shelly Gen2+ -------------------------------------------------------------------------

SHELLY2_EVENTS = {
    "single_push": "single",
    "double_push": "double",
    "triple_push": "triple",
    "long_push": "hold",
    "btn_down": "down",
    "btn_up": "up",
}
_SHELLY2_INPUT = re.compile(r"input:(\d+)")


class ShellyGen2Decoder:
    kind: ClassVar[str] = "shelly2"

    def __init__(self, topic_prefix: str, *, club: str | None = None) -> None:
        self.prefix = _check_level(topic_prefix, "topic_prefix")
        self.topic = f"{self.prefix}/events/rpc"

    def subscriptions(self) -> list[str]:
        return [self.topic]

    def decode(self, message: DeviceMessage) -> list[Press]:
        if message.topic != self.topic:
            return []
        data = _json_object(message.payload)
        if data.get("method") != "NotifyEvent":
            return []  # NotifyStatus, NotifyFullStatus, RPC replies
        params = data.get("params")
        events = params.get("events") if isinstance(params, dict) else None
        if not isinstance(events, list):
            raise BadPayload("Shelly NotifyEvent without a params.events list")
        message_ts = params.get("ts")
        presses: list[Press] = []
        for event in events:
            if not isinstance(event, dict):
                raise BadPayload(f"Shelly event {event!r} is not an object")
            component = event.get("component")
            match = _SHELLY2_INPUT.fullmatch(component) if isinstance(component, str) else None
            if match is None:
                continue  # sys, wifi, script events
            name = event.get("event")
            if not isinstance(name, str) or not name:
                raise BadPayload(f"Shelly event on {component} has no text 'event'")
            ts = event.get("ts", message_ts)
            serial = None if ts is None else f"{ts}"
            presses.append(Press(match.group(1), SHELLY2_EVENTS.get(name, name), serial=serial))
        return presses


# --- Home-made boards ---------------------------------------------------------------------


class RawDecoder:
    """Any text on one topic (filter); the whole trimmed payload names the "button", case
    ignored, and the gesture is ``single``. The board's ``payloads`` table maps the words."""

    kind: ClassVar[str] = "raw"

    def __init__(self, topic: str, *, club: str | None = None) -> None:
        if not isinstance(topic, str) or not topic.strip("/"):
            raise ValueError("topic must be a non-empty text")
        self.topic = topic

    def subscriptions(self) -> list[str]:
        return [self.topic]

    def decode(self, message: DeviceMessage) -> list[Press]:
        if not topic_matches_sub(self.topic, message.topic):
            return []
        word = _text(message.payload).strip()
        if not word:
            return []
        if len(word) > 200:
            raise BadPayload(f"payload of {len(word)} characters is not a button word")
        return [Press(word.casefold(), "single")]


DECODERS: dict[str, type] = {
    cls.kind: cls
    for cls in (
        TasmotaDecoder,
        ESPHomeDecoder,
        Zigbee2MqttDecoder,
        ShellyGen1Decoder,
        ShellyGen2Decoder,
        RawDecoder,
    )
}
