"""Attacks on a session's end while a fan-out is under way (issue 16's lean connections).

The fan-out (``RallycastBroker._run_broadcast``) walks a snapshot of a filter's subscribers
and awaits the RECEIVE ACL check of each one it has no cached decision for; anything can
happen to a subscriber it has not reached yet. A persistent session that a clean CONNECT of
the same client id ends for good [MQTT-3.1.2-6] must not get the message afterwards: not in a
new outbox, not as a row in the store (which a restart or its next persistent CONNECT would
deliver).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import pytest
from amqtt.contexts import Action

from broker.hardening import RallycastBroker
from broker.packets import encode_string, encode_varint, subscribe_packet
from rallycast.bench.launch import SERVICE_USER
from rallycast.bench.wire import ws_frame
from tests.broker.test_mass_disconnect import (
    WAIT,
    Client,
    connect_with_will,
    embedded,
    open_all,
    until,
)

TOPIC = "clubs/beta/game"


def hold_receive_check(
    broker: RallycastBroker, held: object
) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the broker's RECEIVE ACL check for ``held`` (a session) on TOPIC wait: the first
    event is set when a fan-out reaches it, and the check goes on once the second is set."""
    reached, release = asyncio.Event(), asyncio.Event()
    check = broker._topic_filtering

    async def slow_check(session, topic, action):
        if session is held and action == Action.RECEIVE and topic == TOPIC:
            reached.set()
            await release.wait()
        return await check(session, topic, action)

    broker._topic_filtering = slow_check  # type: ignore[method-assign]
    return reached, release


def device(users: dict[str, str], clean: bool) -> bytes:
    """The CONNECT of club user "beta" as client id "device"."""
    return connect_with_will("device", "beta", users["beta"], clean=clean)


async def hold_fan_out(running, held: str, payload: bytes) -> asyncio.Event:
    """Publish ``payload`` (QoS 1) on TOPIC and return once the fan-out waits on the RECEIVE
    check of client id ``held``'s session; setting the returned event lets it go on."""
    broker: RallycastBroker = running.broker
    reached, release = hold_receive_check(broker, broker._sessions[held][0])
    await broker.internal_message_broadcast(TOPIC, payload, 1)
    await asyncio.wait_for(reached.wait(), WAIT)
    return release


async def gate_and_device(
    running, users: dict[str, str], payload: bytes
) -> tuple[Client, Client, asyncio.Event]:
    """Clients "gate", then a persistent "device" (QoS 1), subscribe to TOPIC; ``payload`` is
    published, and the fan-out waits on the RECEIVE check of "gate", which it reaches first
    (subscription order). Returns both clients and the event that lets the fan-out go on."""
    gate = Client(connect_with_will("gate"), (TOPIC,))
    await open_all(running, [gate])
    persistent = Client(device(users, clean=False), (TOPIC,), qos=1)
    await open_all(running, [persistent])
    return gate, persistent, await hold_fan_out(running, "gate", payload)


