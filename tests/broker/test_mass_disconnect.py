"""A mass disconnect (issue 16): a venue's Wi-Fi drops every spectator at once.

What must hold, whatever the speed: every session and subscription the dropped clients held
is gone (persistent sessions stay, with their subscriptions and what is queued for them),
every will is published, and the clients still connected get every message. How fast the
broker is idle again is measured by ``rallycast bench broker`` (the mass disconnect phase,
docs/benchmarks.md), never asserted here.

And the kind of fault behind the slowness: amqtt removed a session's subscriptions by looking
at every subscriber of every filter (and checked a new subscription against every subscriber
of its filter), so n clients dropping cost O(n²). The tests below count the subscribers a
subscribe, an unsubscribe and a session's end look at: none but the client's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from amqtt.session import Session
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import MachineError

from broker.hardening import (
    LeanSession,
    RallycastBroker,
    SessionState,
    _transport_of,
    _unlink,
)
from broker.limits import FilterIndex, Subscribers
from broker.packets import (
    PINGREQ,
    encode_publish,
    encode_string,
    encode_varint,
    subscribe_packet,
)
from broker.server import start_broker
from rallycast.bench.launch import SERVICE_USER
from rallycast.bench.wire import MqttStream, ws_frame, ws_handshake
from scorer.config import load_settings
from tests.broker.test_hostile import amqtt_matches
from tests.support.endpoints import write_argon2_users

SHARED = "clubs/alpha/game"  # every spectator's snapshot topic
PERSISTENT = "clubs/beta/game"
WILL_TOPIC = "clubs/alpha/game/cmd"
WAIT = 30.0  # seconds any single wait below may take on a loaded machine


def connect_with_will(
    client_id: str,
    user: str | None = None,
    password: str | None = None,
    *,
    clean: bool = True,
    will: tuple[str, bytes, int] | None = None,
) -> bytes:
    """MQTT 3.1.1 CONNECT (§3.1) with an optional will (topic, message, QoS)."""
    flags = (0x02 if clean else 0) | (0x80 if user else 0) | (0x40 if password else 0)
    payload = encode_string(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        payload += encode_string(topic) + len(message).to_bytes(2, "big") + message
    if user:
        payload += encode_string(user)
    if password:
        payload += encode_string(password)
    body = encode_string("MQTT") + bytes((4, flags)) + (60).to_bytes(2, "big") + payload
    return b"\x10" + encode_varint(len(body)) + body


class Client(asyncio.Protocol):
    """A raw MQTT client over TCP, or over WebSocket with ``ws_host``: CONNECT, SUBSCRIBE to
    ``filters`` (QoS ``qos``), records each PUBLISH as (topic, payload, retain) and
    acknowledges QoS 1."""

    def __init__(
        self,
        connect: bytes,
        filters: tuple[str, ...] = (),
        qos: int = 0,
        ws_host: tuple[str, int] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.connect, self.filters, self.qos, self.ws_host = connect, filters, qos, ws_host
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.received: list[tuple[str, bytes, bool]] = []
        self.changed = asyncio.Event()
        self._pending_subacks = len(filters)
        self._handshake = b"" if ws_host else None
        self._frames = b""
        self._mqtt = MqttStream(self._on_packet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.ws_host is not None:
            transport.write(ws_handshake(*self.ws_host))  # type: ignore[attr-defined]
        else:
            self.send(self.connect)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before SUBACK ({exc})"))

    def send(self, packet: bytes) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(packet, mask=b"\x01\x02\x03\x04") if self.ws_host else packet)

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            self._handshake += data
            end = self._handshake.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self._handshake.startswith(b"HTTP/1.1 101"), self._handshake
            data, self._handshake = self._handshake[end + 4 :], None
            self.send(self.connect)
        if self.ws_host is None:
            self._mqtt.feed(data)
            return
        data = self._frames + data
        while len(data) >= 2:  # the server's frames: unmasked, small
            size, offset = data[1] & 0x7F, 2
            if size == 126:
                if len(data) < 4:
                    break
                size, offset = int.from_bytes(data[2:4], "big"), 4
            if len(data) < offset + size:
                break
            self.frame_received(data[0] & 0x0F, data[offset : offset + size])
            data = data[offset + size :]
        self._frames = data

    def frame_received(self, opcode: int, body: bytes) -> None:
        """One WebSocket frame from the server; its body goes to the MQTT stream."""
        self._mqtt.feed(body)

    def _on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2:  # CONNACK
            if body[1] != 0:
                self.ready.set_exception(PermissionError(f"CONNACK {body[1]}"))
            elif not self.filters:
                self.ready.set_result(None)
            for number, a_filter in enumerate(self.filters, 1):
                self.send(subscribe_packet(a_filter, self.qos, number))
        elif kind == 9:  # SUBACK
            assert body[-1] != 0x80, f"SUBSCRIBE refused: {body!r}"
            self._pending_subacks -= 1
            if self._pending_subacks == 0 and not self.ready.done():
                self.ready.set_result(None)
        elif kind == 3:  # PUBLISH
            length = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + length].decode()
            start = 2 + length
            if first & 0x06:
                self.send(b"\x40\x02" + body[start : start + 2])  # PUBACK
                start += 2
            self.received.append((topic, bytes(body[start:]), bool(first & 0x01)))
            self.changed.set()

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _retain in self.received if t == topic]

    async def wait_for(self, count: int, topic: str) -> list[bytes]:
        """The payloads received on ``topic`` once there are ``count`` (or WAIT is over)."""
        deadline = time.monotonic() + WAIT
        while len(self.payloads(topic)) < count and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())
        return self.payloads(topic)


@contextlib.asynccontextmanager
async def embedded(tmp_path: Path, users) -> AsyncIterator:
    data_dir = tmp_path / "broker"
    write_argon2_users(data_dir, users)
    settings = load_settings(
        env={},
        overrides={
            "data_dir": str(data_dir),
            "bind": "127.0.0.1",
            "mqtt_port": 0,
            "ws_port": 0,
            "max_connections": 2000,
            "log_level": "WARNING",
        },
    )
    running = await start_broker(settings)
    try:
        yield running
    finally:
        await running.stop()


async def open_all(running, clients: list[Client], websocket: bool = False) -> None:
    """Connect ``clients`` in batches of 50 (the listen backlog) and wait for their SUBACKs."""
    loop = asyncio.get_running_loop()
    port = running.ws_port if websocket else running.mqtt_port
    for start in range(0, len(clients), 50):
        batch = clients[start : start + 50]
        await asyncio.wait_for(
            asyncio.gather(
                *(loop.create_connection(lambda c=c: c, "127.0.0.1", port) for c in batch)
            ),
            WAIT,
        )
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in batch)), WAIT)


async def until(condition, what: str) -> None:
    """Wait (bounded) until the broker's state says ``condition()``."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_after_hundreds_of_clients_abort_at_once_their_sessions_and_subscriptions_are_gone_and_the_rest_is_served(  # noqa: E501
    tmp_path, broker_test_users
):
    users = broker_test_users.passwords
    service = SERVICE_USER
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        host = ("127.0.0.1", running.ws_port)
        # Who stays: the service (reads every will and both snapshot topics) and a spectator.
        live = Client(
            connect_with_will("live-service", service, users[service]),
            ("clubs/+/game/cmd", SHARED, PERSISTENT),
            qos=1,
        )
        spectator = Client(connect_with_will("live-spectator"), (SHARED,))
        publisher = Client(connect_with_will("publisher", service, users[service]))
        await open_all(running, [live, spectator, publisher])

        # Who drops: spectators on the shared topic (TCP, some with a topic of their own,
        # and WebSocket), club devices with a will, persistent sessions.
        tcp = [
            Client(
                connect_with_will(f"tcp-{i}"),
                (SHARED, f"clubs/own{i}/game") if i % 2 else (SHARED,),
            )
            for i in range(200)
        ]
        web = [Client(connect_with_will(f"ws-{i}"), (SHARED,), ws_host=host) for i in range(60)]
        wills = [
            Client(
                connect_with_will(
                    f"device-{i}", "alpha", users["alpha"], will=(WILL_TOPIC, b"will-%d" % i, 1)
                ),
                ("clubs/alpha/game/reply",),
            )
            for i in range(30)
        ]
        kept = [
            Client(
                connect_with_will(f"keep-{i}", "beta", users["beta"], clean=False),
                (PERSISTENT,),
                qos=1,
            )
            for i in range(10)
        ]
        # One login per user first: the others then pass without argon2 (broker/acl.py),
        # not through the per-address login throttle.
        await open_all(running, wills[:1])
        await open_all(running, kept[:1])
        await open_all(running, tcp + wills[1:] + kept[1:])
        await open_all(running, web, websocket=True)
        dropped = tcp + web + wills
        before = set(broker.sessions)
        assert len(before) == 3 + len(dropped) + len(kept)
        assert len(broker.subscriptions[SHARED]) == 2 + len(tcp) + len(web)

        for number, client in enumerate(dropped + kept):
            if number % 2:  # half reset (RST: SO_LINGER 0), half close (FIN)
                sock = client.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abort()
        kept_ids = {f"keep-{i}" for i in range(len(kept))}
        await until(
            lambda: (
                set(broker.sessions) == {"live-service", "live-spectator", "publisher"} | kept_ids
            ),
            "only the live clients and the persistent sessions are left",
        )
        await until(
            lambda: all(
                broker.sessions[k][0].transitions.state == "disconnected" for k in kept_ids
            ),
            "the persistent sessions are disconnected",
        )

        index = broker.subscriptions
        holders = {f: sorted(s.client_id for s, _qos in index[f]) for f in index}
        dropped_ids = {f"tcp-{i}" for i in range(200)} | {f"ws-{i}" for i in range(60)}
        dropped_ids |= {f"device-{i}" for i in range(30)}
        assert not {f: ids for f, ids in holders.items() if dropped_ids & set(ids)}
        assert holders[SHARED] == ["live-service", "live-spectator"]
        assert not any(f.startswith("clubs/own") for f in index), "a filter outlived its clients"
        assert "clubs/alpha/game/reply" not in index
        assert holders[PERSISTENT] == sorted({"live-service"} | kept_ids)  # they keep theirs

        # Every will, once each [MQTT-3.1.2-8].
        got = await live.wait_for(30, WILL_TOPIC)
        assert sorted(got) == sorted(b"will-%d" % i for i in range(30))

        # The clients still here get every message; the persistent sessions' queues fill.
        messages = [b"m%03d" % n for n in range(25)]
        for number, payload in enumerate(messages, 1):
            publisher.send(
                encode_publish(SHARED.encode(), payload, qos=1, retain=False, packet_id=number)
            )
            publisher.send(
                encode_publish(
                    PERSISTENT.encode(), payload, qos=1, retain=False, packet_id=100 + number
                )
            )
        assert await live.wait_for(25, SHARED) == messages
        assert await live.wait_for(25, PERSISTENT) == messages
        assert await spectator.wait_for(25, SHARED) == messages
        await until(
            lambda: all(broker.queued_messages(k) == 25 for k in kept_ids),
            "each persistent session has the 25 messages queued",
        )

        # A persistent session comes back: what waited, in order, on its own subscription.
        back = Client(connect_with_will("keep-0", "beta", users["beta"], clean=False))
        await open_all(running, [back])
        assert await back.wait_for(25, PERSISTENT) == messages
        back.send(PINGREQ)
        for client in (live, spectator, publisher, back):
            client.transport.abort()


