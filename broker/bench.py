"""``rallycast bench``: measure on loopback. Target ``broker``: the embedded broker (auth + ACL +
retained store, run as ``python -m broker.cli``) against mosquitto (our mosquitto.conf and
mosquitto.acl, only ports and paths rewritten), in the same run.

One publisher (the service user, TCP, QoS 1, retained: what the scorer service does) and N
WebSocket subscribers on one club's snapshot topic (anonymous, QoS 0: what a live page does).
Two phases per broker and N:

- paced: ``--rate`` messages/s (10 = a busy human scorer) for ``--seconds`` seconds;
- burst: ``--burst`` messages as fast as the publisher's 20-message QoS 1 window allows.

Printed per phase: deliveries/s, publish->receive latency p50/p99, broker CPU microseconds per
delivery (psutil on the broker process: user + system), the broker's RSS and its growth per
idle WebSocket client, and the embedded/mosquitto ratios.

The subscribers are raw asyncio protocols in this process (a WebSocket frame parser and an
MQTT 3.1.1 decoder of ~100 lines): cheap enough that the client side is not the bottleneck.
Everything is bounded: connections, messages, and every wait has a timeout.

    rallycast bench broker --subscribers 100 500 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil

from broker.packets import PINGREQ, connect_packet, encode_publish, subscribe_packet

REPO = Path(__file__).resolve().parent.parent
CLUB = "bench"
TOPIC = f"clubs/{CLUB}/game"
SERVICE_USER = "rallycast-service"
BENCH_MAX_CONNECTIONS = 20_000  # per listener, for the embedded and stock brokers
CONNECT_BATCH = 50  # subscribers connecting at once (listen backlog is 100)
PUBLISH_WINDOW = 20  # unacknowledged QoS 1 publishes (mosquitto's default inflight limit)
STAMP = struct.Struct(">QQ")  # sequence number, perf_counter_ns at publish
START_TIMEOUT = 20.0
BROKER_KINDS = ("embedded", "mosquitto", "stock")


# -- MQTT 3.1.1 encoding (client side)


def mqtt_connect(client_id: str, user: str | None = None, password: str | None = None) -> bytes:
    return connect_packet(client_id, user, password)


def mqtt_publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    """QoS 1, retained: how the scorer service publishes a snapshot."""
    return encode_publish(topic.encode(), payload, qos=1, retain=True, packet_id=packet_id)


class MqttStream:
    """Splits a byte stream into MQTT packets: ``on_packet(first_byte, body)``. Parses the
    received bytes in place; only an incomplete tail is kept for the next call."""

    __slots__ = ("tail", "on_packet")

    def __init__(self, on_packet: Callable[[int, bytes], None]) -> None:
        self.tail = b""
        self.on_packet = on_packet

    def feed(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        end_of_data = len(data)
        position = 0
        while end_of_data - position >= 2:
            length, shift, index = 0, 0, position + 1
            while True:
                if index >= end_of_data:
                    self.tail = data[position:]
                    return
                byte = data[index]
                length |= (byte & 0x7F) << shift
                index += 1
                if not byte & 0x80:
                    break
                shift += 7
            end = index + length
            if end > end_of_data:
                break
            self.on_packet(data[position], data[index:end])
            position = end
        self.tail = data[position:]


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


def _ws_frame(data: bytes, opcode: int = 0x2) -> bytes:
    """A client-to-server (masked) WebSocket frame."""
    mask = os.urandom(4)
    size = len(data)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(data))
    return head + mask + masked


class WsSubscriber(asyncio.Protocol):
    """An MQTT-over-WebSocket subscriber: handshake, CONNECT, SUBSCRIBE, then count PUBLISHes."""

    def __init__(self, host: str, port: int, client_id: str, qos: int, tally: Tally) -> None:
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
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET /mqtt HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"{self.client_id}: closed ({exc})"))

    def send(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_ws_frame(packet))

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
                self.transport.write(_ws_frame(data[offset:end], 0xA))  # type: ignore[union-attr]
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
            self.send(subscribe_packet(TOPIC, self.qos))
        elif kind == 9 and not self.subscribed.done():  # SUBACK
            if body[-1] == 0x80:
                self.subscribed.set_exception(PermissionError(f"{self.client_id}: refused"))
            else:
                self.subscribed.set_result(None)


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

    async def publish(self, make_payload: Callable[[], bytes]) -> None:
        """Wait for a free slot in the window, then stamp and send (the wait is not latency)."""
        await self.window.acquire()
        self._next_id = self._next_id % 65535 + 1
        self.inflight.add(self._next_id)
        self.transport.write(mqtt_publish(TOPIC, make_payload(), self._next_id))  # type: ignore[union-attr]

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(PINGREQ)


def bench_payload(seq: int, size: int) -> bytes:
    """A snapshot-sized payload whose first 16 bytes carry the sequence and the send time."""
    filler = b'{"type":"game_update","game_data":{"score1":7,"score2":5}}'
    stamp = STAMP.pack(seq, time.perf_counter_ns())
    body = (filler * (size // len(filler) + 1))[: max(0, size - STAMP.size)]
    return stamp + body


# -- brokers as subprocesses


class BrokerNotInstalled(FileNotFoundError):
    """The broker's program is missing: that broker is skipped, the others still run."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BrokerProcess:
    kind: str
    process: subprocess.Popen[bytes]
    mqtt_port: int
    ws_port: int
    log_path: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _broker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    env["RALLYCAST_LOG_LEVEL"] = "WARNING"
    # The default (5000, 16 kept for logged-in users) would refuse subscribers past 4984.
    env["RALLYCAST_MAX_CONNECTIONS"] = str(BENCH_MAX_CONNECTIONS)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _read_listening(process: subprocess.Popen[bytes], deadline: float) -> tuple[int, int]:
    """Ports from ``listening mqtt://HOST:PORT`` / ``listening ws://HOST:PORT/mqtt`` lines."""
    ports: dict[str, int] = {}
    assert process.stdout is not None
    while len(ports) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the broker did not report its ports")
        line = process.stdout.readline().decode().strip()
        if not line:
            if process.poll() is not None:
                raise RuntimeError(f"the broker exited with status {process.returncode}")
            continue
        if line.startswith("listening "):
            url = line.split()[1]
            scheme, rest = url.split("://", 1)
            ports[scheme] = int(rest.split("/")[0].rsplit(":", 1)[1])
    return ports["mqtt"], ports["ws"]


