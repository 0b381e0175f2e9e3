"""Five amqtt 0.12.1 faults (plus two more at the end), each pinned against the stock broker
(must fail: strict xfail) and against RallycastBroker (must pass); docs/upstream.md explains
each one. Brokers run in-process on 127.0.0.1 port 0 with a
small auth plugin (user alice / "secret", anonymous allowed) and a topic plugin that keeps
``private/#`` for alice. Clients are raw sockets, so each test controls exactly what a
misbehaving peer does (never reading, never answering a WebSocket close)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from broker.hardening import RallycastBroker, retained_topics
from broker.packets import PINGREQ, connect_packet, encode_publish, subscribe_packet
from tests.support.runners import STOPS_WITHIN_S

USERS = {"alice": "secret"}
PLUGIN_MODULE = "tests.broker.test_faults"
REPO_ROOT = Path(__file__).resolve().parents[2]


class KnownUserAuth(BaseAuthPlugin):
    """Anonymous (no user name) is allowed; a named user needs the right password."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        if not session.username:
            session.is_anonymous = True
            return True
        return USERS.get(session.username) == session.password


class PrivateTopicACL(BaseTopicPlugin):
    """``private/#`` belongs to alice: nobody else may subscribe to it or receive it."""

    @dataclass
    class Config:
        pass

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        if topic and topic.startswith("private/"):
            return session is not None and session.username == "alice"
        return True


BROKERS = [
    pytest.param(Broker, id="stock-amqtt", marks=pytest.mark.xfail(strict=True)),
    pytest.param(RallycastBroker, id="rallycast"),
]


def broker_config(max_connections: int = 0) -> dict[str, Any]:
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": "127.0.0.1:0",
                "max_connections": max_connections,
            },
            "ws": {"type": "ws", "bind": "127.0.0.1:0"},
        },
        "plugins": {
            f"{PLUGIN_MODULE}.KnownUserAuth": {},
            f"{PLUGIN_MODULE}.PrivateTopicACL": {},
        },
    }


@dataclass
class Running:
    broker: Broker
    tcp_port: int
    ws_port: int


@contextlib.asynccontextmanager
async def running(broker_class: type[Broker], **config: Any) -> AsyncIterator[Running]:
    broker = broker_class(broker_config(**config))
    await broker.start()
    tcp = broker._servers["default"].instance.sockets[0].getsockname()[1]
    ws = broker._servers["ws"].instance.sockets[0].getsockname()[1]
    try:
        yield Running(broker, tcp, ws)
    finally:
        if broker.transitions.state == "started":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.shutdown(), 30)


# -- a raw MQTT 3.1.1 client, just enough for these tests


def publish_packet(topic: str, payload: bytes, retain: bool = False) -> bytes:
    return encode_publish(topic.encode(), payload, qos=0, retain=retain)


