"""Limits that keep the embedded broker standing against hostile clients (docs/security.md).

Everything here is called from :mod:`broker.hardening` (the connection path) and
:mod:`broker.acl` (logins, subscriptions); the checks themselves are plain functions so tests
can drive them without sockets.

- :class:`FramedReader`: reads one whole MQTT packet at a time, checks it against MQTT 3.1.1
  (:func:`packet_violation`) and the size limit BEFORE amqtt parses it, and ends the stream
  (EOF: amqtt then closes the connection and publishes the will) at the first violation.
  The size check uses the fixed header alone: an oversized packet is refused before a byte
  of its body is buffered.
- :class:`LoginThrottle`: a token bucket per source address (IPv4 address, IPv6 /64) for
  logins that need an argon2 check; bounded table.
- :func:`client_id_refusal`: a client id held by one user is never taken over by another.
- :func:`is_command_topic`: where a RETAIN flag is refused.
- :func:`private_data_dir`: the data directory and its files unreadable by other local users.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter

log = logging.getLogger("rallycast.broker.limits")

# Defaults (Settings keys of the same name, lower case, in scorer/config.py).
DEFAULT_MAX_PACKET_BYTES = 20480  # whole packet; mosquitto.conf max_packet_size
DEFAULT_MAX_SUBSCRIPTIONS = 32  # filters per client session
DEFAULT_RESERVED_CONNECTIONS = 16  # per listener, for logged-in users only
DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE = 30  # per source address, after a burst of LOGIN_BURST
LOGIN_BURST = 5  # 200 wrong passwords in 10 s from one address: 10 argon2 checks, ~2 s CPU
LOGIN_TABLE_SIZE = 4096  # source addresses remembered (least recently used dropped)
# A client must send a complete CONNECT this soon after opening the connection (seconds).
CONNECT_TIMEOUT = 3.0

# MQTT 3.1.1 packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    8, 9, 10, 11, 12, 13, 14,
)  # fmt: skip
PACKET_NAMES = {
    0: "reserved (0)", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "reserved (15)",
}  # fmt: skip
# Packets only a server sends: a client sending one breaks the protocol.
SERVER_ONLY = frozenset({CONNACK, SUBACK, UNSUBACK, PINGRESP})


class Violation(Exception):
    """A packet MQTT 3.1.1 says the server must close the connection for; str = why."""


# -- checking one packet ---------------------------------------------------------------------


class _Body:
    """A cursor over a packet body; every read past the end is a Violation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if self.left() < n:
            raise Violation(f"malformed packet: {what} runs past the remaining length")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what + " length"), what)

    def string(self, what: str) -> str:
        raw = self.binary(what)
        try:
            text = raw.decode("utf-8")  # also refuses U+D800..U+DFFF [MQTT-1.5.3-1]
        except UnicodeDecodeError:
            raise Violation(f"{what} is not valid UTF-8 [MQTT-1.5.3-1]") from None
        if "\x00" in text:
            raise Violation(f"{what} contains U+0000 [MQTT-1.5.3-2]")
        return text

    def end(self, packet: str) -> None:
        if self.left():
            raise Violation(f"malformed {packet}: {self.left()} bytes past its last field")


def check_topic_name(topic: str) -> None:
    """A PUBLISH (or will) topic: not empty [MQTT-4.7.3-1], no wildcard [MQTT-3.3.2-2]."""
    if not topic:
        raise Violation("empty topic name [MQTT-4.7.3-1]")
    if "+" in topic or "#" in topic:
        raise Violation(f"wildcard in topic name {topic!r} [MQTT-3.3.2-2]")