def start_python_broker(kind: str, workdir: Path, password: str) -> BrokerProcess:
    from argon2 import PasswordHasher

    from broker.auth import PasswordFile

    data_dir = workdir / f"{kind}-data"
    # Cheap argon2 parameters: one login, the measurement is about deliveries.
    PasswordFile(data_dir / "passwd", PasswordHasher(time_cost=1, memory_cost=8192)).set(
        SERVICE_USER, password
    )
    args = [
        "--bind",
        "127.0.0.1",
        "--mqtt-port",
        "0",
        "--ws-port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    if kind == "embedded":
        command = [sys.executable, "-m", "broker.cli", *args]
    else:
        command = [sys.executable, "-m", "broker.bench", "serve-stock", *args]
    log_path = workdir / f"{kind}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=_broker_env()
        )
    try:
        mqtt_port, ws_port = _read_listening(process, time.monotonic() + START_TIMEOUT)
    except BaseException:
        process.kill()
        raise
    return BrokerProcess(kind, process, mqtt_port, ws_port, log_path)


def mosquitto_config(workdir: Path, mqtt_port: int, ws_port: int) -> str:
    """Our mosquitto.conf with only the lines naming ports, paths and the run-as user changed."""
    replaced = {
        "password_file": f"password_file {workdir / 'mosquitto.passwd'}",
        "acl_file": f"acl_file {REPO / 'mosquitto.acl'}",
        "user": f"user {getpass.getuser()}",
        "persistence_location": f"persistence_location {workdir / 'mosquitto-data'}/",
        "listener 1883": f"listener {mqtt_port} 127.0.0.1",
        "listener 9001": f"listener {ws_port} 127.0.0.1",
    }
    lines = []
    for line in (REPO / "mosquitto.conf").read_text().splitlines():
        key = next((k for k in replaced if line == k or line.startswith(k + " ")), None)
        lines.append(replaced[key] if key else line)
    return "\n".join(lines) + "\n"


