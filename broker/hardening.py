"""The amqtt seam: RallycastBroker, amqtt 0.12.1's ``Broker`` with five faults neutralised, and
the ONLY module of broker/ that touches a private amqtt name (tests/broker/test_amqtt_seam.py
fails when another module does, when a name below is missing from the table
``AMQTT_PRIVATE``, or when the installed amqtt no longer has one with the same kind and
signature). Wire format lives in broker/packets.py, the outgoing queues in broker/outbox.py,
the lean inbox in broker/lean.py, the WebSocket layer in broker/ws.py: none imports amqtt's
internals. An amqtt upgrade starts here: run tests/broker/test_amqtt_seam.py, then
tests/broker/test_faults.py (its strict xfails say which stock fault came back or went).

Private amqtt names this module relies on, and why (one place per overridden method):

``amqtt.broker.Broker``, overridden:
  ``_client_connected`` (listener full: CONNACK 3, fault 4; FramedReader; CONNECT timeout),
  ``_create_server_instance`` (our WebSocket layer, broker/ws.py),
  ``_split_bindaddr_port`` (``[::1]:1883`` without brackets),
  ``_client_message_loop`` (one task serves one inbox instead of four queues),
  ``_handle_message_delivery`` (payload limit, no retained commands, published QoS kept),
  ``_run_broadcast`` (the Outbox path: encode once, no task per delivery, fault 5),
  ``_publish_retained_messages_for_subscription`` (own filters only, ACL-checked, fault 1),
  ``_publish_session_retained_messages`` (nothing: the Outbox holds what waited),
  ``_stop_handler`` (bounded, then abort, fault 3),
  ``_del_subscription``, ``_del_all_subscriptions`` (and the public ``add_subscription``):
  through limits.FilterIndex's per-client table, O(the client's own filters) where amqtt
  scanned every subscriber of every filter for each session that ended (issue 16).
``amqtt.broker.Broker``, called or read:
  ``_authenticate`` (before any session is touched, fault 2), ``_topic_filtering`` (ACL),
  ``_matches`` (retained topics against a filter), ``_delete_session``,
  ``_cleanup_session`` (shutdown), ``_handle_subscription``, ``_handle_unsubscription``,
  ``_handle_disconnect`` (the inbox's items, as amqtt handles them);
  attributes ``_sessions`` (client id -> (session, handler)), ``_subscriptions`` (replaced by
  limits.FilterIndex), ``_retained_messages``, ``_broadcast_queue``, ``_servers`` (listeners:
  ports, shutdown, capacity), ``_loop``.
``amqtt.mqtt.protocol.handler.ProtocolHandler`` (through BrokerProtocolHandler), overridden:
  ``_init_session`` (one shared logger, not an adapter per connection),
  ``_reader_loop`` (no ``wait_for`` per read: a cancel is never swallowed; keep-alive timer;
  fan-out bound), ``_retry_deliveries`` (the Outbox resends; start() does not wait),
  ``_handle_qos1_message_flow`` / ``_handle_qos2_message_flow`` (PUBACK/PUBCOMP after the
  routing and the store);
  called: ``_is_attached``, ``_send_packet``, ``_stop_waiters``, ``_handle_message_flow``;
  attributes ``_reader_task``, ``_reader_stopped`` (an Event per connection: not made),
  ``_pubrel_waiters``, ``_disconnect_waiter`` (BrokerProtocolHandler),
  ``_pending_subscriptions`` / ``_pending_unsubscriptions`` (BrokerProtocolHandler: views of
  the one inbox).
``amqtt.session.Session``: ``_on_enter_connected``, ``_on_enter_disconnected`` (called by
  SessionState, which replaces the ``transitions.Machine``).
``amqtt.broker.BrokerContext``: ``_broker_instance`` (:func:`broker_of`: a plugin reaches the
  broker, broker/acl.py closes the sessions of a revoked token).
``amqtt.adapters``: ``StreamReaderAdapter._reader`` (FramedReader reads the StreamReader),
  ``StreamWriterAdapter._writer`` (transport, drain), ``WebSocketsWriter._protocol`` (our
  WsConnection inside WsWriter).

Each fix is an override in this class (never a patch of site-packages); docs/upstream.md says
what upstream amqtt could take for each one and tests/broker/test_faults.py pins each fault
against both the stock class and this one.

1. Retained leak on connect: the stock broker sends a new client every retained message that
   matches ANY filter held by ANY client. Here a connecting client only gets the retained
   messages of its own (persistent) subscriptions, and every retained delivery is checked
   against the RECEIVE ACL.
2. Refused CONNECT wipes the victim: the stock broker deletes (or takes over) the existing
   session of a client id BEFORE it checks the password. Here authentication comes first;
   a refused CONNECT never touches the sessions.
3. Slow shutdown: the stock broker closes clients one after the other and waits up to 10 s
   for each WebSocket close handshake. Here every connection is closed at once, with a short
   grace period, then aborted.
4. ``max_connections`` hang: the stock broker parks the extra client on a semaphore, without
   CONNACK, for as long as the others stay. Here it gets CONNACK 3 (server unavailable).
5. Unbounded queue for a subscriber that stops reading: the stock broker starts one task per
   delivery, which piles up behind the blocked socket. Here each session has an
   :class:`Outbox` bounded in messages and bytes (:class:`QueueLimits`); a connected client
   that overflows it is logged and disconnected (it gets the retained snapshot again when it
   comes back).

Delivery to persistent sessions (docs/broker.md, "Delivery guarantees"): the Outbox outlives
the connection, so a backlog drains through the same in-flight window as live messages, and
messages sent but not acknowledged are resent on reconnect with DUP=1 [MQTT-4.4.0-1]; copies
for persistent sessions are written to the store (broker/persistence.py) and a publisher's
PUBACK waits for that write; the new CONNECT's clean-session flag decides whether the old
session goes on [MQTT-3.1.2-4, 3.1.2-6].

The outbox is also the cheap delivery path: a PUBLISH is encoded once per message (and once
more as a WebSocket frame) and written straight to each subscriber's transport, with no task,
no plugin call and no packet object per delivery; RECEIVE ACL decisions are cached per
connection (they depend on the user and the topic only, broker/acl.py, and a connection's
user never changes; a new password or a revoked token closes the connection).

Extra hardening done on the way: a CONNECT must arrive within ``CONNECT_TIMEOUT`` seconds,
MQTT keep-alive is enforced (1.5 x the client's value, as MQTT 3.1.1 §3.1.2.10 says; stock
amqtt never drops a silent client), delivered QoS is min(published, granted) as the spec says
(stock amqtt uses the subscription's QoS), a client id that logs in again closes its previous
connection (stock amqtt leaves it open after a clean-session take-over), and WebSocket
connections run without permessage-deflate (CPU per delivery) and without WebSocket pings
(MQTT keep-alive covers it). An idle connection costs ~9 KB (TCP) or ~10-11 KB (WebSocket) of
RSS instead of ~58 KB (docs/benchmarks.md): a small :class:`SessionState` replaces each
Session's ``transitions.Machine``, :class:`LeanSession` keeps the Session's dict compact, one
lazily allocated inbox (:class:`LeanQueue`) served by one task replaces four queues and four
waiting tasks, the reader loop keeps nothing between packets, an idle connection's task
waits through as few coroutine frames as possible (the session is served in
``_client_connected``'s own frame), and both listeners are our thin ``asyncio.Protocol``
layers (broker/tcp.py; broker/ws.py over websockets' sans-I/O protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import sys
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from amqtt.adapters import (
    ReaderAdapter,
    StreamReaderAdapter,
    StreamWriterAdapter,
    WebSocketsWriter,
    WriterAdapter,
)
from amqtt.broker import Broker, ListenerType, Server
from amqtt.contexts import Action, BrokerConfig
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError, ProtocolHandlerError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.connack import NOT_AUTHORIZED, SERVER_UNAVAILABLE, ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.constants import QOS_0
from amqtt.mqtt.packet import CONNECT, PUBACK, PUBCOMP, PUBREC, MQTTFixedHeader
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.session import INCOMING, Session
from amqtt.utils import format_client_message, gen_client_id
from transitions import MachineError

from broker import limits, tcp, ws
from broker.lean import LeanQueue, TaggedQueue
from broker.outbox import (
    DEFAULT_MAX_QUEUED_MESSAGES,
    MAX_INFLIGHT,
    Delivery,
    MessageStore,
    Outbox,
    QueueLimits,
)
from broker.packets import OutgoingMessage

# Re-exported: their home moved out of the seam (broker/outbox.py, broker/packets.py,
# broker/lean.py); older imports from here keep working.
__all__ = [
    "DEFAULT_MAX_QUEUED_MESSAGES",
    "MAX_INFLIGHT",
    "Delivery",
    "LeanQueue",
    "MessageStore",
    "OutgoingMessage",
    "Outbox",
    "QueueLimits",
    "RallycastBroker",
    "TaggedQueue",
    "broker_of",
    "listening_port",
]

AMQTT_VERSION = "0.12.1"  # pyproject.toml pins it; the table below is for this version


@dataclass(frozen=True)
class Private:
    """One private amqtt name this module relies on: ``owner`` (dotted class path), ``name``,
    ``kind`` ("override", "call": methods, with their parameter names; "attribute": set by
    the owner's ``__init__``), ``why`` (one line)."""

    owner: str
    name: str
    kind: str
    params: tuple[str, ...] = ()
    why: str = ""


_BROKER = "amqtt.broker.Broker"
_HANDLER = "amqtt.mqtt.protocol.handler.ProtocolHandler"
_BROKER_HANDLER = "amqtt.mqtt.protocol.broker_handler.BrokerProtocolHandler"
_SESSION = "amqtt.session.Session"
_MSG = ("self", "client_session", "handler")

AMQTT_PRIVATE: tuple[Private, ...] = (
    Private(
        _BROKER,
        "_client_connected",
        "override",
        ("self", "listener_name", "reader", "writer"),
        "fault 4, FramedReader, CONNECT timeout",
    ),
    Private(
        _BROKER,
        "_create_server_instance",
        "override",
        ("self", "listener_name", "listener_type", "address", "port", "ssl_context"),
        "our listeners",
    ),
    Private(
        _BROKER,
        "_split_bindaddr_port",
        "override",
        ("cls", "port_str", "default_port"),
        "IPv6 brackets",
    ),
    Private(_BROKER, "_client_message_loop", "override", _MSG, "one inbox, one task"),
    Private(
        _BROKER,
        "_handle_message_delivery",
        "override",
        (*_MSG, "wait_deliver"),
        "payload limit, QoS",
    ),
    Private(_BROKER, "_run_broadcast", "override", ("self", "running_tasks"), "Outbox, fault 5"),
    Private(
        _BROKER,
        "_publish_retained_messages_for_subscription",
        "override",
        ("self", "subscription", "session"),
        "fault 1",
    ),
    Private(
        _BROKER, "_publish_session_retained_messages", "override", ("self", "session"), "Outbox"
    ),
    Private(_BROKER, "_stop_handler", "override", ("self", "handler"), "fault 3"),
    Private(
        _BROKER,
        "_del_subscription",
        "override",
        ("self", "a_filter", "session"),
        "O(1) unsubscribe",
    ),
    Private(_BROKER, "_del_all_subscriptions", "override", ("self", "session"), "O(own filters)"),
    Private(_BROKER, "_authenticate", "call", ("self", "session", "_"), "fault 2"),
    Private(_BROKER, "_topic_filtering", "call", ("self", "session", "topic", "action"), "ACL"),
    Private(_BROKER, "_matches", "call", ("self", "topic", "a_filter"), "retained messages"),
    Private(_BROKER, "_delete_session", "call", ("self", "client_id"), "session end"),
    Private(_BROKER, "_cleanup_session", "call", ("self", "client_id"), "shutdown"),
    Private(_BROKER, "_handle_subscription", "call", (*_MSG, "subscribe_waiter"), "inbox"),
    Private(_BROKER, "_handle_unsubscription", "call", (*_MSG, "unsubscribe_waiter"), "inbox"),
    Private(_BROKER, "_handle_disconnect", "call", (*_MSG, "disconnect_waiter"), "inbox"),
    Private(_BROKER, "_sessions", "attribute", why="client id -> (session, handler)"),
    Private(_BROKER, "_subscriptions", "attribute", why="replaced by limits.FilterIndex"),
    Private(_BROKER, "_retained_messages", "attribute", why="retained delivery, fault 1"),
    Private(_BROKER, "_broadcast_queue", "attribute", why="routing, store barrier"),
    Private(_BROKER, "_servers", "attribute", why="listeners: ports, shutdown, capacity"),
    Private(_BROKER, "_loop", "attribute", why="handlers are made on the broker's loop"),
    Private(_HANDLER, "_init_session", "override", ("self", "session"), "one shared logger"),
    Private(_HANDLER, "_reader_loop", "override", ("self",), "no wait_for per read, keep-alive"),
    Private(_HANDLER, "_retry_deliveries", "override", ("self",), "Outbox resends"),
    Private(
        _HANDLER,
        "_handle_qos1_message_flow",
        "override",
        ("self", "app_message"),
        "PUBACK after store",
    ),
    Private(
        _HANDLER,
        "_handle_qos2_message_flow",
        "override",
        ("self", "app_message"),
        "PUBCOMP after store",
    ),
    Private(_HANDLER, "_is_attached", "call", ("self",), "start()"),
    Private(_HANDLER, "_send_packet", "call", ("self", "packet"), "PUBACK, PUBREC, PUBCOMP"),
    Private(_HANDLER, "_stop_waiters", "call", ("self",), "stop()"),
    Private(_HANDLER, "_handle_message_flow", "call", ("self", "app_message"), "QoS 2 retry"),
    Private(_HANDLER, "_reader_task", "attribute", why="keep-alive cancels it"),
    Private(_HANDLER, "_reader_stopped", "attribute", why="not made (an Event per connection)"),
    Private(_HANDLER, "_pubrel_waiters", "attribute", why="QoS 2 flow"),
    Private(_BROKER_HANDLER, "_disconnect_waiter", "attribute", why="the inbox's last item"),
    Private(_BROKER_HANDLER, "_pending_subscriptions", "attribute", why="inbox view"),
    Private(_BROKER_HANDLER, "_pending_unsubscriptions", "attribute", why="inbox view"),
    Private(_SESSION, "_on_enter_connected", "call", ("self",), "SessionState"),
    Private(_SESSION, "_on_enter_disconnected", "call", ("self",), "SessionState"),
    Private("amqtt.broker.BrokerContext", "_broker_instance", "attribute", why="broker_of"),
    Private("amqtt.adapters.StreamReaderAdapter", "_reader", "attribute", why="FramedReader"),
    Private("amqtt.adapters.StreamWriterAdapter", "_writer", "attribute", why="transport, drain"),
    Private("amqtt.adapters.WebSocketsWriter", "_protocol", "attribute", why="WsWriter"),
)

logger = logging.getLogger(__name__)
_SERVER_LOG = logging.getLogger("rallycast.broker")  # where the broker's own notices go


# A client must send CONNECT this soon after opening the connection.
CONNECT_TIMEOUT = limits.CONNECT_TIMEOUT
# How long a closing connection may take (WebSocket close handshake, flushing) before abort.
CLOSE_GRACE = 0.5
# WebSocket close handshake timeout handed to the websockets server.
WS_CLOSE_TIMEOUT = 1.0


# -- the connection's adapters (amqtt's private attributes, read here only)


class WsWriter(WebSocketsWriter):
    """amqtt's writer adapter over our WebSocket layer (broker/ws.py ``WsConnection``): each
    write is one binary frame, at once (no buffer per connection). A WebSocketsWriter whose
    private ``_protocol`` is the WsConnection, so amqtt code that reads it finds what it
    expects."""

    def __init__(self, connection: ws.WsConnection) -> None:  # no BytesIO, unlike the base
        self._protocol = connection  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        self._protocol.send_binary(data)  # type: ignore[attr-defined]

    async def drain(self) -> None:
        await self._protocol.drain()  # type: ignore[attr-defined]

    def get_peer_info(self) -> tuple[str, int] | None:
        return self._protocol.remote_address  # type: ignore[return-value]

    def get_ssl_info(self) -> Any:
        transport = self._protocol.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    async def close(self) -> None:
        await self._protocol.close()


class TcpWriter(WriterAdapter):
    """amqtt's writer adapter over our TCP layer (broker/tcp.py ``TcpConnection``): writes go
    straight to the transport; after ``close`` they are ignored, as in amqtt's
    StreamWriterAdapter."""

    __slots__ = ("connection", "is_closed")

    def __init__(self, connection: tcp.TcpConnection) -> None:
        self.connection = connection
        self.is_closed = False

    def write(self, data: bytes) -> None:
        if not self.is_closed:
            self.connection.write(data)

    async def drain(self) -> None:
        if not self.is_closed:
            await self.connection.drain()

    def get_peer_info(self) -> tuple[str, int] | None:
        return self.connection.remote_address

    def get_ssl_info(self) -> Any:
        transport = self.connection.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    async def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True  # first: writes racing the close are dropped
            await self.connection.close()


def _transport_of(writer: WriterAdapter | None) -> asyncio.Transport | None:
    if isinstance(writer, TcpWriter):
        return writer.connection.transport
    if isinstance(writer, StreamWriterAdapter):
        return writer._writer.transport  # type: ignore[return-value]
    if isinstance(writer, WebSocketsWriter):
        return writer._protocol.transport
    return None


def _ws_of(writer: WriterAdapter | None) -> ws.WsConnection | None:
    """Our WebSocket layer behind ``writer`` (None for a TCP connection)."""
    if isinstance(writer, WsWriter):
        return writer._protocol  # type: ignore[return-value]
    return None


def _drain_of(writer: WriterAdapter) -> Any:
    """A coroutine function that waits while the connection's transport is above its
    high-water mark (without amqtt's per-call buffering)."""
    if isinstance(writer, TcpWriter):
        return writer.connection.drain
    if isinstance(writer, StreamWriterAdapter):
        return writer._writer.drain
    if isinstance(writer, WsWriter):
        return writer._protocol.drain  # type: ignore[attr-defined]
    return writer.drain


def _stream_of(reader: ReaderAdapter) -> asyncio.StreamReader | None:
    """The asyncio.StreamReader behind ``reader``, if any (FramedReader reads it directly)."""
    if isinstance(reader, StreamReaderAdapter):
        return reader._reader
    return None


def _abort(writer: WriterAdapter | None) -> None:
    """Drop the connection now, whatever the peer does (no handshake, no flush)."""
    transport = _transport_of(writer)
    if transport is not None:
        transport.abort()


def broker_of(context: Any) -> Broker | None:
    """The broker behind a plugin's ``BrokerContext`` (amqtt keeps it private), or None."""
    return getattr(context, "_broker_instance", None)


def listening_port(broker: Broker, listener: str) -> int:
    """The port a started listener really bound (the one the OS chose for port 0).

    amqtt keeps its servers in the private ``_servers`` dict and offers no public accessor.
    ``.instance`` is an asyncio.Server (TCP) or our WsServer, both with ``.sockets``.
    """
    server = broker._servers[listener]
    sockets = list(server.instance.sockets or ())
    if not sockets:
        raise RuntimeError(f"listener {listener!r} has no socket")
    return int(sockets[0].getsockname()[1])


def retained_topics(broker: Broker) -> set[str]:
    """Topics with a non-empty retained message now (amqtt's private ``_retained_messages``,
    no public accessor); works on a stock amqtt ``Broker`` too."""
    return {topic for topic, message in broker._retained_messages.items() if message.data}


class LeanSession(Session):
    """amqtt's Session with slots for what Rallycast adds to it. A Session's ``__dict__``
    already fills CPython's shared-keys layout (30 keys); one more attribute turned it into a
    plain dict of ~1.6 KB per connection (broker/acl.py adds ``rallycast_filters`` to every
    subscriber, RallycastBroker the ``outbox``)."""

    __slots__ = (
        "outbox",
        "rallycast_cap_logged",
        "rallycast_filters",
        "rallycast_retained_logged",
    )


class SessionState:
    """Drop-in for the ``transitions.Machine`` amqtt builds for every Session (~16 KB each):
    states new / connected / disconnected, same triggers, same timestamps."""

    __slots__ = ("_session", "state")

    def __init__(self, session: Session, state: str = "new") -> None:
        self._session = session
        self.state = state

    def connect(self) -> None:
        session = self._session
        if self.state == "connected":
            client_id = session.client_id if session is not None else None
            raise MachineError(f"{client_id} is already connected")
        self.state = "connected"
        if session is not None:
            session._on_enter_connected()

    def disconnect(self) -> None:
        self.state = "disconnected"
        if self._session is not None:
            self._session._on_enter_disconnected()

    def unlink(self) -> None:
        """The session ended for good: drop the back-reference (session -> state -> session
        is a reference cycle, which only a full GC pass freed; issue 16)."""
        self._session = None

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    def is_new(self) -> bool:
        return self.state == "new"


def _unlink(session: Session) -> None:
    """Break the reference cycles of a session that ended for good (session <-> its Outbox,
    session <-> its SessionState), so that it and everything it holds is freed as soon as the
    last reference goes, not by the next full GC pass: a mass disconnect otherwise left
    thousands of sessions for one pass that scans every object of the broker (issue 16)."""
    if isinstance(session, LeanSession):
        session.outbox = None  # type: ignore[assignment]
    state = session.transitions
    if isinstance(state, SessionState):
        state.unlink()


class _Ready:
    """An already-resolved stand-in for the futures amqtt's handlers read with ``.result()``."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value

    def done(self) -> bool:
        return True


# The handler method for each packet type a client may send (CONNECT: handled inline).
_DISPATCH = {
    CONNECT: "handle_connect",
    limits.PUBLISH: "handle_publish",
    PUBACK: "handle_puback",
    PUBREC: "handle_pubrec",
    limits.PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    limits.SUBSCRIBE: "handle_subscribe",
    limits.UNSUBSCRIBE: "handle_unsubscribe",
    limits.PINGREQ: "handle_pingreq",
    limits.DISCONNECT: "handle_disconnect",
}
# Packets of one connection handled at once before its reader waits (the fan-out bound).
MAX_PACKETS_IN_HANDLING = 32


_HANDLER_LOGGER = logging.getLogger("amqtt.mqtt.protocol.handler")  # amqtt's own name


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# A done-callback otherwise copies the running context for each connection.
_NO_CONTEXT = contextvars.Context()
# A client id with no session registered (the fan-out asks whether a target is still its own).
_NO_SESSION = (None, None)


class RallycastProtocolHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler with an outbox, one inbox instead of four
    queues, and keep-alive enforcement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbox: Outbox | None = None
        self.inbox = LeanQueue()
        self._pending_subscriptions = TaggedQueue(self.inbox, "sub")  # type: ignore[assignment]
        self._pending_unsubscriptions = TaggedQueue(self.inbox, "unsub")  # type: ignore[assignment]
        # The connection's lifecycle is over (a take-over waits for it: finished()).
        self.ended = False
        self._finished: asyncio.Future[None] | None = None  # made only for a waiter
        self._retries: set[asyncio.Future[Any]] | None = None  # made when there are some
        # amqtt's Event for "reader stopped" (a deque each): a future made only when stop()
        # has to wait for the reader.
        self._reader_stopped = None  # type: ignore[assignment]
        self._reader_end: asyncio.Future[None] | None = None
        self._reader_over = False
        self._last_read = 0.0  # loop time of the latest packet (keep-alive)
        self._alive_timer: asyncio.TimerHandle | None = None
        self._expired = False  # the keep-alive ran out: the reader was cancelled for it

    def end(self) -> None:
        """The connection's lifecycle is over: wake whoever waits in :meth:`finished`."""
        self.ended = True
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def finished(self) -> asyncio.Future[None]:
        """A future resolved once the connection's lifecycle is over."""
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
            if self.ended:
                self._finished.set_result(None)
        return self._finished

    @classmethod
    async def init_from_connect(  # type: ignore[override]
        cls, reader: ReaderAdapter, writer: WriterAdapter, plugins_manager: Any, loop: Any = None
    ) -> tuple[RallycastProtocolHandler, Session]:
        handler, made = await super().init_from_connect(reader, writer, plugins_manager, loop)
        session = LeanSession.__new__(LeanSession)
        session.__dict__.update(made.__dict__)  # amqtt's 29 attributes: a shared-keys dict
        session.transitions = SessionState(session)  # type: ignore[assignment]
        session.retained_messages = LeanQueue()  # type: ignore[assignment]
        return handler, session  # type: ignore[return-value]

    async def handle_unsubscribe(self, unsubscribe: Any) -> None:
        # The per-session subscription count (broker/acl.py, max_subscriptions) forgets these.
        filters = getattr(self.session, "rallycast_filters", None)
        if filters and unsubscribe.payload is not None:
            filters.difference_update(unsubscribe.payload.topics)
        await super().handle_unsubscribe(unsubscribe)

    def handle_read_timeout(self) -> None:
        # Nothing heard for 1.5 x keep-alive: the client is gone [MQTT-3.1.2-24]. The reader
        # loop below ends itself after this; another caller's reader gets cancelled.
        client_id = self.session.client_id if self.session else None
        logger.info("client %s silent past its keep-alive: disconnecting it", client_id)
        task = self._reader_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # -- the connection's reader: one task, nothing kept between packets

    def _init_session(self, session: Session) -> None:
        super()._init_session(session)
        self.logger = _HANDLER_LOGGER  # not a LoggerAdapter per connection

    def _check_alive(self, keep_alive: float) -> None:
        """Keep-alive: one timer per connection, moved on only when it fires (a timeout
        object per read cost memory and CPU on every packet)."""
        task = self._reader_task
        if task is None or task.done() or self._reader_over:
            self._alive_timer = None
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_read
        if silent >= keep_alive:
            self._alive_timer = None
            self._expired = True
            task.cancel()
        else:
            self._alive_timer = loop.call_later(keep_alive - silent, self._check_alive, keep_alive)

    async def start(self) -> None:
        """Start the reader. Unlike amqtt: no Events, no wait for the reader to run, and no
        idle write timer (``handle_write_timeout`` does nothing on a broker)."""
        if not self._is_attached():
            raise ProtocolHandlerError("Handler is not attached to a stream")
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._reader_loop())
        if self._disconnect_waiter is None or self._disconnect_waiter.done():
            self._disconnect_waiter = loop.create_future()
        await self._retry_deliveries()

    async def stop(self) -> None:
        """Stop the reader (waits until it has ended) and close the connection."""
        self._stop_waiters()
        task = self._reader_task
        if (
            task is not None
            and task is not asyncio.current_task()
            and not task.done()
            and not self._reader_over
        ):
            task.cancel()
            if self._reader_end is None:
                self._reader_end = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._reader_end)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, OSError):
            if self.writer is not None:
                await self.writer.close()
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._disconnect_waiter = None

    async def _reader_loop(self) -> None:
        """Read and dispatch packets until EOF, keep-alive expiry, a fault or cancellation.

        Reads are plain awaits: amqtt wraps each in ``asyncio.wait_for`` (one extra task per
        read, and in Python 3.11 a cancel arriving as the read completes is swallowed, so
        stopping a handler with unread packets did nothing until keep-alive). Keep-alive is
        one timer per connection (:meth:`_check_alive`) that cancels the reader when the
        client has been silent for 1.5 x its keep-alive. No packet or task is held between
        reads. Fan-out bound: at most MAX_PACKETS_IN_HANDLING packets of
        one connection are being handled at once; past that the reader waits for the oldest,
        and the socket's unread bytes are the backpressure (a publisher's QoS 1 window makes
        this rare: its PUBLISHes wait for the routing before their PUBACK)."""
        session, reader = self.session, self.reader
        keep_alive = session.keep_alive if session is not None and session.keep_alive > 0 else 0
        loop = asyncio.get_running_loop()
        if keep_alive:
            self._last_read = loop.time()
            self._alive_timer = loop.call_later(keep_alive, self._check_alive, keep_alive)
        running: list[asyncio.Future[None]] = []  # small: a deque starts at 64 slots
        try:
            while reader is not None and session is not None:
                try:
                    if isinstance(reader, limits.FramedReader) and not await reader.fill():
                        break  # EOF, or a violation (FramedReader logged it)
                    header = await MQTTFixedHeader.from_stream(reader)
                    if not header:
                        break  # EOF (FramedReader ends the stream at a violation)
                    kind = header.packet_type
                    if kind not in _DISPATCH:
                        logger.warning("%s sent packet type %d: closing", session.client_id, kind)
                        break
                    packet = await packet_class(header).from_stream(reader, fixed_header=header)
                except MQTTError:
                    continue  # amqtt's "message discarded"
                finally:
                    self._last_read = loop.time()
                await self.plugins_manager.fire_event(
                    MQTTEvents.PACKET_RECEIVED, packet=packet, session=session
                )
                if kind == CONNECT:
                    await self.handle_connect(packet)  # type: ignore[arg-type]
                    packet = None
                    continue
                if len(running) >= MAX_PACKETS_IN_HANDLING:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.ensure_future(getattr(self, _DISPATCH[kind])(packet))
                running.append(task)
                task.add_done_callback(running.remove)  # a finished one is not kept
                header = packet = task = None
        except asyncio.CancelledError:
            if self._expired:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # our own cancel
                self.handle_read_timeout()
        except (NoDataError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # noqa: BLE001 - amqtt's reader ends the same way
            logger.warning("reader of %s ended: %r", session.client_id if session else None, exc)
        finally:
            if running and not _cancelling():
                # EOF: packets read before it are still handled (a PUBLISH then a close must
                # not lose the message), within a bound.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(running, timeout=CLOSE_GRACE)
            for task in list(running):
                task.cancel()
            if self._alive_timer is not None:
                self._alive_timer.cancel()
                self._alive_timer = None
            self._reader_over = True
            if self._reader_end is not None and not self._reader_end.done():
                self._reader_end.set_result(None)
        await self.handle_connection_closed()
        await self.stop()

    # -- delivery: the session's Outbox runs the outgoing QoS flows

    async def _retry_deliveries(self) -> None:
        # Outgoing messages in flight are resent by Outbox.attach. An incoming QoS 2 message
        # still waiting for its PUBREL gets amqtt's flow again, in the background: start()
        # must not wait for the client.
        session = self.session
        if session is None or not session.inflight_in:
            return
        for message in list(session.inflight_in.values()):
            task = asyncio.ensure_future(
                asyncio.wait_for(self._handle_message_flow(message), 10)  # type: ignore[arg-type]
            )
            if self._retries is None:
                self._retries = set()
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def handle_puback(self, puback: PubackPacket) -> None:
        header = puback.variable_header
        if self.outbox is not None and header is not None:
            if self.outbox.acknowledge(PUBACK, header.packet_id):
                return
        await super().handle_puback(puback)

    async def handle_pubrec(self, pubrec: Any) -> None:
        if self.outbox is not None and self.outbox.acknowledge(PUBREC, pubrec.packet_id):
            return
        await super().handle_pubrec(pubrec)

    async def handle_pubcomp(self, pubcomp: Any) -> None:
        if self.outbox is not None and self.outbox.acknowledge(PUBCOMP, pubcomp.packet_id):
            return
        await super().handle_pubcomp(pubcomp)

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        """An incoming QoS 1 PUBLISH is acknowledged only once the broker has routed it and
        the store holds what it queued from it for persistent sessions: a PUBACK is a promise
        that survives ``kill -9`` (stock amqtt acknowledges before routing)."""
        if app_message.direction != INCOMING or self.session is None:
            await super()._handle_qos1_message_flow(app_message)
            return
        if app_message.packet_id is None:
            raise MQTTError("QoS 1 PUBLISH without a packet id")
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.session.delivered_message_queue.put_nowait(app_message)
        self.inbox.put_nowait(("stored", stored))
        await stored
        puback = PubackPacket.build(app_message.packet_id)
        await self._send_packet(puback)
        app_message.puback_packet = puback

    async def _handle_qos2_message_flow(self, app_message: Any) -> None:
        """An incoming QoS 2 PUBLISH is routed on PUBREL (amqtt's flow); its PUBCOMP is sent
        only once the store holds what it queued for persistent sessions, as for QoS 1."""
        if app_message.direction != INCOMING or self.session is None:
            await super()._handle_qos2_message_flow(app_message)
            return
        session = self.session
        session.inflight_in[app_message.packet_id] = app_message
        pubrec = PubrecPacket.build(app_message.packet_id)
        await self._send_packet(pubrec)
        app_message.pubrec_packet = pubrec
        previous = self._pubrel_waiters.get(app_message.packet_id)
        if previous is not None and not previous.done():
            previous.cancel()  # the client sent this PUBLISH again (DUP): one flow only
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pubrel_waiters[app_message.packet_id] = waiter
        try:
            app_message.pubrel_packet = await waiter
        except asyncio.CancelledError:
            return
        finally:
            if self._pubrel_waiters.get(app_message.packet_id) is waiter:
                del self._pubrel_waiters[app_message.packet_id]
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.delivered_message_queue.put_nowait(app_message)
        self.inbox.put_nowait(("stored", stored))
        session.inflight_in.pop(app_message.packet_id, None)
        await stored
        pubcomp = PubcompPacket.build(app_message.packet_id)
        await self._send_packet(pubcomp)
        app_message.pubcomp_packet = pubcomp


class RallycastBroker(Broker):
    """amqtt Broker with the faults above neutralised. Same constructor as
    ``amqtt.broker.Broker``, plus the keyword-only ``max_queued_messages``
    (Settings.max_queued_messages) and ``queue_limits`` (all the queue bounds; it wins over
    ``max_queued_messages``). A loaded plugin with ``queue_add`` (broker/persistence.py) is
    the :class:`MessageStore` for persistent sessions."""

    # Hostile-client limits (broker/limits.py); start_broker sets its own from Settings.
    client_limits = limits.BrokerLimits()
    # Settings.max_payload_bytes (0: no limit): a larger PUBLISH is dropped, like mosquitto's
    # ``message_size_limit``; start_broker sets it.
    max_payload_bytes = 0

    def __init__(
        self,
        config: BrokerConfig | dict[str, Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        plugin_namespace: str | None = None,
        *,
        max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES,
        queue_limits: QueueLimits | None = None,
    ) -> None:
        super().__init__(config, loop, plugin_namespace)
        # Filters indexed by level: a delivery's cost depends on the filters that can match
        # it, not on how many filters other clients hold (broker/limits.py).
        self._subscriptions = limits.FilterIndex()
        self.queue_limits = queue_limits or QueueLimits(messages=max_queued_messages)
        # Clients disconnected because they stopped reading (fault 5), for logs and tests.
        self.slow_clients_disconnected = 0
        self.message_store: MessageStore | None = next(
            (p for p in self.plugins_manager.plugins if hasattr(p, "queue_add")), None
        )  # type: ignore[assignment]

    @property
    def max_queued_messages(self) -> int:
        return self.queue_limits.messages

    @max_queued_messages.setter
    def max_queued_messages(self, value: int) -> None:
        self.queue_limits = replace(self.queue_limits, messages=value)

    # -- observability

    def queued_messages(self, client_id: str) -> int:
        """Messages waiting for a session (connected or not; 0 if there is none)."""
        entry = self._sessions.get(client_id)
        outbox = getattr(entry[0], "outbox", None) if entry else None
        return len(outbox) if outbox is not None else 0

    # -- sessions' outboxes

    def outbox_of(self, session: Session) -> Outbox:
        """The session's Outbox, made on first use; messages the store restored for it
        (``session.restored_queue``, set by broker/persistence.py) go in first."""
        outbox: Outbox | None = getattr(session, "outbox", None)
        limit, limit_bytes = self.queue_limits.for_session(session.client_id, session.username)
        if outbox is None:
            outbox = Outbox(
                session, limit, limit_bytes, self._client_overflowed, self.message_store
            )
            session.outbox = outbox  # type: ignore[attr-defined]
            restored = session.__dict__.pop("restored_queue", None)
            if restored:
                outbox.restore(restored)
        else:
            outbox.limit, outbox.limit_bytes = limit, limit_bytes
        return outbox

    # -- subscriptions: O(the client's own filters), not a scan of every subscriber (issue 16)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """amqtt's ``add_subscription``, same rules and answers: a filter with a misplaced
        ``#`` or ``+`` is refused [MQTT-4.7.1-2, 4.7.1-3], then the SUBSCRIBE ACL, then
        ``max-qos``. A client id already subscribed to the filter gets its subscription
        replaced, QoS included [MQTT-3.8.4-3] (amqtt kept the first one: SUBACK granted the
        new QoS, deliveries kept the old). The granted QoS, or 0x80. Unlike amqtt, finding
        whether the client id is subscribed already does not read every subscriber of the
        filter."""
        topic_filter, qos = subscription
        levels = topic_filter.split("/")
        if any(
            "#" in level and (level != "#" or index != len(levels) - 1)
            for index, level in enumerate(levels)
        ):
            return 0x80
        if any("+" in level and level != "+" for level in levels):
            return 0x80
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            return 0x80
        max_qos = self.config.get("max-qos", qos)
        if not isinstance(max_qos, int):
            max_qos = qos
        qos = min(qos, max_qos)
        if not self._subscriptions.subscribe(topic_filter, session, qos):
            self.logger.debug(
                "Client %s subscribed again to %s: subscription replaced",
                format_client_message(session=session),
                topic_filter,
            )
        return qos

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        """Remove ``session``'s (by client id) subscription to ``a_filter``: 1, or 0 when it
        held none. O(1); a filter goes with its last subscriber."""
        return int(self._subscriptions.unsubscribe(a_filter, session.client_id))  # type: ignore[arg-type]

    async def _del_all_subscriptions(self, session: Session) -> None:
        """Remove every subscription of ``session``'s client id: O(its own filters). amqtt
        looked at every subscriber of every filter for each session that ended, which made
        5,000 spectators dropping at once cost seconds of CPU (O(n²), issue 16)."""
        self._subscriptions.unsubscribe_all(session.client_id)  # type: ignore[arg-type]

    async def _discard_session(self, client_id: str) -> None:
        """End a session for good: subscriptions, queue, in-flight messages, stored rows."""
        session = self._sessions.get(client_id, (None, None))[0]
        outbox = getattr(session, "outbox", None)
        if outbox is not None:
            outbox.discard()
        await self._delete_session(client_id)
        if session is not None and self._sessions.get(client_id, (None,))[0] is not session:
            _unlink(session)

    async def _drop_unreadable(self, session: Session, outbox: Outbox) -> None:
        """A resumed session may belong to another user now (MQTT allows it) or the ACL
        changed: what waits for it is checked against the current user's read rights.

        Every topic is decided first, then the queue is filtered without an await: while an
        ACL check awaits, the broker keeps routing new messages into this same outbox (the
        session counts as connected), so the queue must not be iterated across an await
        (that raised "deque mutated during iteration" and killed the connection before its
        CONNACK, again at every reconnect under load)."""
        decisions: dict[str, bool] = {}
        while True:
            topics = {entry.message.topic for entry in outbox.inflight.values()}
            topics.update(entry.message.topic for entry in outbox.pending)
            undecided = topics.difference(decisions)
            if not undecided:
                break
            for topic in undecided:
                decisions[topic] = await self._topic_filtering(session, topic, Action.RECEIVE)
        # No await from here on.
        store = self.message_store if outbox._persistent() else None
        for packet_id, entry in list(outbox.inflight.items()):
            if not decisions[entry.message.topic]:
                del outbox.inflight[packet_id]
                if store is not None and entry.row is not None:
                    store.queue_done(entry.row)
        if outbox.pending:
            kept: deque[Delivery] = deque()
            for entry in outbox.pending:
                if decisions[entry.message.topic]:
                    kept.append(entry)
                elif store is not None and entry.row is not None:
                    store.queue_done(entry.row)
            outbox.pending = kept
            outbox.pending_bytes = sum(len(entry.message.data) for entry in kept)
        refused = [topic for topic, ok in decisions.items() if not ok]
        if refused:
            self.logger.info(
                "dropped messages queued on %s: %s may not read them",
                refused,
                session.username or "anonymous",
            )

    # -- listeners

    @classmethod
    def _split_bindaddr_port(cls, port_str: str, default_port: int) -> tuple[str | None, int]:
        # amqtt keeps the brackets of "[::1]:1883", which asyncio cannot resolve.
        address, port = super()._split_bindaddr_port(port_str, default_port)
        if address and address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        return address, port

    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: ListenerType,
        address: str | None,
        port: int,
        ssl_context: Any,
    ) -> Any:
        if listener_type == ListenerType.TCP:
            # Our own thin TCP layer (broker/tcp.py): a Protocol feeding a StreamReader, no
            # StreamReaderProtocol/StreamWriter/StreamWriterAdapter per connection.
            return await tcp.serve_tcp(
                partial(self.tcp_link_connected, listener_name), address, port, ssl=ssl_context
            )
        if listener_type != ListenerType.WS:
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
        # Our own thin WebSocket layer (broker/ws.py): websockets' sans-I/O protocol for the
        # handshake and frames, the broker's stream path for the bytes (~9 KB less per idle
        # spectator than websockets.serve). Same rules as before: subprotocol "mqtt"
        # required, no compression, no server pings (MQTT keep-alive finds dead peers), no
        # frame (nor message) larger than the largest MQTT packet allowed, the handshake
        # within the CONNECT timeout, a close handshake bounded (fault 3).
        return await ws.serve_ws(
            partial(self.ws_link_connected, listener_name),
            address,
            port,
            ssl=ssl_context,
            max_size=self.client_limits.max_packet_bytes,
            open_timeout=self.client_limits.connect_timeout,
            close_timeout=WS_CLOSE_TIMEOUT,
        )

    # Plain functions that return _client_connected's coroutine: the connection's task runs it
    # directly, without one more coroutine frame kept for the connection's life.

    def tcp_link_connected(
        self, listener_name: str, stream: asyncio.StreamReader, connection: tcp.TcpConnection
    ) -> Coroutine[Any, Any, None]:
        """A TCP connection was accepted (broker/tcp.py): serve it as amqtt serves a stream."""
        return self._client_connected(
            listener_name, StreamReaderAdapter(stream), TcpWriter(connection)
        )

    def ws_link_connected(
        self, listener_name: str, stream: asyncio.StreamReader, connection: ws.WsConnection
    ) -> Coroutine[Any, Any, None]:
        """A WebSocket connection completed its handshake (broker/ws.py): serve it as amqtt
        serves a stream."""
        return self._client_connected(
            listener_name, StreamReaderAdapter(stream), WsWriter(connection)
        )

    # -- connection lifecycle (faults 1, 2, 4)

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        server = self._servers.get(listener_name)
        if not server:
            msg = f"Invalid listener name '{listener_name}'"
            raise BrokerError(msg)
        if server.semaphore is not None and server.semaphore.locked():
            # Full: drop the oldest connection still silent before its CONNECT (broker/limits.py,
            # PendingSockets) and take its slot once it is released; else CONNACK 3.
            if not limits.pending_sockets(self, listener_name).evict_oldest():
                await self._refuse_over_capacity(server, reader, writer)
                return
            try:
                await asyncio.wait_for(server.acquire_connection(), CLOSE_GRACE * 2)
            except TimeoutError:
                await self._refuse_over_capacity(server, reader, writer)
                return
        else:
            await server.acquire_connection()  # a free slot: does not wait
        # Every packet is checked (size from its fixed header, MQTT 3.1.1 rules) before amqtt
        # parses it; a violation closes the connection (broker/limits.py).
        reader = limits.FramedReader(
            reader,
            self.client_limits.max_packet_bytes,
            writer.get_peer_info(),
            stream=_stream_of(reader),
        )
        # The session runs in this frame, not one more level down: every coroutine frame
        # on this chain is kept for as long as an idle client stays (issue 16).
        try:
            accepted = await self._read_connect(listener_name, reader, writer)
            if accepted is not None:
                handler, incoming = accepted
                try:
                    session = await self._run_session(
                        listener_name, handler, incoming, reader, writer
                    )
                    if session is not None:  # accepted: serve it here (one frame fewer)
                        try:
                            await self._client_message_loop(session, handler)
                        finally:
                            await self._end_session(session, handler)
                except (AMQTTError, MQTTError, NoDataError) as exc:
                    self.logger.warning("Error while handling client session: %s", exc)
                finally:
                    if handler.outbox is not None:
                        handler.outbox.close()
                    handler.end()
        finally:
            reader.release()
            server.release_connection()

    async def _refuse_over_capacity(
        self, server: Server, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        """Answer CONNECT with CONNACK 3 (server unavailable) and close (fault 4)."""
        self.logger.warning(
            "listener '%s' is full (%d connections): refusing %s",
            server.listener_name,
            server.max_connections,
            writer.get_peer_info(),
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ConnectPacket.from_stream(reader), CLOSE_GRACE * 4)
            await ConnackPacket.build(0, SERVER_UNAVAILABLE).to_stream(writer)
        await self._close_writer(writer)

    async def _close_writer(self, writer: WriterAdapter) -> None:
        close = asyncio.ensure_future(writer.close())
        done, _ = await asyncio.wait({close}, timeout=CLOSE_GRACE)
        if not done:
            _abort(writer)
            await asyncio.wait({close}, timeout=CLOSE_GRACE)
        if close.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                close.result()
        else:
            close.cancel()

    async def _read_connect(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> tuple[RallycastProtocolHandler, Session] | None:
        """The connection's CONNECT within the CONNECT timeout, as (handler, session); None
        when it did not come or was bad (the connection is closed)."""
        remote = writer.get_peer_info()
        if remote is None:
            self.logger.warning("Remote info could not be retrieved from peer info")
            await self._close_writer(writer)
            return None
        address, port = remote
        pending = limits.pending_sockets(self, listener_name)
        pending.add(id(writer), partial(_abort, writer))
        try:
            handler, incoming = await asyncio.wait_for(
                RallycastProtocolHandler.init_from_connect(
                    reader, writer, self.plugins_manager, loop=self._loop
                ),
                self.client_limits.connect_timeout,
            )
        except TimeoutError:
            self.logger.info(
                "no CONNECT from %s within %ss",
                format_client_message(address=address, port=port),
                self.client_limits.connect_timeout,
            )
            await self._close_writer(writer)
            return None
        except (AMQTTError, MQTTError, NoDataError) as exc:
            self.logger.warning(
                "bad CONNECT from %s: %s", format_client_message(address=address, port=port), exc
            )
            await self._close_writer(writer)
            return None
        finally:
            pending.discard(id(writer))
        return handler, incoming

    async def _run_session(
        self,
        listener_name: str,
        handler: RallycastProtocolHandler,
        incoming: Session,
        reader: ReaderAdapter,
        writer: WriterAdapter,
    ) -> Session | None:
        """Authenticate, admit and set up the session of an accepted CONNECT; the session
        (connected, CONNACK sent) or None when it was refused (the connection is closed)."""
        if incoming.clean_session and not incoming.client_id:
            incoming.client_id = gen_client_id()

        # Fault 2: check credentials BEFORE touching any existing session of this client id.
        if not await self._authenticate(incoming, self.listeners_config[listener_name]):
            self.logger.warning(
                "refused CONNECT from %s: not authorised (user %r)",
                format_client_message(session=incoming),
                incoming.username,
            )
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await self._close_writer(writer)
            return None
        # Hostile clients: client id ownership, slots reserved for logged-in users.
        refusal = limits.admission_refusal(
            self.client_limits,
            self._servers.get(listener_name),
            incoming,
            self._sessions.get(incoming.client_id or "", (None, None))[0],
        )
        if refusal is not None:
            self.logger.warning(
                "refused CONNECT from %s (user %r): %s",
                format_client_message(session=incoming),
                incoming.username,
                refusal[1],
            )
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, refusal[0]).to_stream(writer)
            await self._close_writer(writer)
            return None
        if isinstance(reader, limits.FramedReader):
            reader.client_id = incoming.client_id

        client_id = incoming.client_id
        if client_id is None:
            msg = "Client ID was not correctly created/set."
            raise BrokerError(msg)
        previous = self._sessions.get(client_id)
        if previous is not None:
            await self._take_over(client_id, previous[1])

        # [MQTT-3.1.2-4, 3.1.2-6]: the NEW connection's flag decides. Clean session 1 discards
        # any previous session; clean session 0 resumes a previous PERSISTENT session only (a
        # clean one ended with its connection), else starts a new one.
        existing = self._sessions.get(client_id, (None, None))[0]
        session = incoming
        session.parent = 0
        if incoming.clean_session or existing is None or existing.clean_session is not False:
            if existing is not None:
                await self._discard_session(client_id)
        else:
            session = existing
            # The new connection brings its own will, keep-alive, credentials and the
            # attributes the auth plugins just set.
            for name in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "will_retain",
                "keep_alive",
                "username",
                "password",
                "is_anonymous",
                "remote_address",
                "remote_port",
                "ssl_object",
            ):
                setattr(session, name, getattr(incoming, name))
            session.attributes.update(incoming.attributes)
            session.parent = 1

        if session.keep_alive > 0:
            delay = self.config.get("timeout-disconnect-delay", 0)
            session.keep_alive = math.ceil(session.keep_alive * 1.5) + (
                delay if isinstance(delay, int) else 0
            )
        if not isinstance(session.transitions, SessionState):  # an offline session amqtt made
            session.transitions = SessionState(session, session.transitions.state)  # type: ignore[assignment]
        if session.transitions.state == "connected":
            session.transitions.disconnect()
        session.transitions.connect()
        # The handler queues this client's PUBLISHes here: into the connection's inbox.
        session.delivered_message_queue = TaggedQueue(handler.inbox, "msg")  # type: ignore[assignment]

        outbox = self.outbox_of(session)
        if session.parent:
            await self._drop_unreadable(session, outbox)
        handler.attach(session, reader, writer)
        handler.outbox = outbox
        self._sessions[client_id] = (session, handler)
        await handler.mqtt_connack_authorize(True)
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
        )
        await handler.start()
        # In-flight messages again (DUP=1), then what waited, then anything new.
        outbox.attach(handler, _transport_of(writer), _ws_of(writer), _drain_of(writer))
        # Fault 1: only this session's own filters (a resumed persistent session).
        # (Its filters from the index's per-client table: no scan of every subscription.)
        own = []
        for a_filter in self._subscriptions.filters_of(client_id):
            held = self._subscriptions.subscription(a_filter, client_id)
            if held is not None and held[0] is session:
                own.append((a_filter, held[1]))
        for subscription in own:
            await self._publish_retained_messages_for_subscription(subscription, session)
        return session

    async def _end_session(self, session: Session, handler: RallycastProtocolHandler) -> None:
        """The client loop ended: close the connection if that has not happened yet (the loop
        can end without a disconnect: an invalid PUBLISH topic), end a clean session."""
        client_id = session.client_id
        if self._sessions.get(client_id, (None, None))[1] is handler:  # type: ignore[arg-type]
            if session.transitions.state == "connected":
                await self._stop_handler(handler)
                session.transitions.disconnect()
            if session.clean_session is not False:
                # [MQTT-3.1.2-6] a clean session lasts as long as its connection.
                await self._discard_session(client_id)  # type: ignore[arg-type]

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """Nothing to do: what waited for the session is in its Outbox (sent on attach)."""

    async def _client_message_loop(
        self, client_session: Session, handler: BrokerProtocolHandler
    ) -> None:
        """One task per connection serves its inbox in arrival order (stock: four tasks)."""
        inbox = getattr(handler, "inbox", None)
        if inbox is None:
            await super()._client_message_loop(client_session, handler)
            return
        waiter = handler._disconnect_waiter
        if waiter is None or waiter.done():
            inbox.put_nowait(("disconnect", waiter))
        else:
            waiter.add_done_callback(inbox.post_disconnect, context=_NO_CONTEXT)
        while True:
            if inbox.empty():
                # Awaiting the inbox's future itself: no coroutine frame kept while idle.
                try:
                    await inbox.waiter()
                except asyncio.CancelledError:
                    self.logger.debug("Client loop cancelled")
                    return
                continue
            kind, item = inbox.get_nowait()
            if kind == "msg":
                if not await self._handle_message_delivery(client_session, handler, _Ready(item)):  # type: ignore[arg-type]
                    return
            elif kind == "sub":
                await self._handle_subscription(client_session, handler, _Ready(item))  # type: ignore[arg-type]
            elif kind == "unsub":
                await self._handle_unsubscription(client_session, handler, _Ready(item))  # type: ignore[arg-type]
            elif kind == "stored":
                # After the message before it: resolved once it is routed and stored.
                await self._broadcast_queue.put({"stored": item})
            elif kind == "disconnect":
                packet = None
                if item is not None and not item.cancelled():
                    packet = item.result()
                await self._handle_disconnect(client_session, handler, _Ready(packet))  # type: ignore[arg-type]
                return
            item = None  # an idle connection keeps no packet alive

    async def _take_over(self, client_id: str, old_handler: BrokerProtocolHandler) -> None:
        """A client id connected again: close the previous connection first [MQTT-3.1.4-2]."""
        if not isinstance(old_handler, RallycastProtocolHandler) or old_handler.ended:
            return
        finished = old_handler.finished()
        self.logger.info("client %s connected again: closing its previous connection", client_id)
        await old_handler.handle_connection_closed()
        await self._stop_handler(old_handler)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(finished), CLOSE_GRACE * 4)

    async def _stop_handler(self, handler: BrokerProtocolHandler) -> None:
        """Stop a handler within CLOSE_GRACE, then abort its connection (fault 3). Its
        session's Outbox is detached first (a persistent session keeps its messages)."""
        outbox = getattr(handler, "outbox", None)
        if outbox is not None:
            outbox.detach(handler)
            handler.outbox = None  # type: ignore[attr-defined]
        writer = handler.writer
        if _transport_of(writer) is None and getattr(handler, "_reader_over", False):
            # The connection is already gone and its reader has ended (a client that dropped):
            # stop() has nothing to wait for, so no task and no timer for it (issue 16).
            with contextlib.suppress(Exception):
                await handler.stop()
            return
        stop = asyncio.ensure_future(handler.stop())
        done, _ = await asyncio.wait({stop}, timeout=CLOSE_GRACE)
        if not done:
            _abort(writer)
            done, _ = await asyncio.wait({stop}, timeout=CLOSE_GRACE)
        if not done:
            stop.cancel()
            return
        with contextlib.suppress(Exception, asyncio.CancelledError):
            stop.result()

    # -- shutdown (fault 3)

    async def shutdown(self) -> None:
        """Stop accepting, close every client at once (bounded), then amqtt's own shutdown."""
        for server in self._servers.values():
            instance = server.instance
            if isinstance(instance, asyncio.Server):
                instance.close()
            elif instance is not None and hasattr(instance, "server"):
                instance.server.close()  # websockets: the listening socket only
        client_ids = list(self._sessions)
        closing = [asyncio.ensure_future(self._cleanup_session(cid)) for cid in client_ids]
        if closing:
            _done, pending = await asyncio.wait(closing, timeout=CLOSE_GRACE * 3)
            for task in pending:
                task.cancel()
        # Whatever still holds a socket (handshakes in progress, refusals) is aborted.
        for server in self._servers.values():
            instance = server.instance
            for connection in list(getattr(instance, "handlers", ()) or ()):
                if connection.transport is not None:
                    connection.transport.abort()
        await super().shutdown()

    # -- delivery (faults 1 and 5, and the cheap path)

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        app_message = wait_deliver.result() if wait_deliver.done() else None
        limit = self.max_payload_bytes
        if limit and app_message is not None and app_message.data is not None:
            if len(app_message.data) > limit:
                # Not forwarded, not retained; the client stays connected (the plugins never
                # see a payload before the broadcast, so this check lives here).
                _SERVER_LOG.warning(
                    "dropped a %d-byte publish on %r from %s (limit %d bytes)",
                    len(app_message.data),
                    app_message.topic,
                    client_session.client_id,
                    limit,
                )
                return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=app_message
        )
        if app_message is None:
            return True
        topic = app_message.topic
        if not topic or "#" in topic or "+" in topic:
            # FramedReader closes such a connection before this point; kept as a safety net.
            self.logger.warning(
                "%s sent PUBLISH to invalid topic %r: closing connection",
                client_session.client_id,
                topic,
            )
            return False
        if topic.startswith("$"):
            self.logger.info("%s may not publish to %s", client_session.client_id, topic)
            return True
        if app_message.publish_packet and app_message.publish_packet.retain_flag:
            if limits.is_command_topic(topic):
                # A retained command would be applied again after every restart: dropped
                # (the QoS 1 PUBACK is already sent; the sender's resend without RETAIN works).
                limits.log_retained_command_once(client_session, topic)
                return True
        if not await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
            self.logger.info("%s not allowed to publish to %s", client_session.client_id, topic)
            return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=client_session.client_id, message=app_message
        )
        # Unlike stock amqtt, keep the published QoS: delivered QoS = min(published, granted).
        await self._broadcast_queue.put(
            {
                "session": client_session,
                "topic": topic,
                "data": app_message.data,
                "published_qos": app_message.qos,
            }
        )
        if app_message.publish_packet and app_message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, app_message.data, app_message.qos)
        return True

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        broadcast = await self._broadcast_queue.get()
        stored = broadcast.get("stored")
        if stored is not None:
            self._resolve_when_stored(stored)
            return
        topic: str = broadcast["topic"]
        data = broadcast["data"]
        if topic is None or data is None:
            return
        forced_qos = broadcast.get("qos")
        published_qos = broadcast.get("published_qos")
        if type(topic) is str:
            # Interned: each outbox's latest RECEIVE decision is then found by identity.
            topic = sys.intern(topic)
        message = OutgoingMessage(topic, data)
        index = self._subscriptions
        matching = [index[a_filter] for a_filter in index.matching(topic)]
        for subscribers in matching:
            for target, granted_qos in tuple(subscribers):
                if forced_qos is not None:
                    qos = forced_qos
                elif published_qos is not None:
                    qos = published_qos if published_qos < granted_qos else granted_qos
                else:
                    qos = granted_qos
                outbox: Outbox | None = getattr(target, "outbox", None)
                # An attached outbox means connected (attach follows connect, detach comes
                # before disconnect): the session's state is read only for the others.
                if outbox is None or outbox.handler is None:
                    if target.transitions.state != "connected":
                        # Not connected: keep QoS 1/2 messages for a persistent, named session
                        # [MQTT-3.1.2-4], in its outbox (bounded; written to the store).
                        if target.clean_session is not False or qos == QOS_0 or target.is_anonymous:
                            continue
                        if self._sessions.get(target.client_id, _NO_SESSION)[0] is not target:
                            # Ended for good while this fan-out awaited an ACL check (a clean
                            # CONNECT of its client id): nothing may be queued or stored for
                            # it [MQTT-3.1.2-6].
                            continue
                        outbox = self.outbox_of(target)
                    elif outbox is None:
                        continue
                if outbox.last_topic is topic:
                    allowed = outbox.last_allowed
                else:
                    allowed = outbox.receive_allowed.get(topic)
                    if allowed is None:
                        allowed = await self._topic_filtering(target, topic, Action.RECEIVE)
                        if self._sessions.get(target.client_id, _NO_SESSION)[0] is not target:
                            continue  # it ended for good meanwhile (as above)
                        if len(outbox.receive_allowed) > 1024:
                            outbox.receive_allowed.clear()
                        outbox.receive_allowed[topic] = allowed
                    outbox.last_topic, outbox.last_allowed = topic, allowed
                if allowed:
                    outbox.offer(message, qos)

    def _resolve_when_stored(self, stored: asyncio.Future[None]) -> None:
        """Resolve ``stored`` (a publisher's PUBACK waits on it) once the store holds every
        write made so far; at once without a store or with nothing to write."""

        def resolve() -> None:
            if not stored.done():
                stored.set_result(None)

        if self.message_store is None:
            resolve()
        else:
            self.message_store.when_stored(resolve)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        """Retained messages for one of ``session``'s own filters, each one ACL-checked."""
        a_filter = subscription[0]
        held = self._subscriptions.subscription(a_filter, session.client_id)
        if held is None or held[0] is not session:  # not this session's filter (fault 1)
            return
        granted = held[1]
        outbox: Outbox | None = getattr(session, "outbox", None)
        if outbox is None or session.transitions.state != "connected":
            return
        for retained in list(self._retained_messages.values()):
            if not self._matches(retained.topic, a_filter):
                continue
            if not await self._topic_filtering(session, retained.topic, Action.RECEIVE):
                self.logger.info(
                    "%s not allowed to receive retained %s", session.client_id, retained.topic
                )
                continue
            qos = min(granted, retained.qos if retained.qos is not None else granted)
            outbox.offer(OutgoingMessage(retained.topic, retained.data, retain=True), qos)

    def _client_overflowed(self, outbox: Outbox) -> None:
        """A connected client let its queue fill up: it is not reading. Disconnect it (a
        persistent session keeps what waits, within its bounds)."""
        self.slow_clients_disconnected += 1
        self.logger.warning(
            "client %s is not reading: %d messages queued (max_queued_messages): disconnecting it",
            outbox.session.client_id,
            len(outbox.pending),
        )
        handler = outbox.handler
        outbox.detach()
        if handler is not None:
            _abort(handler.writer)