# -- a dropped client's objects die by reference counting, not by a full GC pass

DISCONNECT = b"\xe0\x00"


def broker_side_refs(broker: RallycastBroker, client_id: str, persistent: bool) -> dict:
    """Weak references to what the broker holds for ``client_id``'s connection: its session,
    protocol handler, packet reader, stream and socket transport (none for a persistent
    session: it stays, with the handler amqtt keeps next to it, which holds the rest). A
    plain function: the caller's frame keeps no strong reference."""
    session, handler = broker.sessions[client_id]
    transport = _transport_of(handler.writer)
    assert transport is not None
    if persistent:
        return {}
    refs = {"transport": weakref.ref(transport), "session": weakref.ref(session)}
    refs.update(handler=weakref.ref(handler), reader=weakref.ref(handler.reader))
    if handler.reader.stream is not None:
        refs["stream"] = weakref.ref(handler.reader.stream)
    return refs


def alive(refs: dict) -> list[str]:
    return [f"{client}: {name} ({type(ref()).__name__})" for client, named in refs.items()
            for name, ref in named.items() if ref() is not None]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_dropped_client_s_session_handler_stream_and_socket_are_freed_without_a_gc_pass(
    tmp_path, broker_test_users
):
    """Each way a client can leave (RST, FIN, DISCONNECT; TCP and WebSocket; with a will; a
    persistent session) leaves no reference cycle behind: with the cyclic GC off, the
    broker's objects for that connection are gone once the connection has ended. (A cycle
    per dropped client made a mass disconnect end in a full GC pass over every object of
    the broker, ~0.2-0.8 s at a few thousand clients, issue 16.)"""
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        host = ("127.0.0.1", running.ws_port)
        live = Client(connect_with_will("live-service", SERVICE_USER, users[SERVICE_USER]),
                      (WILL_TOPIC,), qos=1)  # fmt: skip
        await open_all(running, [live])
        ways = {
            "tcp-reset": Client(connect_with_will("tcp-reset"), (SHARED,)),
            "tcp-fin": Client(connect_with_will("tcp-fin"), (SHARED, "clubs/own/game")),
            "tcp-disconnect": Client(connect_with_will("tcp-disconnect"), (SHARED,)),
            "tcp-will": Client(
                connect_with_will(
                    "tcp-will", "alpha", users["alpha"], will=(WILL_TOPIC, b"gone", 1)
                ),
                ("clubs/alpha/game/reply",),
            ),  # fmt: skip
            "tcp-persistent": Client(
                connect_with_will("tcp-persistent", "beta", users["beta"], clean=False),
                (PERSISTENT,),
                qos=1,
            ),
        }
        web = {
            "ws-reset": Client(connect_with_will("ws-reset"), (SHARED,), ws_host=host),
            "ws-disconnect": Client(connect_with_will("ws-disconnect"), (SHARED,), ws_host=host),
        }
        await open_all(running, list(ways.values()))
        await open_all(running, list(web.values()), websocket=True)
        ways.update(web)
        refs = {cid: broker_side_refs(broker, cid, "persistent" in cid) for cid in ways}

        gc.collect()
        gc.disable()
        try:
            for cid, client in ways.items():
                if cid.endswith("-disconnect"):
                    client.send(DISCONNECT)
                    continue
                if cid.endswith("-fin"):
                    client.transport.close()
                    continue
                sock = client.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.transport.abort()
            await until(
                lambda: set(broker.sessions) == {"live-service", "tcp-persistent"},
                "the clean sessions are gone",
            )
            assert await live.wait_for(1, WILL_TOPIC) == [b"gone"]
            with contextlib.suppress(AssertionError):  # said below, with what is left
                await until(lambda: not alive(refs), "the connections' tasks end")
            assert not alive(refs), "kept only by a reference cycle"
            session = broker.sessions["tcp-persistent"][0]
            assert session.transitions.state == "disconnected"
            assert [s.client_id for s, _ in broker.subscriptions[PERSISTENT]] == ["tcp-persistent"]
        finally:
            gc.enable()
        for client in ways.values():
            if client.transport is not None:
                client.transport.abort()
        live.transport.abort()


