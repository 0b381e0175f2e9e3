"""Each session's outgoing messages (:class:`Outbox`) and their bounds (:class:`QueueLimits`).

The Outbox is the broker's delivery path: a PUBLISH is encoded once per message
(:class:`broker.packets.OutgoingMessage`) and written straight to each subscriber's transport,
with no task and no packet object per delivery; what cannot be written at once waits here,
bounded (amqtt fault 5, docs/upstream.md). It knows nothing of amqtt's internals: the seam
(broker/hardening.py) hands it the connection's transport, its WebSocket layer (if any) and
a ``drain`` coroutine on :meth:`Outbox.attach`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import websockets
from amqtt.errors import AMQTTError, MQTTError
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.packet import PUBACK, PUBCOMP, PUBREC
from websockets.protocol import OPEN

from broker.packets import OutgoingMessage, ws_binary_frame

__all__ = [
    "DEFAULT_MAX_QUEUED_MESSAGES",
    "MAX_INFLIGHT",
    "Delivery",
    "MessageStore",
    "Outbox",
    "QueueLimits",
]

logger = logging.getLogger("broker.hardening")  # the name the logs and tests know

# Settings.max_queued_messages; the same number goes into mosquitto.conf.
DEFAULT_MAX_QUEUED_MESSAGES = 1000
# Settings.max_queued_bytes: payload bytes that may wait for one session.
DEFAULT_MAX_QUEUED_BYTES = 2 * 1024 * 1024
# Settings.service_max_queued_messages / _bytes: the scorer service's own session.
DEFAULT_SERVICE_MAX_QUEUED_MESSAGES = 20_000
DEFAULT_SERVICE_MAX_QUEUED_BYTES = 32 * 1024 * 1024
# The scorer service's client ids start with this (scorer/service.py).
SERVICE_CLIENT_PREFIX = "rallycast-service-"
# How long a full in-flight window may wait for an acknowledgement before it is logged, for
# a client without keep-alive (otherwise: its keep-alive x 1.5).
DEFAULT_ACK_PATIENCE = 60.0
# Unacknowledged QoS 1 deliveries per client (mosquitto's max_inflight_messages default).
MAX_INFLIGHT = 20


@dataclass(frozen=True)
class QueueLimits:
    """How much may wait for one session (connected or not): messages and payload bytes.

    The scorer service's own session (client id ``rallycast-service-...`` logged in as
    ``service_user``) gets its own, larger bound: it holds every club's commands while the
    service restarts. Settings: ``max_queued_messages``, ``max_queued_bytes``,
    ``service_max_queued_messages``, ``service_max_queued_bytes``.
    """

    messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    bytes: int = DEFAULT_MAX_QUEUED_BYTES
    service_user: str | None = None
    service_messages: int = DEFAULT_SERVICE_MAX_QUEUED_MESSAGES
    service_bytes: int = DEFAULT_SERVICE_MAX_QUEUED_BYTES

    def for_session(self, client_id: str | None, username: str | None) -> tuple[int, int]:
        if (
            self.service_user is not None
            and username == self.service_user
            and (client_id or "").startswith(SERVICE_CLIENT_PREFIX)
        ):
            return self.service_messages, self.service_bytes
        return self.messages, self.bytes


class MessageStore(Protocol):
    """Where a persistent session's QoS 1/2 deliveries are written (broker/persistence.py).

    Rows are written behind, in order; ``when_stored`` calls back once every write made so far
    is committed (at once when nothing is pending)."""

    def queue_add(
        self, client_id: str, topic: str, payload: bytes, qos: int, packet_id: int | None
    ) -> int: ...

    def queue_sent(self, row: int, packet_id: int, released: bool) -> None: ...

    def queue_done(self, row: int) -> None: ...

    def queue_clear(self, client_id: str) -> None: ...

    def when_stored(self, callback: Callable[[], None]) -> None: ...


class Delivery:
    """One message on its way to one session: waiting, or in flight under ``packet_id``."""

    __slots__ = ("message", "qos", "packet_id", "released", "row")

    def __init__(
        self,
        message: OutgoingMessage,
        qos: int,
        row: int | None = None,
        packet_id: int | None = None,
        released: bool = False,
    ) -> None:
        self.message = message
        self.qos = qos
        self.row = row  # its row in the store (persistent sessions), deleted when acknowledged
        self.packet_id = packet_id
        self.released = released  # QoS 2: PUBREC received, PUBREL sent, PUBCOMP awaited


def _with_dup(packet: bytes) -> bytes:
    return bytes((packet[0] | 0x08,)) + packet[1:]


class Outbox:
    """One session's outgoing messages: those waiting (in order) and those in flight (sent,
    not yet acknowledged; at most MAX_INFLIGHT). It lives as long as the SESSION: a persistent
    session keeps both across connections, so a client that comes back gets its in-flight
    messages again, in order, with their packet ids and DUP=1 [MQTT-4.4.0-1], then the
    waiting ones; a clean session's outbox goes with its connection.

    While connected, packets go straight to the transport when nothing waits, the write buffer
    is below its high-water mark and (QoS 1/2) the in-flight window has room; otherwise they
    wait here and one flusher task writes them as the peer reads and acknowledges.

    Bounds: ``limit`` messages and ``limit_bytes`` payload bytes may wait. One more while
    connected means the client is not reading: it is disconnected (fault 5). While offline,
    the NEWEST message is dropped (what waits stays a gap-free prefix, in order) and the
    overflow is logged once per burst.

    QoS 1/2 deliveries of a persistent, named session are written to ``store`` (when given)
    and deleted from it when acknowledged, so a restarted broker resends them.
    """

    __slots__ = (
        "session",
        "handler",
        "limit",
        "limit_bytes",
        "pending",
        "pending_bytes",
        "inflight",
        "receive_allowed",
        "last_topic",
        "last_allowed",
        "dropped",
        "_store",
        "_drain",
        "_transport",
        "_ws",
        "_ws_raw",
        "_direct",
        "_high_water",
        "_flusher",
        "_wake",
        "_on_overflow",
        "_next_id",
    )

    def __init__(
        self,
        session: Any,  # amqtt Session
        limit: int,
        limit_bytes: int,
        on_overflow: Callable[[Outbox], None],
        store: MessageStore | None = None,
    ) -> None:
        self.session = session
        self.handler: Any = None  # the connection's protocol handler, while connected
        self.limit = limit
        self.limit_bytes = limit_bytes
        # Created on first use: most connections never queue anything.
        self.pending: deque[Delivery] | tuple[()] = ()
        self.pending_bytes = 0
        self.inflight: dict[int, Delivery] = {}  # by packet id, in the order sent
        # RECEIVE ACL decisions for this session's current user, by topic.
        self.receive_allowed: dict[str, bool] = {}
        # The latest of those decisions, read first: the fan-out passes the same (interned)
        # topic object to every subscriber, so this hits by identity, without a dict lookup.
        self.last_topic: str | None = None
        self.last_allowed = False
        self.dropped = 0  # messages refused since the queue last had room
        self._store = store
        self._drain: Callable[[], Awaitable[None]] | None = None
        self._transport: asyncio.Transport | None = None
        self._ws: Any = None
        self._ws_raw = False
        # The QoS 0 fast path (every spectator, every snapshot): the transport a PUBLISH (or
        # its WebSocket frame) is written to as is; None over a WebSocket no longer OPEN (its
        # on_not_open hook clears it) or with extensions. And the transport's high-water mark.
        self._direct: asyncio.Transport | None = None
        self._high_water = 0
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._on_overflow = on_overflow
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def items(self) -> deque[Delivery] | tuple[()]:
        return self.pending

    @property
    def closed(self) -> bool:
        """No connection attached (offline, or the connection is closing)."""
        return self.handler is None

    def _persistent(self) -> bool:
        session = self.session
        return session.clean_session is False and not session.is_anonymous

    # -- the connection

    def attach(
        self,
        handler: Any,
        transport: asyncio.Transport | None,
        ws: Any,
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        """A connection took this session (after its CONNACK): resend what is in flight, in
        order, then send what waits. ``transport``: the connection's socket; ``ws``: its
        WebSocket layer (broker/ws.py ``WsConnection``) or None for MQTT over TCP; ``drain``:
        waits while the transport is above its high-water mark."""
        self.handler = handler
        self._drain = drain
        self._transport = transport
        self._ws = ws
        # Without extensions a binary frame is plain header + data: write it ourselves.
        self._ws_raw = self._ws is not None and not self._ws.protocol.extensions
        self.forget_receive_decisions()  # the user may have changed
        if self._transport is None:
            return
        # Read once: nothing in the broker changes a transport's write buffer limits.
        self._high_water = self._transport.get_write_buffer_limits()[1]
        if self._ws is None:
            self._direct = self._transport
        elif self._ws_raw and self._ws.protocol.state is OPEN:
            self._direct = self._transport
            self._ws.on_not_open = self._ws_left_open
        for packet_id, entry in self.inflight.items():
            if entry.released:
                self._write(b"\x62\x02" + packet_id.to_bytes(2, "big"))  # PUBREL again
            else:
                self._write(_with_dup(entry.message.packet(entry.qos, packet_id)))
        self._kick()

    def _ws_left_open(self) -> None:
        """The WebSocket left OPEN: frames go through websockets again (which refuses them)."""
        self._direct = None

    def forget_receive_decisions(self) -> None:
        """Drop the cached RECEIVE ACL decisions (a new connection: the user may differ)."""
        self.receive_allowed = {}
        self.last_topic = None
        self.last_allowed = False

    def detach(self, handler: Any = None) -> None:
        """The connection ended (``handler``: only if it is still the attached one). A clean
        session's messages go with it; a persistent session keeps its QoS 1/2 messages."""
        if handler is not None and self.handler is not handler:
            return
        self.handler = None
        if self._ws is not None and getattr(self._ws, "on_not_open", None) == self._ws_left_open:
            self._ws.on_not_open = None  # the connection no longer keeps this outbox
        self._drain = self._transport = self._ws = self._direct = None
        self._wake_flusher()
        if self._flusher is not None and self._flusher is not asyncio.current_task():
            self._flusher.cancel()
        self._flusher = None
        if not self._persistent():
            self.discard()
        elif self.pending and any(entry.qos == QOS_0 for entry in self.pending):
            kept = deque(entry for entry in self.pending if entry.qos != QOS_0)
            self.pending = kept
            self.pending_bytes = sum(len(entry.message.data) for entry in kept)

    def close(self) -> None:
        """The connection ended: detach it (kept for the connection code's finally)."""
        self.detach()

    def discard(self) -> None:
        """Forget everything (a clean session ends, or a clean CONNECT replaces this one)."""
        if self._store is not None and self._persistent() and (self.pending or self.inflight):
            self._store.queue_clear(self.session.client_id)  # type: ignore[arg-type]
        self.pending = ()
        self.pending_bytes = 0
        self.inflight.clear()
        self.dropped = 0

    def restore(self, entries: list[Any]) -> None:
        """Messages loaded from the store (``StoredMessage``: row, topic, payload, qos,
        packet_id, released), oldest first: those with a packet id were in flight."""
        for row, topic, payload, qos, packet_id, released in entries:
            entry = Delivery(OutgoingMessage(topic, payload), qos, row, packet_id, released)
            if packet_id is not None and packet_id not in self.inflight:
                self.inflight[packet_id] = entry
                self._next_id = max(self._next_id, packet_id)
            else:
                entry.packet_id = None
                if not isinstance(self.pending, deque):
                    self.pending = deque()
                self.pending.append(entry)
                self.pending_bytes += len(payload)

    # -- offering

    def offer(self, message: OutgoingMessage, qos: int) -> None:
        """Send ``message`` at ``qos`` now, or queue it, or drop it (bounds, see above)."""
        transport = self._direct  # set only while attached
        if qos == QOS_0 and transport is not None:
            # The fan-out's hot path: _writable() inlined (the WebSocket state is known to be
            # OPEN), the encoding shared by every subscriber. Each object read here per
            # delivery costs: at thousands of subscribers they are cold in the CPU cache.
            if (
                not self.pending
                and not transport.is_closing()
                and transport.get_write_buffer_size() <= self._high_water
            ):
                transport.write(message.ws_qos0() if self._ws_raw else message.packet(QOS_0))
                return
        elif self.handler is not None and not self.pending:
            if self._writable():
                if qos == QOS_0:
                    self._write_qos0(message)
                    return
                if len(self.inflight) < MAX_INFLIGHT:
                    self._send(Delivery(message, qos))
                    return
        if qos == QOS_0 and self.handler is None:
            # No connection attached (offline, being closed, not yet resumed): only QoS 1/2
            # is kept. The session may still count as connected while its connection is torn
            # down; QoS 0 queued then was delivered at its next connection, stale.
            return
        size = len(message.data)
        if len(self.pending) >= self.limit or self.pending_bytes + size > self.limit_bytes:
            self._overflow(size)
            return
        if self.dropped:
            self._end_of_burst()
        row = None
        if qos and self._store is not None and self._persistent():
            row = self._store.queue_add(
                self.session.client_id,  # type: ignore[arg-type]
                message.topic,
                message.data,
                qos,
                None,
            )
        if not isinstance(self.pending, deque):
            self.pending = deque()
        self.pending.append(Delivery(message, qos, row))
        self.pending_bytes += size
        self._kick()

    def _overflow(self, size: int) -> None:
        self.dropped += 1
        if self.dropped == 1 and self._persistent():
            logger.warning(
                "queue of %s is full (%d messages, %d bytes; max %d messages, %d bytes): "
                "dropping new messages for it until it drains",
                self.session.client_id,
                len(self.pending),
                self.pending_bytes,
                self.limit,
                self.limit_bytes,
            )
        if self.handler is not None:
            self._on_overflow(self)  # connected and not reading: disconnect it (fault 5)

    def _end_of_burst(self) -> None:
        logger.warning(
            "queue of %s has room again: %d new message(s) were dropped for it",
            self.session.client_id,
            self.dropped,
        )
        self.dropped = 0

    # -- acknowledgements (called by the protocol handler's reader)

    def acknowledge(self, kind: int, packet_id: int) -> bool:
        """PUBACK / PUBREC / PUBCOMP for ``packet_id``; False if it is not ours."""
        entry = self.inflight.get(packet_id)
        if entry is None:
            return False
        if kind == PUBREC and entry.qos == QOS_2:
            if not entry.released:
                entry.released = True
                if entry.row is not None and self._store is not None:
                    self._store.queue_sent(entry.row, packet_id, True)
            if self._transport is not None:
                self._write(b"\x62\x02" + packet_id.to_bytes(2, "big"))  # PUBREL
            return True
        if (kind == PUBACK and entry.qos == QOS_1) or (kind == PUBCOMP and entry.qos == QOS_2):
            del self.inflight[packet_id]
            if entry.row is not None and self._store is not None:
                self._store.queue_done(entry.row)
            self._kick()
            return True
        logger.info(
            "client %s sent packet type %d for packet id %d (QoS %d): ignored",
            self.session.client_id,
            kind,
            packet_id,
            entry.qos,
        )
        return True

    # -- writing

    def _new_packet_id(self) -> int:
        packet_id = self._next_id
        for _ in range(65536):
            packet_id = packet_id % 65535 + 1
            if packet_id not in self.inflight:
                self._next_id = packet_id
                return packet_id
        raise AMQTTError("no free packet id")  # cannot happen with MAX_INFLIGHT in flight

    def _send(self, entry: Delivery) -> None:
        packet_id = self._new_packet_id()
        entry.packet_id = packet_id
        self.inflight[packet_id] = entry
        if self._store is not None and self._persistent():
            if entry.row is None:
                entry.row = self._store.queue_add(
                    self.session.client_id,  # type: ignore[arg-type]
                    entry.message.topic,
                    entry.message.data,
                    entry.qos,
                    packet_id,
                )
            else:
                self._store.queue_sent(entry.row, packet_id, False)
        self._write(entry.message.packet(entry.qos, packet_id))

    def _writable(self) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if self._ws is not None and self._ws.protocol.state is not OPEN:
            return False
        # asyncio pauses the protocol (and drain() waits) only above the high-water mark.
        return transport.get_write_buffer_size() <= self._high_water

    def _write(self, packet: bytes) -> None:
        if self._ws is None:
            self._transport.write(packet)  # type: ignore[union-attr]
        elif self._ws_raw:
            self._transport.write(ws_binary_frame(packet))  # type: ignore[union-attr]
        else:
            self._ws.protocol.send_binary(packet)
            self._ws.send_data()

    def _write_qos0(self, message: OutgoingMessage) -> None:
        if self._ws_raw:
            self._transport.write(message.ws_qos0())  # type: ignore[union-attr]
        else:
            self._write(message.packet(QOS_0))

    def _wake_flusher(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _kick(self) -> None:
        """Make sure waiting messages move: wake the flusher, or start one."""
        self._wake_flusher()
        if self._flusher is None and self.pending and self.handler is not None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _wait_until_writable(self, qos: int) -> bool:
        window_full_since: float | None = None
        while self.handler is not None:
            transport = self._transport
            if transport is None or transport.is_closing():
                return False
            if not self._writable():
                if self._ws is not None and self._ws.protocol.state is not OPEN:
                    return False
                await self._drain()  # type: ignore[misc]
                if self.handler is not None and not self._writable():
                    await asyncio.sleep(0.01)  # drain() returned without waiting: never spin
                continue
            if qos != QOS_0 and len(self.inflight) >= MAX_INFLIGHT:
                # Woken by every acknowledgement and by detach: never a wait for nothing.
                loop = asyncio.get_running_loop()
                self._wake = loop.create_future()
                patience = self.session.keep_alive or DEFAULT_ACK_PATIENCE
                done, _ = await asyncio.wait({self._wake}, timeout=patience)
                if not done and self.handler is not None:
                    now = loop.time()
                    window_full_since = window_full_since or now - patience
                    logger.warning(
                        "client %s has acknowledged none of its %d in-flight messages for %.0f s"
                        " (%d more waiting): it is connected but not processing",
                        self.session.client_id,
                        len(self.inflight),
                        now - window_full_since,
                        len(self.pending),
                    )
                continue
            return True
        return False

    async def _flush(self) -> None:
        try:
            while self.pending and self.handler is not None:
                entry = self.pending[0]
                if not await self._wait_until_writable(entry.qos):
                    return  # the connection is closing: detach() comes next
                if not self.pending or self.pending[0] is not entry or self.handler is None:
                    continue
                self.pending.popleft()  # type: ignore[union-attr]
                self.pending_bytes -= len(entry.message.data)
                if self.dropped:
                    self._end_of_burst()
                if entry.qos == QOS_0:
                    self._write_qos0(entry.message)
                else:
                    self._send(entry)
        except (OSError, AMQTTError, MQTTError, TimeoutError, websockets.ConnectionClosed) as exc:
            logger.info("delivery to %s stopped: %r", self.session.client_id, exc)
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None
