"""The one place for Rallycast's configuration.

Precedence, lowest to highest: built-in defaults, the TOML file (``--config`` or
``RALLYCAST_CONFIG``), environment variables ``RALLYCAST_<KEY>``, then command-line flags
(passed to :func:`load_settings` as ``overrides``).

Example TOML::

    data_dir = "/var/lib/rallycast"
    bind = "0.0.0.0"
    mqtt_port = 1883
    ws_port = 9001
    http_port = 8000

    [[clubs]]
    id = "riverside"
    name = "Riverside TTC"
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CLUB_ID_RE = re.compile(r"^[a-z0-9-]{1,64}$")


class ConfigError(ValueError):
    """A setting has a value Rallycast cannot use; the message names the setting."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rallycast"


# A club's tables are numbered 1..MAX_TABLES (scorer/topics.py puts them in topics).
MAX_TABLES = 64


@dataclass(frozen=True)
class Club:
    """A club: its id (the MQTT user and topic level), a display name, how many tables it plays
    on (1..MAX_TABLES) and optional table names (``table_names[0]`` names table 1; missing or
    empty names read "Table <n>")."""

    id: str
    name: str = ""
    tables: int = 1
    table_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not CLUB_ID_RE.fullmatch(self.id):
            raise ConfigError(
                f"club id {self.id!r} is not valid: use 1-64 characters from a-z, 0-9 and '-'"
            )
        if not self.name:
            object.__setattr__(self, "name", self.id)
        tables = self.tables
        if isinstance(tables, bool) or not isinstance(tables, int) or not 1 <= tables <= MAX_TABLES:
            raise ConfigError(
                f"club {self.id!r}: tables = {tables!r} is not valid: use a whole number "
                f"1-{MAX_TABLES}"
            )
        names = self.table_names
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"club {self.id!r}: table_names must be a list of strings")
        if len(names) > tables:
            raise ConfigError(
                f"club {self.id!r}: {len(names)} table_names for {tables} tables: "
                "give at most one name per table"
            )
        if any(len(n) > 40 or not n.isprintable() for n in names):
            raise ConfigError(
                f"club {self.id!r}: each table name must be at most 40 printable characters"
            )
        object.__setattr__(self, "table_names", tuple(n.strip() for n in names))

    def table_name(self, table: int) -> str:
        """The name shown for table ``table`` (1-based): its configured name or "Table <n>"."""
        if 1 <= table <= len(self.table_names) and self.table_names[table - 1]:
            return self.table_names[table - 1]
        return f"Table {table}"


