"""The scorer service (``rallycast scorer``): the one authority for every club's score.

It takes commands from each table of each club (``clubs/<club>/game/cmd`` for table 1,
``clubs/<club>/tables/<n>/game/cmd`` for table n), hands each to its club's desk
(scorer/desk.py: parse once, apply at most once per club, store before anything changes) in
the order they arrive, and publishes what the desk returns: the table's retained snapshot, an
event and the reply. This module keeps the MQTT side: the client and its callbacks, the status
and its probe, and the reconciliation of retained snapshots with the store. See
docs/protocol.md.

paho runs the network in its own thread and calls ``on_message`` there one message at a time,
so commands are applied strictly in arrival order without further locking.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.client import (
    BrokerAddress,
    Failover,
    add_url_flag,
    join_urls,
    make_client,
    resolve_address,
    stop_loop,
)
from scorer.config import Club, Settings, load_settings
from scorer.datadir_lock import DataDirInUse, DataDirLock, lock_data_dir
from scorer.desk import ClubMatch, Desk, Publication
from scorer.engine import Match
from scorer.files import write_private_file
from scorer.logs import setup_logging
from scorer.record_hooks import RecordHooks
from scorer.store import STORE_FILE_NAME, MatchStore, StoreError
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
# Liveness probe (docs/protocol.md, "Status"): every PROBE_INTERVAL seconds the service
# publishes a probe to a topic only it follows; one not back within PROBE_TIMEOUT = stalled
# (so a stall is said within PROBE_INTERVAL + PROBE_TIMEOUT + PROBE_CHECK, about 5.3 s).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 4.0
PROBE_CHECK = 0.25
PROBE_PREFIX = f"{topics.SCORER_STATUS}/probe/"
RETAINED_LOGGED = 256  # retained commands logged once each (per run), at most this many
# s: messages on topics outside the club scheme (a broker whose ACL cannot check a level's
# syntax, e.g. mosquitto, lets them through) are counted and logged at most once per this
BAD_TOPIC_LOG_INTERVAL = 60.0


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
    write_private_file(data_dir / SECRET_FILE_NAME, secret + "\n", prefix=".secret-")
    return secret


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Where a match is played: (club id, table number 1..64).
Slot = tuple[str, int]


def _slot(key: object) -> object:
    return (key, 1) if isinstance(key, str) else key


class TableMatches(Mapping[Slot, ClubMatch]):
    """The current match of each (club, table), read from the clubs' desks. A bare club id
    stands for the club's table 1, so ``matches["riverside"]`` is what it was before clubs
    had tables."""

    def __init__(self, desks: dict[str, Desk]) -> None:
        self._desks = desks

    def __getitem__(self, key: str | Slot) -> ClubMatch:
        slot = _slot(key)
        if not isinstance(slot, tuple) or len(slot) != 2:
            raise KeyError(key)
        club_id, table = slot
        desk = self._desks.get(club_id)
        if desk is None:
            raise KeyError(key)
        return desk.tables[table]

    def __iter__(self) -> Iterator[Slot]:
        for club_id, desk in list(self._desks.items()):
            for table in list(desk.tables):
                yield (club_id, table)

    def __len__(self) -> int:
        return sum(len(desk.tables) for desk in list(self._desks.values()))

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True


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
        # One desk per club (scorer/desk.py): its tables' matches and its command index.
        self._desks: dict[str, Desk] = {}
        self.matches = TableMatches(self._desks)
        self.connected = threading.Event()
        self._retained_logged: OrderedDict[tuple[str, int, bytes], None] = OrderedDict()
        self._bad_topics = 0  # off-scheme messages since the last line about them
        self._bad_topic_logged_at = float("-inf")
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
        # The SUBSCRIBE may be sent again from a timer thread (a refused one is retried), so
        # the mid is set and read under a lock: its SUBACK must not be taken for a stranger's.
        self._subscribe_lock = threading.Lock()
        self._resubscribe_timer: threading.Timer | None = None
        self._resubscribe_delay: float = RECONNECT_MIN_DELAY
        self._store: MatchStore | None = None
        self._record: RecordHooks | None = None
        self._lock_file: DataDirLock | None = None
        self._client: mqtt.Client | None = None
        self._failover: Failover | None = None
        self._stopping = False

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
        self._stopping = True
        self._cancel_resubscribe()
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
            stop_loop(client)
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
            self._desk(stored.club_id).tables[stored.table] = ClubMatch(stored.match_id, match)
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
        self._cancel_resubscribe()
        self._resubscribe_delay = RECONNECT_MIN_DELAY
        self._subscribe(client)
        for club_id, table in sorted(self.matches):
            self._publish_snapshot(club_id, table)

    def _subscribe(self, client: mqtt.Client) -> None:
        # Table 1's filters first and the probe third (as before tables); the tables' after.
        with self._subscribe_lock:
            self._subscribe_mid = client.subscribe(
                [
                    (topics.ALL_COMMANDS, 1),
                    (topics.ALL_GAMES, 1),
                    (self._probe_topic, 1),
                    (topics.ALL_TABLE_COMMANDS, 1),
                    (topics.ALL_TABLE_GAMES, 1),
                ]
            )[1]

    def _resubscribe(self, client: mqtt.Client) -> None:
        """The timer's retry of a refused SUBSCRIBE, on the same connection only (a new one
        subscribes in _on_connect)."""
        if self._stopping or client is not self._client or not client.is_connected():
            return
        log.info("subscribing again")
        self._subscribe(client)

    def _cancel_resubscribe(self) -> None:
        timer, self._resubscribe_timer = self._resubscribe_timer, None
        if timer is not None:
            timer.cancel()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        # "Connected" means commands reach us: only once the broker has granted the filters.
        with self._subscribe_lock:
            if mid != self._subscribe_mid:
                return
        if any(code.is_failure for code in reason_codes[:2]):
            # A broker may refuse for a moment (NATS while JetStream elects its leaders after
            # a node loss): try again, or the service would sit connected and deaf. Until a
            # SUBACK grants them, the status stays offline.
            delay = self._resubscribe_delay
            self._resubscribe_delay = min(delay * 2, RECONNECT_MAX_DELAY)
            log.error(
                "the broker refused the service's subscriptions %s and %s (%s): the service "
                "is not online until both are granted; subscribing again in %g s (grant the "
                "service read on both, as in mosquitto.acl)",
                topics.ALL_COMMANDS,
                topics.ALL_GAMES,
                reason_codes[:2],
                delay,
            )
            self._cancel_resubscribe()
            timer = threading.Timer(delay, self._resubscribe, args=(client,))
            timer.daemon = True
            self._resubscribe_timer = timer
            timer.start()
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

    def _log_bad_topic(self, topic: str) -> None:
        """One line per BAD_TOPIC_LOG_INTERVAL however many come: a client sending on
        off-scheme topics must not flood the log (or the disk under it)."""
        self._bad_topics += 1
        now = time.monotonic()
        if now - self._bad_topic_logged_at < BAD_TOPIC_LOG_INTERVAL:
            return
        log.warning(
            "ignored %d message(s) on topics that are not valid club topics (the latest on "
            "%r) since the last such line; the next in %g s at the earliest",
            self._bad_topics,
            topic[:200],
            BAD_TOPIC_LOG_INTERVAL,
        )
        self._bad_topics = 0
        self._bad_topic_logged_at = now

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            if message.topic == self._probe_topic:
                self._probe_back(message.payload)
                return
            found = topics.table_of(message.topic)
            if found is None:
                self._log_bad_topic(message.topic)
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
                    reply = self._desk(club_id).refusal(
                        table, None, "internal error in the scorer service", "internal_error"
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

    def _desk(self, club_id: str) -> Desk:
        desk = self._desks.get(club_id)
        if desk is None:
            desk = Desk(
                self.club(club_id),
                self._require_store,
                self.clock,
                max_payload_bytes=self.settings.max_payload_bytes,
            )
            self._desks[club_id] = desk
        return desk

    def handle_command(
        self, club_id: str, payload: bytes, *, retain: bool = False, table: int = 1
    ) -> dict[str, Any] | None:
        """Apply one command from the command topic of the club's ``table``; publish what
        changed; return the reply (docs/protocol.md: ``{"id", "ok", "error", "code",
        "params", "rev", "match_id", "table"}``), or None when nothing is to be answered (a
        retained command the service has already answered). The club's desk
        (scorer/desk.py) decides and keeps the laws; this publishes what it returns and
        keeps the status and the record up to date."""
        handled = self._desk(club_id).handle(payload, table=table, retain=retain)
        if handled.store_error is not None:
            self._store_failed(handled.store_error)
        elif handled.store_worked:
            self._store_works()
        self._publish(handled.publications)
        if self._record is not None and handled.record is not None:
            # The record and the webhooks (queued; never blocks: scorer/record_hooks.py).
            match_id, ended = handled.record
            self._record.match_changed(club_id, match_id, ended=ended)
        return handled.reply

    def _store_failed(self, exc: StoreError) -> None:
        """A write the store refused (the desk refused the command with store_failed): until
        a write works again, the status says stalled: commands do not come through,
        whatever the probe says."""
        if not self._store_failing:
            self._store_failing = True
            log.error(
                "stalled: the match store refuses writes (%s); every command is refused "
                "with store_failed until it works again (free disk space? permissions?)",
                exc,
            )
            self._set_status("stalled")

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

    # -- publishing -------------------------------------------------------------------------

    def table_snapshot(self, club_id: str, table: int, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The engine's snapshot as the table's topic carries it: with ``"table": n`` and
        ``"table_name"`` (the configured name or "Table n")."""
        return self._desk(club_id).table_snapshot(table, snapshot)

    def _publish(self, publications: list[Publication]) -> None:
        client = self._require_client()
        for publication in publications:
            payload = publication.payload
            client.publish(
                publication.topic,
                payload if isinstance(payload, bytes) else _dumps(payload),
                qos=1,
                retain=publication.retain,
            )

    def _publish_snapshot(self, club_id: str, table: int) -> None:
        publication = self._desk(club_id).snapshot_publication(table)
        if publication is not None:
            self._publish([publication])

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
            self._publish_snapshot(club_id, table)

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
    add_url_flag(parser)
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
