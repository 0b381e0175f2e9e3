"""MQTT 3.1.1 packet encoding: the few packets our broker writes on its fast path and the raw
clients of the benchmark and the fault tests send (they must not depend on amqtt's client)."""

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
