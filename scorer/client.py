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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.config import Settings, url_host
from scorer.engine import SHORTHANDS
from scorer.timing import RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
WS_DEFAULT_PATH = "/mqtt"
# The broker's default payload limit (Settings.max_payload_bytes); 0 = no limit.
DEFAULT_MAX_PAYLOAD_BYTES = Settings.__dataclass_fields__["max_payload_bytes"].default


class BrokerUrlError(ValueError):
    """A broker URL Rallycast cannot use; the message says what is wrong."""


class ConnectFailed(ConnectionError):
    """The broker could not be reached or refused the connection (message says why)."""


class NoReply(TimeoutError):
    """The scorer service did not answer a command in time (is it running?)."""


class NotConnected(NoReply):
    """The connection to the broker is down: the command is queued (QoS 1) and paho sends
    it once the connection is back; no reply came meanwhile."""


class CommandTooLarge(ValueError):
    """A command whose payload is over the broker's size limit: it is refused here, before
    it is published (mosquitto would drop the client on every resend of it)."""


@dataclass(frozen=True)
class ResendPolicy:
    """When a sender resends a command whose reply has not come (docs/protocol.md,
    "End-to-end delivery"): after ``first`` seconds, then each interval doubled up to
    ``longest``, until ``total`` seconds after the first publish. Also at once after every
    reconnect."""

    first: float = 0.5
    longest: float = 4.0
    total: float = 30.0

    def next_interval(self, interval: float) -> float:
        return min(interval * 2, self.longest)


RESEND = ResendPolicy()


