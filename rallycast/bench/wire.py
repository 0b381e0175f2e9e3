"""MQTT 3.1.1 and WebSocket on the wire, client side, without a client library: the raw
clients of the benchmarks and of the broker tests (``tests/support``), which must see exactly
what a broker sends (an MQTT library would hide a refused SUBACK or a dropped socket).

Packets come from ``broker/packets.py`` (the same encoder the broker's fast path uses);
this module adds the reading side (:class:`MqttStream`), WebSocket frames and blocking sockets.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from broker.packets import connect_packet, encode_publish

WS_HANDSHAKE = (
    "GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
)
ZERO_MASK = b"\x00\x00\x00\x00"


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
        position = 0
        while (body := packet_body(data, position)) is not None:
            start, end = body
            self.on_packet(data[position], data[start:end])
            position = end
        self.tail = data[position:]


def packet_body(data: bytes, position: int = 0) -> tuple[int, int] | None:
    """Where the body of the MQTT packet at ``data[position:]`` lies: (start, end) indexes
    into ``data``, read from its Remaining Length (MQTT 3.1.1 2.2.3, 7 bits a byte, low
    first); None while ``data`` holds less than the whole packet."""
    end_of_data = len(data)
    if end_of_data - position < 2:
        return None
    length, shift, index = 0, 0, position + 1
    while True:
        if index >= end_of_data:
            return None
        byte = data[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            break
        shift += 7
    end = index + length
    return None if end > end_of_data else (index, end)


def split_packet(data: bytes) -> tuple[int, bytes, bytes] | None:
    """The first MQTT packet in ``data`` as (first byte, body, the bytes after it); None
    while ``data`` holds less than a whole packet."""
    body = packet_body(data)
    if body is None:
        return None
    start, end = body
    return data[0], data[start:end], data[end:]


def ws_handshake(host: str, port: int) -> bytes:
    """The HTTP Upgrade request of an MQTT-over-WebSocket client (path /mqtt)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return WS_HANDSHAKE.format(host=host, port=port, key=key).encode()


def ws_frame(data: bytes, opcode: int = 0x2, mask: bytes | None = None) -> bytes:
    """A client-to-server (masked) WebSocket frame, RFC 6455 5.2. ``mask`` defaults to 4
    random bytes; ``ZERO_MASK`` leaves the payload as is (cheap for large floods)."""
    mask = os.urandom(4) if mask is None else mask
    size = len(data)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
    if mask == ZERO_MASK:
        return head + mask + data
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(data))


# -- blocking raw sockets


def raw_socket(port: int, source: str = "127.0.0.1", timeout: float = 3.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (any 127.x.y.z address)."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def read_connack(sock: socket.socket, timeout: float = 3.0) -> int | None:
    """The CONNACK return code, or None (closed or nothing within ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return data[3] if data[0] == 0x20 else None


def login(port: int, source: str, user: str, password: str) -> int | None:
    """One CONNECT with these credentials: the CONNACK code, or None."""
    try:
        with raw_socket(port, source) as sock:
            sock.sendall(connect_packet(f"login-{os.urandom(4).hex()}", user, password))
            return read_connack(sock)
    except OSError:
        return None


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes ``sock`` within ``timeout`` seconds (data is discarded)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def ws_socket(port: int) -> socket.socket:
    """A raw socket past the WebSocket handshake on 127.0.0.1:``port``/mqtt."""
    sock = raw_socket(port)
    sock.sendall(ws_handshake("127.0.0.1", port))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("WebSocket handshake refused")
        response += chunk
    if b" 101 " not in response.split(b"\r\n")[0]:
        sock.close()
        raise ConnectionError(f"WebSocket handshake refused: {response[:80]!r}")
    return sock


# -- a blocking raw MQTT client


class RawClient:
    """A blocking socket speaking just enough MQTT; ``packets()`` splits what arrives."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=(source, 0)
        )
        self.buffer = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False once the peer closed (or reset) the connection."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def packet(self, timeout: float = 3.0) -> tuple[int, bytes] | None:
        """The next packet (first byte, body), or None when the connection closed first."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if self.closed or not self._fill(deadline):
                return None

    def _parse(self) -> tuple[int, bytes] | None:
        packet = split_packet(self.buffer)
        if packet is None:
            return None
        first, body, self.buffer = packet
        return first, body

    def connack(self, timeout: float = 3.0) -> int | None:
        packet = self.packet(timeout)
        if packet is None:
            return None
        assert packet[0] == 0x20, f"expected CONNACK, got {packet}"
        return packet[1][1]

    def closed_within(self, timeout: float) -> bool:
        """True when the broker closes the connection within ``timeout`` s (whatever it sent
        before: collected in ``buffer``)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


@contextmanager
def raw_client(port: int, source: str = "127.0.0.1") -> Iterator[RawClient]:
    client = RawClient(port, source)
    try:
        yield client
    finally:
        client.close()