def stored_rows(running, client_id: str) -> int:
    """How many messages the broker's store holds for ``client_id``."""
    with sqlite3.connect(f"{running.settings.data_dir}/broker.db") as db:
        query = "SELECT COUNT(*) FROM queued WHERE client_id = ?"
        return db.execute(query, (client_id,)).fetchone()[0]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_persistent_session_ended_by_a_clean_connect_mid_fan_out_gets_no_message(
    tmp_path, broker_test_users
):
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        gate, _persistent, release = await gate_and_device(running, users, b"before-clean")

        # Same client id, clean session: the persistent session ends for good.
        fresh = Client(device(users, clean=True))
        await open_all(running, [fresh])
        assert broker._sessions["device"][0].clean_session
        release.set()
        await asyncio.wait_for(gate.wait_for(1, TOPIC), WAIT)
        assert gate.payloads(TOPIC) == [b"before-clean"]
        await asyncio.sleep(0.3)  # the store writes behind

        # The message was published while the old session still held the filter; the new,
        # clean session never subscribed: it must not be queued or stored for "device".
        session = broker._sessions["device"][0]
        outbox = getattr(session, "outbox", None)
        assert outbox is None or (not outbox.pending and not outbox.inflight)
        assert fresh.payloads(TOPIC) == []
        assert stored_rows(running, "device") == 0, "a row for the ended session is in the store"
        fresh.transport.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_persistent_session_taken_over_by_its_own_reconnect_mid_fan_out_gets_the_message(
    tmp_path, broker_test_users
):
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        _gate, first, release = await gate_and_device(running, users, b"during-take-over")
        second = Client(device(users, clean=False))
        await open_all(running, [second])
        release.set()
        assert await second.wait_for(1, TOPIC) == [b"during-take-over"]
        assert first.payloads(TOPIC) == []
        second.transport.close()


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_persistent_subscriber_dropping_and_reconnecting_while_qos1_flows_gets_every_message(
    tmp_path, broker_test_users
):
    users = broker_test_users.passwords
    count = 400
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        connect = device(users, clean=False)
        clients = [Client(connect, (TOPIC,), qos=1)]
        await open_all(running, clients)

        def received() -> set[bytes]:  # every connection acknowledges what it gets
            return {payload for client in clients for payload in client.payloads(TOPIC)}

        async def publish() -> None:
            for number in range(count):
                await broker.internal_message_broadcast(TOPIC, b"m%d" % number, 1)
                await asyncio.sleep(0.005)

        publisher = asyncio.ensure_future(publish())
        drops = 0
        while not publisher.done() and drops < 60:
            await asyncio.sleep(0.02)
            if drops % 2:
                clients[-1].transport.abort()  # RST: the broker learns at once
            # The same client id again, persistent: half the time the old connection is still
            # open (a take-over), half the time it is gone.
            clients.append(Client(connect))
            await open_all(running, clients[-1:])
            drops += 1
        await publisher
        deadline = asyncio.get_running_loop().time() + WAIT
        while len(received()) < count:
            assert asyncio.get_running_loop().time() < deadline, (
                f"missing {sorted(b'm%d' % n for n in range(count) if b'm%d' % n not in received())}"
                f" after {drops} reconnects"
            )
            await asyncio.sleep(0.05)
        assert drops >= 20
        clients[-1].transport.close()


@pytest.mark.asyncio
@pytest.mark.timeout(90)
@pytest.mark.parametrize("websocket", [False, True], ids=["tcp", "ws"])
@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
async def test_after_a_take_over_no_qos0_message_goes_to_the_old_connection(
    tmp_path, broker_test_users, websocket, clean
):
    """A spectator's page reloads (same client id) while snapshots flow: what is published
    once the new connection has its CONNACK/SUBACK never goes to the old one [MQTT-3.1.4-2],
    and the new one gets every message published after its SUBACK."""
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        host = ("127.0.0.1", running.ws_port) if websocket else None
        connect = connect_with_will("page", "beta", users["beta"], clean=clean)
        clients = [Client(connect, (TOPIC,), ws_host=host)]
        await open_all(running, clients, websocket)
        published = 0
        stop = False

        async def publish() -> None:
            nonlocal published
            while not stop:
                await broker.internal_message_broadcast(TOPIC, b"%d" % published, 0)
                published += 1
                await asyncio.sleep(0.002)

        publisher = asyncio.ensure_future(publish())
        ready_at: list[int] = []  # per connection: the first number published after its SUBACK
        ready_at.append(published)
        for _ in range(15):
            await asyncio.sleep(0.03)
            clients.append(Client(connect, (TOPIC,), ws_host=host))
            await open_all(running, clients[-1:], websocket)
            ready_at.append(published)
        await asyncio.sleep(0.1)
        stop = True
        await publisher
        last = published
        wanted = set(range(ready_at[-1], last))
        # Fanned out to the newest connection, so to all of them; if not within WAIT, the
        # asserts below say what is missing.
        with contextlib.suppress(AssertionError):
            await until(
                lambda: wanted <= {int(p) for p in clients[-1].payloads(TOPIC)}, "the fan-out"
            )
        for index, client in enumerate(clients[:-1]):
            late = [int(p) for p in client.payloads(TOPIC) if int(p) >= ready_at[index + 1]]
            assert late == [], f"connection {index} got {late} after its successor's SUBACK"
        newest = {int(p) for p in clients[-1].payloads(TOPIC)}
        assert not wanted - newest, f"the newest connection missed {sorted(wanted - newest)}"
        clients[-1].transport.close()