def start_mosquitto(workdir: Path, password: str) -> BrokerProcess:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd = shutil.which("mosquitto_passwd")
    if not Path(mosquitto).exists() or not passwd:
        raise BrokerNotInstalled("mosquitto / mosquitto_passwd are not installed")
    password_file = workdir / "mosquitto.passwd"
    subprocess.run(
        [passwd, "-b", "-c", str(password_file), SERVICE_USER, password],
        check=True,
        capture_output=True,
    )
    (workdir / "mosquitto-data").mkdir(exist_ok=True)
    log_path = workdir / "mosquitto.log"
    for _attempt in range(3):
        mqtt_port, ws_port = free_port(), free_port()
        config = workdir / "mosquitto.conf"
        config.write_text(mosquitto_config(workdir, mqtt_port, ws_port))
        with open(log_path, "ab") as log:
            process = subprocess.Popen([mosquitto, "-c", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                for port in (mqtt_port, ws_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return BrokerProcess("mosquitto", process, mqtt_port, ws_port, log_path)
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait(5)
    raise RuntimeError(f"mosquitto did not start; see {log_path}")


# -- the measurement


@dataclass
class PhaseResult:
    broker: str
    subscribers: int
    phase: str
    messages: int
    deliveries: int
    expected: int
    seconds: float
    cpu_us_per_delivery: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    rss_per_idle_client_kb: float
    client_cpu_us_per_delivery: float
    load_average: float

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index] / 1e6


@contextlib.asynccontextmanager
async def subscribers(
    broker: BrokerProcess, count: int, qos: int, tally: Tally, say: Callable[[str], None]
) -> AsyncIterator[list[WsSubscriber]]:
    loop = asyncio.get_running_loop()
    clients: list[WsSubscriber] = []
    try:
        for start in range(0, count, CONNECT_BATCH):
            batch = [
                WsSubscriber("127.0.0.1", broker.ws_port, f"page-{i}", qos, tally)
                for i in range(start, min(count, start + CONNECT_BATCH))
            ]
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        loop.create_connection(lambda c=c: c, "127.0.0.1", broker.ws_port)
                        for c in batch
                    )
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
) -> PhaseResult:
    tally.reset()
    expected = messages * n
    cpu_before = broker.cpu_seconds()
    me = psutil.Process()
    client_before = sum(me.cpu_times()[:2])
    started = time.monotonic()
    for seq in range(messages):
        if rate:
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await publisher.publish(partial(bench_payload, seq, payload_bytes))
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
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        rss_mb=broker.rss() / 2**20,
        rss_per_idle_client_kb=rss_per_client_kb,
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
    pinging: list[WsSubscriber] = []

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
        async with subscribers(broker, n, args.qos, tally, say) as clients:
            pinging.extend(clients)
            await asyncio.sleep(1.0)  # idle: let the broker settle
            per_client_kb = (broker.rss() - rss_before) / n / 1024
            results = []
            paced = max(1, round(args.rate * args.seconds))
            say(f"  {broker.kind}: paced, {paced} messages at {args.rate:g}/s to {n} subscribers")
            results.append(
                await run_phase(
                    broker, publisher, tally, phase="paced", n=n, messages=paced,
                    rate=args.rate, payload_bytes=args.payload_bytes,
                    drain_timeout=args.drain_timeout, rss_per_client_kb=per_client_kb,
                )
            )  # fmt: skip
            burst = args.burst or max(20, min(500, 100_000 // n))
            say(f"  {broker.kind}: burst, {burst} messages to {n} subscribers")
            results.append(
                await run_phase(
                    broker, publisher, tally, phase="burst", n=n, messages=burst,
                    rate=None, payload_bytes=args.payload_bytes,
                    drain_timeout=args.drain_timeout, rss_per_client_kb=per_client_kb,
                )
            )  # fmt: skip
            for result in results:
                say("  " + format_row(result))
            return results
    finally:
        pinger.cancel()
        if publisher.transport is not None:
            publisher.transport.abort()


HEADER = (
    f"{'broker':<10} {'subs':>5} {'phase':<6} {'msgs':>5} {'delivered':>10} "
    f"{'deliveries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/delivery':>15} "
    f"{'RSS MB':>7} {'RSS KB per idle client':>22} {'bench CPU us/delivery':>21} {'load':>5}"
)


def format_row(r: PhaseResult) -> str:
    delivered = f"{r.deliveries}/{r.expected}" if r.deliveries != r.expected else str(r.deliveries)
    return (
        f"{r.broker:<10} {r.subscribers:>5} {r.phase:<6} {r.messages:>5} {delivered:>10} "
        f"{r.deliveries_per_s:>12.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
        f"{r.cpu_us_per_delivery:>15.1f} {r.rss_mb:>7.1f} {r.rss_per_idle_client_kb:>22.1f} "
        f"{r.client_cpu_us_per_delivery:>21.1f} {r.load_average:>5.1f}"
    )


def format_ratios(results: list[PhaseResult], kind: str = "embedded") -> list[str]:
    lines = []
    base = {(r.subscribers, r.phase): r for r in results if r.broker == "mosquitto"}
    for r in results:
        m = base.get((r.subscribers, r.phase))
        if r.broker != kind or m is None:
            continue

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2g}x" if b > 0 else "n/a"

        lines.append(
            f"ratio {kind}/mosquitto, {r.subscribers} subs, {r.phase}: "
            f"CPU per delivery {ratio(r.cpu_us_per_delivery, m.cpu_us_per_delivery)}, "
            f"p99 {ratio(r.p99_ms, m.p99_ms)}, "
            f"deliveries/s {ratio(r.deliveries_per_s, m.deliveries_per_s)}, "
            f"RSS per idle client {ratio(r.rss_per_idle_client_kb, m.rss_per_idle_client_kb)}"
        )
    return lines


def machine_description() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    mosquitto = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
            capture_output=True,
            timeout=5,
        )
        mosquitto = out.stdout.decode().splitlines()[0].replace("mosquitto version ", "")
    return (
        f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"amqtt {version('amqtt')}, websockets {version('websockets')}, mosquitto {mosquitto}"
    )


