"""broker/tcp.py, the thin TCP listener (issue 16): the stream and writer behaviour the broker
had with ``asyncio.start_server`` (EOF, flow control both ways, drain after a lost connection,
close with FIN), on real loopback sockets. The broker-level behaviour (hostile clients,
keep-alive, CONNECT timeout, oversized packets) is pinned by test_hostile.py and
test_faults.py, which now run over this layer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from broker import tcp
from broker.hardening import RallycastBroker, TcpWriter

pytestmark = pytest.mark.asyncio


class Served:
    """The server side of each accepted connection, as the handler saw it."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[tuple[asyncio.StreamReader, tcp.TcpConnection]] = (
            asyncio.Queue()
        )
        self.release = asyncio.Event()

    async def handler(self, stream: asyncio.StreamReader, connection: tcp.TcpConnection) -> None:
        await self.accepted.put((stream, connection))
        await self.release.wait()


@contextlib.asynccontextmanager
async def listening() -> AsyncIterator[tuple[tcp.Listener, Served, int]]:
    served = Served()
    listener = await tcp.serve_tcp(served.handler, "127.0.0.1", 0)
    try:
        yield listener, served, listener.sockets[0].getsockname()[1]
    finally:
        served.release.set()
        listener.close()
        await listener.wait_closed()


async def test_the_handler_reads_what_the_client_sent_then_eof_when_it_closes():
    async with listening() as (_listener, served, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream, connection = await asyncio.wait_for(served.accepted.get(), 5)
        writer.write(b"\x10\x00hello")
        assert await asyncio.wait_for(stream.readexactly(7), 5) == b"\x10\x00hello"
        assert connection.remote_address == writer.get_extra_info("sockname")[:2]
        writer.close()
        assert await asyncio.wait_for(stream.read(), 5) == b""
        assert stream.at_eof()


async def test_after_the_peer_s_fin_the_broker_can_still_answer():
    async with listening() as (_listener, served, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream, connection = await asyncio.wait_for(served.accepted.get(), 5)
        writer.write_eof()
        assert await asyncio.wait_for(stream.read(), 5) == b""
        connection.write(b"\x20\x02\x00\x00")  # a CONNACK after the client's FIN
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        writer.close()


async def test_reading_pauses_while_the_broker_does_not_read():
    async with listening() as (_listener, served, port):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream, connection = await asyncio.wait_for(served.accepted.get(), 5)
        writer.write(b"x" * (8 * tcp.READ_LIMIT))
        for _ in range(500):  # until the StreamReader pauses the socket
            if not connection.transport.is_reading():
                break
            await asyncio.sleep(0.01)
        assert not connection.transport.is_reading()
        assert len(await stream.readexactly(8 * tcp.READ_LIMIT)) == 8 * tcp.READ_LIMIT
        assert connection.transport.is_reading()
        writer.close()


async def test_drain_waits_while_the_peer_does_not_read_and_raises_once_it_is_gone():
    async with listening() as (_listener, served, port):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _stream, connection = await asyncio.wait_for(served.accepted.get(), 5)
        for _ in range(100):  # the peer reads nothing: the kernel's buffers fill, then ours
            connection.write(b"y" * 1_000_000)
            await asyncio.sleep(0.02)
            if connection.transport.get_write_buffer_size() > 2_000_000:
                break
        draining = asyncio.ensure_future(connection.drain())
        await asyncio.sleep(0.05)
        assert not draining.done(), "drain() returned above the high-water mark"
        writer.transport.abort()  # the peer vanishes
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(draining, 5)
        with pytest.raises(ConnectionResetError):
            await connection.drain()


async def test_close_sends_fin_waits_for_the_socket_and_later_writes_are_dropped():
    async with listening() as (_listener, served, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _stream, connection = await asyncio.wait_for(served.accepted.get(), 5)
        adapter = TcpWriter(connection)
        adapter.write(b"\xd0\x00")  # PINGRESP, flushed before the FIN
        await asyncio.wait_for(adapter.close(), 5)
        assert connection.transport is None  # closed, not just closing
        adapter.write(b"late")  # ignored, as amqtt's StreamWriterAdapter does
        assert await asyncio.wait_for(reader.read(), 5) == b"\xd0\x00"
        writer.close()


async def test_the_broker_s_tcp_listener_is_the_thin_layer():
    broker = RallycastBroker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {"tests.broker.test_faults.KnownUserAuth": {}},  # anonymous allowed
        }
    )
    await broker.start()
    try:
        instance = broker._servers["default"].instance
        assert isinstance(instance, tcp.Listener)
        port = instance.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # CONNECT, empty id
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        assert len(instance.handlers) == 1
        writer.close()
    finally:
        await broker.shutdown()
