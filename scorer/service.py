"""The scorer service (``rallycast scorer``): the one authority for every club's score.

It takes commands from each table of each club (``clubs/<club>/game/cmd`` for table 1,
``clubs/<club>/tables/<n>/game/cmd`` for table n), applies them through the rules engine in the
order they arrive, keeps each accepted command in the match store (SQLite, before anything is
published), and publishes the table's retained snapshot, an event and a reply. Each table has
its own current match; command ids are applied at most once per club, across its tables. See
docs/protocol.md.

paho runs the network in its own thread and calls ``on_message`` there one message at a time,
so commands are applied strictly in arrival order without further locking.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import secrets
import signal
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.client import BrokerAddress, Failover, join_urls, make_client, resolve_address
from scorer.config import Club, Settings, load_settings
from scorer.datadir_lock import DataDirInUse, DataDirLock, lock_data_dir
from scorer.engine import ENDED_STATUSES, Match, Refused, check_command_id, parse_command
from scorer.logs import setup_logging
from scorer.record_hooks import RecordHooks
from scorer.store import (
    COMMAND_IDS_PER_CLUB,
    STORE_FILE_NAME,
    MatchStore,
    StoreError,
    command_id_key,
    new_match_id,
)
from scorer.timing import RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY

log = logging.getLogger("rallycast.scorer")

SECRET_FILE_NAME = "service.secret"
PASSWORD_ENV = "RALLYCAST_SERVICE_PASSWORD"
# MQTT keep-alive (seconds). A service that freezes (SIGSTOP, a suspended VM, a swap storm)
# cannot say so itself: the broker publishes its last will "offline" after 1.5 keep-alives
# without a packet. The probe keeps traffic flowing every second, so this costs nothing
# while healthy; 10 s says a frozen service offline within about 15 s (30 s took 45 s, past
# the senders' 30 s of resends) and still lets one slow command (a slow disk) take 15 s.
KEEPALIVE = 10
# How long after connecting retained snapshots are compared with the store (stale ones fixed).
RECONCILE_SECONDS = 3.0
DELETE_COMMANDS = frozenset({"delete", "clear"})
# Liveness probe (docs/protocol.md, "Status"): every PROBE_INTERVAL seconds the service
# publishes a probe to a topic only it follows; one not back within PROBE_TIMEOUT = stalled
# (so a stall is said within PROBE_INTERVAL + PROBE_TIMEOUT + PROBE_CHECK, about 5.3 s).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 4.0
PROBE_CHECK = 0.25
PROBE_PREFIX = f"{topics.SCORER_STATUS}/probe/"
RETAINED_LOGGED = 256  # retained commands logged once each (per run), at most this many


# Kept with each remembered reply (in memory and in the store), never published.
FINGERPRINT_KEY = "_command"


def _fingerprint(command: dict[str, Any]) -> str | None:
    """A short hash of a decoded JSON command (key order and spacing do not matter): a
    resend has the same one, another command under the same id does not."""
    try:
        text = json.dumps(command, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        return None
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


class ServiceStartError(OSError):
    """The service cannot start; the message says why and what to do. (An OSError: the
    data dir is busy or unusable; `rallycast up` says so in one sentence.)"""


def read_service_secret(data_dir: Path) -> str | None:
    path = data_dir / SECRET_FILE_NAME
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def ensure_service_secret(data_dir: Path) -> str:
    """The service's password, generated on first use into data_dir/service.secret (0600)."""
    existing = read_service_secret(data_dir)
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    path = data_dir / SECRET_FILE_NAME
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.replace(temporary, path)
    return secret


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def fork(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of ``value`` that shares nothing mutable with it: containers and plain objects
    are copied, immutable values (numbers, texts, frozen dataclasses: the engine's states
    are pure values) are shared. Cheap enough per command (a pointer per log entry), where a
    deepcopy copies every state the engine keeps."""
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        if value.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return value
    if memo is None:
        memo = {}
    known = memo.get(id(value))
    if known is not None:
        return known
    if isinstance(value, list):
        copied_list: list[Any] = []
        memo[id(value)] = copied_list
        copied_list.extend(fork(item, memo) for item in value)
        return copied_list
    if isinstance(value, dict):
        copied_dict: dict[Any, Any] = {}
        memo[id(value)] = copied_dict
        copied_dict.update((key, fork(item, memo)) for key, item in value.items())
        return copied_dict
    if isinstance(value, tuple):
        return tuple(fork(item, memo) for item in value)
    if isinstance(value, set | frozenset):
        return type(value)(fork(item, memo) for item in value)
    if hasattr(value, "__dict__") and not hasattr(value, "__slots__"):
        copied = copy.copy(value)
        memo[id(value)] = copied
        copied.__dict__.update((key, fork(item, memo)) for key, item in vars(value).items())
        return copied
    return copy.deepcopy(value, memo)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _invalid_unicode(value: Any, depth: int = 0) -> str | None:
    """The first text in a decoded JSON value that UTF-8 cannot encode (a lone surrogate
    from a ``\\ud800`` escape), shown escaped; None when every text is valid."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ascii(value[:40])
        return None
    if depth > 200:  # json.loads already bounds the depth; this keeps the walk bounded too
        return None
    if isinstance(value, dict):
        items: Any = [item for pair in value.items() for item in pair]
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        found = _invalid_unicode(item, depth + 1)
        if found is not None:
            return found
    return None


@dataclass
class ClubMatch:
    match_id: str
    match: Match

    @property
    def rev(self) -> int:
        return self.match.rev


# Where a match is played: (club id, table number 1..64).
Slot = tuple[str, int]


def _slot(key: str | Slot) -> Slot:
    return (key, 1) if isinstance(key, str) else key


class TableMatches(dict[Slot, ClubMatch]):
    """The current match of each (club, table). A bare club id stands for the club's table 1,
    so ``matches["riverside"]`` is what it was before clubs had tables."""

    def __getitem__(self, key: str | Slot) -> ClubMatch:  # type: ignore[override]
        return super().__getitem__(_slot(key))

    def __setitem__(self, key: str | Slot, value: ClubMatch) -> None:  # type: ignore[override]
        super().__setitem__(_slot(key), value)

    def __delitem__(self, key: str | Slot) -> None:  # type: ignore[override]
        super().__delitem__(_slot(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(_slot(key) if isinstance(key, str) else key)

    def get(self, key: str | Slot, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(_slot(key), default)


class ScorerService:
    """Run with ``start()`` / ``stop()``; the MQTT work happens in paho's thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        address = resolve_address(url or settings.broker_url, user=user, password=password)
        self.address = resolve_address(
            address,
            user=address.user or settings.service_user,
            password=address.password or read_service_secret(settings.data_dir),
        )
        self.clock = clock
        self.matches = TableMatches()
        self.connected = threading.Event()
        # Per club (all its tables): command id key -> the reply it got (accepted ones are
        # also in the store).
        self._replies: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self._refusals: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self._retained_logged: OrderedDict[tuple[str, int, bytes], None] = OrderedDict()
        self._probe_topic: str | None = None
        self._probe_enabled = False
        self._probe_ever_back = False
        self._probe_sent: dict[str, float] = {}
        self._probe_lock = threading.Lock()  # probe thread and paho's thread
        self._probe_thread: threading.Thread | None = None
        self._probe_stop = threading.Event()
        self.status = "offline"
        # Set while the store refuses writes (a full disk, ...): the status says stalled.
        self._store_failing = False
        self._reconcile_until = 0.0
        self._games_unsubscribed = False
        self._subscribe_mid: int | None = None
        self._store: MatchStore | None = None
        self._record: RecordHooks | None = None
        self._lock_file: DataDirLock | None = None
        self._client: mqtt.Client | None = None
        self._failover: Failover | None = None
        self._stopping = False
        # The fingerprint of the command being handled (paho's thread, one at a time).
        self._fingerprint: str | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, rebuild the matches, connect. Raises ``ServiceStartError`` (the
        message says what to do) when another service runs on the same data dir, or the
        store cannot be opened or read (damaged, not a database, unreadable): the service
        never starts from a store it cannot read (it would clear every club's snapshot and
        forget the ids it answered)."""
        try:
            self._lock_file = lock_data_dir(self.settings.data_dir, "scorer", "rallycast scorer")
        except (DataDirInUse, OSError) as exc:
            raise ServiceStartError(str(exc)) from None
        try:
            self._store = MatchStore(self.settings.data_dir)
            self._recover()
            self._record = RecordHooks(
                self.settings.data_dir,
                webhook_urls=self.settings.webhook_urls,
                retention_days=self.settings.record_retention_days,
            )
            self._record.start()
            # One client id per data dir, so the broker keeps this service's session (and
            # the QoS 1 commands that arrive while it is away) from one run to the next.
            client_id = self._store.meta(
                "mqtt_client_id", lambda: f"rallycast-service-{secrets.token_hex(4)}"
            )
            # The probe topic is readable by every spectator (rallycast/status/#): it
            # carries a random token, never the client id (with the id anyone could take the
            # service's session over, MQTT-3.1.4-2, and throw the service off the broker
            # again and again). Kept in the store like the client id: the persistent session
            # holds one probe subscription, not one more per restart.
            self._probe_topic = PROBE_PREFIX + self._store.meta(
                "probe_token", lambda: secrets.token_hex(8)
            )
        except (sqlite3.Error, StoreError, OSError) as exc:
            self._release_store()
            path = self.settings.data_dir / STORE_FILE_NAME
            raise ServiceStartError(
                f"cannot use the match store {path}: {exc}. Nothing was changed. If the file "
                "is damaged, stop here: restore it from a backup, or move it and its -wal "
                "and -shm files aside (keep them) to start with an empty store"
            ) from exc
        client = make_client(self.address, client_id=client_id, clean_session=False)
        client.will_set(topics.SCORER_STATUS, "offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # A cluster's nodes in turn: each reconnect goes to the next one, with the same client
        # id, so the session (and the commands queued in it) resumes on any node.
        self._failover = Failover(client, self.address, keepalive=KEEPALIVE)
        self._failover.install()
        self._client = client
        self._stopping = False
        log.info("connecting to %s", self.address.url())
        self._failover.connect_async()
        client.loop_start()
        self._probe_stop.clear()
        self._probe_thread = threading.Thread(
            target=self._probe_loop, name="rallycast-probe", daemon=True
        )
        self._probe_thread.start()

    def wait_until_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        self._probe_stop.set()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout + PROBE_INTERVAL)
            self._probe_thread = None
        client = self._client
        if client is not None:
            self._stopping = True
            if self._failover is not None:
                self._failover.stop()
            if client.is_connected():
                info = client.publish(topics.SCORER_STATUS, "offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    pass  # connection went away meanwhile: the last will says offline
            client.disconnect()
            # A command paho is handling right now still finds the client (and the store).
            client.loop_stop()
            self._client = None
        self.status = "offline"
        self.connected.clear()
        if self._record is not None:
            self._record.stop()
            self._record = None
        self._release_store()

    def _release_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock_file is not None:
            self._lock_file.close()  # (releases the flock)
            self._lock_file = None

    def _recover(self) -> None:
        """Rebuild each table's current match from its stored log."""
        assert self._store is not None
        for stored in self._store.current_matches():
            try:
                match = Match.from_log(stored.match_id, stored.log)
            except Exception:  # a log the engine no longer accepts must not stop the others
                log.exception(
                    "club %s table %d: cannot rebuild match %s from the store; it is not served",
                    stored.club_id,
                    stored.table,
                    stored.match_id,
                )
                continue
            self.matches[stored.club_id, stored.table] = ClubMatch(stored.match_id, match)
            log.info(
                "club %s table %d: match %s restored at rev %d",
                stored.club_id,
                stored.table,
                stored.match_id,
                len(stored.log),
            )

    # -- MQTT callbacks (paho's thread) -----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("the broker refused the connection: %s", reason_code)
            return
        where = self._failover.url() if self._failover is not None else self.address.url()
        log.info("connected to %s (session present: %s)", where, flags.session_present)
        # Retained snapshots of every table are compared with the store for a few seconds:
        # a crashed instance may have left one that the store does not back.
        self._reconcile_until = time.monotonic() + RECONCILE_SECONDS
        self._games_unsubscribed = False
        with self._probe_lock:
            self._probe_sent.clear()
        # Table 1's filters first and the probe third (as before tables); the tables' after.
        self._subscribe_mid = client.subscribe(
            [
                (topics.ALL_COMMANDS, 1),
                (topics.ALL_GAMES, 1),
                (self._probe_topic, 1),
                (topics.ALL_TABLE_COMMANDS, 1),
                (topics.ALL_TABLE_GAMES, 1),
            ]
        )[1]
        for (club_id, table), current in sorted(self.matches.items()):
            self._publish_snapshot(club_id, current, table)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        # "Connected" means commands reach us: only once the broker has granted the filters.
        if mid != self._subscribe_mid:
            return
        if any(code.is_failure for code in reason_codes[:2]):
            log.error("the broker refused the service's subscriptions: %s", reason_codes)
            return
        # The retained snapshots come after the SUBACK, behind any backlog of queued
        # commands the broker sent first: the comparison window starts now.
        self._reconcile_until = time.monotonic() + RECONCILE_SECONDS
        self._probe_enabled = len(reason_codes) > 2 and not reason_codes[2].is_failure
        if any(code.is_failure for code in reason_codes[3:5]):
            log.error(
                "the broker refused the tables' filters %s and %s (%s): only table 1 of each "
                "club is served (grant the service read on clubs/+/tables/+/game/cmd and "
                "read+write on clubs/+/tables/+/game, as in mosquitto.acl)",
                topics.ALL_TABLE_COMMANDS,
                topics.ALL_TABLE_GAMES,
                reason_codes[3:5],
            )
        if not self._probe_enabled:
            log.warning(
                "the broker refused the probe topic %s: the status says online while "
                "connected, without checking that commands come through (grant the service "
                "read on rallycast/status/scorer/probe/#)",
                self._probe_topic,
            )
        self._set_status("stalled" if self._store_failing else "online")
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        self.status = "offline"  # the broker publishes our last will (or stop() did)
        if not self._stopping:
            log.warning("lost the broker (%s); reconnecting", reason_code)

    # -- status: a probe through the broker ------------------------------------------------

    def _set_status(self, status: str) -> None:
        with self._probe_lock:
            client = self._client
            if client is None or status == self.status:
                return
            previous, self.status = self.status, status
            self._announce(client, previous, status)

    def _announce(self, client: mqtt.Client, previous: str, status: str) -> None:
        if status == "stalled" and self._store_failing:
            pass  # (_store_failed said why)
        elif status == "stalled":
            log.warning(
                "stalled: commands do not come through (no probe back within %g s)%s",
                PROBE_TIMEOUT,
                ""
                if self._probe_ever_back
                else f"; no probe has come back yet: may the service read {self._probe_topic}?",
            )
        elif previous == "stalled":
            log.info("commands come through again: online")
        client.publish(topics.SCORER_STATUS, status, qos=1, retain=True)

    def _probe_loop(self) -> None:
        """Every PROBE_INTERVAL: send a probe; one not back within PROBE_TIMEOUT = stalled.
        A probe comes back through paho's thread behind the commands, so a backlog the
        service cannot keep up with makes it late too."""
        sequence = 0
        last_sent = 0.0
        while not self._probe_stop.wait(PROBE_CHECK):
            client = self._client
            if client is None or not self.connected.is_set() or not self._probe_enabled:
                continue
            try:
                now = time.monotonic()
                with self._probe_lock:
                    oldest = min(self._probe_sent.values(), default=None)
                if oldest is not None and now - oldest > PROBE_TIMEOUT:
                    self._set_status("stalled")
                if now - last_sent < PROBE_INTERVAL:
                    continue
                last_sent = now
                sequence += 1
                payload = f"{sequence}"
                with self._probe_lock:
                    if len(self._probe_sent) < 64:  # (stalled for minutes: keep the oldest)
                        self._probe_sent[payload] = now
                client.publish(self._probe_topic, payload, qos=1)
            except Exception:  # the probe must never stop; the status stays as it was
                log.exception("the liveness probe failed")

    def _probe_back(self, payload: bytes) -> None:
        with self._probe_lock:
            if self._probe_sent.pop(payload.decode("ascii", "replace"), None) is None:
                return  # a probe of an earlier connection
            self._probe_sent.clear()  # the path works: older probes are answered too
            self._probe_ever_back = True
        if self.connected.is_set() and not self._store_failing:
            self._set_status("online")

    def _log_retained_once(self, club_id: str, table: int, payload: bytes) -> None:
        key = (club_id, table, payload[:256])
        if key in self._retained_logged:
            return
        self._retained_logged[key] = None
        while len(self._retained_logged) > RETAINED_LOGGED:
            self._retained_logged.popitem(last=False)
        log.warning(
            "club %s: ignored a retained command %r (commands are never retained; clear it "
            "with: mosquitto_pub -r -n -t %s)",
            club_id,
            payload[:80],
            topics.commands(club_id, table),
        )

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            if message.topic == self._probe_topic:
                self._probe_back(message.payload)
                return
            found = topics.table_of(message.topic)
            if found is None:
                log.warning("ignored a message on %r: not a valid club topic", message.topic)
                return
            club_id, table, suffix = found
            if suffix == "cmd":
                if message.retain:
                    self._log_retained_once(club_id, table, message.payload)
                try:
                    reply = self.handle_command(
                        club_id, message.payload, retain=bool(message.retain), table=table
                    )
                except Exception:  # a bug of ours: say so to the sender, keep serving
                    log.exception(
                        "club %s table %d: error while handling a command", club_id, table
                    )
                    reply = self._refuse(
                        club_id,
                        None,
                        "internal error in the scorer service",
                        "internal_error",
                        on_table=table,
                    )
                if reply is not None:
                    client.publish(topics.replies(club_id, table), _dumps(reply), qos=1)
            elif suffix == "":
                self._reconcile(club_id, message, table)
        except Exception:  # nothing a client sends may stop the service
            log.exception("error while handling a message on %r", message.topic)

    # -- commands ---------------------------------------------------------------------------

    def club(self, club_id: str) -> Club:
        """The club's configuration; a club that is not configured has one table."""
        return self.settings.club(club_id) or Club(club_id)

    def handle_command(
        self, club_id: str, payload: bytes, *, retain: bool = False, table: int = 1
    ) -> dict[str, Any] | None:
        """Apply one command from the command topic of the club's ``table``; publish what
        changed; return the reply (docs/protocol.md: ``{"id", "ok", "error", "code",
        "params", "rev", "match_id", "table"}``), or None when nothing is to be answered (a
        retained command the service has already answered).

        Laws kept here: an id is applied at most once per club, whichever of its tables it
        came on (across matches and restarts: the store's command index); nothing changes
        in memory before the store has committed; a refusal changes nothing; a table beyond
        the club's configured ``tables`` is refused (``no_such_table``)."""
        limit = self.settings.max_payload_bytes
        if limit and len(payload) > limit:  # 0: no limit (as for the broker)
            return self._refuse(
                club_id,
                None,
                f"the command is too large ({len(payload)} bytes; limit {limit})",
                "too_large",
                on_table=table,
                size=len(payload),
                limit=limit,
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(
                club_id, None, "the command is not UTF-8 text", "bad_command", on_table=table
            )
        raw: str | dict[str, Any] = text
        self._fingerprint = None
        command_id: str | int | None = None
        wanted_match: str | None = None
        if text.lstrip().startswith("{"):
            try:
                decoded = json.loads(text, parse_constant=_no_constant)
            except RecursionError:
                return self._refuse(
                    club_id,
                    None,
                    "the command is not valid JSON (nested too deep)",
                    "bad_command",
                    on_table=table,
                )
            except ValueError as exc:
                return self._refuse(
                    club_id,
                    None,
                    f"the command is not valid JSON ({exc})",
                    "bad_command",
                    on_table=table,
                )
            bad_text = _invalid_unicode(decoded)
            if bad_text is not None:
                return self._refuse(
                    club_id,
                    None,
                    f"the command contains text that is not valid Unicode ({bad_text}): "
                    "send UTF-8 text without lone surrogates",
                    "bad_command",
                    on_table=table,
                )
            if isinstance(decoded, dict):
                decoded = dict(decoded)
                # Table 1 keeps the fingerprints stored before tables; on another table the
                # same command under the same id is another press (id_reused), not a resend.
                self._fingerprint = _fingerprint(
                    decoded if table == 1 else {"table": table, "command": decoded}
                )
                try:
                    command_id = check_command_id(decoded.get("id"))
                except Refused:  # no usable id: the reply carries none
                    command_id = None
                if "match" in decoded:
                    wanted_match = decoded.pop("match")
                    if not isinstance(wanted_match, str) or not 1 <= len(wanted_match) <= 128:
                        return self._refuse(
                            club_id,
                            command_id,
                            '"match" must be a match id (a string of 1 to 128 characters)',
                            "bad_command",
                            on_table=table,
                        )
                raw = decoded
        is_delete = (
            isinstance(raw, dict)
            and isinstance(raw.get("cmd"), str)
            and raw["cmd"] in DELETE_COMMANDS
        )
        tables = self.club(club_id).tables
        # A match left on a table the configuration no longer has can still be deleted.
        if table > tables and not (is_delete and (club_id, table) in self.matches):
            return self._refuse(
                club_id,
                command_id,
                f"club {club_id} has no table {table} (it has {tables}): send to tables "
                f"1-{tables}, or configure more tables",
                "no_such_table",
                on_table=table,
                table=table,
                tables=tables,
            )
        if command_id is not None:
            earlier = self._earlier_reply(club_id, command_id, table)
            if earlier is not None:  # a resent command: nothing changes, same answer
                if retain:
                    return None
                return earlier
        if retain:
            return self._refuse(
                club_id,
                command_id,
                "a retained command is not applied (it would be applied again on every "
                "restart): publish commands without the retain flag, and clear this one "
                "with an empty retained message on the command topic",
                "retained_command",
                on_table=table,
            )
        if is_delete:
            assert isinstance(raw, dict)
            return self._delete(club_id, raw, command_id, wanted_match, table)
        try:
            command = parse_command(raw)
        except Refused as exc:
            code = getattr(exc, "code", "refused")
            return self._refuse(
                club_id,
                command_id,
                str(exc),
                "bad_command" if code == "refused" else code,
                on_table=table,
                **getattr(exc, "params", {}),
            )
        command_id = command.get("id")
        current = self.matches.get((club_id, table))
        if wanted_match is not None and (current is None or current.match_id != wanted_match):
            return self._refuse(
                club_id,
                command_id,
                f"the command is for match {wanted_match}, but "
                + (f"match {current.match_id} is current" if current else "no match is current"),
                "wrong_match",
                on_table=table,
                match=wanted_match,
            )
        if command.get("cmd") == "start" and (
            current is None
            or current.match.status in ENDED_STATUSES
            or command.get("force") is True
        ):
            return self._start_new_match(club_id, command, command_id, table)
        if current is None:
            # Remembered: a resend of this id after the next match has started must not
            # score in it (the press was made for no match).
            return self._remember_refusal(
                club_id,
                command_id,
                self._refuse(
                    club_id, command_id, "no match: start one first", "no_match", on_table=table
                ),
            )
        # The new match is computed on a copy; the table's match changes only once the
        # store has committed the command (a failure leaves memory and store as they were).
        trial = fork(current.match)
        try:
            outcome = trial.apply(command, self.clock())
        except Refused as exc:
            return self._remember_refusal(
                club_id,
                command_id,
                self._refuse(
                    club_id,
                    command_id,
                    str(exc),
                    getattr(exc, "code", "refused"),
                    on_table=table,
                    **getattr(exc, "params", {}),
                ),
            )
        if outcome.duplicate:  # (caught above already; kept in case the engine knows more)
            return self._reply(command_id, trial.rev, current.match_id, table)
        reply = self._reply(command_id, trial.rev, current.match_id, table)
        try:
            self._require_store().append(
                current.match_id,
                trial.rev,
                trial.latest,
                club_id=club_id,
                command_id=command_id,
                reply=self._with_fingerprint(reply),
            )
        except StoreError as exc:
            return self._store_failed(club_id, command_id, exc, table)
        self._store_works()
        was_ended = current.match.status in ENDED_STATUSES
        current.match = trial
        self._remember_reply(club_id, command_id, reply)
        self._publish_change(club_id, table, outcome.snapshot, outcome.event)
        if self._record is not None and (was_ended or trial.status in ENDED_STATUSES):
            # The record and the webhooks (queued; never blocks: scorer/record_hooks.py).
            self._record.match_changed(
                club_id, current.match_id, ended=not was_ended and trial.status in ENDED_STATUSES
            )
        log.debug(
            "club %s table %d: accepted %s -> rev %d",
            club_id,
            table,
            command.get("cmd"),
            current.rev,
        )
        return reply

    def _start_new_match(
        self, club_id: str, command: dict[str, Any], command_id: str | int | None, table: int
    ) -> dict[str, Any]:
        now = self.clock()
        match_id = new_match_id(now)
        match = Match(match_id)
        previous = self.matches.get((club_id, table))
        try:
            outcome = match.apply(command, now)
        except Refused as exc:
            return self._remember_refusal(
                club_id,
                command_id,
                self._refuse(
                    club_id,
                    command_id,
                    str(exc),
                    getattr(exc, "code", "refused"),
                    on_table=table,
                    **getattr(exc, "params", {}),
                ),
            )
        reply = self._reply(command_id, match.rev, match_id, table)
        try:
            self._require_store().start_match(
                club_id,
                match_id,
                match.latest,
                table=table,
                command_id=command_id,
                reply=self._with_fingerprint(reply),
            )
        except StoreError as exc:
            return self._store_failed(club_id, command_id, exc, table)
        self._store_works()
        current = ClubMatch(match_id, match)
        self.matches[club_id, table] = current
        self._remember_reply(club_id, command_id, reply)
        if previous is not None:
            log.info(
                "club %s table %d: match %s replaced by %s",
                club_id,
                table,
                previous.match_id,
                match_id,
            )
        else:
            log.info("club %s table %d: match %s started", club_id, table, match_id)
        self._publish_change(club_id, table, outcome.snapshot, outcome.event)
        return reply

    def _delete(
        self,
        club_id: str,
        command: dict[str, Any],
        command_id: str | int | None,
        wanted_match: str | None,
        table: int,
    ) -> dict[str, Any]:
        extra = sorted(str(key) for key in set(command) - {"cmd", "id"})
        if extra:
            return self._refuse(
                club_id,
                command_id,
                f"delete takes no other fields: {extra}",
                "bad_command",
                on_table=table,
            )
        if "id" in command and command_id is None:
            return self._refuse(
                club_id,
                None,
                '"id" must be a string of 1 to 128 characters or an integer',
                "bad_command",
                on_table=table,
            )
        current = self.matches.get((club_id, table))
        if wanted_match is not None and (current is None or current.match_id != wanted_match):
            return self._refuse(
                club_id,
                command_id,
                f"the command is for match {wanted_match}, but "
                + (f"match {current.match_id} is current" if current else "no match is current"),
                "wrong_match",
                on_table=table,
                match=wanted_match,
            )
        reply = self._reply(command_id, 0, None, table)
        # Stored even with no match to delete: a resend of this id after a restart and a
        # new start must be answered, not delete the new match.
        if current is not None or command_id is not None:
            try:
                self._require_store().clear_current(
                    club_id,
                    table=table,
                    command_id=command_id,
                    reply=self._with_fingerprint(reply),
                )
            except StoreError as exc:
                return self._store_failed(club_id, command_id, exc, table)
            self._store_works()
        if current is not None:
            del self.matches[club_id, table]
            client = self._require_client()
            client.publish(topics.game(club_id, table), b"", qos=1, retain=True)
            event = {"kind": "delete", "match_id": current.match_id, "rev": 0, "table": table}
            client.publish(topics.events(club_id, table), _dumps(event), qos=1)
            log.info("club %s table %d: match %s deleted", club_id, table, current.match_id)
        self._remember_reply(club_id, command_id, reply)
        return reply

    # -- the command index: an id is applied at most once per club ---------------------------

    def _index(self, club_id: str) -> OrderedDict[str, dict[str, Any]]:
        index = self._replies.get(club_id)
        if index is None:
            index = OrderedDict()
            if self._store is not None:
                for key, reply in self._store.command_replies(club_id):
                    index[key] = reply
            self._replies[club_id] = index
        return index

    def _earlier_reply(
        self, club_id: str, command_id: str | int, table: int
    ) -> dict[str, Any] | None:
        key = command_id_key(command_id)
        reply = self._index(club_id).get(key)
        if reply is None:
            reply = self._refusals.get(club_id, {}).get(key)
        if reply is None:
            # Stores written before the index existed: the current match's log knows its ids.
            current = self.matches.get((club_id, table))
            accepted_at = current.match.rev_of(command_id) if current is not None else None
            if accepted_at is not None:
                assert current is not None
                reply = self._reply(command_id, accepted_at, current.match_id, table)
        if reply is None:
            return None
        reply = dict(reply)
        reply.setdefault("table", 1)  # (remembered before tables: table 1's)
        known = reply.pop(FINGERPRINT_KEY, None)
        if known is not None and self._fingerprint is not None and known != self._fingerprint:
            # Not a resend: another command under a used id (a board that numbers its
            # presses and starts again after a reboot). The old reply would say "done" for
            # a press that is not applied.
            return self._refuse(
                club_id,
                command_id,
                "this id was already used for another command: give each command a new id",
                "id_reused",
                on_table=table,
                id=command_id,
            )
        return reply

    def _with_fingerprint(self, reply: dict[str, Any]) -> dict[str, Any]:
        """The reply as remembered: with the command's fingerprint, so a resend (the same
        command) gets the reply and another command under the same id does not."""
        if self._fingerprint is None:
            return reply
        return {**reply, FINGERPRINT_KEY: self._fingerprint}

    def _remember_reply(
        self, club_id: str, command_id: str | int | None, reply: dict[str, Any]
    ) -> None:
        if command_id is None:
            return
        index = self._index(club_id)
        index[command_id_key(command_id)] = self._with_fingerprint(reply)
        while len(index) > COMMAND_IDS_PER_CLUB:
            index.popitem(last=False)

    def _remember_refusal(
        self, club_id: str, command_id: str | int | None, reply: dict[str, Any]
    ) -> dict[str, Any]:
        """A refusal by the rules (or no_match) is answered again to a resend of its id, so
        a -1 refused now is not applied by its resend after the next point. Kept in the
        store with the accepted ids (a resend may come after a restart); in memory only
        when the store cannot take it (the refusal stands either way)."""
        if command_id is not None:
            remembered = self._with_fingerprint(reply)
            try:
                self._require_store().remember(club_id, command_id, remembered)
            except StoreError as exc:
                log.warning("club %s: refusal kept in memory only: %s", club_id, exc)
                refusals = self._refusals.setdefault(club_id, OrderedDict())
                refusals[command_id_key(command_id)] = remembered
                while len(refusals) > COMMAND_IDS_PER_CLUB:
                    refusals.popitem(last=False)
            else:
                self._remember_reply(club_id, command_id, reply)
        return reply

    def _refuse(
        self,
        club_id: str,
        command_id: str | int | None,
        reason: str,
        code: str = "refused",
        *,
        on_table: int = 1,
        **params: Any,
    ) -> dict[str, Any]:
        """The refusal reply on the club's table ``on_table`` (``params`` go to the reply's
        ``params``)."""
        log.info(
            "club %s table %d: refused a command (id %r): %s", club_id, on_table, command_id, reason
        )
        current = self.matches.get((club_id, on_table))
        return {
            "id": command_id,
            "ok": False,
            "error": reason,
            "code": code,
            "params": params,
            "rev": current.rev if current else 0,
            "match_id": current.match_id if current else None,
            "table": on_table,
        }

    def _store_failed(
        self, club_id: str, command_id: str | int | None, exc: StoreError, table: int
    ) -> dict[str, Any]:
        """A write the store refused: the command is refused (store_failed, nothing
        changed) and, until a write works again, the status says stalled: commands do not
        come through, whatever the probe says."""
        log.error("club %s: %s", club_id, exc)
        if not self._store_failing:
            self._store_failing = True
            log.error(
                "stalled: the match store refuses writes (%s); every command is refused "
                "with store_failed until it works again (free disk space? permissions?)",
                exc,
            )
            self._set_status("stalled")
        return self._refuse(
            club_id,
            command_id,
            "the service could not save the command",
            "store_failed",
            on_table=table,
        )

    def _store_works(self) -> None:
        if self._store_failing:
            self._store_failing = False
            log.info("the match store saves commands again")
            if self.connected.is_set():
                with self._probe_lock:
                    probes_late = bool(self._probe_sent) and (
                        time.monotonic() - min(self._probe_sent.values()) > PROBE_TIMEOUT
                    )
                if not probes_late:
                    self._set_status("online")

    @staticmethod
    def _reply(
        command_id: str | int | None, rev: int, match_id: str | None, table: int
    ) -> dict[str, Any]:
        return {
            "id": command_id,
            "ok": True,
            "error": None,
            "code": None,
            "rev": rev,
            "match_id": match_id,
            "table": table,
        }

    # -- publishing -------------------------------------------------------------------------

    def table_snapshot(self, club_id: str, table: int, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The engine's snapshot as the table's topic carries it: with ``"table": n`` and
        ``"table_name"`` (the configured name or "Table n")."""
        return {**snapshot, "table": table, "table_name": self.club(club_id).table_name(table)}

    def _publish_change(
        self,
        club_id: str,
        table: int,
        snapshot: dict[str, Any],
        event: dict[str, Any] | None,
    ) -> None:
        client = self._require_client()
        shown = self.table_snapshot(club_id, table, snapshot)
        client.publish(topics.game(club_id, table), _dumps(shown), qos=1, retain=True)
        if event is not None:
            client.publish(topics.events(club_id, table), _dumps({**event, "table": table}), qos=1)

    def _publish_snapshot(self, club_id: str, current: ClubMatch, table: int) -> None:
        snapshot = current.match.snapshot()
        if snapshot is not None:
            shown = self.table_snapshot(club_id, table, snapshot)
            self._require_client().publish(
                topics.game(club_id, table), _dumps(shown), qos=1, retain=True
            )

    def _reconcile(self, club_id: str, message: mqtt.MQTTMessage, table: int) -> None:
        """Correct a retained snapshot that the store does not back (left by a crash).
        A copy with the retain flag comes only from our subscription, whenever the broker
        gets to it (amqtt sends it after a backlog of queued commands): it is always
        compared. Once the window is over, the first live copy (our own publish coming
        back) ends the subscription."""
        if not message.retain:
            if time.monotonic() > self._reconcile_until and not self._games_unsubscribed:
                self._games_unsubscribed = True
                self._require_client().unsubscribe([topics.ALL_GAMES, topics.ALL_TABLE_GAMES])
            return
        if not message.payload:
            return
        try:
            shown = json.loads(message.payload)
            shown_key = (shown.get("match_id"), shown.get("rev"))
        except (ValueError, AttributeError, RecursionError):
            shown_key = None
        current = self.matches.get((club_id, table))
        if current is None:
            log.warning(
                "club %s table %d: clearing a retained snapshot the store has no match for",
                club_id,
                table,
            )
            self._require_client().publish(topics.game(club_id, table), b"", qos=1, retain=True)
        elif shown_key != (current.match_id, current.rev):
            log.warning(
                "club %s table %d: retained snapshot %s is stale; republishing rev %d",
                club_id,
                table,
                shown_key,
                current.rev,
            )
            self._publish_snapshot(club_id, current, table)

    def _require_client(self) -> mqtt.Client:
        if self._client is None:
            raise RuntimeError("the service is not running")
        return self._client

    def _require_store(self) -> MatchStore:
        if self._store is None:
            raise RuntimeError("the service is not running")
        return self._store


# -- rallycast scorer -------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        action="append",
        help="broker URL (default: the broker_url setting); a cluster's nodes as a comma-separated"
        " list or --url once per node",
    )
    parser.add_argument("--user", help="MQTT user (default: the service_user setting)")
    parser.add_argument(
        "--password",
        help=f"MQTT password (better: ${PASSWORD_ENV}, or data_dir/{SECRET_FILE_NAME})",
    )
    parser.add_argument("--data-dir", help="where the match store lives")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config, overrides={"data_dir": args.data_dir, "broker_url": join_urls(args.url)}
    )
    setup_logging(settings.log_level)
    password = args.password or os.environ.get(PASSWORD_ENV) or None
    service = ScorerService(settings, user=args.user, password=password)
    if not service.address.password:
        log.warning(
            "no password for %s: pass --password, set $%s or write %s",
            service.address.user,
            PASSWORD_ENV,
            settings.data_dir / SECRET_FILE_NAME,
        )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        service.start()
    except ServiceStartError as exc:
        print(f"rallycast scorer: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"rallycast scorer: serving clubs on {service.address.url()} "
        f"(match store in {settings.data_dir})",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    service.stop()
    print("rallycast scorer: stopped", flush=True)
    return 0


__all__ = [
    "BrokerAddress",
    "ScorerService",
    "ServiceStartError",
    "configure",
    "ensure_service_secret",
    "main",
]