@dataclass(frozen=True)
class Settings:
    # Where the broker's retained store, the password file and the match logs live.
    data_dir: Path = field(default_factory=default_data_dir)
    # Address the broker and the web server listen on (all interfaces for a club server).
    bind: str = "0.0.0.0"
    mqtt_port: int = 1883
    ws_port: int = 9001
    http_port: int = 8000
    # Broker the scorer service and tools connect to when they do not embed one.
    broker_url: str = "mqtt://127.0.0.1:1883"
    # WebSocket URL the pages connect to; empty = same host as the page, ws_port, path /mqtt.
    public_ws_url: str = ""
    # Web origins (scheme://host[:port]) whose pages may embed the live score and read the
    # club's record (docs/embed.md, docs/api.md): every /api/ route answers them with CORS and
    # the iframe page lets them frame it. "*" = any.
    embed_origins: tuple[str, ...] = ()
    # Broker limits (the same numbers go into mosquitto.conf).
    max_connections: int = 5000
    max_payload_bytes: int = 16384
    max_queued_messages: int = 1000
    # Payload bytes that may wait for one session (embedded broker only; docs/broker.md).
    max_queued_bytes: int = 2 * 1024 * 1024
    # The scorer service's own persistent session holds every club's commands while the
    # service is away: its own, larger bounds (embedded broker only).
    service_max_queued_messages: int = 20_000
    service_max_queued_bytes: int = 32 * 1024 * 1024
    # Hostile clients (broker/limits.py, docs/security.md). A packet larger than
    # max_packet_bytes (fixed header included) closes its connection, as mosquitto's
    # max_packet_size; subscriptions per client; connections per listener kept for logged-in
    # users (anonymous ones are refused past max_connections - reserved_connections);
    # logins needing a password check per source address and minute (after a burst of 5).
    max_packet_bytes: int = 20480
    max_subscriptions: int = 32
    reserved_connections: int = 16
    login_attempts_per_minute: int = 30
    # The scorer service's MQTT user (role: service).
    service_user: str = "rallycast-service"
    clubs: tuple[Club, ...] = (Club("demo", "Demo club"),)
    log_level: str = "INFO"
    # Button boards: the raw [[boards]] and [buttons] tables, checked by scorer.buttons.
    boards: tuple[dict[str, Any], ...] = ()
    buttons: dict[str, Any] = field(default_factory=dict, hash=False)
    # The record of play (docs/history.md): URLs POSTed the result when a match ends; days an
    # ended match is kept (0 = for ever). Who may read /api/ cross-origin: embed_origins.
    webhook_urls: tuple[str, ...] = ()
    record_retention_days: int = 0

    @property
    def local_host(self) -> str:
        return local_host(self.bind)

    @property
    def password_file(self) -> Path:
        return self.data_dir / "passwd"

    def club(self, club_id: str) -> Club | None:
        return next((c for c in self.clubs if c.id == club_id), None)

    def with_overrides(self, **overrides: Any) -> Settings:
        # Only the given overrides: the file and the environment were read into self already.
        return load_settings(env={}, overrides=overrides, base=self)