def check_payload_size(payload: bytes, limit: int | None) -> None:
    """Raises CommandTooLarge when ``payload`` is over ``limit`` bytes (0/None: no limit)."""
    if limit and len(payload) > limit:
        raise CommandTooLarge(
            f"the command is too large ({len(payload)} bytes; the broker takes at most "
            f"{limit}): shorten it (names are at most 64 characters)"
        )


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str  # mqtt | mqtts | ws | wss
    host: str
    port: int
    path: str = WS_DEFAULT_PATH  # WebSocket only
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    # Further nodes of a cluster (host, port), tried in turn after host:port: same scheme,
    # path, user and password (docs/scale.md "Failover").
    more: tuple[tuple[str, int], ...] = ()

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every (host, port) to try, the first one first."""
        return ((self.host, self.port), *self.more)

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
        return ",".join(
            f"{self.scheme}://{auth}{url_host(host)}:{port}{path}" for host, port in self.nodes
        )

    def node_url(self, index: int) -> str:
        """The URL of one node (password masked), for logs."""
        host, port = self.nodes[index]
        return replace(self, host=host, port=port, more=()).url()


def parse_broker_url(url: str) -> BrokerAddress:
    """One URL (``mqtt://[user:pass@]host[:port]``, ``mqtts://``, ``ws://host[:port][/path]``,
    ``wss://``) or a comma-separated list of them, the nodes of one cluster
    (``mqtt://u:p@n1:1883,mqtt://n2:1883,mqtt://n3:1883``): the nodes share the scheme and
    path, and one user and password apply to all (given on any of them, or on each alike).
    Raises BrokerUrlError naming the bad part."""
    parts = [part.strip() for part in url.split(",")]
    if len(parts) == 1:
        return _parse_one_url(url)
    if any(not part for part in parts):
        raise BrokerUrlError(f"broker URL list {url!r} has an empty entry (a stray comma?)")
    addresses = [_parse_one_url(part) for part in parts]
    first = addresses[0]
    for address in addresses[1:]:
        if (address.scheme, address.path) != (first.scheme, first.path):
            raise BrokerUrlError(
                f"broker URL list {url!r}: every node needs the same scheme and path "
                f"({first.scheme}://...{first.path if first.transport == 'websockets' else ''})"
            )
    users = {a.user for a in addresses if a.user is not None}
    passwords = {a.password for a in addresses if a.password is not None}
    if len(users) > 1 or len(passwords) > 1:
        raise BrokerUrlError(
            f"broker URL list {url!r}: one user and password apply to all nodes; "
            "give them once (on the first URL)"
        )
    return replace(
        first,
        user=next(iter(users), None),
        password=next(iter(passwords), None),
        more=tuple((a.host, a.port) for a in addresses[1:]),
    )


def join_urls(urls: list[str] | None) -> str | None:
    """``--url`` given once or more (each maybe a list) as one broker_url list; None if none."""
    return ",".join(urls) if urls else None


URL_HELP = (
    "broker URL (default: the broker_url setting); a cluster's nodes as a comma-separated list"
    " or --url once per node"
)


def add_url_flag(parser: Any, help: str = URL_HELP) -> None:
    """``--url``, repeatable, on an argparse ``parser``: the broker (or a cluster's nodes) a
    command connects to. Read it back with :func:`join_urls`."""
    parser.add_argument("--url", action="append", help=help)


def _parse_one_url(url: str) -> BrokerAddress:
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
        address = replace(
            address,
            user=user if user is not None else address.user,
            password=password if password is not None else address.password,
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


def stop_loop(client: mqtt.Client) -> None:
    """paho's ``loop_stop`` made safe after ``client.disconnect()``: returns once paho's
    network thread (``loop_start``) has ended, or at once if there was none.

    paho 2.2's network thread sets ``client._thread = None`` as it ends, and ``loop_stop``
    reads that attribute twice (a ``None`` check, then ``.join()``). After a DISCONNECT the
    thread ends on its own, so it can end in between: AttributeError (seen in a test run's
    viewer stop). The thread has ended then, which is what the caller waits for.
    tests/scorer/test_client.py trips when paho no longer has the race."""
    loop_stop = client.loop_stop  # outside the try: only paho's own AttributeError is taken
    try:
        loop_stop()
    except AttributeError:
        pass


KEEPALIVE = 30  # seconds; also paho's wait for a CONNACK (a node without quorum never sends one)
CONNECT_TIMEOUT = 5.0  # seconds for the TCP (and WebSocket) handshake with one node


class Failover:
    """Round-robin over the nodes of ``address`` for one paho client: after each lost or
    failed connection paho's own reconnect (``loop_start``'s thread, with its backoff) goes to
    the NEXT node. With one node it changes nothing.

    Install after the owner's ``on_disconnect`` / ``on_connect_fail`` are set (it wraps
    them); call ``stop()`` before ``client.disconnect()`` so a wanted disconnect stays one.
    paho reconnects to ``client._host``/``_port``, which ``connect_async`` sets (the ``host``
    setter refuses while a connection is open, as it is inside on_disconnect).
    """

    def __init__(
        self, client: mqtt.Client, address: BrokerAddress, keepalive: int = KEEPALIVE
    ) -> None:
        self.client = client
        self.address = address
        self.keepalive = keepalive
        self.index = 0
        self.switches = 0  # times we moved to another node (for tests and logs)
        self._stopped = False
        client.connect_timeout = CONNECT_TIMEOUT

    @property
    def node(self) -> tuple[str, int]:
        return self.address.nodes[self.index]

    def url(self) -> str:
        """The current node's URL (password masked)."""
        return self.address.node_url(self.index)

    def install(self) -> None:
        on_disconnect = self.client.on_disconnect
        on_connect_fail = self.client.on_connect_fail

        def disconnected(client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
            if on_disconnect is not None:
                on_disconnect(client, userdata, flags, reason_code, properties)
            # A disconnect we asked for has a success code: no reconnect then.
            if reason_code.is_failure:
                self.advance()

        def connect_failed(client, userdata):  # type: ignore[no-untyped-def]
            if on_connect_fail is not None:
                on_connect_fail(client, userdata)
            self.advance()

        self.client.on_disconnect = disconnected
        self.client.on_connect_fail = connect_failed

    def connect_async(self) -> None:
        host, port = self.node
        self.client.connect_async(host, port, keepalive=self.keepalive)

    def advance(self) -> None:
        """Point paho's next reconnect at the next node (paho's thread)."""
        if self._stopped or len(self.address.nodes) < 2:
            return
        self.index = (self.index + 1) % len(self.address.nodes)
        self.switches += 1
        self.connect_async()

    def stop(self) -> None:
        self._stopped = True


def connect_and_wait(
    client: mqtt.Client,
    address: BrokerAddress,
    timeout: float = 5.0,
    failover: Failover | None = None,
) -> None:
    """Connect and start paho's network thread; return once the broker accepted us. With
    several nodes each is tried in turn (``timeout`` seconds each) and ``failover`` (if
    given) is left pointing at the one that accepted. Raises ConnectFailed with each node's
    reason (e.g. "Not authorized")."""
    client.connect_timeout = min(CONNECT_TIMEOUT, timeout)
    errors = []
    for index, (host, port) in enumerate(address.nodes):
        error = _connect_one(client, host, port, timeout)
        if error is None:
            if failover is not None:
                failover.index = index
            return
        errors.append(error.format(url=address.node_url(index)))
    if len(errors) == 1:
        raise ConnectFailed(errors[0])
    raise ConnectFailed("no node of the broker accepted the connection: " + "; ".join(errors))


def _connect_one(client: mqtt.Client, host: str, port: int, timeout: float) -> str | None:
    """None once ``host:port`` accepted us (paho's thread running), else the reason, with
    ``{url}`` where the node's URL goes."""
    outcome: queue.Queue[str | None] = queue.Queue()
    previous = client.on_connect

    def on_connect(c, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        outcome.put(None if not reason_code.is_failure else str(reason_code))
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=KEEPALIVE)
    except OSError as exc:
        client.on_connect = previous
        return "cannot reach the broker at {url}: " + str(exc).replace("{", "(").replace("}", ")")
    client.loop_start()
    try:
        error = outcome.get(timeout=timeout)
    except queue.Empty:
        error = f"no answer within {timeout:g} s"
    finally:
        client.on_connect = previous
    if error is not None:
        client.disconnect()
        stop_loop(client)
        return "the broker at {url} refused the connection: " + error
    return None


# Commands that are not meant for the match shown: ScoreClient.send adds no "match" to them.
MATCH_FREE_COMMANDS = frozenset({"start", "delete", "clear"})


def new_command_id() -> str:
    return uuid.uuid4().hex


def older_than(snapshot: dict[str, Any], shown: dict[str, Any] | None) -> bool:
    """Whether ``snapshot`` would take a client back in time from ``shown``: the same match
    with a lower rev (an equal one is the same snapshot again, e.g. after a reconnect), or
    another match last updated (``updated_at``, ISO-8601 UTC with milliseconds, so text order
    is time order) before the shown one. A broker may serve such an old retained copy:
    nats-server after a node's loss (docs/scale.md "Failover"), a bridge catching up. The
    pages (viewer/static/scoreview.js SnapshotFilter), the viewer and ``ScoreClient`` follow
    this one rule."""
    if shown is None:
        return False
    if snapshot.get("match_id") == shown.get("match_id"):
        rev, shown_rev = snapshot.get("rev"), shown.get("rev")
        return isinstance(rev, int) and isinstance(shown_rev, int) and rev < shown_rev
    updated, shown_updated = snapshot.get("updated_at"), shown.get("updated_at")
    return (
        isinstance(updated, str)
        and isinstance(shown_updated, str)
        and bool(updated and shown_updated)
        and updated < shown_updated
    )


class ScoreClient:
    """A connection to the score topics of one table of a club: send commands and wait for
    their replies, and keep the latest snapshot. Use as a context manager or call ``close()``.

    ``table``: the club's table (1-64, default 1; table 1 is ``clubs/<club>/game``, table n
    ``clubs/<club>/tables/<n>/game``: docs/protocol.md "Tables"). Raises ``BadTable`` (a
    ValueError) for a number outside 1-64, or beyond the club's ``tables`` when given
    ``Settings`` that configure the club; otherwise the service refuses such a table's
    commands (``no_such_table``).

    ``send`` is end-to-end: a command is done when the service's reply for its id arrives
    (not when the broker acknowledges it); until then the same id is resent (``resend``,
    docs/protocol.md "End-to-end delivery"), and the service applies it once.

    ``timeout``: seconds to wait for the broker to accept the connection and subscriptions.
    ``max_payload_bytes``: the broker's payload limit (from ``Settings`` when given one);
    larger commands raise ``CommandTooLarge`` before anything is published.
    ``on_snapshot(snapshot_or_None)`` and ``on_reply(reply)`` run in paho's network thread.
    """

    def __init__(
        self,
        url_or_settings: str | Settings | BrokerAddress,
        club_id: str,
        *,
        table: int = 1,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        watch_snapshot: bool = True,
        on_snapshot: Callable[[dict[str, Any] | None], None] | None = None,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
        resend: ResendPolicy = RESEND,
        max_payload_bytes: int | None = None,
    ) -> None:
        self.club_id = topics.check_club_id(club_id)
        self.table = topics.check_table(table)
        club = url_or_settings.club(club_id) if isinstance(url_or_settings, Settings) else None
        if club is not None and self.table > club.tables:
            raise topics.BadTable(
                f"club {club_id} has {club.tables} table(s): table {self.table} is not one "
                f"of them (use 1-{club.tables}, or raise tables in its [[clubs]] entry)"
            )
        # By default the club's scorer user is named after the club.
        self.address = resolve_address(url_or_settings, user=user, password=password)
        if self.address.user is None:
            self.address = resolve_address(self.address, user=club_id)
        self.timeout = timeout
        self.resend = resend
        if max_payload_bytes is None:
            max_payload_bytes = (
                url_or_settings.max_payload_bytes
                if isinstance(url_or_settings, Settings)
                else DEFAULT_MAX_PAYLOAD_BYTES
            )
        self.max_payload_bytes = max_payload_bytes
        self.snapshot: dict[str, Any] | None = None
        self.on_snapshot = on_snapshot
        self.on_reply = on_reply
        # Resends counted over this client's life (for tests and tools).
        self.resends = 0
        self._waiting: dict[str, queue.Queue[dict[str, Any] | None]] = {}
        self._lock = threading.Lock()
        self._first_snapshot = threading.Event()
        # Set while the broker has granted our subscriptions on the current connection.
        self._following = threading.Event()
        self._subscribe_mid: int | None = None
        # QoS 0: a reply lost with its connection comes again for the resent id (the service
        # remembers it), and the retained snapshot comes again on each subscribe. On a NATS
        # cluster a QoS 1 subscription is a replicated JetStream consumer: its SUBACK, and the
        # clean-up of the old session on a reconnect, wait seconds for a new leader after a
        # node is lost (docs/scale.md "Failover").
        self._filters = [(topics.replies(club_id, self.table), 0)]
        self._watch_snapshot = watch_snapshot
        # The match of the latest snapshot: the match a press is meant for. (Not taken
        # from replies: a resent id is answered with its original reply, of an older match.
        # The service publishes a start's snapshot before its reply.)
        self._match_id: str | None = None
        if watch_snapshot:
            self._filters.append((topics.game(club_id, self.table), 0))
        self._client = make_client(
            self.address, client_id=f"rallycast-score-{new_command_id()[:12]}"
        )
        self._client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        self._client.on_message = self._on_message
        self._subscribed: queue.Queue[list[Any]] = queue.Queue()
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *_: self._following.clear()
        # A clean session forgets the subscriptions on every reconnect (and paho does not
        # renew them): subscribe on each connect.
        self._client.on_connect = self._on_connect
        # With a cluster's node list, a reconnect goes to the next node; commands waiting
        # for their reply are resent there once the subscriptions are back.
        self.failover = Failover(self._client, self.address)
        self.failover.install()
        connect_and_wait(self._client, self.address, timeout, self.failover)
        try:
            codes = self._subscribed.get(timeout=timeout)
        except queue.Empty:
            codes = []
        if not codes or any(code.is_failure for code in codes):
            self.close()
            raise ConnectFailed(
                f"the broker did not let user {self.address.user!r} follow the replies of club "
                f"{club_id}'s table {self.table} (wrong club, or not its scorer user?)"
            )

    def __enter__(self) -> ScoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.failover.stop()
        self._client.disconnect()
        stop_loop(self._client)

    @property
    def connected(self) -> bool:
        """True while connected with the club's replies subscribed."""
        return self._following.is_set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            return
        result, mid = client.subscribe(self._filters)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._subscribed.put([])
        else:
            self._subscribe_mid = mid

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._subscribed.put(reason_codes)
        if mid != self._subscribe_mid or any(code.is_failure for code in reason_codes):
            return
        self._following.set()
        # Back after a reconnect: every command still waiting is resent at once (a reply
        # published while we were away is lost to a clean session).
        with self._lock:
            waiters = list(self._waiting.values())
        for waiter in waiters:
            waiter.put(None)

    def wait_for_snapshot(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The current snapshot, waiting up to ``timeout`` for the retained one to arrive."""
        self._first_snapshot.wait(self.timeout if timeout is None else timeout)
        return self.snapshot

    def send(
        self,
        command: dict[str, Any] | str,
        timeout: float | None = None,
        *,
        on_pending: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Publish a command and return the service's reply ``{"id", "ok", "error", "code",
        "params", "rev", "match_id"}`` (docs/protocol.md).

        A dict without ``"id"`` gets a fresh one; text shorthands (``1+``) are sent as their
        JSON equivalents so they can carry one. Until the reply for that id arrives the SAME
        payload is resent (``self.resend``: 0.5 s, doubling to 4 s, and at once after a
        reconnect) for at most ``timeout`` seconds (default ``resend.total``, 30 s);
        ``on_pending()`` is called once, when the first resend is due.

        Raises ``CommandTooLarge`` or ``ValueError`` (text that is not valid Unicode;
        nothing published), ``NotConnected`` (the broker was
        not reachable at the end: paho still holds the command and sends it on reconnect),
        ``NoReply`` (connected, but no reply: is the service running?), ``ConnectFailed``.
        """
        if isinstance(command, str):
            command = shorthand_to_command(command)
        command = dict(command)
        command.setdefault("id", new_command_id())
        if (
            self._watch_snapshot
            and self._match_id is not None
            and "match" not in command
            and command.get("cmd") not in MATCH_FREE_COMMANDS
        ):
            # The press is for the match shown now: if the network holds it until another
            # scorer has replaced the match, the service refuses it (wrong_match) instead
            # of scoring it in the new match.
            command["match"] = self._match_id
        key = str(command["id"])
        try:
            payload = json.dumps(command, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the command contains text that is not valid Unicode ({exc.reason}: "
                f"{exc.object[exc.start : exc.end]!a}): nothing was sent"
            ) from None
        check_payload_size(payload, self.max_payload_bytes)
        waiter: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self._lock:
            self._waiting[key] = waiter
        limit = self.resend.total if timeout is None else timeout
        started = time.monotonic()
        deadline = started + limit
        interval = self.resend.first
        next_send = started
        published = False
        try:
            while True:
                now = time.monotonic()
                if now >= next_send:
                    if published and on_pending is not None:
                        on_pending()  # the first resend is due: the reply is late
                        on_pending = None
                    if not published:
                        self._publish(payload)
                        published = True
                    elif self._following.is_set():
                        # (while offline paho holds the first copy; we resend on reconnect)
                        self.resends += 1
                        self._publish(payload)
                    next_send = now + interval
                    interval = self.resend.next_interval(interval)
                if now >= deadline:
                    break
                try:
                    reply = waiter.get(timeout=max(0.0, min(next_send, deadline) - now))
                except queue.Empty:
                    continue
                if reply is None:  # resubscribed after a reconnect: resend now
                    next_send = time.monotonic()
                    continue
                if command.get("cmd") == "start" and reply.get("ok") is True:
                    # Our own new match: the next press is for it, even if the broker
                    # delivers its snapshot after this reply (an order across topics
                    # MQTT does not promise).
                    self._match_id = reply.get("match_id") or self._match_id
                return reply
        finally:
            with self._lock:
                self._waiting.pop(key, None)
        if not self._following.is_set():
            raise NotConnected(
                "not connected to the broker: the command is queued and will be sent "
                "when the connection is back (no reply yet)"
            )
        raise NoReply(f"no reply from the scorer service within {limit:g} s (is it running?)")

    def _publish(self, payload: bytes) -> None:
        info = self._client.publish(topics.commands(self.club_id, self.table), payload, qos=1)
        # NO_CONN: the connection is down, paho keeps the message and sends it on
        # reconnect (it keeps trying): the reply may still come.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ConnectFailed(f"could not publish the command: {mqtt.error_string(info.rc)}")

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if message.topic == topics.game(self.club_id, self.table):
            try:
                snapshot = json.loads(message.payload) if message.payload else None
            except ValueError:
                return
            if (
                isinstance(snapshot, dict)
                and isinstance(self.snapshot, dict)
                and older_than(snapshot, self.snapshot)
            ):
                # A stale retained copy (a lagging node, a bridge catching up): taking its
                # match would send the next press to a replaced match (wrong_match).
                return
            self.snapshot = snapshot
            if self.snapshot is None:
                self._match_id = None
            elif isinstance(self.snapshot, dict) and isinstance(self.snapshot.get("match_id"), str):
                self._match_id = self.snapshot["match_id"]
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
    table: int = 1,
    user: str | None = None,
    password: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send one command to a club's ``table`` (default 1) with a fresh id, resending it until
    the service's reply arrives (``ScoreClient.send``), and return that reply. ``timeout``
    bounds both the connect and the wait for the reply (default: 5 s to connect, 30 s for the
    reply). For several commands, keep a ``ScoreClient`` open instead."""
    with ScoreClient(
        url_or_settings,
        club_id,
        table=table,
        user=user,
        password=password,
        timeout=5.0 if timeout is None else timeout,
        watch_snapshot=False,
    ) as score_client:
        return score_client.send(command, timeout)