def test_an_ended_session_s_state_still_answers_once_unlinked():
    """A session that ended for good drops its state's back-reference (the cycle above);
    whoever still holds the session (a plugin, a delivery in progress) can still read and
    move its state."""
    session = session_named("gone", LeanSession)
    session.transitions = SessionState(session)
    session.transitions.connect()
    session.outbox = object()
    _unlink(session)
    assert session.outbox is None
    assert session.transitions.state == "connected"
    session.transitions.disconnect()
    assert session.transitions.is_disconnected()
    session.transitions.connect()
    with pytest.raises(MachineError):
        session.transitions.connect()


# -- the kind: a subscribe, an unsubscribe, a session's end look only at the client's own


class CountedSession(Session):
    """A Session that counts how often its client id is read."""

    reads = 0

    @property  # type: ignore[override]
    def client_id(self) -> str | None:
        CountedSession.reads += 1
        return self._counted_id

    @client_id.setter
    def client_id(self, value: str | None) -> None:
        self._counted_id = value


NO_PLUGINS = {"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}}


def session_named(client_id: str, cls: type[Session] = Session) -> Session:
    session = cls()
    session.client_id = client_id
    return session


@pytest.mark.asyncio
async def test_subscribing_unsubscribing_and_ending_a_session_look_at_no_other_subscriber():
    broker = RallycastBroker(NO_PLUGINS)
    others = [session_named(f"other-{i}", CountedSession) for i in range(500)]
    for session in others:
        assert await broker.add_subscription((SHARED, 0), session) == 0
        await broker.add_subscription((f"clubs/own{session.client_id}/game", 0), session)
    victim = session_named("victim")

    CountedSession.reads = 0
    assert await broker.add_subscription((SHARED, 1), victim) == 1
    assert await broker.add_subscription(("clubs/+/game/events", 0), victim) == 0
    assert CountedSession.reads == 0, "a SUBSCRIBE read other clients' ids"
    assert broker._del_subscription("clubs/+/game/events", victim) == 1
    assert broker._del_subscription("clubs/+/game/events", victim) == 0
    assert CountedSession.reads == 0, "an UNSUBSCRIBE read other clients' ids"
    await broker._del_all_subscriptions(victim)
    assert CountedSession.reads == 0, "a session's end read other clients' ids"

    assert [s.client_id for s, _ in broker.subscriptions[SHARED]] == [s.client_id for s in others]
    assert broker.subscriptions.filters_of("victim") == []
    assert "clubs/+/game/events" not in broker.subscriptions


@pytest.mark.asyncio
async def test_a_client_id_subscribed_again_has_its_subscription_replaced_in_place():
    broker = RallycastBroker(NO_PLUGINS)
    first, other, again = session_named("c"), session_named("d"), session_named("c")
    assert await broker.add_subscription((SHARED, 0), first) == 0
    assert await broker.add_subscription((SHARED, 0), other) == 0
    assert await broker.add_subscription((SHARED, 1), again) == 1  # [MQTT-3.8.4-3]
    assert list(broker.subscriptions[SHARED]) == [(again, 1), (other, 0)]
    for bad in ("clubs/#/game", "clubs/a+/game", "#/x"):
        assert await broker.add_subscription((bad, 0), first) == 0x80  # [MQTT-4.7.1-2, -3]
        assert bad not in broker.subscriptions


# -- FilterIndex against a plain model, over any sequence of changes

FILTERS = st.sampled_from(["a/b", "a/+", "a/#", "#", "+/b", "c", "c/d/e", "$SYS/x"])
CLIENTS = st.sampled_from(["p", "q", "r", "s"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), FILTERS, CLIENTS, st.integers(0, 2)),
        st.tuples(st.just("unsubscribe"), FILTERS, CLIENTS),
        st.tuples(st.just("unsubscribe_all"), CLIENTS),
    ),
    max_size=40,
)
TOPICS = st.sampled_from(["a/b", "a", "c", "c/d/e", "x/b", "$SYS/x"])
SESSIONS = {c: session_named(c) for c in "pqrs"}


