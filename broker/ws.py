"""A thin MQTT-over-WebSocket listener: one ``asyncio.Protocol`` per connection that does the
opening handshake and the framing with websockets' sans-I/O ``ServerProtocol`` (RFC 6455
parsing stays in websockets), and feeds the payload bytes into the broker's stream path
(an ``asyncio.StreamReader``, as a TCP connection does).

Why not ``websockets.serve``: its ``ServerConnection`` keeps, per connection and for the
connection's whole life, the handshake request and response with their headers, a receive
queue (the message assembler) with waiting coroutines, a keep-alive task and more: ~12 KB per
idle spectator, twice what mosquitto needs for the whole connection (docs/benchmarks.md).
MQTT over WebSocket carries a byte stream [MQTT-6.0.0-2..4]: message boundaries mean
nothing, so each data frame's payload goes straight into the stream; nothing is assembled.

What it keeps from ``websockets.serve`` as the broker used it (tests/broker/test_hostile.py):

- the subprotocol ``mqtt`` is required (HTTP 400 without it: websockets' own negotiation);
- no extensions (no permessage-deflate), no WebSocket pings from the server (MQTT keep-alive
  covers dead peers); a client's ping gets its pong (websockets does it);
- no frame (nor fragmented message) larger than ``max_size`` bytes: refused from the frame
  header, before its payload is buffered (close code 1009);
- the handshake must complete within ``open_timeout`` seconds, else the socket is aborted;
- a text frame closes the connection with 1003 [MQTT-6.0.0-1: binary frames only];
- a close handshake that the peer does not finish within ``close_timeout`` ends in an abort.

Reading is flow-controlled: when the broker does not read (the StreamReader holds more than
``2 x READ_LIMIT`` bytes) the socket stops being read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import OK_CLOSE_CODES, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from broker.tcp import Listener, WriteFlow, unlink_transport

__all__ = ["WsConnection", "WsServer", "serve_ws"]

log = logging.getLogger("rallycast.broker.ws")

SUBPROTOCOLS = [Subprotocol("mqtt")]
# StreamReader limit: reading pauses above twice this many unread bytes.
READ_LIMIT = 32 * 1024
UNSUPPORTED_DATA = 1003  # WebSocket close code (RFC 6455 7.4.1)

# (stream, connection) -> the broker's connection coroutine (RallycastBroker.ws_link_connected,
# which wraps them in amqtt's adapters: broker/hardening.py is the only module that does).
Handler = Callable[[asyncio.StreamReader, "WsConnection"], Coroutine[Any, Any, None]]


def _closed_error(protocol: ServerProtocol) -> ConnectionClosed:
    """What websockets raises for a write after the close (``Protocol.close_exc``, also while
    the close handshake is still going on)."""
    ok = (
        protocol.close_rcvd is not None
        and protocol.close_sent is not None
        and protocol.close_rcvd.code in OK_CLOSE_CODES
        and protocol.close_sent.code in OK_CLOSE_CODES
    )
    kind = ConnectionClosedOK if ok else ConnectionClosedError
    return kind(protocol.close_rcvd, protocol.close_sent, protocol.close_rcvd_then_sent)


def _log_failure(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None and not isinstance(exc, ConnectionClosed):  # closed: an ordinary end
        log.warning("WebSocket connection handler failed: %r", exc)


class WsServer(Listener):
    """The WebSocket listener: ``handlers`` holds its WsConnections (broker/tcp.py
    ``Listener``)."""


class WsConnection(WriteFlow):
    """One WebSocket connection: handshake, framing, flow control; the MQTT side is the
    ``handler`` coroutine, started once the handshake succeeded."""

    __slots__ = (
        "_closed",
        "_handler",
        "_handshake_timer",
        "_listener",
        "_max_size",
        "close_timeout",
        "on_not_open",
        "protocol",
        "remote_address",
        "stream",
        "task",
        "transport",
    )

    def __init__(
        self,
        listener: WsServer,
        handler: Handler,
        *,
        max_size: int,
        open_timeout: float,
        close_timeout: float,
    ) -> None:
        super().__init__()
        self._listener = listener
        self._handler = handler
        self._max_size = max_size
        self.close_timeout = close_timeout
        self.protocol: ServerProtocol | None = None
        self.transport: asyncio.Transport | None = None
        self.remote_address: tuple[str, int] | None = None
        self.stream: asyncio.StreamReader | None = None  # after the handshake
        self.task: asyncio.Task[None] | None = None
        # Called once when the connection leaves OPEN (closing, closed, lost): the Outbox then
        # stops writing frames itself, without a state check per delivery (broker/outbox.py).
        self.on_not_open: Callable[[], None] | None = None
        self._closed: asyncio.Future[None] | None = None  # created by close()
        self._handshake_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            open_timeout, self._handshake_timed_out
        )

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote_address = (peer[0], peer[1]) if peer else None
        self.protocol = ServerProtocol(subprotocols=SUBPROTOCOLS, max_size=self._max_size)
        self._listener.handlers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.handlers.discard(self)
        self._cancel_handshake_timer()
        if self.protocol is not None:
            self.protocol.receive_eof()
        if self.stream is not None and not self.stream.at_eof():
            self.stream.feed_eof()
        for future in (self._drain, self._closed):
            if future is not None and not future.done():
                future.set_result(None)
        unlink_transport(self.transport)
        self.transport = None
        self._left_open()

    def eof_received(self) -> bool | None:
        if self.protocol is not None:
            self.protocol.receive_eof()
            self.send_data()
        if self.stream is not None and not self.stream.at_eof():
            self.stream.feed_eof()
        self._left_open()
        return None  # close the transport

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        protocol.receive_data(data)
        events = protocol.events_received()
        if self.stream is None:
            for index, event in enumerate(events):
                if isinstance(event, Request):
                    self._handshake(protocol, event)
                    events = events[index + 1 :]  # frames sent along with the request
                    break
            else:
                self.send_data()  # a bad request: websockets answers and closes
                return
        stream = self.stream
        for event in events:
            if not isinstance(event, Frame) or stream is None or stream.at_eof():
                continue
            if event.opcode is Opcode.BINARY or event.opcode is Opcode.CONT:
                if event.data:
                    stream.feed_data(event.data)
            elif event.opcode is Opcode.TEXT:
                protocol.fail(UNSUPPORTED_DATA, "MQTT over WebSocket uses binary frames")
                stream.feed_eof()
        self.send_data()
        if stream is not None and protocol.close_expected() and not stream.at_eof():
            stream.feed_eof()  # closing (by the peer, or a frame websockets refused)
        if protocol.state is not OPEN:
            self._left_open()

    def _left_open(self) -> None:
        """Tell the watcher (``on_not_open``), once, that frames may no longer be sent."""
        hook = self.on_not_open
        if hook is not None:
            self.on_not_open = None
            hook()

    # -- handshake

    def _handshake(self, protocol: ServerProtocol, request: Request) -> None:
        response = protocol.accept(request)
        protocol.send_response(response)
        self.send_data()
        if protocol.state is not OPEN:
            return  # refused (no "mqtt" subprotocol, not an upgrade, ...): websockets closes
        self._cancel_handshake_timer()
        reader = protocol.reader
        if not reader.buffer:
            # ServerProtocol.parse keeps the handshake Request in a local of its generator
            # for the connection's life (~1.5 KB with headers): nothing is buffered, so a
            # fresh frame parser can take over.
            protocol.parser = Protocol.parse(protocol)
            next(protocol.parser)
        # The MQTT side reads from a stream, as on a TCP connection.
        stream = asyncio.StreamReader(limit=READ_LIMIT)
        stream.set_transport(self.transport)  # type: ignore[arg-type]
        self.stream = stream
        self.task = asyncio.get_running_loop().create_task(self._handler(stream, self))
        self.task.add_done_callback(_log_failure)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.stream is None and self.transport is not None:
            self.transport.abort()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    # -- writing

    def send_data(self) -> None:
        """Write what websockets has to send (frames, handshake answer); its EOF marker
        (``b""``) closes the TCP connection (the server closes first, RFC 6455 7.1.1)."""
        protocol, transport = self.protocol, self.transport
        if protocol is None:
            return
        for data in protocol.data_to_send():
            if transport is None:
                continue
            if data:
                transport.write(data)
            else:
                transport.close()

    def send_binary(self, data: bytes) -> None:
        """One binary frame. Raises ``websockets.ConnectionClosedOK`` (the peer closed with
        1000/1001) or ``ConnectionClosedError`` once the connection is no longer open, as
        websockets' own connection does (broker/server.py tells the two apart in logs)."""
        protocol = self.protocol
        if protocol is None:
            raise ConnectionClosedError(None, None)
        if protocol.state is not OPEN or self.transport is None:
            raise _closed_error(protocol)
        protocol.send_binary(data)
        self.send_data()

    async def drain(self) -> None:
        """Wait while asyncio holds more than its high-water mark for this socket."""
        if not self._paused or self.transport is None:
            return
        await self._writable()

    async def close(self) -> None:
        """Close handshake (1000), at most ``close_timeout`` seconds, then abort."""
        transport = self.transport
        if transport is None:
            return
        protocol = self.protocol
        if protocol is not None and protocol.state is OPEN:
            protocol.send_close(1000)
            self.send_data()
        self._left_open()
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), self.close_timeout)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


async def serve_ws(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    ssl: Any = None,
    max_size: int,
    open_timeout: float,
    close_timeout: float,
) -> WsServer:
    """Listen for MQTT over WebSocket on ``host:port``; ``handler(stream, connection)`` runs once
    per connection whose handshake succeeded (in the connection's task)."""
    listener = WsServer()
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(
        lambda: WsConnection(
            listener,
            handler,
            max_size=max_size,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
        ),
        host,
        port,
        ssl=ssl,
    )
    return listener
