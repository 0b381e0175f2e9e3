"""``rallycast bench broker``: measure on loopback: the embedded broker (auth + ACL +
retained store, run as ``python -m broker.cli``) against mosquitto (our mosquitto.conf and
mosquitto.acl, only ports and paths rewritten), in the same run.

One publisher (the service user, TCP, QoS 1, retained: what the scorer service does) and N
WebSocket subscribers on one club's snapshot topic (anonymous, QoS 0: what a live page does).
Two phases per broker and N:

- paced: ``--rate`` messages/s (10 = a busy human scorer) for ``--seconds`` seconds;
- burst: ``--burst`` messages as fast as the publisher's 20-message QoS 1 window allows.

Before the phases, N idle MQTT-over-TCP clients (CONNECT, SUBSCRIBE to another club's topic,
then silent) join the idle WebSocket subscribers for a second: the RSS they add, per client, is
the "idle TCP client" figure. Then they all reset their connections at once (the mass
disconnect phase: a venue's Wi-Fi dropping every spectator) and the bench measures how long
the broker stays busy with it: seconds until a probe client's PINGREQ round trip is back
under 50 ms three times in a row, and the broker CPU spent meanwhile. Only then do the paced
and burst phases start.

Printed per phase: deliveries/s, publish->receive latency p50/p99, broker CPU microseconds per
delivery (psutil on the broker process: user + system), the broker's RSS and its growth per
idle WebSocket and per idle TCP client, and the embedded/mosquitto ratios.

The subscribers are raw asyncio protocols in this process (a WebSocket frame parser here, the
MQTT 3.1.1 decoder in ``rallycast/bench/wire.py``): cheap enough that the client side is not the
bottleneck. Brokers start through ``rallycast/bench/launch.py``; the table and the ratios are
``rallycast/bench/report.py``.
Everything is bounded: connections, messages, and every wait has a timeout.

    rallycast bench broker --subscribers 100 500 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil

from broker.packets import PINGREQ, subscribe_packet
from rallycast.bench.launch import (
    BENCH_MAX_CONNECTIONS,
    SERVICE_USER,
    BrokerNotInstalled,
    BrokerProcess,
    start_embedded,
    start_mosquitto,
)
from rallycast.bench.report import (
    HEADER,
    PhaseResult,
    format_ratios,
    format_row,
    machine_description,
    percentile,
)
from rallycast.bench.wire import MqttStream, mqtt_connect, mqtt_publish, ws_frame, ws_handshake

CLUB = "bench"
TOPIC = f"clubs/{CLUB}/game"


def table_topic(table: int, tables: int) -> str:
    """The snapshot topic of table ``table`` of ``tables`` (one club per table; 1: TOPIC)."""
    return TOPIC if tables == 1 else f"clubs/{CLUB}-{table}/game"


def table_subscribers(n: int, tables: int, table: int) -> int:
    """Subscribers on ``table`` when subscriber i follows table i % tables."""
    return n // tables + (1 if table < n % tables else 0)


CONNECT_BATCH = 50  # subscribers connecting at once (listen backlog is 100)
PUBLISH_WINDOW = 20  # unacknowledged QoS 1 publishes (mosquitto's default inflight limit)
STAMP = struct.Struct(">QQ")  # sequence number, perf_counter_ns at publish
BROKER_KINDS = ("embedded", "mosquitto", "stock", "nats")  # nats: rallycast/bench/cluster.py
MAX_SUBSCRIBERS = 10_000


# -- clients


@dataclass
class Tally:
    """Deliveries seen by all subscribers (shared: one list append per delivery)."""

    latencies_ns: list[int] = field(default_factory=list)
    deliveries: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.latencies_ns = []
        self.deliveries = 0


class WsSubscriber(asyncio.Protocol):
    """An MQTT-over-WebSocket subscriber: handshake, CONNECT, SUBSCRIBE, then count PUBLISHes."""

    def __init__(
        self, host: str, port: int, client_id: str, qos: int, tally: Tally, topic: str = TOPIC
    ) -> None:
        self.topic = topic
        self.host, self.port, self.client_id, self.qos, self.tally = (
            host,
            port,
            client_id,
            qos,
            tally,
        )
        self.transport: asyncio.Transport | None = None
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake = bytearray()
        self._open = False
        self._frames = b""
        self._mqtt = MqttStream(self._on_packet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(ws_handshake(self.host, self.port))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"{self.client_id}: closed ({exc})"))

    def send(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(packet))

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._handshake += data
            end = self._handshake.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._handshake.startswith(b"HTTP/1.1 101"):
                self.transport.close()  # type: ignore[union-attr]
                return
            self._open = True
            data = bytes(self._handshake[end + 4 :])
            self._handshake = bytearray()
            self.send(mqtt_connect(self.client_id))
        if self._frames:
            data = self._frames + data
        end_of_data = len(data)
        position = 0
        while end_of_data - position >= 2:
            size, offset = data[position + 1] & 0x7F, position + 2
            if size == 126:
                if end_of_data - position < 4:
                    break
                size, offset = (
                    int.from_bytes(data[position + 2 : position + 4], "big"),
                    position + 4,
                )
            elif size == 127:
                if end_of_data - position < 10:
                    break
                size = int.from_bytes(data[position + 2 : position + 10], "big")
                offset = position + 10
            if data[position + 1] & 0x80:  # servers do not mask; skip a key if one is sent
                offset += 4
            end = offset + size
            if end > end_of_data:
                break
            opcode = data[position] & 0x0F
            position = end
            if opcode in (0x0, 0x2):
                self._mqtt.feed(data[offset:end])
            elif opcode == 0x9:  # ping -> pong
                self.transport.write(ws_frame(data[offset:end], 0xA))  # type: ignore[union-attr]
            elif opcode == 0x8:
                self.transport.close()  # type: ignore[union-attr]
                return
        self._frames = data[position:]

    def _on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 3:
            now = time.perf_counter_ns()
            start = 2 + int.from_bytes(body[:2], "big")
            if first & 0x06:  # QoS 1: acknowledge
                self.send(b"\x40\x02" + body[start : start + 2])
                start += 2
            if len(body) >= start + STAMP.size:
                _seq, sent = STAMP.unpack_from(body, start)
                tally = self.tally
                tally.latencies_ns.append(now - sent)
                tally.deliveries += 1
                tally.changed.set()
        elif kind == 2:  # CONNACK
            if body[1] != 0:
                self.transport.close()  # type: ignore[union-attr]
                return
            self.send(subscribe_packet(self.topic, self.qos))
        elif kind == 9 and not self.subscribed.done():  # SUBACK
            if body[-1] == 0x80:
                self.subscribed.set_exception(PermissionError(f"{self.client_id}: refused"))
            else:
                self.subscribed.set_result(None)


class TcpIdleClient(asyncio.Protocol):
    """An MQTT-over-TCP spectator that connects, subscribes and then stays silent (the
    bench's keep-alive pings it)."""

    def __init__(self, client_id: str, topic: str) -> None:
        self.client_id, self.topic = client_id, topic
        self.transport: asyncio.Transport | None = None
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mqtt = MqttStream(self._on_packet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(mqtt_connect(self.client_id))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"{self.client_id}: closed ({exc})"))

    def send(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(packet)

    def data_received(self, data: bytes) -> None:
        self._mqtt.feed(data)

    def _on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2:  # CONNACK
            if body[1] != 0:
                self.transport.close()  # type: ignore[union-attr]
                return
            self.send(subscribe_packet(self.topic, 0))
        elif kind == 9 and not self.subscribed.done():  # SUBACK
            if body[-1] == 0x80:
                self.subscribed.set_exception(PermissionError(f"{self.client_id}: refused"))
            else:
                self.subscribed.set_result(None)


IDLE_TOPIC = f"clubs/{CLUB}-idle/game"  # the idle TCP clients' subscription: no deliveries


class PingProbe(asyncio.Protocol):
    """A TCP client that measures the broker's PINGREQ -> PINGRESP round trip: how long the
    broker's event loop takes to get to a client (the mass disconnect phase)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self._pong: asyncio.Future[None] | None = None
        self._mqtt = MqttStream(self._on_packet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(mqtt_connect(self.client_id))

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.connected, self._pong):
            if future is not None and not future.done():
                future.set_exception(ConnectionError(f"{self.client_id}: closed ({exc})"))

    def data_received(self, data: bytes) -> None:
        self._mqtt.feed(data)

    def _on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2 and not self.connected.done():  # CONNACK
            if body[1] == 0:
                self.connected.set_result(None)
            else:
                self.connected.set_exception(PermissionError(f"probe refused: {body[1]}"))
        elif kind == 13 and self._pong is not None and not self._pong.done():  # PINGRESP
            self._pong.set_result(None)

    async def round_trip(self, give_up: float) -> float:
        """Seconds from PINGREQ to PINGRESP (TimeoutError past ``give_up`` seconds)."""
        self._pong = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.transport.write(PINGREQ)  # type: ignore[union-attr]
        await asyncio.wait_for(self._pong, give_up)
        return time.perf_counter() - start


IDLE_ROUND_TRIP = 0.05  # a PINGREQ round trip under this many seconds: the broker is idle
IDLE_PROBES = 3  # ... this many times in a row
PROBE_GAP = 0.01  # seconds between probes
MASS_DISCONNECT_TIMEOUT = 60.0  # the phase gives up (and says so) after this many seconds
SETTLE = 0.5  # seconds of idle CPU measured before, and counted after, the resets


@dataclass
class MassDisconnect:
    """The mass disconnect phase: ``clients`` idle TCP clients (each with one subscription)
    reset their connections at once, with ``subscribers`` WebSocket subscribers still
    connected. ``seconds``: from the resets until the first of ``IDLE_PROBES`` PINGREQ round
    trips in a row under ``IDLE_ROUND_TRIP`` (None: not within the timeout);
    ``cpu_seconds``: broker CPU (user + system) from the resets until ``SETTLE`` seconds
    after that, less its idle rate measured just before; ``worst_ms``: the slowest
    round trip seen; ``load``: 1-minute load average after it."""

    broker: str
    clients: int
    subscribers: int
    seconds: float | None
    cpu_seconds: float
    worst_ms: float
    load: float

    def line(self) -> str:
        idle = (
            f"{self.seconds:.2f} s until the broker is idle again"
            if self.seconds is not None
            else f"not idle again within {MASS_DISCONNECT_TIMEOUT:g} s"
        )
        per = self.cpu_seconds / self.clients * 1e6 if self.clients else 0.0
        return (
            f"mass disconnect: {self.broker}, {self.clients} TCP clients abort at once"
            f" ({self.subscribers} WebSocket subscribers stay): {idle};"
            f" broker CPU {self.cpu_seconds:.2f} s ({per:.0f} us per disconnect);"
            f" slowest PINGREQ round trip {self.worst_ms:.1f} ms; load {self.load:.1f}"
        )


async def mass_disconnect(
    broker: BrokerProcess, clients: list, probe: PingProbe, subscribers: int
) -> MassDisconnect:
    """Reset every one of ``clients`` at once (RST: a venue's Wi-Fi dropping every spectator)
    and measure how long the broker stays busy with it (see :class:`MassDisconnect`)."""
    # The broker's own CPU rate while idle (keep-alive timers): taken off the figure below.
    idle_cpu, idle_start = broker.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(SETTLE)
    idle_rate = (broker.cpu_seconds() - idle_cpu) / (time.perf_counter() - idle_start)
    for client in clients:  # RST, not FIN, when closed (SO_LINGER 0): nothing said goodbye
        sock = client.transport.get_extra_info("socket") if client.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cpu_before = broker.cpu_seconds()
    start = time.perf_counter()
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    streak, idle_at, worst = 0, None, 0.0
    while (left := start + MASS_DISCONNECT_TIMEOUT - time.perf_counter()) > 0:
        sent = time.perf_counter() - start
        try:
            rtt = await probe.round_trip(left)
        except TimeoutError:
            break
        worst = max(worst, rtt)
        if rtt < IDLE_ROUND_TRIP:
            streak += 1
            if streak == 1:
                idle_at = sent
            if streak >= IDLE_PROBES:
                break
        else:
            streak, idle_at = 0, None
        await asyncio.sleep(PROBE_GAP)
    # Work the probes did not see (between them) is counted too: CPU until SETTLE after.
    await asyncio.sleep(SETTLE)
    elapsed = time.perf_counter() - start
    cpu = max(0.0, broker.cpu_seconds() - cpu_before - idle_rate * elapsed)
    return MassDisconnect(
        broker=broker.kind,
        clients=len(clients),
        subscribers=subscribers,
        seconds=idle_at if streak >= IDLE_PROBES else None,
        cpu_seconds=cpu,
        worst_ms=worst * 1000,
        load=os.getloadavg()[0],
    )


async def idle_tcp_clients(
    broker: BrokerProcess, count: int, pinging: list, say: Callable[[str], None]
) -> tuple[float, MassDisconnect]:
    """RSS the broker adds per idle TCP client (KB), with ``count`` of them connected and
    subscribed for a second; then the mass disconnect phase: they all abort at once."""
    loop = asyncio.get_running_loop()
    clients: list[TcpIdleClient] = []
    _transport, probe = await asyncio.wait_for(
        loop.create_connection(lambda: PingProbe("bench-probe"), "127.0.0.1", broker.mqtt_port),
        10,
    )
    rss_before = broker.rss()
    try:
        await asyncio.wait_for(probe.connected, 10)
        for start in range(0, count, CONNECT_BATCH):
            batch = [
                TcpIdleClient(f"idle-tcp-{i}", IDLE_TOPIC)
                for i in range(start, min(count, start + CONNECT_BATCH))
            ]
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        loop.create_connection(lambda c=c: c, "127.0.0.1", broker.mqtt_port)
                        for c in batch
                    )
                ),
                30,
            )
            clients.extend(batch)
            pinging.extend(batch)
            await asyncio.wait_for(asyncio.gather(*(c.subscribed for c in batch)), 30)
        say(f"  {broker.kind}: {len(clients)}/{count} idle TCP clients connected")
        await asyncio.sleep(1.0)  # idle: let the broker settle
        per_client_kb = (broker.rss() - rss_before) / count / 1024
        pinging[:] = [c for c in pinging if not isinstance(c, TcpIdleClient)]
        dropped = await mass_disconnect(broker, clients, probe, len(pinging))
        say("  " + dropped.line())
        return per_client_kb, dropped
    finally:
        pinging[:] = [c for c in pinging if not isinstance(c, TcpIdleClient)]
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
        if probe.transport is not None:
            probe.transport.abort()


class TcpPublisher(asyncio.Protocol):
    """The scorer service's side: QoS 1 retained publishes with a bounded in-flight window."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.window = asyncio.Semaphore(PUBLISH_WINDOW)
        self.inflight: set[int] = set()
        self._next_id = 0
        self._mqtt = MqttStream(self._on_packet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(mqtt_connect("bench-publisher", self.user, self.password))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"publisher: closed ({exc})"))

    def data_received(self, data: bytes) -> None:
        self._mqtt.feed(data)

    def _on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2 and not self.connected.done():
            if body[1] == 0:
                self.connected.set_result(None)
            else:
                self.connected.set_exception(
                    PermissionError(f"publisher refused: CONNACK {body[1]}")
                )
        elif kind == 4:  # PUBACK
            packet_id = int.from_bytes(body[:2], "big")
            if packet_id in self.inflight:
                self.inflight.discard(packet_id)
                self.window.release()

    async def publish(self, make_payload: Callable[[], bytes], topic: str = TOPIC) -> None:
        """Wait for a free slot in the window, then stamp and send (the wait is not latency)."""
        await self.window.acquire()
        self._next_id = self._next_id % 65535 + 1
        self.inflight.add(self._next_id)
        self.transport.write(mqtt_publish(topic, make_payload(), self._next_id))  # type: ignore[union-attr]

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(PINGREQ)


def bench_payload(seq: int, size: int) -> bytes:
    """A snapshot-sized payload whose first 16 bytes carry the sequence and the send time."""
    filler = b'{"type":"game_update","game_data":{"score1":7,"score2":5}}'
    stamp = STAMP.pack(seq, time.perf_counter_ns())
    body = (filler * (size // len(filler) + 1))[: max(0, size - STAMP.size)]
    return stamp + body


# -- brokers


def start_python_broker(kind: str, workdir: Path, password: str) -> BrokerProcess:
    from argon2 import PasswordHasher

    from broker.auth import PasswordFile

    # Cheap argon2 parameters: one login, the measurement is about deliveries.
    PasswordFile(
        workdir / f"{kind}-data" / "passwd", PasswordHasher(time_cost=1, memory_cost=8192)
    ).set(SERVICE_USER, password)
    return start_embedded(kind, workdir)


# -- the measurement


@contextlib.asynccontextmanager
async def subscribers(
    broker: BrokerProcess,
    count: int,
    qos: int,
    tally: Tally,
    say: Callable[[str], None],
    tables: int = 1,
) -> AsyncIterator[list[WsSubscriber]]:
    loop = asyncio.get_running_loop()
    clients: list[WsSubscriber] = []
    try:
        for start in range(0, count, CONNECT_BATCH):
            # A cluster spreads the subscribers over its nodes (ws_port_for).
            port_for = getattr(broker, "ws_port_for", lambda _i: broker.ws_port)
            batch = [
                WsSubscriber(
                    "127.0.0.1",
                    port_for(i),
                    f"page-{i}",
                    qos,
                    tally,
                    table_topic(i % tables, tables),
                )
                for i in range(start, min(count, start + CONNECT_BATCH))
            ]
            await asyncio.wait_for(
                asyncio.gather(
                    *(loop.create_connection(lambda c=c: c, "127.0.0.1", c.port) for c in batch)
                ),
                30,
            )
            clients.extend(batch)
            await asyncio.wait_for(asyncio.gather(*(c.subscribed for c in batch)), 30)
            if len(clients) % 250 == 0 or len(clients) == count:
                say(f"  {broker.kind}: {len(clients)}/{count} WebSocket subscribers connected")
        yield clients
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.abort()


async def _wait_deliveries(tally: Tally, expected: int, deadline: float) -> None:
    while tally.deliveries < expected:
        tally.changed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.changed.wait(), min(left, 1.0))


async def run_phase(
    broker: BrokerProcess,
    publisher: TcpPublisher,
    tally: Tally,
    *,
    phase: str,
    n: int,
    messages: int,
    rate: float | None,
    payload_bytes: int,
    drain_timeout: float,
    rss_per_client_kb: float,
    tables: int = 1,
    rss_per_tcp_client_kb: float = float("nan"),
) -> PhaseResult:
    tally.reset()
    # Message seq goes to table seq % tables, and reaches that table's subscribers.
    expected = sum(table_subscribers(n, tables, seq % tables) for seq in range(messages))
    cpu_before = broker.cpu_seconds()
    me = psutil.Process()
    client_before = sum(me.cpu_times()[:2])
    started = time.monotonic()
    for seq in range(messages):
        if rate:
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        topic = table_topic(seq % tables, tables)
        await publisher.publish(partial(bench_payload, seq, payload_bytes), topic)
    await _wait_deliveries(tally, expected, time.monotonic() + drain_timeout)
    seconds = time.monotonic() - started
    cpu = broker.cpu_seconds() - cpu_before
    client_cpu = sum(me.cpu_times()[:2]) - client_before
    latencies = sorted(tally.latencies_ns)
    return PhaseResult(
        broker=broker.kind,
        subscribers=n,
        phase=phase,
        messages=messages,
        deliveries=tally.deliveries,
        expected=expected,
        seconds=seconds,
        cpu_us_per_delivery=cpu * 1e6 / tally.deliveries if tally.deliveries else float("nan"),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        rss_mb=broker.rss() / 2**20,
        rss_per_idle_client_kb=rss_per_client_kb,
        rss_per_idle_tcp_client_kb=rss_per_tcp_client_kb,
        client_cpu_us_per_delivery=(
            client_cpu * 1e6 / tally.deliveries if tally.deliveries else float("nan")
        ),
        load_average=os.getloadavg()[0],
    )


async def bench_one(
    broker: BrokerProcess,
    n: int,
    args: argparse.Namespace,
    password: str,
    say: Callable[[str], None],
) -> list[PhaseResult]:
    loop = asyncio.get_running_loop()
    tally = Tally()
    _transport, publisher = await asyncio.wait_for(
        loop.create_connection(
            lambda: TcpPublisher(SERVICE_USER, password), "127.0.0.1", broker.mqtt_port
        ),
        10,
    )
    await asyncio.wait_for(publisher.connected, 10)
    # Keep-alive for everyone (the embedded broker drops clients silent for 1.5 x 60 s).
    pinging: list[WsSubscriber | TcpIdleClient] = []
    drops: list[MassDisconnect] = args.__dict__.setdefault("mass_disconnects", [])

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(30)
            publisher.ping()
            for client in pinging:
                client.send(PINGREQ)

    pinger = asyncio.create_task(keepalive())
    try:
        await asyncio.sleep(0.5)
        rss_before = broker.rss()
        tables = getattr(args, "tables", 1)
        async with subscribers(broker, n, args.qos, tally, say, tables) as clients:
            pinging.extend(clients)
            await asyncio.sleep(1.0)  # idle: let the broker settle
            per_client_kb = (broker.rss() - rss_before) / n / 1024
            per_tcp_kb = float("nan")
            if broker.kind != "nats":  # the cluster bench measures its nodes by itself
                per_tcp_kb, dropped = await idle_tcp_clients(broker, n, pinging, say)
                drops.append(dropped)
            results = []
            paced = max(1, round(args.rate * args.seconds))
            say(f"  {broker.kind}: paced, {paced} messages at {args.rate:g}/s to {n} subscribers")
            results.append(
                await run_phase(
                    broker, publisher, tally, phase="paced", n=n, messages=paced,
                    rate=args.rate, payload_bytes=args.payload_bytes,
                    drain_timeout=args.drain_timeout, rss_per_client_kb=per_client_kb,
                    tables=tables, rss_per_tcp_client_kb=per_tcp_kb,
                )
            )  # fmt: skip
            burst = args.burst or max(20, min(500, 100_000 // n))
            say(f"  {broker.kind}: burst, {burst} messages to {n} subscribers")
            results.append(
                await run_phase(
                    broker, publisher, tally, phase="burst", n=n, messages=burst,
                    rate=None, payload_bytes=args.payload_bytes,
                    drain_timeout=args.drain_timeout, rss_per_client_kb=per_client_kb,
                    tables=tables, rss_per_tcp_client_kb=per_tcp_kb,
                )
            )  # fmt: skip
            for result in results:
                say("  " + format_row(result))
            return results
    finally:
        pinger.cancel()
        if publisher.transport is not None:
            publisher.transport.abort()


@contextlib.contextmanager
def broker_running(kind: str, workdir: Path, password: str) -> Iterator[BrokerProcess]:
    if kind == "nats":
        from rallycast.bench.cluster import start_cluster

        broker = start_cluster(workdir, SERVICE_USER, password)
    else:
        broker = (
            # The same per-listener cap as the embedded broker: the run measures capacity
            # (5,000 idle TCP clients, the probe and the publisher pass mosquitto.conf's 5,000).
            start_mosquitto(workdir, {SERVICE_USER: password}, BENCH_MAX_CONNECTIONS)
            if kind == "mosquitto"
            else start_python_broker(kind, workdir, password)
        )
    try:
        yield broker
    finally:
        broker.stop()


async def bench_brokers(args: argparse.Namespace, say: Callable[[str], None]) -> list[PhaseResult]:
    password = base64.b32encode(os.urandom(10)).decode()
    results: list[PhaseResult] = []
    kills: list[str] = []  # the cluster's --kill-node runs, repeated after the table
    with tempfile.TemporaryDirectory(prefix="rallycast-bench-") as tmp:
        for n in args.subscribers:
            for kind in args.brokers:
                say(f"{kind}: starting, {n} subscribers")
                try:
                    with broker_running(kind, Path(tmp), password) as broker:
                        done = await bench_one(broker, n, args, password, say)
                        results.extend(done)
                        if hasattr(broker, "report"):  # the cluster: CPU node by node
                            for line in broker.report([r.deliveries for r in done]):
                                say(line)
                        if kind == "nats" and getattr(args, "kill_node", None):
                            from rallycast.bench.cluster import kill_run

                            killed = await kill_run(broker, n, args, password, say)
                            kills.extend(killed.lines())
                            for line in killed.lines():
                                say(line)
                except BrokerNotInstalled as exc:
                    say(f"{kind}: skipped ({exc})")
    args.kill_lines = kills
    return results


def run_broker_bench(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    say(f"machine: {machine_description()}")
    say(
        f"command: rallycast bench broker --subscribers {' '.join(map(str, args.subscribers))}"
        f" --brokers {' '.join(args.brokers)} --rate {args.rate:g} --seconds {args.seconds:g}"
        f" --burst {args.burst} --payload-bytes {args.payload_bytes} --qos {args.qos}"
        f" --tables {args.tables}"
        + (f" --kill-node {args.kill_node}" if getattr(args, "kill_node", None) else "")
    )
    try:
        results = asyncio.run(bench_brokers(args, say))
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"rallycast bench broker: {exc}", file=sys.stderr)
        return 1
    say("")
    say(HEADER)
    for result in results:
        say(format_row(result))
    for line in format_ratios(results):
        say(line)
    say(
        "latency: publish (after the QoS 1 window admits it) -> subscriber's read; CPU: broker"
        " process user+system; load: 1-min load average after the phase"
        f" ({os.cpu_count()} cores: above that, brokers and bench wait for CPU)"
    )
    from broker.hardening import MAX_PACKETS_IN_HANDLING

    say(
        f"fan-out bound: the embedded broker handles at most {MAX_PACKETS_IN_HANDLING} packets"
        " of one connection at once (then stops reading it); the publisher keeps at most"
        f" {PUBLISH_WINDOW} QoS 1 PUBLISHes unacknowledged, and the embedded broker"
        " acknowledges one only once it is routed and stored"
    )
    if "stock" in args.brokers:
        for line in format_ratios(results, "stock"):
            say(line)
    for dropped in getattr(args, "mass_disconnects", []):
        say(dropped.line())
    for line in getattr(args, "kill_lines", []):
        say(line)
    incomplete = [r for r in results if r.deliveries < r.expected]
    for r in incomplete:
        say(f"warning: {r.broker} {r.subscribers} {r.phase}: {r.expected - r.deliveries} lost")
    return 0