class RawClient:
    """MQTT over TCP; QoS 0 publishes; received PUBLISHes land in a queue."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.publishes: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self.acks: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                first = await self.reader.readexactly(1)
                length, shift = 0, 0
                while True:
                    byte = (await self.reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await self.reader.readexactly(length)
                kind = first[0] >> 4
                if kind == 3:
                    size = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + size].decode()
                    qos = (first[0] >> 1) & 3
                    rest = body[2 + size :]
                    if qos:
                        self.writer.write(b"\x40\x02" + rest[:2])  # PUBACK
                        rest = rest[2:]
                    self.publishes.put_nowait((topic, rest, bool(first[0] & 1)))
                else:
                    self.acks.put_nowait((kind, body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    async def ack(self, within: float = 3.0) -> tuple[int, bytes] | None:
        """Next non-PUBLISH packet (kind, body), or None if the connection closed first."""
        getter = asyncio.ensure_future(self.acks.get())
        closed = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait(
            {getter, closed}, timeout=within, return_when="FIRST_COMPLETED"
        )
        closed.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        if closed in done:
            return None
        raise TimeoutError("no answer from the broker")

    async def connect(self, client_id: str, **kwargs: Any) -> int | None:
        self.writer.write(connect_packet(client_id, **kwargs))
        answer = await self.ack()
        return None if answer is None else answer[1][1]

    async def subscribe(self, topic: str, qos: int = 0) -> int:
        self.writer.write(subscribe_packet(topic, qos))
        answer = await self.ack()
        assert answer is not None and answer[0] == 9, answer
        return answer[1][-1]

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.writer.write(publish_packet(topic, payload, retain))
        await self.writer.drain()

    async def next_publish(self, within: float) -> tuple[str, bytes, bool] | None:
        try:
            return await asyncio.wait_for(self.publishes.get(), within)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self._task.cancel()
        self.writer.transport.abort()
        with contextlib.suppress(BaseException):
            await self._task


async def retained(b: Running, topics: set[str], within: float = 5.0) -> None:
    """Until the broker holds a retained message on each of ``topics``: a raw client's QoS 0
    PUBLISH has no PUBACK to wait for, and a loaded machine took more than a fixed pause."""
    deadline = time.monotonic() + within
    while not topics <= retained_topics(b.broker):
        assert time.monotonic() < deadline, f"{topics} not retained within {within} s"
        await asyncio.sleep(0.02)


async def connected(port: int, client_id: str, **kwargs: Any) -> RawClient:
    client = await RawClient.open(port)
    assert await client.connect(client_id, **kwargs) == 0
    return client


# -- fault 1


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_new_client_gets_no_retained_message_it_did_not_subscribe_to(broker_class):
    async with running(broker_class) as b:
        alice = await connected(b.tcp_port, "alice-1", username="alice", password="secret")
        await alice.publish("private/plans", b"for alice only", retain=True)
        await alice.publish("clubs/demo/game", b"snapshot", retain=True)
        # alice holds filters that match both retained topics
        await alice.subscribe("private/#")
        await alice.subscribe("clubs/+/game")
        await alice.next_publish(1.0)
        await alice.next_publish(1.0)

        spectator = await connected(b.tcp_port, "spectator-1")
        leaked = await spectator.next_publish(1.0)
        assert leaked is None, f"spectator got {leaked} without subscribing"
        await spectator.close()
        await alice.close()


async def test_subscriber_still_gets_the_retained_messages_its_acl_allows():
    async with running(RallycastBroker) as b:
        alice = await connected(b.tcp_port, "alice-1", username="alice", password="secret")
        await alice.publish("private/plans", b"for alice only", retain=True)
        await alice.publish("clubs/demo/game", b"snapshot", retain=True)
        await retained(b, {"private/plans", "clubs/demo/game"})

        spectator = await connected(b.tcp_port, "spectator-1")
        assert await spectator.subscribe("#") == 0
        got = await spectator.next_publish(2.0)
        assert got == ("clubs/demo/game", b"snapshot", True)
        assert await spectator.next_publish(0.5) is None  # private/plans is alice's

        assert await alice.subscribe("private/#") == 0
        assert await alice.next_publish(2.0) == ("private/plans", b"for alice only", True)
        await spectator.close()
        await alice.close()


async def test_resumed_persistent_session_gets_retained_messages_of_its_own_filters():
    async with running(RallycastBroker) as b:
        board = await connected(
            b.tcp_port, "board-1", username="alice", password="secret", clean=False
        )
        await board.subscribe("clubs/demo/game")
        await board.close()
        alice = await connected(b.tcp_port, "alice-1", username="alice", password="secret")
        await alice.publish("clubs/demo/game", b"snapshot", retain=True)
        await alice.publish("clubs/other/game", b"other", retain=True)
        await alice.subscribe("clubs/+/game")  # someone else's wider filter
        await retained(b, {"clubs/demo/game", "clubs/other/game"})

        board = await connected(
            b.tcp_port, "board-1", username="alice", password="secret", clean=False
        )
        assert await board.next_publish(2.0) == ("clubs/demo/game", b"snapshot", True)
        assert await board.next_publish(0.5) is None
        await board.close()
        await alice.close()


# -- fault 2


@pytest.mark.parametrize("attacker_clean_session", [True, False], ids=["clean", "persistent"])
@pytest.mark.parametrize("broker_class", BROKERS)
async def test_refused_connect_with_a_taken_client_id_leaves_the_victim_subscribed(
    broker_class, attacker_clean_session
):
    async with running(broker_class) as b:
        victim = await connected(b.tcp_port, "scorer-1", username="alice", password="secret")
        await victim.subscribe("clubs/demo/game")

        attacker = await RawClient.open(b.tcp_port)
        rc = await attacker.connect(
            "scorer-1", username="alice", password="wrong", clean=attacker_clean_session
        )
        assert rc != 0
        await attacker.close()

        publisher = await connected(b.tcp_port, "pub-1", username="alice", password="secret")
        await publisher.publish("clubs/demo/game", b"11-7")
        assert await victim.next_publish(2.0) == ("clubs/demo/game", b"11-7", False)
        await publisher.close()
        await victim.close()


# -- fault 3


async def ws_mqtt_client_that_ignores_close(port: int, client_id: str) -> asyncio.StreamWriter:
    """A WebSocket MQTT client that connects, then never answers anything (no close frame)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    packet = connect_packet(client_id)
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(packet))
    writer.write(bytes((0x82, 0x80 | len(packet))) + mask + masked)
    frame = await asyncio.wait_for(reader.readexactly(6), 5)  # 2-byte header + CONNACK
    assert frame[2:] == b"\x20\x02\x00\x00", frame
    return writer


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_shutdown_finishes_promptly_when_websocket_peers_ignore_the_close(broker_class):
    async with running(broker_class) as b:
        peers = [await ws_mqtt_client_that_ignores_close(b.ws_port, f"page-{i}") for i in range(2)]
        started = time.monotonic()
        shutdown = asyncio.create_task(b.broker.shutdown())
        await asyncio.wait({shutdown}, timeout=STOPS_WITHIN_S + 4)
        elapsed = time.monotonic() - started
        for peer in peers:  # let a slow shutdown end now
            peer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shutdown, 30)
        assert elapsed < STOPS_WITHIN_S, f"shutdown took {elapsed:.1f}s"


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_shutdown_finishes_promptly_with_a_client_whose_packets_are_still_unread(
    broker_class,
):
    # The real cause of the stock hang: Python 3.11's asyncio.wait_for returns the result
    # instead of raising CancelledError when the read it wraps completed in the same loop
    # iteration as the cancel. amqtt's reader loop reads each packet inside wait_for
    # (keep-alive > 0), so handler.stop() cancels a reader that has buffered packets in vain:
    # it reads on, then waits a whole keep-alive for the next packet, and stop() with it.
    async with running(broker_class) as b:
        talker = await connected(b.tcp_port, "talker", keepalive=60)
        reader = b.broker._sessions["talker"][1].reader
        reader = getattr(reader, "inner", reader)  # ours wraps amqtt's in a FramedReader
        stream = reader._reader  # the asyncio.StreamReader
        talker.writer.write(PINGREQ * 50_000)  # 100 KB of PINGREQ
        for _ in range(2000):  # until the broker holds unread packets of it
            if len(stream._buffer) > 2:
                break
            await asyncio.sleep(0.001)
        assert len(stream._buffer) > 2, "the broker read everything at once: no test"
        started = time.monotonic()
        shutdown = asyncio.create_task(b.broker.shutdown())
        await asyncio.wait({shutdown}, timeout=STOPS_WITHIN_S + 4)
        elapsed = time.monotonic() - started
        await talker.close()  # let a slow shutdown end now
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shutdown, 30)
        assert elapsed < STOPS_WITHIN_S, f"shutdown took {elapsed:.1f}s"