def local_host(bind: str) -> str:
    """Where a client on this machine reaches a listener bound to ``bind``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def bind_description(bind: str) -> str:
    """What a listener bound to ``bind`` really listens on, in words for a log line:
    ``all IPv4 interfaces`` (0.0.0.0), ``all interfaces`` (""), ``all IPv6 interfaces`` (::),
    else ``<bind> only`` (e.g. ``127.0.0.1 only``)."""
    return {
        "0.0.0.0": "all IPv4 interfaces",
        "": "all interfaces",
        "::": "all IPv6 interfaces",
    }.get(bind, f"{bind} only")


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets (``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_ENV_PREFIX = "RALLYCAST_"

PORT_SETTINGS = ("mqtt_port", "ws_port", "http_port")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MQTT_MAX_PAYLOAD = 268_435_455  # the largest remaining length MQTT 3.1.1 can encode (2.2.3)
# Inclusive ranges of the whole-number settings; one not listed must not be negative.
INT_RANGES: dict[str, tuple[int, int | None]] = {
    "mqtt_port": (0, 65535),  # 0 = any free port
    "ws_port": (0, 65535),
    "http_port": (0, 65535),
    "max_connections": (1, None),
    "max_payload_bytes": (0, MQTT_MAX_PAYLOAD),  # 0 = no limit
    "max_queued_messages": (1, None),
}
CLUB_KEYS = ("id", "name", "tables", "table_names")
HOST_RE = re.compile(r"^[A-Za-z0-9.:_%\[\]-]*$")


def _near(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` when ``word`` looks like a misspelt choice, else ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(name: str) -> str:
    return str({f.name: f.type for f in fields(Settings)}[name])


def _whole_number(value: Any, from_text: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a whole number, not {type(value).__name__}")
    if isinstance(value, str):
        if not from_text:  # TOML has numbers: a quoted one is a slip worth pointing at
            raise ValueError("must be a whole number without quotes")
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string (in quotes), not {type(value).__name__}")
    return value


def _flag(value: Any, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    raise ValueError("must be true or false")


def _clubs(value: Any, from_text: bool) -> tuple[Club, ...]:
    if isinstance(value, str) and from_text:  # env: "id1:Name One,id2"
        items = [part.split(":", 1) for part in value.split(",") if part.strip()]
        return tuple(Club(i.strip(), (n[0] if n else "").strip()) for i, *n in items)
    if not isinstance(value, list | tuple):
        raise ValueError("[[clubs]] must be an array of tables, each with an id")
    clubs = []
    for number, entry in enumerate(value, 1):
        if isinstance(entry, Club):
            clubs.append(entry)
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"club #{number} must be a table with an id")
        for key in entry:
            if key not in CLUB_KEYS:
                raise ValueError(f"club #{number}: unknown key {key!r}{_near(key, CLUB_KEYS)}")
        if "id" not in entry:
            raise ValueError(f"club #{number} has no id")
        club_id, name = entry["id"], entry.get("name", "")
        if not isinstance(club_id, str) or not isinstance(name, str):
            raise ValueError(f"club #{number}: id and name must be strings (in quotes)")
        clubs.append(Club(club_id, name, entry.get("tables", 1), entry.get("table_names", ())))
    return tuple(clubs)


ORIGIN_RE = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def _origins(value: Any, from_text: bool) -> tuple[str, ...]:
    """``embed_origins``: a list of web origins, or ``"*"``; the environment gives them
    separated by commas or spaces. Each is a browser's Origin header exactly (no path, no
    trailing slash), lower-cased as browsers send it."""
    if isinstance(value, str) and from_text:
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list | tuple):
        raise ValueError('must be a list of origins, e.g. ["https://riverside-ttc.org"]')
    origins = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"each origin must be a string (in quotes), not {type(item).__name__}")
        if item == "*":
            origins.append(item)
            continue
        origin = item.strip().lower()
        found = ORIGIN_RE.fullmatch(origin)
        if not found or (found.group(2) and not 0 < int(found.group(2)[1:]) <= 65535):
            raise ValueError(
                f"{item!r} is not an origin: use scheme://host[:port] with no path, "
                'e.g. "https://riverside-ttc.org", or "*" for any site'
            )
        origins.append(origin)
    return tuple(origins)


def _urls(value: Any, from_text: bool) -> tuple[str, ...]:
    """``webhook_urls``: a list of http:// or https:// URLs; the environment gives them
    separated by commas."""
    if isinstance(value, str) and from_text:
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of URLs, e.g. ["https://example.org/hook"]')
    for item in value:
        if not re.match(r"^https?://[^/\s]+", item):
            raise ValueError(f"{item!r} is not an http:// or https:// URL")
    return tuple(value)


def _coerce(name: str, value: Any, source: str = "") -> Any:
    """Turn a TOML/env/flag value into the type the setting wants and check its range, or
    raise ConfigError with one line naming the setting, the value and where it came from.
    ``source`` starting with ``$`` means the value is environment text (numbers as digits)."""
    from_text = source.startswith("$")
    kind = _kind(name)
    try:
        if name == "clubs":
            return _clubs(value, from_text)
        if name == "embed_origins":
            return _origins(value, from_text)
        if name in ("boards", "buttons"):
            if isinstance(value, str):
                raise ValueError("set it in the config file, not in the environment")
            if name == "buttons":
                if not isinstance(value, dict):
                    raise ValueError("[buttons] must be a table")
                return dict(value)
            if not isinstance(value, list | tuple):
                raise ValueError("[[boards]] must be an array of tables")
            return tuple(value)
        if name == "webhook_urls":
            return _urls(value, from_text)
        if name == "data_dir":
            if isinstance(value, Path):
                return value
            path = Path(os.path.expanduser(_text(value)))
            if not str(value).strip():
                raise ValueError("must name a directory")
            if path.exists() and not path.is_dir():
                raise ValueError("is a file; give a directory")
            return path
        if kind == "int":
            number = _whole_number(value, from_text)
            low, high = INT_RANGES.get(name, (0, None))
            if number < low or (high is not None and number > high):
                span = f"{low}-{high}" if high is not None else f"{low} or more"
                what = "a port number" if name in PORT_SETTINGS else "a number"
                raise ValueError(f"must be {what} {span}")
            return number
        if kind == "bool":
            return _flag(value, from_text)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError("must be a number")
            if isinstance(value, str) and not from_text:
                raise ValueError("must be a number without quotes")
            return float(value)
        if kind != "str":
            return value  # a kind of setting this function does not know: kept as given
        text = _text(value)
        if name == "log_level":
            if text.strip().upper() not in LOG_LEVELS:
                raise ValueError(
                    f"use one of {', '.join(LOG_LEVELS)}{_near(text.upper(), LOG_LEVELS)}"
                )
            return text.strip().upper()
        if name == "bind" and not HOST_RE.fullmatch(text.strip()):
            raise ValueError("must be an address of this machine, e.g. 0.0.0.0 or 127.0.0.1")
        if name == "bind":
            return text.strip()
        if name == "broker_url":
            from scorer.client import BrokerUrlError, parse_broker_url  # client imports us

            try:
                parse_broker_url(text)
            except BrokerUrlError as exc:
                raise ValueError(str(exc).replace(f"broker URL {text!r}", "").strip(": ")) from None
        if name == "public_ws_url" and text:  # one URL, or a cluster's nodes (comma-separated)
            for url in text.split(","):
                if not re.match(r"^wss?://[^/\s,]+", url.strip()):
                    raise ValueError(
                        "must be empty or a ws:// or wss:// URL, e.g. wss://example.org/mqtt"
                        " (a cluster's nodes: comma-separated)"
                    )
        if name == "service_user" and not re.fullmatch(r"[^\s/#+:]{1,64}", text):
            raise ValueError("must be 1-64 characters without spaces, '/', '#', '+' or ':'")
        return text
    except (TypeError, ValueError, KeyError) as exc:  # ConfigError too (a club's id)
        shown = "" if name in ("clubs", "boards", "buttons") else f" = {_short(value)}"
        raise ConfigError(f"setting {name!r}{shown}{_where_brief(source)}: {exc}") from None


def _short(value: Any) -> str:
    text = repr(str(value) if isinstance(value, Path) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _where_brief(source: str) -> str:
    return f" (from {source})" if source else ""


def _club_lines(text: str, club_id: str) -> list[int]:
    """Line numbers of ``id = "<club_id>"`` inside ``[[clubs]]`` tables of the TOML text
    (tomllib keeps no positions)."""
    pattern = re.compile(r"^\s*id\s*=\s*[\"']" + re.escape(club_id) + r"[\"']\s*(#.*)?$")
    found, in_clubs = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("["):
            in_clubs = line.strip().startswith("[[clubs]]")
        elif in_clubs and pattern.match(line):
            found.append(number)
    return found


def _check_together(settings: Settings, sources: dict[str, str], text: str | None) -> None:
    """Rules across settings: distinct non-zero ports, distinct club ids, service user not a
    club. Raises ConfigError with one line."""
    taken: dict[int, str] = {}
    for name in PORT_SETTINGS:
        port = getattr(settings, name)
        if port and port in taken:
            raise ConfigError(
                f"settings {taken[port]!r} and {name!r} are both {port}"
                f"{_where_brief(sources.get(name, ''))}: each listener needs its own port "
                "(0 = any free port)"
            )
        taken.setdefault(port, name)
    seen: dict[str, int] = {}
    for number, club in enumerate(settings.clubs, 1):
        if club.id in seen:
            lines = _club_lines(text, club.id) if text and "clubs" in sources else []
            at = f", lines {' and '.join(map(str, lines))}" if len(lines) > 1 else ""
            raise ConfigError(
                f"club id {club.id!r} is given twice ([[clubs]] #{seen[club.id]} and #{number}"
                f"{at}){_where_brief(sources.get('clubs', ''))}: each club needs its own id"
            )
        seen[club.id] = number
    # A club's scorer user is named after the club, so the configured service user's name
    # (not a fixed list) is the one id no club may have.
    if settings.club(settings.service_user) is not None:
        raise ConfigError(
            f"club id {settings.service_user!r} is reserved: it is the service_user's name"
            " (the scorer service's MQTT user); rename the club or set service_user"
        )


def _read_config_file(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {path} is a directory: give the path of a .toml file"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Settings from the defaults (or ``base``), the TOML file, ``RALLYCAST_<KEY>`` variables
    of ``env`` (os.environ by default) and ``overrides`` (flags; None = not given), each checked
    before anything is started. Raises ConfigError with a one-line message naming the setting,
    where its value came from and what would be accepted."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    known = {f.name for f in fields(Settings)}

    path = config_file or env.get(_ENV_PREFIX + "CONFIG")
    text = None
    if path:
        path = Path(path).expanduser()
        data, text = _read_config_file(path)
        unknown = sorted(set(data) - known)
        if unknown:
            # The list format is what older messages (and scripts) show; the hint is new.
            hints = "".join(_near(name, known) for name in unknown)
            raise ConfigError(f"config file {path}: unknown settings {unknown}{hints}")
        values.update(data)
        sources.update(dict.fromkeys(data, f"config file {path}"))

    for name in known:
        if _ENV_PREFIX + name.upper() in env:
            values[name] = env[_ENV_PREFIX + name.upper()]
            sources[name] = "$" + _ENV_PREFIX + name.upper()

    for name, value in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}{_near(name, known)}")
        if value is not None:
            values[name] = value
            sources[name] = "the command line"

    coerced = {name: _coerce(name, value, sources[name]) for name, value in values.items()}
    settings = replace(base or Settings(), **coerced)
    _check_together(settings, sources, text)
    _check_limits(settings)
    return settings


def _check_limits(settings: Settings) -> None:
    """Broker limits that only make sense together (broker/limits.py)."""
    if settings.max_packet_bytes < max(settings.max_payload_bytes, 1024):
        raise ConfigError(
            f"setting 'max_packet_bytes' ({settings.max_packet_bytes}) must be at least"
            f" max_payload_bytes ({settings.max_payload_bytes}) and 1024"
        )
    if settings.max_subscriptions < 1:
        raise ConfigError("setting 'max_subscriptions' must be at least 1")
    if settings.max_connections and settings.reserved_connections >= settings.max_connections:
        raise ConfigError(
            f"setting 'reserved_connections' ({settings.reserved_connections}) must be below"
            f" max_connections ({settings.max_connections})"
        )


# -- flags that set a setting of the same name (``--mqtt-port`` sets ``mqtt_port``): one type
# and one wording for every command that takes them (broker, up, viewer, bench serve-stock).
SETTING_FLAGS: dict[str, tuple[type, str, str]] = {
    "data_dir": (str, "DIR", "the data dir: passwords, retained messages, match logs"),
    "bind": (str, "ADDRESS", "address to listen on (default: the bind setting, 0.0.0.0)"),
    "mqtt_port": (int, "PORT", "MQTT/TCP port (0 = any free port)"),
    "ws_port": (int, "PORT", "MQTT/WebSocket port (0 = any free port)"),
    "http_port": (int, "PORT", "web pages port (0 = any free port)"),
}


def add_setting_flags(parser: Any, *names: str, help: Mapping[str, str] | None = None) -> None:
    """Add ``--<name>`` (underscores as dashes) to ``parser`` (an argparse parser) for each
    setting in ``names`` (keys of SETTING_FLAGS), default None = not given, with its type and
    wording; ``help`` replaces a wording where a command means more (the viewer's --ws-port
    is the broker's port the pages use). Read them back with :func:`setting_overrides`."""
    for name in names:
        kind, metavar, text = SETTING_FLAGS[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            metavar=metavar,
            help=(help or {}).get(name, text),
        )


def setting_overrides(args: Any, *names: str) -> dict[str, Any]:
    """``{name: args.<name>}`` for load_settings(overrides=...) (None = the flag not given)."""
    return {name: getattr(args, name) for name in names}