@pytest.mark.asyncio
@pytest.mark.timeout(90)
@pytest.mark.parametrize("websocket", [False, True], ids=["tcp", "ws"])
async def test_a_spectator_that_stops_reading_qos0_is_disconnected_and_its_buffer_stays_bounded(
    tmp_path, broker_test_users, websocket
):
    """The QoS 0 fast path writes straight to the transport: it must still stop at the
    transport's high-water mark and let the bounded queue disconnect a client that does not
    read (fault 5), over TCP and over WebSocket."""
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        host = ("127.0.0.1", running.ws_port) if websocket else None
        healthy = Client(connect_with_will("healthy"), (TOPIC,), ws_host=host)
        stalled = Client(connect_with_will("stalled"), (TOPIC,), ws_host=host)
        await open_all(running, [healthy, stalled], websocket)
        stalled.transport.pause_reading()
        session = broker._sessions["stalled"][0]
        outbox = session.outbox
        transport = outbox._transport
        payload = b"x" * 8192
        largest = 0
        for number in range(4000):
            await broker.internal_message_broadcast(TOPIC, payload + b"%d" % number, 0)
            if number % 50 == 49:
                await until(lambda: not broker._broadcast_queue.qsize(), "fanned out")
                largest = max(largest, transport.get_write_buffer_size())
                if broker.slow_clients_disconnected:
                    break
        assert broker.slow_clients_disconnected == 1, (largest, len(outbox), outbox._high_water)
        # The write buffer never grew past the high-water mark plus one message's frame.
        assert largest <= outbox._high_water + 2 * len(payload) + 64 or outbox._high_water == 0
        stalled.transport.abort()
        healthy.transport.close()