@settings(max_examples=300, deadline=None)
@given(ops=OPS, topic=TOPICS)
def test_filter_index_keeps_each_client_s_filters_in_step_with_the_subscribers(ops, topic):
    index = FilterIndex()
    model: dict[str, dict[str, int]] = {}  # filter -> client id -> qos, in order
    sessions = SESSIONS
    for op in ops:
        if op[0] == "subscribe":
            _, a_filter, client, qos = op
            added = index.subscribe(a_filter, sessions[client], qos)
            assert added == (client not in model.get(a_filter, {}))
            model.setdefault(a_filter, {})[client] = qos  # replaced in place [MQTT-3.8.4-3]
        elif op[0] == "unsubscribe":
            _, a_filter, client = op
            removed = index.unsubscribe(a_filter, client)
            assert removed == (client in model.get(a_filter, {}))
            model.get(a_filter, {}).pop(client, None)
        else:
            _, client = op
            held = [f for f, subs in model.items() if client in subs]
            assert sorted(index.unsubscribe_all(client)) == sorted(held)
            for a_filter in held:
                del model[a_filter][client]
        model = {f: subs for f, subs in model.items() if subs}  # a filter goes with its last

        assert sorted(index) == sorted(model)
        for a_filter, subs in model.items():
            assert isinstance(index[a_filter], Subscribers)
            assert [(s.client_id, q) for s, q in index[a_filter]] == list(subs.items())
        for client in "pqrs":
            assert sorted(index.filters_of(client)) == sorted(
                f for f, subs in model.items() if client in subs
            )
    assert sorted(index.matching(topic)) == sorted(f for f in model if amqtt_matches(topic, f))