async def test_shutdown_finishes_promptly_with_a_tcp_subscriber_that_stopped_reading():
    # Stock amqtt passes this one too: its reader task marks the writer closed before the
    # drain() that never returns, so stop() does not wait for it (docs/upstream.md, 3).
    async with running(RallycastBroker) as b:
        stalled = subscriber_that_never_reads(b.tcp_port)
        publisher = await connected(b.tcp_port, "pub", username="alice", password="secret")
        await asyncio.sleep(0.3)
        for _ in range(3000):  # 6 MB, more than the socket buffers hold: writes block
            await publisher.publish("clubs/demo/game", PAYLOAD)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        shutdown = asyncio.create_task(b.broker.shutdown())
        await asyncio.wait({shutdown}, timeout=STOPS_WITHIN_S + 4)
        elapsed = time.monotonic() - started
        stalled.close()  # let a slow shutdown end now
        await publisher.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shutdown, 30)
        assert elapsed < STOPS_WITHIN_S, f"shutdown took {elapsed:.1f}s"


# -- fault 4


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_client_over_max_connections_is_refused_promptly(broker_class):
    async with running(broker_class, max_connections=1) as b:
        first = await connected(b.tcp_port, "first")
        extra = await RawClient.open(b.tcp_port)
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(extra.connect("extra"), 2.0)
        except TimeoutError:
            answer = "no answer"
        elapsed = time.monotonic() - started
        await extra.close()
        await first.close()
        # CONNACK 3 (server unavailable) or a closed connection, within 2 s
        assert answer in (3, None), f"got {answer!r} after {elapsed:.1f}s"


async def test_a_freed_slot_accepts_the_next_client():
    async with running(RallycastBroker, max_connections=1) as b:
        first = await connected(b.tcp_port, "first")
        await first.close()
        for _ in range(50):  # the broker notices the close asynchronously
            await asyncio.sleep(0.05)
            if not b.broker._sessions or all(
                s.transitions.state != "connected" for s, _h in b.broker._sessions.values()
            ):
                break
        second = await connected(b.tcp_port, "second")
        await second.close()