def unsubscribe_packet(a_filter: str, packet_id: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + encode_string(a_filter)
    return b"\xa2" + encode_varint(len(body)) + body


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_clients_churning_one_filter_while_it_fans_out_leave_the_index_exact(
    tmp_path, broker_test_users
):
    """Many clients SUBSCRIBE/UNSUBSCRIBE the same filter over and over (pipelined, no wait
    for the acks) while messages fan out on it, some drop mid-way: afterwards the index holds
    exactly the subscriptions of the clients still connected, each with its own session, and
    nothing once they are all gone."""
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        clients = [Client(connect_with_will(f"churn-{i}")) for i in range(200)]
        await open_all(running, clients, websocket=False)
        stop = False

        async def publish() -> None:
            number = 0
            while not stop:
                await broker.internal_message_broadcast(TOPIC, b"%d" % number, 0)
                number += 1
                await asyncio.sleep(0.001)

        publisher = asyncio.ensure_future(publish())
        for round_ in range(5):
            for index, client in enumerate(clients):
                packet_id = round_ * 2 + 1
                client.send(subscribe_packet(TOPIC, index % 2, packet_id))
                client.send(unsubscribe_packet(TOPIC, packet_id + 1))
                if round_ == 4 and index % 3 == 0:
                    client.send(subscribe_packet(TOPIC, 0, 99))  # ends subscribed
            await asyncio.sleep(0.05)
        for client in clients[::7]:
            client.transport.abort()
        expected = {f"churn-{i}" for i in range(200) if i % 3 == 0 and i % 7 != 0}

        def held() -> set[str]:
            return {session.client_id for session, _ in broker._subscriptions.get(TOPIC, ())}

        deadline = asyncio.get_running_loop().time() + WAIT
        while held() != expected:
            assert asyncio.get_running_loop().time() < deadline, (
                sorted(held() - expected),
                sorted(expected - held()),
            )
            await asyncio.sleep(0.05)
        for session, _qos in broker._subscriptions[TOPIC]:
            assert broker._sessions[session.client_id][0] is session
        assert {c for c in broker._subscriptions._filters_by_client} == expected
        stop = True
        await publisher
        for client in clients:
            client.transport.abort()
        deadline = asyncio.get_running_loop().time() + WAIT
        while broker._subscriptions or broker._subscriptions._filters_by_client:
            assert asyncio.get_running_loop().time() < deadline, dict(broker._subscriptions)
            await asyncio.sleep(0.05)
        assert broker._subscriptions._root == {}


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_persistent_session_cut_off_for_not_reading_keeps_its_qos1_and_no_qos0(
    tmp_path, broker_test_users
):
    """A persistent subscriber (QoS 1 commands, QoS 0 snapshots) stops reading and is
    disconnected for it (fault 5) while QoS 0 keeps flowing. What it gets when it comes
    back: the QoS 1 messages published while it was away, and no QoS 0 message (the Outbox
    keeps only QoS 1/2 for an offline session; MQTT 3.1.1 3.1.2.4 makes QoS 0 optional)."""
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        broker.max_queued_messages = 50
        commands, snapshots = "clubs/beta/game/cmd", TOPIC
        connect = connect_with_will("device", SERVICE_USER, users[SERVICE_USER], clean=False)
        first = Client(connect, (commands,), qos=1)
        await open_all(running, [first])
        first.send(subscribe_packet(snapshots, 0, 7))
        await until_subscribed(broker, snapshots, "device")
        first.transport.pause_reading()
        payload = b"s" * 8192
        number = 0
        while not broker.slow_clients_disconnected:
            assert number < 20_000, "never cut off"
            await broker.internal_message_broadcast(snapshots, payload + b"%d" % number, 0)
            number += 1
            if number % 20 == 0:
                await until(lambda: not broker._broadcast_queue.qsize(), "fanned out")
        # QoS 0 keeps flowing while the connection is torn down.
        for _ in range(200):
            await broker.internal_message_broadcast(snapshots, payload + b"%d" % number, 0)
            number += 1
        session = broker._sessions["device"][0]
        deadline = asyncio.get_running_loop().time() + WAIT
        while session.transitions.state == "connected":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        first.transport.abort()
        for index in range(20):
            await broker.internal_message_broadcast(commands, b"cmd-%d" % index, 1)
        await until(lambda: not broker._broadcast_queue.qsize(), "fanned out")
        second = Client(connect)
        await open_all(running, [second])
        received = await second.wait_for(20, commands)
        assert received == [b"cmd-%d" % index for index in range(20)]
        await asyncio.sleep(0.2)
        stale = second.payloads(snapshots)
        assert stale == [], f"{len(stale)} QoS 0 messages from the offline time were delivered"
        second.transport.close()


async def until_subscribed(broker: RallycastBroker, a_filter: str, client_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while broker._subscriptions.subscription(a_filter, client_id) is None:
        assert asyncio.get_running_loop().time() < deadline, f"{client_id} not on {a_filter}"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_persistent_session_that_disconnects_while_qos0_flows_keeps_no_qos0(
    tmp_path, broker_test_users
):
    """A persistent QoS 0 subscriber sends DISCONNECT while snapshots flow: while its
    connection is torn down the session still counts as connected, but no connection is
    attached: nothing QoS 0 may wait for its next connection (the Outbox keeps only QoS 1/2
    for an offline session)."""
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        connect = device(users, clean=False)
        kept = 0
        for _attempt in range(10):
            client = Client(connect, (TOPIC,), qos=0)
            await open_all(running, [client])
            session = broker._sessions["device"][0]
            stop = asyncio.Event()

            async def flood(stop: asyncio.Event = stop) -> None:
                number = 0
                while not stop.is_set():
                    await broker.internal_message_broadcast(TOPIC, b"%d" % number, 0)
                    number += 1
                    await asyncio.sleep(0)

            flooding = asyncio.ensure_future(flood())
            await client.wait_for(1, TOPIC)
            client.send(b"\xe0\x00")  # DISCONNECT
            await until(
                lambda session=session: session.transitions.state != "connected", "disconnected"
            )
            stop.set()
            await flooding
            await until(lambda: not broker._broadcast_queue.qsize(), "fanned out")
            kept += len(session.outbox) if session.outbox is not None else 0
        assert kept == 0, f"{kept} QoS 0 messages wait for an offline session"


class WsWatcher(Client):
    """A WebSocket Client that notes the frames' opcodes: a binary frame after the server's
    close frame is a fault [RFC 6455 5.5.1]."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.close_seen = False
        self.after_close = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def frame_received(self, opcode: int, body: bytes) -> None:
        if opcode == 0x8:
            self.close_seen = True
        elif self.close_seen:
            self.after_close += 1
        elif opcode == 0x2:
            self._mqtt.feed(body)


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_websocket_spectators_closing_mid_fan_out_get_no_frame_after_the_close(
    tmp_path, broker_test_users, caplog
):
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        host = ("127.0.0.1", running.ws_port)
        stay = WsWatcher(connect_with_will("stay"), (TOPIC,), ws_host=host)
        leaving = [
            WsWatcher(connect_with_will(f"leave-{i}"), (TOPIC,), ws_host=host) for i in range(150)
        ]
        await open_all(running, [stay, *leaving], websocket=True)
        for number in range(300):
            await broker.internal_message_broadcast(TOPIC, b"%d" % number, 0)
            if number == 100:
                for index, client in enumerate(leaving):
                    if index % 2:
                        close = ws_frame((1000).to_bytes(2, "big"), opcode=0x8, mask=b"abcd")
                        client.transport.write(close)  # a WebSocket close frame
                    else:
                        client.send(b"\xe0\x00")  # MQTT DISCONNECT: the server closes first
            if number % 10 == 0:
                await asyncio.sleep(0.001)
        done, _ = await asyncio.wait([c.lost for c in leaving], timeout=10)
        open_ones = [i for i, c in enumerate(leaving) if not c.lost.done()]
        assert not open_ones, (open_ones[:10], [leaving[i].close_seen for i in open_ones[:10]])
        assert sum(c.after_close for c in leaving) == 0
        assert sorted(int(p) for p in await stay.wait_for(300, TOPIC)) == list(range(300))
        assert not broker._subscriptions.filters_of("leave-1")
        errors = [r for r in caplog.records if r.levelno >= 40]
        assert errors == [], [r.getMessage() for r in errors]
        stay.transport.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_persistent_session_ended_during_its_own_acl_check_gets_no_stored_message(
    tmp_path, broker_test_users
):
    """The same end for good, but while the fan-out awaits the RECEIVE check of that very
    session (connected when the fan-out reached it): its old Outbox must not take the message
    (it would write a row to the store for a client id whose session is clean now)."""
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        persistent = Client(device(users, clean=False), (TOPIC,), qos=1)
        await open_all(running, [persistent])
        release = await hold_fan_out(running, "device", b"before-clean")
        fresh = Client(device(users, clean=True))
        await open_all(running, [fresh])
        release.set()
        await until(lambda: not broker._broadcast_queue.qsize(), "fanned out")
        marker = Client(connect_with_will("marker"), (TOPIC,))
        await open_all(running, [marker])
        await broker.internal_message_broadcast(TOPIC, b"after", 0)
        await marker.wait_for(1, TOPIC)  # the fan-out of the first message is over
        await asyncio.sleep(0.3)  # the store writes behind
        assert stored_rows(running, "device") == 0, "a row for the ended session is in the store"
        assert fresh.payloads(TOPIC) == []
        fresh.transport.close()
        marker.transport.close()


@pytest.mark.timeout(60)
def test_a_subscription_made_again_with_another_qos_replaces_the_first(any_broker):
    """[MQTT-3.8.4-3]: a SUBSCRIBE with a filter the session holds replaces that subscription,
    QoS included; the SUBACK's granted QoS is the QoS deliveries then get. (amqtt kept the
    first subscription: SUBACK 1, deliveries still QoS 0.)"""
    import queue
    import threading

    if any_broker.kind == "nats":
        pytest.skip("the embedded broker and mosquitto only")
    got: queue.Queue = queue.Queue()
    subscriber = any_broker.client(
        "alpha", on_message=lambda _c, _u, message: got.put((message.payload, message.qos))
    )
    for qos in (0, 1):
        granted: list[int] = []
        acked = threading.Event()

        def on_subscribe(_c, _u, _mid, codes, _p, granted=granted, acked=acked) -> None:
            granted.extend(int(code.value) for code in codes)
            acked.set()

        subscriber.on_subscribe = on_subscribe
        subscriber.subscribe("clubs/alpha/game/events", qos)
        assert acked.wait(10)
        assert granted == [qos]
    service = any_broker.client(any_broker.service_user)
    service.publish("clubs/alpha/game/events", b"point", qos=1).wait_for_publish(10)
    payload, qos = got.get(timeout=10)
    assert (payload, qos) == (b"point", 1)


def test_a_subscribe_sent_with_the_connect_gets_the_retained_qos0_snapshot(
    amqtt_broker: Any,
) -> None:
    # A client may SUBSCRIBE as soon as it has sent CONNECT (here in the same segment): the
    # broker can read that SUBSCRIBE before the connection's Outbox is attached, and the
    # retained snapshot it brings must wait there, not be dropped as if the client had gone
    # (a viewer missed its first score after a broker restart in CI, under load).
    from broker.packets import connect_packet
    from rallycast.bench.wire import raw_client

    service = amqtt_broker.client(amqtt_broker.service_user)
    service.publish("clubs/alpha/game", b'{"rev": 7}', qos=1, retain=True).wait_for_publish(5)
    for attempt in range(20):
        with raw_client(amqtt_broker.mqtt_port) as client:
            client.send(
                connect_packet(f"early-{attempt}") + subscribe_packet("clubs/alpha/game", qos=0)
            )
            kinds = []
            while True:
                packet = client.packet(3.0)
                assert packet is not None, f"attempt {attempt}: only {kinds}"
                kinds.append(packet[0] & 0xF0)
                if packet[0] & 0xF0 == 0x30:  # the retained PUBLISH
                    assert packet[1].endswith(b'{"rev": 7}')
                    break
            assert kinds[0] == 0x20  # CONNACK first
