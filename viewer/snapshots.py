"""The viewer's own spectator connection: the latest retained snapshot of every club, so a page
can carry its club's current score in its HTML and show it before mqtt.js has even loaded.

One small paho client (anonymous, MQTT 3.1.1, clean session) subscribes ``clubs/+/game``,
``clubs/+/tables/+/game`` (every table of every club, docs/protocol.md) and
``rallycast/status/scorer`` — what any spectator page may — and keeps the last payload of
each. While it is not connected (or not yet subscribed) it knows nothing: the pages then carry
no snapshot and work exactly as before, from MQTT alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from scorer import topics
from scorer.client import (
    BrokerAddress,
    BrokerUrlError,
    Failover,
    make_client,
    older_than,
    parse_broker_url,
    stop_loop,
)
from scorer.config import Settings, url_host

log = logging.getLogger("rallycast.viewer")

READY_WAIT = 1.0  # at start, how long the web server waits for the first subscription
STOP_WAIT = 0.1  # at stop, how long to wait for the network thread (a daemon: it may linger)
_DEFAULT_BROKER_URL = next(f.default for f in fields(Settings) if f.name == "broker_url")
_DEFAULT_MQTT_PORT = next(f.default for f in fields(Settings) if f.name == "mqtt_port")


def viewer_broker_url(settings: Settings) -> str:
    """The broker the viewer follows: ``settings.broker_url`` (the broker the tools connect
    to). When that is left at its default but ``mqtt_port`` says another port — ``rallycast
    up`` with a configured (or ephemeral) MQTT port passes the real one — the broker is this
    machine's, on that port."""
    port = settings.mqtt_port
    if settings.broker_url != _DEFAULT_BROKER_URL or port in (0, _DEFAULT_MQTT_PORT):
        return settings.broker_url
    return f"mqtt://{url_host(settings.local_host)}:{port}"


def valid_snapshot(payload: bytes) -> dict[str, Any] | None:
    """The snapshot in a payload, or None for anything a page would not render either."""
    try:
        snapshot = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("game_data"), dict):
        return None
    return snapshot


