"""Recorded device payloads (see README.md here): ``recorded(kind)`` -> name -> DeviceMessage."""

from __future__ import annotations

import json
from pathlib import Path

from scorer.buttons.decoders import DeviceMessage

HERE = Path(__file__).parent


def recorded(kind: str) -> dict[str, DeviceMessage]:
    data = json.loads((HERE / f"{kind}.json").read_text(encoding="utf-8"))
    return {
        name: DeviceMessage(entry["topic"], entry["payload"].encode("utf-8"), entry["retain"])
        for name, entry in data.items()
        if not name.startswith("_")
    }


TASMOTA = recorded("tasmota")
ESPHOME = recorded("esphome")
ZIGBEE = recorded("zigbee2mqtt")
SHELLY1 = recorded("shelly1")
SHELLY2 = recorded("shelly2")
RAW = recorded("raw")


def for_club(messages: dict[str, DeviceMessage], club: str) -> dict[str, DeviceMessage]:
    """The same messages as a device scoped to ``club`` publishes them on Rallycast's broker:
    the club level after the root (``stat/t1/RESULT`` -> ``stat/<club>/t1/RESULT``; issue 9)."""
    scoped = {}
    for name, message in messages.items():
        root, rest = message.topic.split("/", 1)
        scoped[name] = DeviceMessage(f"{root}/{club}/{rest}", message.payload, message.retain)
    return scoped
