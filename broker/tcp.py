"""A thin MQTT-over-TCP listener: one ``asyncio.Protocol`` per connection that feeds the bytes
into an ``asyncio.StreamReader`` (the broker's stream path, as broker/ws.py does for
WebSocket) and writes straight to the transport.

Why not ``asyncio.start_server``: each of its connections also keeps a
``StreamReaderProtocol`` (a dict of a dozen attributes, a deque of drain waiters, a "closed"
future), a ``StreamWriter`` (with its own future) and amqtt's ``StreamWriterAdapter`` on top:
about 2 KB per idle client that a broker serving thousands of spectators pays for nothing
(docs/benchmarks.md). This keeps the same behaviour as the stream path the broker used:

- reading is flow-controlled: the socket stops being read while the StreamReader holds more
  than ``2 x READ_LIMIT`` unread bytes (asyncio's own default limit);
- EOF from the peer ends the stream; the connection stays half-open for what the broker
  still writes (as ``StreamReaderProtocol`` does), except over TLS;
- a lost connection ends the stream with its error (``ConnectionResetError`` etc.) and wakes
  every writer waiting in :meth:`TcpConnection.drain`, which then raises
  ``ConnectionResetError`` as ``StreamWriter.drain`` does;
- :meth:`TcpConnection.close` flushes, sends FIN and waits until the socket is closed.

No amqtt import: broker/hardening.py (the amqtt seam) wraps each connection in amqtt's
adapters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Listener", "TcpConnection", "WriteFlow", "serve_tcp", "unlink_transport"]

log = logging.getLogger("rallycast.broker.tcp")

# StreamReader limit (asyncio's default): reading pauses above twice this many unread bytes.
READ_LIMIT = 64 * 1024

# (stream, connection) -> the broker's connection coroutine (RallycastBroker.tcp_link_connected).
Handler = Callable[[asyncio.StreamReader, "TcpConnection"], Coroutine[Any, Any, None]]


def log_failure(task: asyncio.Task[None]) -> None:
    """A connection's task ended with an error nobody awaited: say so once."""
    exc = None if task.cancelled() else task.exception()
    if exc is not None and not isinstance(exc, ConnectionError):
        log.warning("connection handler failed: %r", exc)


def unlink_transport(transport: asyncio.BaseTransport | None) -> None:
    """Called from ``connection_lost``: break the cycle a closed selector transport keeps
    with itself (CPython 3.11's ``_SelectorSocketTransport`` holds its bound read callback),
    so that the transport and its socket are freed at once, not by the next full GC pass
    (issue 16: thousands of them after a mass disconnect). asyncio reads nothing more from a
    transport whose connection is lost."""
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[union-attr]


class Listener:
    """What amqtt and RallycastBroker need of a listener: ``sockets``, ``close``,
    ``wait_closed``, ``server`` (the listening asyncio.Server) and ``handlers`` (the open
    connections, each with a ``transport``)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.handlers: set[Any] = set()

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self.server.sockets) if self.server is not None else ()

    def close(self) -> None:
        """Stop accepting and abort every connection still open."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.handlers):
            if connection.transport is not None:
                connection.transport.abort()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


class WriteFlow(asyncio.Protocol):
    """asyncio's flow control for a connection that writes straight to its transport:
    ``pause_writing``/``resume_writing`` keep ``_paused``, and a writer waits in
    ``_writable()`` while it is set (TcpConnection, WsConnection in broker/ws.py)."""

    __slots__ = ("_drain", "_paused")

    def __init__(self) -> None:
        self._paused = False
        self._drain: asyncio.Future[None] | None = None  # created when a writer has to wait

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def _writable(self) -> None:
        """Wait for ``resume_writing`` (or ``connection_lost``, which sets ``_drain`` too)."""
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain)


class TcpConnection(WriteFlow):
    """One TCP connection: a StreamReader fed from ``data_received``, writes straight to the
    transport, drain and close as ``StreamWriter`` does them. The MQTT side is the
    ``handler`` coroutine, started as soon as the connection is made."""

    __slots__ = (
        "_closed",
        "_handler",
        "_listener",
        "_lost",
        "_tls",
        "remote_address",
        "stream",
        "task",
        "transport",
    )

    def __init__(self, listener: Listener, handler: Handler, tls: bool) -> None:
        super().__init__()
        self._listener = listener
        self._handler = handler
        self._tls = tls
        self.transport: asyncio.Transport | None = None
        self.remote_address: tuple[str, int] | None = None
        self.stream: asyncio.StreamReader | None = None
        self.task: asyncio.Task[None] | None = None
        self._lost = False
        self._closed: asyncio.Future[None] | None = None  # created by close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote_address = (peer[0], peer[1]) if peer and len(peer) >= 2 else None
        self._listener.handlers.add(self)
        stream = asyncio.StreamReader(limit=READ_LIMIT)
        stream.set_transport(transport)  # type: ignore[arg-type]
        self.stream = stream
        self.task = asyncio.get_running_loop().create_task(self._handler(stream, self))
        self.task.add_done_callback(log_failure)

    def data_received(self, data: bytes) -> None:
        self.stream.feed_data(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.stream.feed_eof()  # type: ignore[union-attr]
        return not self._tls  # keep writing after the peer's FIN (TLS cannot)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.handlers.discard(self)
        self._lost = True
        stream = self.stream
        if stream is not None and not stream.at_eof():
            if exc is None:
                stream.feed_eof()
            else:
                stream.set_exception(exc)
        for future in (self._drain, self._closed):
            if future is not None and not future.done():
                future.set_result(None)
        self._drain = None
        unlink_transport(self.transport)
        self.transport = None

    # -- writing

    def write(self, data: bytes) -> None:
        """Write now (asyncio buffers what the socket does not take); nothing once closing."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        """Wait while asyncio holds more than its high-water mark for this socket. Raises
        the stream's error, or ``ConnectionResetError`` once the connection is lost."""
        stream = self.stream
        if stream is not None and stream.exception() is not None:
            raise stream.exception()  # type: ignore[misc]
        if self.transport is not None and self.transport.is_closing():
            await asyncio.sleep(0)  # let connection_lost run, as StreamWriter.drain does
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        await self._writable()
        if self._lost:
            raise ConnectionResetError("Connection lost")

    async def close(self) -> None:
        """Flush, send FIN, close, and wait until the socket is closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        await self.drain()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        transport.close()
        await asyncio.shield(self._closed)


async def serve_tcp(handler: Handler, host: str | None, port: int, *, ssl: Any = None) -> Listener:
    """Listen for MQTT over TCP on ``host:port``; ``handler(stream, connection)`` runs once per
    connection (in the connection's task)."""
    listener = Listener()
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(
        lambda: TcpConnection(listener, handler, ssl is not None),
        host,
        port,
        reuse_address=True,
        ssl=ssl,
    )
    return listener