def _check_connect(flags: int, body: _Body) -> None:
    if flags:
        raise Violation(f"CONNECT with reserved flags {flags:04b} [MQTT-2.2.2-2]")
    name = body.string("protocol name")
    if name not in ("MQTT", "MQIsdp"):
        raise Violation(f"protocol name {name!r} [MQTT-3.1.2-1]")
    body.u8("protocol level")  # a wrong level gets CONNACK 1 from amqtt [MQTT-3.1.2-2]
    connect_flags = body.u8("connect flags")
    body.u16("keep alive")
    if connect_flags & 0x01:
        raise Violation("CONNECT reserved flag set [MQTT-3.1.2-3]")
    will, will_qos, will_retain = (
        connect_flags & 0x04,
        (connect_flags >> 3) & 3,
        connect_flags & 0x20,
    )
    if will_qos == 3:
        raise Violation("will QoS 3 [MQTT-3.1.2-14]")
    if not will and (will_qos or will_retain):
        raise Violation("will QoS or retain set without a will [MQTT-3.1.2-11, -13]")
    user, password = connect_flags & 0x80, connect_flags & 0x40
    if password and not user:
        raise Violation("password flag without user name flag [MQTT-3.1.2-22]")
    body.string("client id")
    if will:
        check_topic_name(body.string("will topic"))
        body.binary("will message")
    if user:
        body.string("user name")
    if password:
        body.binary("password")
    body.end("CONNECT")


def _check_publish(flags: int, body: _Body) -> None:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise Violation("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    check_topic_name(body.string("topic name"))
    if qos and body.u16("packet id") == 0:
        raise Violation("PUBLISH with packet id 0 [MQTT-2.3.1-1]")


def _check_subscribe(flags: int, body: _Body, unsubscribe: bool) -> None:
    name = "UNSUBSCRIBE" if unsubscribe else "SUBSCRIBE"
    if flags != 0b0010:
        raise Violation(f"{name} with flags {flags:04b}, not 0010 [MQTT-3.8.1-1, 3.10.1-1]")
    if body.u16("packet id") == 0:
        raise Violation(f"{name} with packet id 0 [MQTT-2.3.1-1]")
    if not body.left():
        raise Violation(f"{name} with no topic filter [MQTT-3.8.3-3, 3.10.3-2]")
    while body.left():
        if not body.string("topic filter"):
            raise Violation(f"{name} with an empty topic filter [MQTT-4.7.3-1]")
        if not unsubscribe and body.u8("requested QoS") > 2:
            raise Violation("SUBSCRIBE requested QoS > 2 or reserved bits set [MQTT-3.8.3-4]")


def packet_violation(first_byte: int, body: bytes, *, first: bool) -> str | None:
    """Why this packet from a client breaks MQTT 3.1.1 in a way that must close the
    connection, or None when it is well formed. ``first``: it is the connection's first packet.

    Checks the packet type and its fixed-header flags (section 2.2.2), the packet's fields
    against its remaining length (each field present, nothing left over), strings (UTF-8, no
    U+0000), topic names (no wildcard, not empty), packet ids (non-zero), SUBSCRIBE and
    UNSUBSCRIBE (at least one filter, QoS 0-2), PUBLISH QoS 3, CONNECT flags, the first packet
    being CONNECT and no second CONNECT (section 3.1). What amqtt answers itself (an unknown
    protocol level gets CONNACK 1, an invalid filter SUBACK 0x80) is left to it.
    """
    kind, flags = first_byte >> 4, first_byte & 0x0F
    reader = _Body(body)
    try:
        if first and kind != CONNECT:
            raise Violation(f"first packet is {PACKET_NAMES[kind]}, not CONNECT [MQTT-3.1.0-1]")
        if kind == CONNECT:
            if not first:
                raise Violation("a second CONNECT [MQTT-3.1.0-2]")
            _check_connect(flags, reader)
        elif kind == PUBLISH:
            _check_publish(flags, reader)
        elif kind in (SUBSCRIBE, UNSUBSCRIBE):
            _check_subscribe(flags, reader, kind == UNSUBSCRIBE)
        elif kind in (0, 15) or kind in SERVER_ONLY:
            raise Violation(f"{PACKET_NAMES[kind]} packet from a client [MQTT-2.2.1]")
        else:  # PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ, DISCONNECT
            expected_flags = 0b0010 if kind == PUBREL else 0
            if flags != expected_flags:
                raise Violation(
                    f"{PACKET_NAMES[kind]} with flags {flags:04b} [MQTT-2.2.2-2, 3.6.1-1]"
                )
            size = 2 if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP) else 0
            if len(body) != size:
                raise Violation(
                    f"malformed {PACKET_NAMES[kind]}: remaining length {len(body)}, not {size}"
                )
    except Violation as exc:
        return str(exc)
    return None


