"""Talking to a Rallycast broker from Python: broker URLs, a configured paho client, and the
score protocol's request/reply (see docs/protocol.md).

Every paho user in Rallycast (the scorer service, ``rallycast score``, the button boards)
builds its client here, so URL parsing, MQTT 3.1.1, WebSocket options and TLS live in one place.
"""

from __future__ import annotations

import json
import queue
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.config import Settings, url_host
from scorer.engine import SHORTHANDS

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
WS_DEFAULT_PATH = "/mqtt"
# ScoreClient's reconnect backoff (seconds): a restarted broker is found again within seconds.
RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 4


class BrokerUrlError(ValueError):
    """A broker URL Rallycast cannot use; the message says what is wrong."""


class ConnectFailed(ConnectionError):
    """The broker could not be reached or refused the connection (message says why)."""


class NoReply(TimeoutError):
    """The scorer service did not answer a command in time (is it running?)."""


class NotConnected(NoReply):
    """The connection to the broker is down: the command is queued (QoS 1) and paho sends
    it once the connection is back; no reply came meanwhile."""


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str  # mqtt | mqtts | ws | wss
    host: str
    port: int
    path: str = WS_DEFAULT_PATH  # WebSocket only
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def transport(self) -> str:
        return "websockets" if self.scheme in ("ws", "wss") else "tcp"

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "wss")

    def url(self, *, with_password: bool = False) -> str:
        """The URL again; the password is masked unless asked for (this goes into logs)."""
        auth = ""
        if self.user:
            auth = (
                self.user
                + (":" + (self.password if with_password else "***") if self.password else "")
                + "@"
            )
        path = self.path if self.transport == "websockets" else ""
        return f"{self.scheme}://{auth}{url_host(self.host)}:{self.port}{path}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host[:port]``, ``mqtts://``, ``ws://host[:port][/path]``, ``wss://``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"broker URL {url!r} is not valid: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerUrlError(
            f"broker URL {url!r}: scheme must be one of mqtt, mqtts, ws, wss (got {scheme!r})"
        )
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r} has no host")
    path = parts.path or WS_DEFAULT_PATH
    if scheme in ("mqtt", "mqtts") and parts.path not in ("", "/"):
        raise BrokerUrlError(f"broker URL {url!r}: an mqtt:// URL has no path")
    return BrokerAddress(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        path=path,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def resolve_address(
    url_or_settings: str | Settings | BrokerAddress,
    *,
    user: str | None = None,
    password: str | None = None,
) -> BrokerAddress:
    """An address from a URL, a Settings (its broker_url) or an address; explicit user and
    password win over those in the URL."""
    if isinstance(url_or_settings, BrokerAddress):
        address = url_or_settings
    elif isinstance(url_or_settings, Settings):
        address = parse_broker_url(url_or_settings.broker_url)
    else:
        address = parse_broker_url(url_or_settings)
    if user is not None or password is not None:
        address = BrokerAddress(
            address.scheme,
            address.host,
            address.port,
            address.path,
            user if user is not None else address.user,
            password if password is not None else address.password,
        )
    return address


def make_client(
    address: BrokerAddress,
    *,
    client_id: str = "",
    clean_session: bool = True,
) -> mqtt.Client:
    """A paho client set up for ``address`` (MQTT 3.1.1, WebSocket path, TLS, credentials);
    not connected yet."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        transport=address.transport,
    )
    if address.transport == "websockets":
        client.ws_set_options(path=address.path)  # paho offers the "mqtt" subprotocol itself
    if address.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    if address.user:
        client.username_pw_set(address.user, address.password)
    return client


def connect_and_wait(client: mqtt.Client, address: BrokerAddress, timeout: float = 5.0) -> None:
    """Connect and start paho's network thread; return once the broker accepted us.
    Raises ConnectFailed with the broker's reason (e.g. "Not authorized")."""
    outcome: queue.Queue[str | None] = queue.Queue()
    previous = client.on_connect

    def on_connect(c, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        outcome.put(None if not reason_code.is_failure else str(reason_code))
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:
        client.on_connect = previous
        raise ConnectFailed(f"cannot reach the broker at {address.url()}: {exc}") from exc
    client.loop_start()
    try:
        error = outcome.get(timeout=timeout)
    except queue.Empty:
        error = f"no answer within {timeout:g} s"
    finally:
        client.on_connect = previous
    if error is not None:
        client.loop_stop()
        client.disconnect()
        raise ConnectFailed(f"the broker at {address.url()} refused the connection: {error}")


def new_command_id() -> str:
    return uuid.uuid4().hex


class ScoreClient:
    """A connection to one club's score topics: send commands and wait for their replies,
    and keep the latest snapshot. Use as a context manager or call ``close()``.

    ``on_snapshot(snapshot_or_None)`` and ``on_reply(reply)`` run in paho's network thread.
    """

    def __init__(
        self,
        url_or_settings: str | Settings | BrokerAddress,
        club_id: str,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        watch_snapshot: bool = True,
        on_snapshot: Callable[[dict[str, Any] | None], None] | None = None,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.club_id = topics.check_club_id(club_id)
        # By default the club's scorer user is named after the club.
        self.address = resolve_address(url_or_settings, user=user, password=password)
        if self.address.user is None:
            self.address = resolve_address(self.address, user=club_id)
        self.timeout = timeout
        self.snapshot: dict[str, Any] | None = None
        self.on_snapshot = on_snapshot
        self.on_reply = on_reply
        self._waiting: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._first_snapshot = threading.Event()
        self._filters = [(topics.replies(club_id), 1)]
        if watch_snapshot:
            self._filters.append((topics.game(club_id), 1))
        self._client = make_client(
            self.address, client_id=f"rallycast-score-{new_command_id()[:12]}"
        )
        self._client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        self._client.on_message = self._on_message
        self._subscribed: queue.Queue[list[Any]] = queue.Queue()
        self._client.on_subscribe = lambda c, u, mid, codes, props: self._subscribed.put(codes)
        # A clean session forgets the subscriptions on every reconnect (and paho does not
        # renew them): subscribe on each connect.
        self._client.on_connect = self._on_connect
        connect_and_wait(self._client, self.address, timeout)
        try:
            codes = self._subscribed.get(timeout=timeout)
        except queue.Empty:
            codes = []
        if not codes or any(code.is_failure for code in codes):
            self.close()
            raise ConnectFailed(
                f"the broker did not let user {self.address.user!r} follow club {club_id}'s "
                "replies (wrong club, or not its scorer user?)"
            )

    def __enter__(self) -> ScoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            return
        result, _mid = client.subscribe(self._filters)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._subscribed.put([])

    def wait_for_snapshot(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The current snapshot, waiting up to ``timeout`` for the retained one to arrive."""
        self._first_snapshot.wait(self.timeout if timeout is None else timeout)
        return self.snapshot

    def send(self, command: dict[str, Any] | str, timeout: float | None = None) -> dict[str, Any]:
        """Publish a command (a fresh id is added to a dict without one) and return the
        service's reply ``{"id", "ok", "error", "rev"}``. Text shorthands (``1+``) carry no id,
        so their reply cannot be matched: they are sent as ``{"cmd": ...}`` equivalents."""
        if isinstance(command, str):
            command = shorthand_to_command(command)
        command = dict(command)
        command.setdefault("id", new_command_id())
        key = str(command["id"])
        waiter: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._waiting[key] = waiter
        try:
            info = self._client.publish(topics.commands(self.club_id), json.dumps(command), qos=1)
            # NO_CONN: the connection is down, paho keeps the message and sends it on
            # reconnect (it keeps trying): the reply may still come.
            queued = info.rc == mqtt.MQTT_ERR_NO_CONN
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                raise ConnectFailed(f"could not publish the command: {mqtt.error_string(info.rc)}")
            limit = self.timeout if timeout is None else timeout
            try:
                return waiter.get(timeout=limit)
            except queue.Empty:
                if queued:
                    raise NotConnected(
                        "not connected to the broker: the command is queued and will be sent "
                        "when the connection is back (no reply yet)"
                    ) from None
                raise NoReply(
                    f"no reply from the scorer service within {limit:g} s (is it running?)"
                ) from None
        finally:
            with self._lock:
                self._waiting.pop(key, None)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if message.topic == topics.game(self.club_id):
            try:
                self.snapshot = json.loads(message.payload) if message.payload else None
            except ValueError:
                return
            self._first_snapshot.set()
            if self.on_snapshot is not None:
                self.on_snapshot(self.snapshot)
            return
        try:
            reply = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(reply, dict):
            return
        with self._lock:
            waiter = self._waiting.get(str(reply.get("id")))
        if waiter is not None:
            waiter.put(reply)
        if self.on_reply is not None:
            self.on_reply(reply)


def shorthand_to_command(text: str) -> dict[str, Any]:
    key = text.strip().lower()
    if key not in SHORTHANDS:
        raise ValueError(f"unknown shorthand {text!r}: use one of {', '.join(SHORTHANDS)}")
    return dict(SHORTHANDS[key])


def send_command(
    url_or_settings: str | Settings | BrokerAddress,
    club_id: str,
    command: dict[str, Any] | str,
    *,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Send one command to a club with a fresh id and return the service's reply.
    For several commands, keep a ``ScoreClient`` open instead."""
    with ScoreClient(
        url_or_settings,
        club_id,
        user=user,
        password=password,
        timeout=timeout,
        watch_snapshot=False,
    ) as score_client:
        return score_client.send(command)
