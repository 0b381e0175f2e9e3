"""The button boards' configuration: ``[[boards]]`` tables and the ``[buttons]`` table of a TOML
file, checked into ``BoardSpec`` values. Every error is a ``ConfigError`` that names the board.

Example (docs/buttons.md has one per device family)::

    broker_url = "mqtt://127.0.0.1:1883"

    [buttons]
    debounce_ms = 300                       # default for every board

    [buttons.logins.riverside]              # the club's scorer user is named after the club
    password_file = "/etc/rallycast/riverside.secret"

    [[boards]]
    name = "table1"
    club = "riverside"
    table = 1                               # the club's table it scores (default 1)
    kind = "tasmota"                        # tasmota | esphome | zigbee2mqtt | shelly1 | shelly2 | raw
    topic = "table1-buttons"                # Tasmota's %topic%
    # it publishes on stat/riverside/table1-buttons/ (FullTopic %prefix%/riverside/%topic%/)
    [boards.buttons]
    1 = 1                                   # Button1 scores for side 1
    2 = { side = 2, double = "ignore" }     # Button2 for side 2; its double press does nothing
    [boards.gestures]                       # this board's defaults for every button
    hold = "undo"
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scorer.buttons.decoders import DECODERS, Decoder
from scorer.buttons.mapping import (
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_GESTURES,
    Action,
    BoardSpec,
    ButtonRule,
    Side,
    parse_action,
)
from scorer.config import Club, ConfigError, Settings, load_settings
from scorer.topics import DEVICE_ROOTS, BadTable, check_table, device_prefixes

# A board's topics must be under its club's device prefixes, ``<root>/<club>/`` (the broker's
# ACL, scorer/topics.py; issue 9). A board outside them would connect fine and never see a
# message, so the config refuses it and names the setting that puts it there.

# Settings for each kind besides the common ones; the first listed is required.
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "tasmota": ("topic", "full_topic"),
    "esphome": ("topic_prefix",),
    "zigbee2mqtt": ("device", "base_topic"),
    "shelly1": ("device",),
    "shelly2": ("topic_prefix",),
    "raw": ("topic", "payloads"),
}
COMMON_KEYS = ("name", "club", "table", "kind", "side", "buttons", "gestures", "debounce_ms")
# A raw board without a payloads table understands Rallycast's own shorthands.
RAW_DEFAULT_PAYLOADS = {"1+": "1+", "1-": "1-", "2+": "2+", "2-": "2-", "undo": "undo"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
MAX_DEBOUNCE_MS = 10000


def parse_boards(
    tables: Any, *, default_debounce_ms: int = DEFAULT_DEBOUNCE_MS
) -> tuple[BoardSpec, ...]:
    """Check a list of ``[[boards]]`` tables; names must be unique."""
    if not isinstance(tables, list):
        raise ConfigError("boards must be a list of tables ([[boards]] in TOML)")
    specs = tuple(
        parse_board(table, index, default_debounce_ms=default_debounce_ms)
        for index, table in enumerate(tables)
    )
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"board {spec.name!r}: two boards have this name; give each its own")
        seen.add(spec.name)
    return specs


def parse_board(
    table: Any, index: int = 0, *, default_debounce_ms: int = DEFAULT_DEBOUNCE_MS
) -> BoardSpec:
    label = f"board #{index + 1}"
    if isinstance(table, dict) and isinstance(table.get("name"), str):
        label = f"board {table['name']!r}"
    try:
        return _parse_board(table, index, default_debounce_ms)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ConfigError(f"{label}: {exc}") from exc


def _parse_board(table: Any, index: int, default_debounce_ms: int) -> BoardSpec:
    if not isinstance(table, dict):
        raise ConfigError("must be a table of settings")
    kind = table.get("kind")
    if kind not in KIND_KEYS:
        raise ConfigError(f"kind {kind!r} is not known: use one of {', '.join(KIND_KEYS)}")
    allowed = set(COMMON_KEYS) | set(KIND_KEYS[kind])
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown settings {unknown} for kind {kind!r} (it takes: {', '.join(sorted(allowed))})"
        )
    required = KIND_KEYS[kind][0]
    if required not in table:
        raise ConfigError(f"kind {kind!r} needs {required!r}")
    if "club" not in table:
        raise ConfigError("needs 'club' (the club whose match it scores)")
    club = Club(str(table["club"])).id  # same rules as everywhere: a-z 0-9 -, not reserved
    try:
        # (not a text: TOML says table = 2; "2" would be a typo that works by chance)
        if isinstance(table.get("table", 1), str):
            raise BadTable(f"table {table['table']!r} is not valid: write a whole number 1-64")
        board_table = check_table(table.get("table", 1))
    except BadTable as exc:
        raise ConfigError(f"{exc} (the club's table whose match the board scores)") from None

    decoder_args = {
        key: table[key] for key in KIND_KEYS[kind] if key in table and key != "payloads"
    }
    for key, value in decoder_args.items():
        if not isinstance(value, str):
            raise ConfigError(f"{key!r} must be a text, not {value!r}")
    decoder: Decoder = DECODERS[kind](**decoder_args, club=club)
    prefixes = device_prefixes(club)
    for topic_filter in decoder.subscriptions():
        if not topic_filter.startswith(prefixes):
            raise ConfigError(
                f"its topic {topic_filter!r} is not under club {club!r}'s device topics "
                f"({', '.join(p + '#' for p in prefixes)}), the only ones user {club!r} may use: "
                f"{_scoping_hint(kind, club, decoder_args)} (see docs/buttons.md)"
            )

    name = table.get("name", table[required])
    if "name" not in table:  # derived from the device's topic or name: keep the safe characters
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-")[:40] or f"board{index + 1}"
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"name {name!r} must be 1-40 characters from A-Z a-z 0-9 _ . - (it goes into command ids)"
        )

    debounce_ms = table.get("debounce_ms", default_debounce_ms)
    if (
        not isinstance(debounce_ms, int)
        or isinstance(debounce_ms, bool)
        or not 0 <= debounce_ms <= MAX_DEBOUNCE_MS
    ):
        raise ConfigError(f"debounce_ms must be a whole number from 0 to {MAX_DEBOUNCE_MS}")

    board_side = _side(table["side"], "side") if "side" in table else None
    gestures = dict(DEFAULT_GESTURES)
    gestures.update(_gesture_table(table.get("gestures", {}), "gestures"))

    buttons: dict[str, ButtonRule] = {}
    if kind == "raw":
        payloads = table.get("payloads", RAW_DEFAULT_PAYLOADS)
        if not isinstance(payloads, dict) or not payloads:
            raise ConfigError('payloads must be a table: payload = action, e.g. home = "1+"')
        for payload, action_text in payloads.items():
            key = payload.strip().casefold()
            if key in buttons:
                raise ConfigError(f"payload {payload!r} is listed twice (case is ignored)")
            action = _action(action_text, f"payloads.{payload}")
            buttons[key] = ButtonRule(board_side, {"single": action})
        if "buttons" in table:
            raise ConfigError("a raw board maps its payloads in 'payloads', not 'buttons'")
    else:
        button_tables = table.get("buttons", {})
        if not isinstance(button_tables, dict):
            raise ConfigError(
                "buttons must be a table: button = side, or button = { side = 1, ... }"
            )
        for button, value in button_tables.items():
            buttons[str(button)] = _button_rule(str(button), value, gestures, board_side)
        if not buttons and board_side is None:
            raise ConfigError(
                "say which side its buttons score for: 'side = 1' for the whole board, "
                "or a [boards.buttons] table (e.g. 1 = 1 and 2 = 2)"
            )
    other = ButtonRule(board_side, gestures) if board_side is not None and kind != "raw" else None

    for button, rule in list(buttons.items()) + ([("(any other)", other)] if other else []):
        for gesture, action in rule.gestures.items():
            if action.needs_side and rule.side is None:
                raise ConfigError(
                    f"button {button!r}: {gesture} = {str(action)!r} needs a side: give the "
                    "button a side, or name one in the action (e.g. 'point 1' or '1+')"
                )
    return BoardSpec(name, club, kind, decoder, buttons, other, debounce_ms, board_table)


def _scoping_hint(kind: str, club: str, args: dict[str, str]) -> str:
    """What to set so that a board of ``kind`` publishes under its club's prefixes."""
    if kind == "tasmota":
        return (
            f"set full_topic and the device's FullTopic to '%prefix%/{club}/%topic%/' "
            "(or leave full_topic out: that is its default)"
        )
    if kind == "zigbee2mqtt":
        return (
            f"set base_topic and Zigbee2MQTT's mqtt base_topic to 'zigbee2mqtt/{club}' "
            "(or leave base_topic out: that is its default)"
        )
    setting = {"esphome": "topic_prefix", "shelly2": "topic_prefix", "raw": "topic"}.get(kind)
    if setting is None:
        return f"set the device's MQTT topic under 'boards/{club}/'"
    old = args.get(setting, "")
    # keep what follows a root the device already used (e.g. "boards/table1" -> "table1")
    tail = old.split("/", 1)[1] if old.split("/", 1)[0] in _ROOTS and "/" in old else old
    device_setting = {
        "esphome": "ESPHome's mqtt topic_prefix",
        "shelly2": "the Shelly's MQTT topic prefix",
        "raw": "the board's firmware topic",
    }[kind]
    return f"set {setting} and {device_setting} to 'boards/{club}/{tail}'"