# -- the reader ------------------------------------------------------------------------------


async def _read_exactly(
    inner: ReaderAdapter, n: int, stream: asyncio.StreamReader | None
) -> bytes | None:
    """n bytes, or None at end of stream."""
    try:
        if stream is not None:  # one coroutine frame fewer while idle
            data = await stream.readexactly(n)
        else:
            data = await inner.read(n)
    except (asyncio.IncompleteReadError, ConnectionError, EOFError):
        return None
    if data is None or len(data) < n:
        return None
    return bytes(data)


class FramedReader(ReaderAdapter):
    """A reader adapter that hands amqtt one checked packet at a time.

    When amqtt asks for the first byte of a packet, the whole packet is read here: its fixed
    header, then (only if ``remaining length + 1 <= max_packet_bytes``, mosquitto's way of
    counting max_packet_size) its body, which
    :func:`packet_violation` checks. amqtt then parses from that buffer; since the check
    demands that the fields fill the remaining length exactly, amqtt consumes exactly one
    packet. A violation is logged once (INFO, with the client id) and ends the stream: amqtt
    sees EOF and closes the connection, publishing the client's will [MQTT-3.1.2-8].
    """

    def __init__(
        self,
        inner: ReaderAdapter,
        max_packet_bytes: int,
        peer: Any = None,
        stream: asyncio.StreamReader | None = None,
    ) -> None:
        self.inner = inner
        # The asyncio.StreamReader behind ``inner``, when there is one (the seam finds it).
        self.stream = stream
        self.max_packet_bytes = max_packet_bytes
        self.peer = peer
        self.client_id: str | None = None  # set once the CONNECT is accepted
        self.violation: str | None = None
        self.packets = 0
        self._buffer = b""
        self._pos = 0
        self._eof = False

    async def fill(self) -> bool:
        """Wait for the next whole, checked packet (True), or the end of the stream (False).
        A reader that calls this first waits with a short chain of coroutines (an idle
        connection's cost) and then parses from the buffer without waiting."""
        if self._pos < len(self._buffer):
            return True
        if self._eof or self.violation is not None:
            return False
        first: bytes | None = None
        stream = self.stream
        if stream is not None:
            # The idle wait, right here: an idle connection keeps this frame and asyncio's,
            # not the two of _next_packet and _read_exactly as well (~0.5 KB per client).
            try:
                first = await stream.readexactly(1)
            except (asyncio.IncompleteReadError, ConnectionError, EOFError):
                first = None
            if not first:
                self._eof = True
                return False
        packet = await self._next_packet(first)
        if packet is None:
            self._eof = True
            return False
        self._buffer, self._pos = packet, 0
        return True

    async def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buffer) and not await self.fill():
            return b""
        end = len(self._buffer) if n < 0 else self._pos + n
        chunk = self._buffer[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def feed_eof(self) -> None:
        self._eof = True
        self.inner.feed_eof()

    def release(self) -> None:
        """Drop whatever is buffered: the connection is over (or refused). A refused sender
        keeps sending until its socket is closed, and amqtt's closed connections can stay
        referenced from exception tracebacks until the cyclic GC runs: without this, each
        kept up to ~400 KB (measured: +50 MB RSS under 4 streaming clients)."""
        self._eof = True
        self._buffer, self._pos = b"", 0
        stream = self.stream
        if stream is not None:
            stream._buffer.clear()  # asyncio keeps no other reference to these bytes
            error = stream.exception()
            if error is not None:
                # A reset connection's error (broker/tcp.py) holds a traceback through the
                # frames that read this stream, which hold the stream: a reference cycle that
                # kept every dropped client's objects until a full GC pass (issue 16).
                error.__traceback__ = None

    def _refuse(self, why: str) -> None:
        self.violation = why
        self.release()
        log.info(
            "closing connection of client %s from %s: %s",
            self.client_id or "(before CONNECT)",
            self.peer,
            why,
        )

    async def _next_packet(self, first: bytes | None = None) -> bytes | None:
        if first is None:
            first = await _read_exactly(self.inner, 1, self.stream)
        if first is None:
            return None
        header = bytearray(first)
        length, shift = 0, 0
        while True:
            byte = await _read_exactly(self.inner, 1, self.stream)
            if byte is None:
                return None
            header += byte
            length |= (byte[0] & 0x7F) << shift
            if not byte[0] & 0x80:
                break
            shift += 7
            if shift >= 28:  # a fifth length byte [MQTT-2.2.3]
                self._refuse("malformed remaining length (more than 4 bytes)")
                return None
        # Counted as mosquitto counts max_packet_size: remaining length + the type byte.
        if length + 1 > self.max_packet_bytes:
            kind = PACKET_NAMES[header[0] >> 4]
            self._refuse(
                f"{kind} of {length + 1} bytes (remaining length + 1) exceeds"
                f" max_packet_bytes ({self.max_packet_bytes})"
            )
            return None
        body = await _read_exactly(self.inner, length, self.stream) if length else b""
        if body is None:
            return None
        why = packet_violation(header[0], body, first=self.packets == 0)
        self.packets += 1
        if why is not None:
            self._refuse(why)
            return None
        return bytes(header) + body


# -- logins ----------------------------------------------------------------------------------


def address_key(address: str | None) -> str:
    """The throttled unit: an IPv4 address, or an IPv6 /64 (one host's usual allocation)."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class LoginThrottle:
    """A token bucket per source address: ``burst`` logins at once, then ``per_minute``.

    Only logins that need a password check take a token (a password already verified since
    the broker started is free), so one address flooding wrong passwords is slowed to
    ``per_minute`` without touching logins from any other address. At most ``table_size``
    addresses are remembered (least recently seen dropped: it starts again with a full
    bucket). ``per_minute`` 0 turns the throttle off.
    """

    def __init__(
        self,
        per_minute: int = DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
        burst: int = LOGIN_BURST,
        table_size: int = LOGIN_TABLE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.table_size = table_size
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self.refused = 0

    def take(self, address: str | None) -> bool:
        """True (one token taken) or False (this address must wait)."""
        if self.rate <= 0:
            return True
        key = address_key(address)
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.table_size:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


# -- admission after authentication ----------------------------------------------------------

IDENTIFIER_REJECTED = 2  # CONNACK return codes
SERVER_UNAVAILABLE = 3


@dataclass
class BrokerLimits:
    """What RallycastBroker enforces per connection (start_broker fills it from Settings;
    the defaults are those of a bare RallycastBroker: no reservation, no reserved ids)."""

    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES
    reserved_connections: int = 0
    service_user: str | None = None
    connect_timeout: float = CONNECT_TIMEOUT


def admission_refusal(
    limits: BrokerLimits, server: Any, session: Any, holder: Any | None
) -> tuple[int, str] | None:
    """(CONNACK code, why) when an authenticated CONNECT must still be refused, else None.

    ``server`` is amqtt's listener Server (``conn_count`` counts this connection too),
    ``holder`` the Session registered under the same client id, if any.
    """
    user = session.username or None
    if limits.service_user is not None:
        why = client_id_refusal(session.client_id or "", user, holder, limits.service_user)
        if why is not None:
            return IDENTIFIER_REJECTED, why
    maximum = getattr(server, "max_connections", 0) or 0
    if user is None and maximum > 0 and limits.reserved_connections > 0:
        if server.conn_count > maximum - limits.reserved_connections:
            return SERVER_UNAVAILABLE, (
                f"listener full for anonymous clients ({maximum - limits.reserved_connections}"
                f" of {maximum}; {limits.reserved_connections} kept for logged-in users)"
            )
    return None


class PendingSockets:
    """One listener's connections that have not completed their CONNECT yet, oldest first.

    When the listener is full, the oldest of them is dropped to make room for a newcomer: a
    real client sends its CONNECT within milliseconds of connecting, so sockets that sit
    silent (a flood that never sends CONNECT) evict each other instead of locking the
    service and the scorers out for CONNECT_TIMEOUT.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[int, Callable[[], None]] = OrderedDict()
        self.evicted = 0

    def add(self, key: int, abort: Callable[[], None]) -> None:
        self._items[key] = abort

    def discard(self, key: int) -> None:
        self._items.pop(key, None)

    def evict_oldest(self) -> bool:
        """Abort the oldest silent connection; False when there is none."""
        if not self._items:
            return False
        _key, abort = self._items.popitem(last=False)
        self.evicted += 1
        abort()
        return True

    def __len__(self) -> int:
        return len(self._items)


def pending_sockets(broker: Any, listener_name: str) -> PendingSockets:
    """The PendingSockets of ``broker``'s listener (created on first use)."""
    table: dict[str, PendingSockets] = broker.__dict__.setdefault("_rallycast_pending", {})
    pending = table.get(listener_name)
    if pending is None:
        pending = table[listener_name] = PendingSockets()
    return pending


# -- matching a topic against many filters ---------------------------------------------------


class Subscribers:
    """One filter's subscribers: ``(session, granted QoS)`` pairs in subscription order, at
    most one per client id (a client id subscribed again replaces its subscription, QoS
    included, in place [MQTT-3.8.4-3]; amqtt kept the first one). Iterates, sizes and tests true like the list amqtt keeps, but finds and
    removes one client in O(1) instead of a scan of every subscriber: with thousands of
    spectators on one snapshot topic, each disconnect scanned them all (issue 16, the mass
    disconnect). Changed only through :class:`FilterIndex`, which keeps each client's filters.
    """

    __slots__ = ("_pairs",)

    def __init__(self) -> None:
        self._pairs: dict[str, tuple[Any, int]] = {}

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return iter(self._pairs.values())

    def __len__(self) -> int:
        return len(self._pairs)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __repr__(self) -> str:
        return f"Subscribers({list(self._pairs.values())!r})"

    def get(self, client_id: str) -> tuple[Any, int] | None:
        """``(session, granted QoS)`` of ``client_id``'s subscription, or None."""
        return self._pairs.get(client_id)

    def client_ids(self) -> list[str]:
        return list(self._pairs)

    # Changed by FilterIndex only (it keeps each client's filters in step).

    def add(self, session: Any, qos: int) -> bool:
        """Add ``session`` by its client id, or replace that client id's pair (same place in
        the order); False when it was here already."""
        new = session.client_id not in self._pairs
        self._pairs[session.client_id] = (session, qos)
        return new

    def discard(self, client_id: str) -> bool:
        """Remove ``client_id``'s pair; False when it had none."""
        return self._pairs.pop(client_id, None) is not None


class FilterIndex(dict):  # type: ignore[type-arg]
    """A drop-in for amqtt's ``Broker._subscriptions`` (filter -> subscribers) that also keeps
    the filters in a tree of their levels, so :meth:`matching` finds the filters a topic name
    matches by walking the topic's levels, without looking at any other filter: the cost of
    a delivery then depends on the filters that can match it, not on how many filters other
    clients hold (issue 9, item 4). Matching follows MQTT 3.1.1 section 4.7 as amqtt's
    ``Broker._matches`` does: ``+`` one level, ``#`` this level and every level below (also
    the parent: ``a/#`` matches ``a``), no ``+``/``#`` first-level match for ``$`` topics.

    Each filter's value is a :class:`Subscribers` (other values are stored as given and
    left alone by the methods below), and the index keeps each client id's filters, so
    subscribing, unsubscribing and dropping every subscription of a client cost
    O(that client's filters), not O(every subscriber of every filter) as in amqtt (issue 16:
    5,000 spectators dropping at once kept the broker busy for seconds).

    ``RallycastBroker.__init__`` installs it; ``_run_broadcast`` asks :meth:`matching`, and
    RallycastBroker's ``add_subscription``, ``_del_subscription`` and ``_del_all_subscriptions``
    go through :meth:`subscribe`, :meth:`unsubscribe` and :meth:`unsubscribe_all`.
    """

    __slots__ = ("_root", "_filters_by_client")
    _END = "\x00end"  # a key no topic level can be (U+0000 is refused in topics)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._root: dict[str, Any] = {}
        # client id -> its filters (a dict as an ordered set: subscription order)
        self._filters_by_client: dict[str, dict[str, None]] = {}
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, a_filter: str, subscribers: Any) -> None:
        if a_filter not in self:
            node = self._root
            for level in a_filter.split("/"):
                node = node.setdefault(level, {})
            node[self._END] = a_filter
        else:
            self._forget_clients(a_filter)
        super().__setitem__(a_filter, subscribers)
        if isinstance(subscribers, Subscribers):
            for client_id in subscribers.client_ids():
                self._filters_by_client.setdefault(client_id, {})[a_filter] = None

    def __delitem__(self, a_filter: str) -> None:
        self._forget_clients(a_filter)
        super().__delitem__(a_filter)
        path = [self._root]
        levels = a_filter.split("/")
        for level in levels:
            path.append(path[-1][level])
        path[-1].pop(self._END, None)
        for depth in range(len(levels), 0, -1):  # prune empty branches
            if path[depth]:
                break
            del path[depth - 1][levels[depth - 1]]

    def _forget_clients(self, a_filter: str) -> None:
        subscribers = self.get(a_filter)
        if isinstance(subscribers, Subscribers):
            for client_id in subscribers.client_ids():
                self._unlink(client_id, a_filter)

    def _unlink(self, client_id: str, a_filter: str) -> None:
        filters = self._filters_by_client.get(client_id)
        if filters is not None:
            filters.pop(a_filter, None)
            if not filters:
                del self._filters_by_client[client_id]

    def pop(self, a_filter: str, *default: Any) -> Any:
        if a_filter in self:
            value = self[a_filter]
            del self[a_filter]
            return value
        if default:
            return default[0]
        raise KeyError(a_filter)

    def setdefault(self, a_filter: str, default: Any = None) -> Any:
        if a_filter not in self:
            self[a_filter] = default
        return self[a_filter]

    def clear(self) -> None:
        super().clear()
        self._root = {}
        self._filters_by_client = {}

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    # -- subscriptions, by client id

    def subscribe(self, a_filter: str, session: Any, qos: int) -> bool:
        """Add ``session`` (by its ``client_id``) to ``a_filter``'s subscribers with ``qos``;
        False when that client id already held the filter (its subscription is replaced:
        this session, this QoS [MQTT-3.8.4-3])."""
        subscribers = self.get(a_filter)
        if subscribers is None:
            subscribers = Subscribers()
            self[a_filter] = subscribers
        if not subscribers.add(session, qos):
            return False
        self._filters_by_client.setdefault(session.client_id, {})[a_filter] = None
        return True

    def subscription(self, a_filter: str, client_id: str) -> tuple[Any, int] | None:
        """``(session, granted QoS)`` of ``client_id`` on ``a_filter``, or None."""
        subscribers = self.get(a_filter)
        return subscribers.get(client_id) if isinstance(subscribers, Subscribers) else None

    def unsubscribe(self, a_filter: str, client_id: str) -> bool:
        """Remove ``client_id``'s subscription to ``a_filter`` (the filter goes with its last
        subscriber); False when it held none."""
        subscribers = self.get(a_filter)
        if not isinstance(subscribers, Subscribers):
            return False
        if not subscribers.discard(client_id):
            return False
        self._unlink(client_id, a_filter)
        if not subscribers:
            del self[a_filter]
        return True

    def unsubscribe_all(self, client_id: str) -> list[str]:
        """Remove every subscription of ``client_id``; the filters it held."""
        filters = list(self._filters_by_client.get(client_id, ()))
        for a_filter in filters:
            self.unsubscribe(a_filter, client_id)
        return filters

    def filters_of(self, client_id: str) -> list[str]:
        """The filters ``client_id`` holds, in the order it subscribed to them."""
        return list(self._filters_by_client.get(client_id, ()))

    def matching(self, topic: str) -> list[str]:
        """The filters held that ``topic`` (a topic name) matches."""
        levels = topic.split("/")
        found: list[str] = []
        end = self._END
        nodes = [self._root]
        for index, level in enumerate(levels):
            following = []
            for node in nodes:
                wild_ok = index > 0 or not topic.startswith("$")
                if wild_ok:
                    rest = node.get("#")
                    if rest is not None and end in rest:
                        found.append(rest[end])
                child = node.get(level)
                if child is not None:
                    following.append(child)
                if wild_ok and level != "+":
                    child = node.get("+")
                    if child is not None:
                        following.append(child)
            nodes = following
            if not nodes:
                return found
        for node in nodes:
            if end in node:
                found.append(node[end])
            rest = node.get("#")  # "a/#" also matches "a"
            if rest is not None and end in rest:
                found.append(rest[end])
        return found