# -- fault 5

MESSAGES = 10_000
PAYLOAD = b"x" * 2048  # 20 MB in all
BATCH = 200


def subscriber_that_never_reads(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(connect_packet("stalled") + subscribe_packet("clubs/demo/game"))
    return sock


# The broker runs in its own process here, so its RSS is not mixed with the test's clients.
BROKER_PROCESS = """
import asyncio, importlib, json, sys
module_name, class_name = sys.argv[1].split(":")
broker_class = getattr(importlib.import_module(module_name), class_name)
from tests.broker.test_faults import broker_config

async def main():
    broker = broker_class(broker_config())
    await broker.start()
    tcp = broker._servers["default"].instance.sockets[0].getsockname()[1]
    print(json.dumps({"tcp": tcp}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def broker_process(broker_class: type[Broker]) -> AsyncIterator[tuple[psutil.Process, int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BROKER_PROCESS,
        f"{broker_class.__module__}:{broker_class.__name__}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield psutil.Process(proc.pid), json.loads(line)["tcp"]
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker_class", BROKERS)
async def test_subscriber_that_stops_reading_does_not_grow_broker_memory(broker_class):
    async with broker_process(broker_class) as (broker_ps, port):
        stalled = subscriber_that_never_reads(port)
        healthy = await connected(port, "healthy")
        await healthy.subscribe("clubs/demo/game")
        publisher = await connected(port, "pub", username="alice", password="secret")
        await asyncio.sleep(0.3)
        rss_before = broker_ps.memory_info().rss
        received = 0
        # Paced by the healthy subscriber, so no inbound backlog blurs the figure.
        for _ in range(MESSAGES // BATCH):
            for _ in range(BATCH):
                await publisher.publish("clubs/demo/game", PAYLOAD)
            for _ in range(BATCH):
                if await healthy.next_publish(20.0) is None:
                    break
                received += 1
        growth = (broker_ps.memory_info().rss - rss_before) / 2**20

        stalled.close()
        await publisher.close()
        await healthy.close()
        assert received == MESSAGES, "the healthy subscriber must get every message"
        assert growth < 10, f"broker memory grew by {growth:.0f} MB for one stalled subscriber"


async def test_stalled_subscriber_is_disconnected_and_logged(caplog):
    async with running(RallycastBroker) as b:
        b.broker.max_queued_messages = 50
        stalled = subscriber_that_never_reads(b.tcp_port)
        publisher = await connected(b.tcp_port, "pub", username="alice", password="secret")
        # It never reads, so there is no SUBACK to wait for: wait until the broker holds its
        # subscription (a fixed 0.3 s was too short on a loaded machine).
        for _ in range(500):
            subscribers = b.broker._subscriptions.get("clubs/demo/game", ())
            if any(session.client_id == "stalled" for session, _qos in subscribers):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the stalled subscriber's SUBSCRIBE never took effect")
        for _ in range(4000):
            await publisher.publish("clubs/demo/game", PAYLOAD)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if b.broker.slow_clients_disconnected:
                break
        assert b.broker.slow_clients_disconnected == 1
        assert b.broker.queued_messages("stalled") == 0
        assert "stalled is not reading" in caplog.text
        stalled.close()
        await publisher.close()


# -- also hardened (docs/upstream.md, "Also changed")


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_second_login_with_the_same_client_id_closes_the_first_connection(broker_class):
    async with running(broker_class) as b:
        first = await connected(b.tcp_port, "scorer-1", username="alice", password="secret")
        second = await connected(b.tcp_port, "scorer-1", username="alice", password="secret")
        await second.subscribe("clubs/demo/game")
        # [MQTT-3.1.4-2]: the server disconnects the existing client
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first.closed.wait(), 2.0)
        closed = first.closed.is_set()
        publisher = await connected(b.tcp_port, "pub-1", username="alice", password="secret")
        await publisher.publish("clubs/demo/game", b"11-7")
        assert await second.next_publish(2.0) == ("clubs/demo/game", b"11-7", False)
        assert closed is True
        for client in (publisher, second, first):
            await client.close()


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_client_silent_past_its_keep_alive_is_disconnected(broker_class):
    async with running(broker_class) as b:
        silent = await connected(b.tcp_port, "silent", keepalive=1)
        # MQTT 3.1.1 §3.1.2.10: gone after 1.5 x keep-alive without a packet
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(silent.closed.wait(), 4.0)
        assert silent.closed.is_set(), "still connected 4 s after a 1 s keep-alive"
        await silent.close()
