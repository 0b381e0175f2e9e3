"""The embedded broker's own WebSocket layer (broker/ws.py) keeps what websockets.serve gave:
RFC 6455 framing (fragments, ping/pong, close codes), subprotocol ``mqtt`` required, and MQTT
over WebSocket as a byte stream [MQTT-6.0.0]. Real broker, real websockets client."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from broker.packets import connect_packet

CONNACK_OK = b"\x20\x02\x00\x00"


def open_ws(endpoint, **kwargs):
    return connect(
        f"ws://127.0.0.1:{endpoint.ws_port}/mqtt",
        subprotocols=kwargs.pop("subprotocols", ["mqtt"]),
        compression=None,
        open_timeout=5,
        **kwargs,
    )


def test_a_connect_split_over_fragments_and_frames_is_read_as_one_stream(amqtt_broker):
    packet = connect_packet("ws-fragments")
    with open_ws(amqtt_broker) as ws:
        ws.send([packet[:3], packet[3:7]])  # one fragmented message: first + continuation
        ws.send(packet[7:])  # the rest in another message: MQTT over WS is a byte stream
        assert ws.recv(timeout=5) == CONNACK_OK


def test_a_ping_gets_its_pong(amqtt_broker):
    with open_ws(amqtt_broker) as ws:
        ws.send(connect_packet("ws-ping"))
        assert ws.recv(timeout=5) == CONNACK_OK
        assert ws.ping(b"rallycast").wait(5)


def test_a_text_frame_closes_the_connection_with_1003(amqtt_broker):
    with open_ws(amqtt_broker) as ws:
        ws.send(connect_packet("ws-text"))
        assert ws.recv(timeout=5) == CONNACK_OK
        ws.send("not binary")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1003


def test_a_frame_over_max_packet_bytes_closes_with_1009(amqtt_broker):
    with open_ws(amqtt_broker, max_size=None) as ws:
        ws.send(connect_packet("ws-big"))
        assert ws.recv(timeout=5) == CONNACK_OK
        ws.send(bytes(200_000))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1009


def test_a_handshake_without_the_mqtt_subprotocol_is_refused(amqtt_broker):
    with pytest.raises(InvalidStatus) as refused:
        open_ws(amqtt_broker, subprotocols=None)
    assert refused.value.response.status_code == 400


def test_the_broker_closes_with_1000_when_the_client_disconnects(amqtt_broker):
    with open_ws(amqtt_broker) as ws:
        ws.send(connect_packet("ws-bye"))
        assert ws.recv(timeout=5) == CONNACK_OK
        ws.send(b"\xe0\x00")  # DISCONNECT
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1000


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server-to-client frame in ``data`` (RFC 6455 5.2)."""
    frames = []
    while len(data) >= 2:
        size, start = data[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        frames.append((data[0] & 0x0F, data[start : start + size]))
        data = data[start + size :]
    return frames


async def test_no_mqtt_frame_follows_the_servers_close_frame():
    """The Outbox writes QoS 0 frames to the transport itself while the WebSocket is OPEN; once
    the server has sent its close frame (waiting for the client's), nothing may follow it
    [RFC 6455 5.5.1]: the connection's on_not_open hook turns that fast path off."""
    import asyncio

    from amqtt.session import Session

    from broker.outbox import Outbox
    from broker.packets import OutgoingMessage
    from broker.ws import serve_ws
    from rallycast.bench.wire import raw_socket, ws_handshake

    written = asyncio.get_running_loop().create_future()

    async def handler(stream, connection):
        session = Session()
        session.client_id = "ws-closing"
        outbox = Outbox(session, 1000, 2**20, lambda _o: None)
        outbox.attach(object(), connection.transport, connection, connection.drain)
        outbox.offer(OutgoingMessage("t", b"before"), 0)
        closing = asyncio.ensure_future(connection.close())  # close frame sent, reply awaited
        await asyncio.sleep(0)
        outbox.offer(OutgoingMessage("t", b"after"), 0)
        written.set_result(None)
        await closing

    listener = await serve_ws(
        handler, "127.0.0.1", 0, max_size=2**20, open_timeout=5, close_timeout=0.5
    )
    try:
        port = listener.sockets[0].getsockname()[1]
        sock = raw_socket(port, timeout=5)
        sock.sendall(ws_handshake("127.0.0.1", port))
        await asyncio.wait_for(written, 5)

        def read_until_closed() -> bytes:
            data = b""
            while chunk := sock.recv(4096):  # the server aborts after close_timeout
                data += chunk
            return data

        try:
            response = await asyncio.to_thread(read_until_closed)
        finally:
            sock.close()
        head, _, rest = response.partition(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0], head
        frames = _frames(rest)
    finally:
        listener.close()
        await listener.wait_closed()
    opcodes = [opcode for opcode, _payload in frames]
    assert opcodes == [0x2, 0x8], frames  # "before", then the close frame: nothing after it
    assert b"before" in frames[0][1]