# -- client ids ------------------------------------------------------------------------------


def client_id_refusal(
    client_id: str, user: str | None, holder: Any | None, service_user: str
) -> str | None:
    """Why a CONNECT as ``user`` may not use ``client_id`` (None: it may).

    ``holder`` is the Session now registered under that id, if any. A session belongs to its
    user while it is connected or persistent (clean session 0); another user, anonymous
    included, may not take it over. Client ids starting with ``<service_user>-`` (and the
    service user's name itself) belong to the service user alone.
    """
    if user != service_user and (
        client_id == service_user or client_id.startswith(service_user + "-")
    ):
        return f"client id prefix {service_user + '-'!r} is reserved for the service user"
    if holder is None:
        return None
    owner = holder.username or None
    if owner == (user or None):
        return None
    connected = getattr(holder.transitions, "state", None) == "connected"
    persistent = holder.clean_session is False
    if connected or persistent:
        what = "a connected" if connected else "a persistent"
        return f"client id is held by {what} session of another user"
    return None


# -- command topics --------------------------------------------------------------------------

_COMMAND_TOPIC = re.compile(r"^clubs/[^/]+/(?:tables/[^/]+/)?game/cmd$")


def is_command_topic(topic: str) -> bool:
    """``clubs/<club>/game/cmd`` or a table's ``clubs/<club>/tables/<n>/game/cmd``: a retained
    command would replay on every restart."""
    return bool(_COMMAND_TOPIC.match(topic))