@contextlib.contextmanager
def broker_running(kind: str, workdir: Path, password: str) -> Iterator[BrokerProcess]:
    broker = (
        start_mosquitto(workdir, password)
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
    with tempfile.TemporaryDirectory(prefix="rallycast-bench-") as tmp:
        for n in args.subscribers:
            for kind in args.brokers:
                say(f"{kind}: starting, {n} subscribers")
                try:
                    with broker_running(kind, Path(tmp), password) as broker:
                        results.extend(await bench_one(broker, n, args, password, say))
                except BrokerNotInstalled as exc:
                    say(f"{kind}: skipped ({exc})")
    return results


def run_broker_bench(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    say(f"machine: {machine_description()}")
    say(
        f"command: rallycast bench broker --subscribers {' '.join(map(str, args.subscribers))}"
        f" --brokers {' '.join(args.brokers)} --rate {args.rate:g} --seconds {args.seconds:g}"
        f" --burst {args.burst} --payload-bytes {args.payload_bytes} --qos {args.qos}"
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
    if "stock" in args.brokers:
        for line in format_ratios(results, "stock"):
            say(line)
    incomplete = [r for r in results if r.deliveries < r.expected]
    for r in incomplete:
        say(f"warning: {r.broker} {r.subscribers} {r.phase}: {r.expected - r.deliveries} lost")
    return 0


# -- stock amqtt, for comparison (``--brokers stock``)


async def _serve_stock(args: argparse.Namespace) -> None:
    """amqtt's own Broker with OUR config (auth + ACL + retained store): what the hardening
    changes, measured."""
    from amqtt.broker import Broker

    from broker.server import TCP_LISTENER, WS_LISTENER, broker_config, listening_port
    from scorer.config import load_settings

    settings = load_settings(
        env={},
        overrides={
            "bind": args.bind,
            "mqtt_port": args.mqtt_port,
            "ws_port": args.ws_port,
            "data_dir": args.data_dir,
        },
    )
    broker = Broker(broker_config(settings))
    await broker.start()
    print(f"listening mqtt://{args.bind}:{listening_port(broker, TCP_LISTENER)}", flush=True)
    print(f"listening ws://{args.bind}:{listening_port(broker, WS_LISTENER)}/mqtt", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(broker.shutdown(), 5)


# -- the `rallycast bench` subcommand


def run_hostile_bench(args: argparse.Namespace) -> int:
    """The attacks of issue 9, both brokers side by side (broker/bench_hostile.py)."""
    from broker.bench_hostile import run_hostile_bench as run

    return run(args)


def run_pages_bench(args: argparse.Namespace) -> int:
    """Press -> screen and navigation -> first score in real Chromium (viewer/bench.py)."""
    from viewer.bench import print_pages_bench

    return print_pages_bench(args)


# target -> (function, help)
TARGETS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "broker": (run_broker_bench, "embedded broker vs mosquitto, N WebSocket subscribers"),
    "pages": (run_pages_bench, "press -> screen and first score in headless Chromium"),
    "hostile": (run_hostile_bench, "attacks by hostile clients, embedded broker vs mosquitto"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to measure")
    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--subscribers", type=int, nargs="+", default=[100], metavar="N",
        help="WebSocket subscribers, one run per value (default: 100; try 100 500 1000)",
    )  # fmt: skip
    broker.add_argument(
        "--brokers", nargs="+", choices=BROKER_KINDS, default=["embedded", "mosquitto"],
        help="brokers to measure (stock = amqtt's own Broker with our plugins)",
    )  # fmt: skip
    broker.add_argument("--rate", type=float, default=10.0, help="paced messages/s (default 10)")
    broker.add_argument("--seconds", type=float, default=10.0, help="paced phase length (10)")
    broker.add_argument(
        "--burst", type=int, default=0, help="burst messages (default: 100000/N, 20..500)"
    )
    broker.add_argument("--payload-bytes", type=int, default=400, help="payload size (400)")
    broker.add_argument(
        "--qos", type=int, choices=(0, 1), default=0, help="subscription QoS (pages use 0)"
    )
    broker.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="seconds to wait for the last deliveries of a phase (30)",
    )  # fmt: skip

    from broker.bench_hostile import add_hostile_arguments
    from viewer.bench import add_pages_arguments

    add_hostile_arguments(parser.add_argument_group("hostile"))

    add_pages_arguments(parser.add_argument_group("pages"))


def main(args: argparse.Namespace) -> int:
    function, _help = TARGETS[args.target]
    for value in getattr(args, "subscribers", None) or ():
        if not 1 <= value <= 5000:
            print("rallycast bench: --subscribers must be 1..5000", file=sys.stderr)
            return 2
    return function(args)


if __name__ == "__main__":
    # `python -m broker.bench serve-stock ...`: the comparison broker's process.
    if sys.argv[1:2] == ["serve-stock"]:
        import logging

        from scorer.logs import setup_logging

        setup_logging("WARNING")
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        stock = argparse.ArgumentParser(prog="broker.bench serve-stock")
        stock.add_argument("--bind", default="127.0.0.1")
        stock.add_argument("--mqtt-port", type=int, default=0)
        stock.add_argument("--ws-port", type=int, default=0)
        stock.add_argument("--data-dir", required=True)
        asyncio.run(_serve_stock(stock.parse_args(sys.argv[2:])))
        sys.exit(0)
    from scorer.cli import main as rallycast

    sys.exit(rallycast(["bench", *sys.argv[1:]]))
