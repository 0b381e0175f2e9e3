"""MQTT topic names of the Rallycast protocol (see docs/protocol.md). One place, used by the
broker's ACL, the scorer service, the tools and the pages' server side."""

from __future__ import annotations

import re

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


# Tables (issue 12). A club has tables 1..N. Table 1 keeps the original topics
# ``clubs/<club>/game[/cmd|/reply|/events]`` so that one-table clubs, old pages and old boards
# work unchanged; table n >= 2 lives under ``clubs/<club>/tables/<n>/game[/...]``. Each table
# has exactly one topic: ``clubs/<club>/tables/1/game`` is not a table topic. A page follows all
# of a club's tables with two subscriptions (``club_game_filters``).
TABLES_LEVEL = "tables"
MAX_TABLES = 64


class BadTable(ValueError):
    pass


_TABLE_TEXT_RE = re.compile(r"[1-9][0-9]?")  # 1..99 written plainly; the range is checked after


def check_table(table: object) -> int:
    """The table number as an int in 1..MAX_TABLES; raises ``BadTable`` otherwise (bools and
    strings with signs, spaces or leading zeros are refused)."""
    if isinstance(table, bool):
        raise BadTable(f"table {table!r} is not valid: use a whole number 1-{MAX_TABLES}")
    # ASCII digits only and at most two of them before int(): str.isdigit() is also true for
    # "²" (which int() refuses) and for 5,000 digits (which int() refuses past 4,300).
    if isinstance(table, str) and _TABLE_TEXT_RE.fullmatch(table):
        table = int(table)
    if not isinstance(table, int) or not 1 <= table <= MAX_TABLES:
        raise BadTable(f"table {table!r} is not valid: use a whole number 1-{MAX_TABLES}")
    return table


def game(club_id: str, table: int = 1) -> str:
    """Retained snapshot of the match on the club's table (QoS 1): ``clubs/<club>/game`` for
    table 1, ``clubs/<club>/tables/<n>/game`` for table n >= 2. Raises ``BadClubId``/``BadTable``."""
    club = check_club_id(club_id)
    number = check_table(table)
    if number == 1:
        return f"{CLUBS_PREFIX}/{club}/game"
    return f"{CLUBS_PREFIX}/{club}/{TABLES_LEVEL}/{number}/game"


def commands(club_id: str, table: int = 1) -> str:
    """Commands from the club's scorers and boards for one table (QoS 1, never retained)."""
    return f"{game(club_id, table)}/cmd"


def replies(club_id: str, table: int = 1) -> str:
    """The service's answer to each command of the table: accepted/refused, with its id."""
    return f"{game(club_id, table)}/reply"


def events(club_id: str, table: int = 1) -> str:
    """One non-retained message per accepted change on the table (point, undo, game end, ...)."""
    return f"{game(club_id, table)}/events"


def club_game_filters(club_id: str) -> list[str]:
    """The two filters that follow every table's snapshot of a club."""
    club = check_club_id(club_id)
    return [f"{CLUBS_PREFIX}/{club}/game", f"{CLUBS_PREFIX}/{club}/{TABLES_LEVEL}/+/game"]


def table_of(topic: str) -> tuple[str, int, str] | None:
    """``(club_id, table, suffix)`` of a game topic, where suffix is ``""`` for the snapshot or
    ``"cmd"``/``"reply"``/``"events"``; None when the topic is not a valid game topic of the
    scheme above (bad club id, table 1 spelt as ``tables/1``, table out of range, ...)."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != CLUBS_PREFIX or not CLUB_ID_RE.fullmatch(parts[1]):
        return None
    if parts[2] == "game":
        table, rest = 1, parts[3:]
    elif parts[2] == TABLES_LEVEL and len(parts) >= 5 and parts[4] == "game":
        try:
            table = check_table(parts[3])
        except BadTable:
            return None
        if table == 1:
            return None
        rest = parts[5:]
    else:
        return None
    if not rest:
        return parts[1], table, ""
    if len(rest) == 1 and rest[0] in ("cmd", "reply", "events"):
        return parts[1], table, rest[0]
    return None


def club_of(topic: str) -> str | None:
    """The club id in a ``clubs/<id>/game...`` or ``clubs/<id>/tables/<n>/game...`` topic, or
    None when the topic has no valid one."""
    found = table_of(topic)
    return found[0] if found else None


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
ALL_TABLE_COMMANDS = f"{CLUBS_PREFIX}/+/{TABLES_LEVEL}/+/game/cmd"
ALL_TABLE_GAMES = f"{CLUBS_PREFIX}/+/{TABLES_LEVEL}/+/game"
