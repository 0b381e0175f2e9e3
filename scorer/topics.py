"""MQTT topic names of the Rallycast protocol (see docs/protocol.md). One place, used by the
broker's ACL, the scorer service, the tools and the pages' server side."""

from __future__ import annotations

from scorer.config import CLUB_ID_RE

CLUBS_PREFIX = "clubs"
SCORER_STATUS = "rallycast/status/scorer"  # retained "online"/"offline" (last will)


class BadClubId(ValueError):
    pass


def check_club_id(club_id: str) -> str:
    if not isinstance(club_id, str) or not CLUB_ID_RE.fullmatch(club_id):
        raise BadClubId(
            f"club id {club_id!r} is not valid: use 1-64 characters from a-z, 0-9 and '-'"
        )
    return club_id


def game(club_id: str) -> str:
    """Retained snapshot of the club's match (QoS 1)."""
    return f"{CLUBS_PREFIX}/{check_club_id(club_id)}/game"


def commands(club_id: str) -> str:
    """Commands from the club's scorers and boards (QoS 1, never retained)."""
    return f"{game(club_id)}/cmd"


def replies(club_id: str) -> str:
    """The service's answer to each command: accepted/refused, with the command's id."""
    return f"{game(club_id)}/reply"


def events(club_id: str) -> str:
    """One non-retained message per accepted change (point, undo, game end, ...)."""
    return f"{game(club_id)}/events"


def club_of(topic: str) -> str | None:
    """The club id in a ``clubs/<id>/...`` topic, or None when the topic has no valid one."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != CLUBS_PREFIX or parts[2] != "game":
        return None
    return parts[1] if CLUB_ID_RE.fullmatch(parts[1]) else None


# Where button boards publish: the vendors' roots (Tasmota's stat/tele/cmnd, Zigbee2MQTT,
# Shelly Gen1) and ours for the rest (ESPHome, Shelly Gen2, home-made boards), each followed
# by the club id, so that one club cannot publish or read another club's presses (issue 9;
# docs/buttons.md says which setting of each device puts it there). A club's scorer user may
# publish and read ``<root>/<its club>/#``; the broker's ACL, mosquitto.acl, the NATS
# permissions and the board config all derive from this tuple.
DEVICE_ROOTS = ("boards", "stat", "tele", "cmnd", "zigbee2mqtt", "shellies")
# The same as ACL patterns, "%u" standing for the user's name (= the club id), as in mosquitto.
DEVICE_ACL_PATTERNS = tuple(f"{root}/%u/#" for root in DEVICE_ROOTS)


def device_prefixes(club_id: str) -> tuple[str, ...]:
    """The topic prefixes of the club's devices, e.g. ``("boards/riverside/", "stat/riverside/",
    ...)``; raises ``BadClubId`` for an invalid club id."""
    check_club_id(club_id)
    return tuple(f"{root}/{club_id}/" for root in DEVICE_ROOTS)


def device_filters(club_id: str) -> list[str]:
    """The subscription filters covering all the club's device topics (``stat/<club>/#``, ...)."""
    return [prefix + "#" for prefix in device_prefixes(club_id)]


def device_club_of(topic: str) -> str | None:
    """The club id in a device topic (``stat/<club>/...``), or None when the topic is not under
    a device root or its club level is not a valid club id."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] not in DEVICE_ROOTS or not parts[2]:
        return None
    return parts[1] if CLUB_ID_RE.fullmatch(parts[1]) else None


# Filters the scorer service subscribes to (one level for the club id).
ALL_COMMANDS = f"{CLUBS_PREFIX}/+/game/cmd"
ALL_GAMES = f"{CLUBS_PREFIX}/+/game"
