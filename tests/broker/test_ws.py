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
