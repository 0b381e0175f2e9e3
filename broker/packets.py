"""MQTT 3.1.1 packet encoding: the few packets our broker writes on its fast path (a PUBLISH
encoded once per message, its WebSocket frame, :class:`OutgoingMessage`) and the raw clients
of the benchmark and the fault tests send (they must not depend on amqtt's client). No amqtt
import: this is wire format only."""

from __future__ import annotations


def encode_varint(n: int) -> bytes:
    """The "remaining length" of a fixed header."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def encode_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def encode_publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, packet_id: int | None = None
) -> bytes:
    """One PUBLISH packet."""
    header = 0x30 | (qos << 1) | int(retain)
    variable = len(topic).to_bytes(2, "big") + topic
    if qos:
        variable += (packet_id or 0).to_bytes(2, "big")
    return bytes((header,)) + encode_varint(len(variable) + len(payload)) + variable + payload


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    clean: bool = True,
    keepalive: int = 60,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username else 0) | (0x40 if password else 0)
    body = (
        encode_string("MQTT")
        + bytes((4, flags))
        + keepalive.to_bytes(2, "big")
        + encode_string(client_id)
    )
    if username:
        body += encode_string(username)
    if password:
        body += encode_string(password)
    return b"\x10" + encode_varint(len(body)) + body


def subscribe_packet(topic: str, qos: int = 0, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + encode_string(topic) + bytes((qos,))
    return b"\x82" + encode_varint(len(body)) + body


PINGREQ = b"\xc0\x00"


def ws_binary_frame(data: bytes) -> bytes:
    """A server-to-client (unmasked) WebSocket binary frame carrying ``data``."""
    size = len(data)
    if size < 126:
        return bytes((0x82, size)) + data
    if size < 65536:
        return bytes((0x82, 126)) + size.to_bytes(2, "big") + data
    return bytes((0x82, 127)) + size.to_bytes(8, "big") + data


class OutgoingMessage:
    """A message on its way to subscribers; the QoS 0 encodings are built once, on demand."""

    __slots__ = ("topic", "data", "retain", "_topic_bytes", "_qos0", "_ws_qos0")

    def __init__(self, topic: str, data: bytes | bytearray, retain: bool = False) -> None:
        self.topic = topic
        self.data = bytes(data)
        self.retain = retain
        self._topic_bytes = topic.encode("utf-8")
        self._qos0: bytes | None = None
        self._ws_qos0: bytes | None = None

    def packet(self, qos: int, packet_id: int | None = None) -> bytes:
        if qos == 0:
            if self._qos0 is None:
                self._qos0 = encode_publish(self._topic_bytes, self.data, 0, self.retain)
            return self._qos0
        return encode_publish(self._topic_bytes, self.data, qos, self.retain, packet_id)

    def ws_qos0(self) -> bytes:
        if self._ws_qos0 is None:
            self._ws_qos0 = ws_binary_frame(self.packet(0))
        return self._ws_qos0