_ROOTS = DEVICE_ROOTS


def _side(value: Any, what: str) -> Side:
    if isinstance(value, str) and value.strip().lower() in ("left", "right"):
        return value.strip().lower()
    if value not in (1, 2) or isinstance(value, bool):
        raise ConfigError(f'{what} must be 1, 2, "left" or "right", not {value!r}')
    return int(value)


def _action(value: Any, what: str) -> Action:
    try:
        return parse_action(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _gesture_table(value: Any, what: str) -> dict[str, Action]:
    if not isinstance(value, dict):
        raise ConfigError(f'{what} must be a table: gesture = action, e.g. hold = "undo"')
    return {str(g).lower(): _action(a, f"{what}.{g}") for g, a in value.items()}


def _button_rule(
    button: str, value: Any, board_gestures: dict[str, Action], board_side: Side | None
) -> ButtonRule:
    if isinstance(value, dict):
        options = dict(value)
        what = f"buttons.{button}.side"
        side = _side(options.pop("side"), what) if "side" in options else board_side
        own = _gesture_table(options, f"buttons.{button}")
    else:
        side, own = _side(value, f"buttons.{button}"), {}
    gestures = dict(board_gestures)
    if side is None:  # a button without a side keeps the inherited actions that need none
        gestures = {g: a for g, a in gestures.items() if not a.needs_side}
    gestures.update(own)  # its own actions are checked below: they must not need a side
    return ButtonRule(side, gestures)


# --- the whole file -----------------------------------------------------------------------


@dataclass(frozen=True)
class ButtonsConfig:
    settings: Settings
    boards: tuple[BoardSpec, ...]
    # club id -> its scorer user's password (clear text in memory only; kept out of repr)
    passwords: dict[str, str] = field(repr=False)

    @property
    def clubs(self) -> list[str]:
        return sorted({board.club for board in self.boards})


def check_board_tables(
    boards: tuple[BoardSpec, ...], settings: Settings, path: Path | str = "the config"
) -> None:
    """Each board's ``table`` must be one of its club's tables (``[[clubs]] tables = N``; a
    club not listed has one). Raises ConfigError naming the board and what to change."""
    for board in boards:
        club = settings.club(board.club)
        tables = club.tables if club is not None else 1
        if board.table <= tables:
            continue
        if club is None:
            fix = (
                f"list the club in {path}: [[clubs]] id = {board.club!r}, tables = "
                f"{board.table} (or more), as on the scorer service's machine"
            )
        else:
            fix = f"use table = 1 to {tables}, or raise tables in club {board.club!r}'s [[clubs]]"
        raise ConfigError(
            f"board {board.name!r}: table = {board.table}, but club {board.club!r} has "
            f"{tables} table(s): {fix}"
        )


def password_env_var(club: str) -> str:
    return "RALLYCAST_PASSWORD_" + club.upper().replace("-", "_")


def load_buttons_config(
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> ButtonsConfig:
    """Read a TOML file holding Rallycast settings plus ``[[boards]]`` and ``[buttons]``.
    Settings follow the usual precedence (file < RALLYCAST_* environment < ``overrides``)."""
    env = os.environ if env is None else env
    path = path or env.get("RALLYCAST_CONFIG")
    if not path:
        raise ConfigError(
            "needs a config file with [[boards]] entries: --config FILE (see docs/buttons.md)"
        )
    path = Path(path).expanduser()
    settings = load_settings(path, env=env, overrides=overrides)
    boards_data = list(settings.boards) or None
    buttons_data = settings.buttons

    if not isinstance(buttons_data, dict):
        raise ConfigError(f"config file {path}: [buttons] must be a table")
    unknown = sorted(set(buttons_data) - {"debounce_ms", "logins"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown [buttons] settings {unknown}")
    default_debounce = _debounce(buttons_data.get("debounce_ms", DEFAULT_DEBOUNCE_MS))
    if boards_data is None:
        raise ConfigError(f"config file {path} has no [[boards]] entries (see docs/buttons.md)")
    boards = parse_boards(boards_data, default_debounce_ms=default_debounce)
    check_board_tables(boards, settings, path)

    logins = buttons_data.get("logins", {})
    if not isinstance(logins, dict):
        raise ConfigError("[buttons.logins] must be a table of clubs")
    passwords = {
        club: _password(club, logins.get(club), env, path.parent)
        for club in sorted({b.club for b in boards})
    }
    return ButtonsConfig(settings, boards, passwords)


def _debounce(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DEBOUNCE_MS:
        raise ConfigError(
            f"[buttons] debounce_ms must be a whole number from 0 to {MAX_DEBOUNCE_MS}"
        )
    return value


def _password(club: str, login: Any, env: Mapping[str, str], base_dir: Path) -> str:
    """The club user's password: $RALLYCAST_PASSWORD_<CLUB>, else [buttons.logins.<club>]
    password_file (first line) or password."""
    variable = password_env_var(club)
    if env.get(variable):
        return env[variable]
    if login is None:
        raise ConfigError(
            f"no password for club {club!r} (its boards log in as user {club!r}): set "
            f"{variable}, or password_file in [buttons.logins.{club}]"
        )
    if not isinstance(login, dict) or set(login) - {"password", "password_file"}:
        raise ConfigError(f"[buttons.logins.{club}] takes password_file (recommended) or password")
    if "password_file" in login:
        file = Path(str(login["password_file"])).expanduser()
        file = file if file.is_absolute() else base_dir / file
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"[buttons.logins.{club}] password_file {file} cannot be read: {exc.strerror}"
            ) from exc
        if not lines or not lines[0].strip():
            raise ConfigError(f"[buttons.logins.{club}] password_file {file} is empty")
        return lines[0].strip()
    password = login.get("password")
    if not isinstance(password, str) or not password:
        raise ConfigError(f"[buttons.logins.{club}] password must be a non-empty text")
    return password