class RetainedSnapshots:
    """The latest snapshot per club and table and the scorer service's status, kept by a paho
    client in its own network thread. Readers (the web server's loop) only read whole dict
    entries."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._snapshots: dict[tuple[str, int], dict[str, Any]] = {}
        # The latest snapshot seen per table, kept across reconnects (unlike _snapshots) so
        # that an old retained copy served after a reconnect is not taken for the truth.
        self._latest: dict[tuple[str, int], dict[str, Any]] = {}
        self._status: str | None = None
        self._ready = threading.Event()  # connected and subscribed
        self._tried = threading.Event()  # the first connection attempt is over, either way
        self._client: Any = None
        self._failover: Failover | None = None
        self._on_tried: Callable[[], None] | None = None

    # --- what the pages read ---

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def snapshot(self, club_id: str, table: int = 1) -> dict[str, Any] | None:
        """The retained snapshot of the club's table, None when there is none or the viewer
        is not following the broker."""
        return self._snapshots.get((club_id, table)) if self._ready.is_set() else None

    @property
    def scorer_offline(self) -> bool:
        return self._ready.is_set() and self._status == "offline"

    @property
    def scorer_status(self) -> str | None:
        """The service's last status (``online``, ``stalled``, ``offline``), None if unknown."""
        return self._status if self._ready.is_set() else None

    # --- running ---

    def start(self) -> bool:
        """Connect in the background (paho reconnects on its own: 1 s, doubling, at most 4 s).
        Returns False when the URL is not usable (then pages carry no snapshot)."""
        try:
            address: BrokerAddress = parse_broker_url(self.url)
        except BrokerUrlError as exc:
            log.warning("viewer: no server-side snapshots: %s", exc)
            self._tried_now()
            return False
        address = replace(address, user=None, password=None)  # a spectator: anonymous
        client = make_client(address, client_id="rallycast-viewer-" + secrets.token_hex(4))
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # A cluster's nodes (a broker_url list) in turn: each reconnect goes to the next one.
        self._failover = Failover(client, address)
        self._failover.install()
        self._client = client
        try:
            self._failover.connect_async()
        except (OSError, ValueError) as exc:
            log.warning("viewer: cannot follow the broker at %s: %s", address.url(), exc)
            self._tried_now()
            return False
        client.loop_start()
        return True

    async def start_and_wait(self, within: float = READY_WAIT) -> None:
        """Start, then wait (without blocking the loop) until subscribed or the first attempt
        failed, at most ``within`` seconds: the first pages served can then carry a score."""
        settled = asyncio.Event()
        self._on_tried = _threadsafe_setter(settled)
        try:
            if self.start() and not self._tried.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        await settled.wait()
        finally:
            self._on_tried = None

    def stop(self) -> None:
        client, self._client = self._client, None
        self._forget()
        if self._failover is not None:
            self._failover.stop()
        if client is not None:
            client.disconnect()
            stop_loop(client)

    async def stop_soon(self, within: float = STOP_WAIT) -> None:
        """Stop without holding up the web server's shutdown for more than ``within`` seconds
        (paho's thread may be asleep between reconnect attempts for up to a second)."""
        stopped = asyncio.Event()
        notify = _threadsafe_setter(stopped)

        def stop() -> None:
            self.stop()
            notify()

        threading.Thread(target=stop, name="viewer-mqtt-stop", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await stopped.wait()

    # --- paho callbacks (its network thread) ---

    def _tried_now(self) -> None:
        self._tried.set()
        notify = self._on_tried
        if notify is not None:
            notify()

    def _forget(self) -> None:
        self._ready.clear()
        self._snapshots = {}
        self._status = None

    def _on_connect(self, client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.warning("viewer: the broker at %s refused us: %s", self.url, reason_code)
            self._tried_now()
            return
        # QoS 0: retained messages come all the same, and on a NATS cluster each QoS 1
        # subscription is a replicated JetStream consumer (docs/scale.md).
        client.subscribe(
            [(topics.ALL_GAMES, 0), (topics.ALL_TABLE_GAMES, 0), (topics.SCORER_STATUS, 0)]
        )

    def _on_connect_fail(self, client, userdata):  # type: ignore[no-untyped-def]
        self._tried_now()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):  # type: ignore[no-untyped-def]
        # In the order subscribed: every club's table 1, every club's other tables, status.
        games, tables, status = (list(reason_codes) + [None] * 3)[:3]
        if tables is not None and tables.is_failure and not games.is_failure:
            # A broker whose ACL predates tables (an old mosquitto.acl): table 1 still works.
            log.warning(
                "viewer: the broker refused %s to spectators: tables 2 and up get no"
                " server-side snapshot (update the broker's ACL: docs/broker.md)",
                topics.ALL_TABLE_GAMES,
            )
        if games is None or games.is_failure or (status is not None and status.is_failure):
            log.warning("viewer: the broker refused the spectator subscriptions")
        else:
            self._ready.set()
            log.debug("viewer: following %s for server-side snapshots", self.url)
        self._tried_now()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        # What arrives after a reconnect is the truth again; a match deleted meanwhile would
        # never be "un-retained" to us, so nothing old is kept.
        self._forget()
        self._tried_now()

    def _on_message(self, client, userdata, message):  # type: ignore[no-untyped-def]
        if message.topic == topics.SCORER_STATUS:
            self._status = message.payload.decode("utf-8", "replace").strip()
            return
        found = topics.table_of(message.topic)
        if found is None or found[2] != "":
            return
        key = (found[0], found[1])  # (club, table)
        snapshot = valid_snapshot(message.payload) if message.payload.strip() else None
        if snapshot is None:
            self._snapshots.pop(key, None)  # an empty payload: the table has no match
            self._latest.pop(key, None)
        elif older_than(snapshot, self._latest.get(key)):
            log.info("viewer: ignored an old snapshot of %s table %s (a stale retained copy)", *key)
        else:
            self._snapshots[key] = self._latest[key] = snapshot


def _threadsafe_setter(event: asyncio.Event) -> Callable[[], None]:
    """A function any thread may call to set ``event`` in the running loop (a no-op once that
    loop is closed)."""
    loop = asyncio.get_running_loop()

    def set_event() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(event.set)

    return set_event