def log_retained_command_once(session: Any, topic: str) -> None:
    """Log (INFO) the first retained command a session sends; later ones at DEBUG only."""
    level = logging.DEBUG if getattr(session, "rallycast_retained_logged", False) else logging.INFO
    session.rallycast_retained_logged = True
    log.log(
        level,
        "dropped a retained command on %s from %s (user %r): commands must not be retained"
        " (it would be applied again after every restart); send it without RETAIN",
        topic,
        session.client_id,
        session.username,
    )


# -- files -----------------------------------------------------------------------------------


# Rallycast's own files in the data directory (and their SQLite -wal/-shm companions).
PRIVATE_FILE_PREFIXES = (
    "passwd", ".passwd-", "tokens", ".tokens-", "broker.db", "matches.sqlite3", "service.secret",
)  # fmt: skip


def private_data_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (mode 0700) or tighten it: the directory 0700, and Rallycast's own files
    in it (PRIVATE_FILE_PREFIXES) readable and writable by their owner only (0600); other
    files are left alone. Returns the path.

    The data directory holds the password hashes, the broker store and the scorer's match
    logs, whose client id lets anyone who reads it pose as the service on mosquitto. Call it
    where the data directory is created, and again once the files exist.
    """
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for entry in directory.iterdir():
        if not entry.name.startswith(PRIVATE_FILE_PREFIXES):
            continue
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
            os.chmod(entry, stat.S_IMODE(mode) & 0o700)
    return directory
