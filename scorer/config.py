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

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CLUB_ID_RE = re.compile(r"^[a-z0-9-]{1,64}$")
# A club's scorer user is named after the club, so these names cannot be club ids.
RESERVED_CLUB_IDS = frozenset({"rallycast-service"})


class ConfigError(ValueError):
    """A setting has a value Rallycast cannot use; the message names the setting."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rallycast"


@dataclass(frozen=True)
class Club:
    id: str
    name: str = ""

    def __post_init__(self) -> None:
        if not CLUB_ID_RE.fullmatch(self.id):
            raise ConfigError(
                f"club id {self.id!r} is not valid: use 1-64 characters from a-z, 0-9 and '-'"
            )
        if self.id in RESERVED_CLUB_IDS:
            raise ConfigError(f"club id {self.id!r} is reserved: pick another")
        if not self.name:
            object.__setattr__(self, "name", self.id)


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
    # Broker limits (the same numbers go into mosquitto.conf).
    max_connections: int = 5000
    max_payload_bytes: int = 16384
    max_queued_messages: int = 1000
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


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets (``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_ENV_PREFIX = "RALLYCAST_"


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML/env/flag value into the type the field wants, or say which setting is wrong."""
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = kinds[name]
    try:
        if name == "clubs":
            if isinstance(value, str):  # env: "id1:Name One,id2"
                items = [part.split(":", 1) for part in value.split(",") if part.strip()]
                return tuple(Club(i.strip(), (n[0] if n else "").strip()) for i, *n in items)
            return tuple(
                c if isinstance(c, Club) else Club(str(c["id"]), str(c.get("name", "")))
                for c in value
            )
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
        if name == "data_dir":
            return Path(os.path.expanduser(str(value)))
        if kind == "int":
            number = int(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} ({exc})") from exc


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    base: Settings | None = None,
) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}

    path = config_file or env.get(_ENV_PREFIX + "CONFIG")
    if path:
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"config file {path}: unknown settings {sorted(unknown)}")
        values.update(data)

    for name in known:
        if _ENV_PREFIX + name.upper() in env:
            values[name] = env[_ENV_PREFIX + name.upper()]

    for name, value in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value

    coerced = {name: _coerce(name, value) for name, value in values.items()}
    return _check_limits(replace(base or Settings(), **coerced))


def _check_limits(settings: Settings) -> Settings:
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
    return settings
