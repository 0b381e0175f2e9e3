"""The embedded MQTT broker: amqtt (through our RallycastBroker) with a TCP and a WebSocket
listener, our auth/ACL plugin and our store (retained messages, persistent sessions).

Usage (inside a running event loop)::

    running = await start_broker(settings)
    print(running.mqtt_url, running.ws_url)   # real ports, also when settings ask for port 0
    ...
    await running.stop()
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from amqtt.broker import Broker
from amqtt.errors import ProtocolHandlerError

from broker.hardening import QueueLimits, RallycastBroker, listening_port
from broker.limits import BrokerLimits, private_data_dir
from scorer.config import Settings, bind_description, url_host

log = logging.getLogger("rallycast.broker")

TCP_LISTENER = "default"  # amqtt requires a listener named "default"
WS_LISTENER = "ws"
STORE_FILE = "broker.db"  # in Settings.data_dir: retained messages, persistent sessions
STOP_TIMEOUT = 2.0  # seconds; `rallycast broker` promises to stop within 2 s

# Plugin paths (amqtt imports them by dotted name).
ACCESS_PLUGIN = "broker.acl.RallycastAccessPlugin"
PERSISTENCE_PLUGIN = "broker.persistence.PersistencePlugin"


class _DropProbeNoise(logging.Filter):
    """A TCP connection closed before it sent anything (health checks, port probes) is logged
    by amqtt as a "bad CONNECT ... No data" warning: an ordinary event, not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "No data" in record.getMessage())


_PROBE_FILTER = _DropProbeNoise()


def closed_normally(exc: BaseException | None) -> bool:
    """The WebSocket peer closed the connection cleanly (close code 1000 "OK" or 1001 "going
    away": what a browser sends when a tab closes or navigates away)."""
    return isinstance(exc, websockets.ConnectionClosedOK)


def cancelled_answer(exc: BaseException | None) -> bool:
    """amqtt cancels a connection's pending ``handle_*`` tasks when the connection ends;
    its ``_send_packet`` turns that cancellation into ``ProtocolHandlerError("Packet handling
    was cancelled")``: an answer nobody is left to read, not a fault."""
    return isinstance(exc, ProtocolHandlerError) and isinstance(
        exc.__cause__, asyncio.CancelledError
    )


class _DropNormalClose(logging.Filter):
    """A browser tab that closes while amqtt still answers its last packets (SUBACK, PINGRESP,
    PUBACK) makes the write fail with ``ConnectionClosedOK``. amqtt 0.12.1 logs that as
    ``Unhandled exception: received 1001 (going away); ...`` (``_send_packet``, logger
    ``amqtt.mqtt.protocol.handler``) and re-raises it into the ``handle_*`` task, which its
    reader loop drops unread: asyncio then logs ``Task exception was never retrieved`` with a
    traceback. Both are the ordinary end of a page view. Any other exception, including an
    abnormal close (``ConnectionClosedError``: the network dropped), stays visible. The
    same reader loop cancels the answers still waiting for the write lock: those tasks end in
    :func:`cancelled_answer` errors, reported unread the same way, and dropped too."""

    def __init__(self, while_handling: bool) -> None:
        super().__init__()
        # amqtt logs its warning inside the `except` block, without exc_info: look there too.
        self.while_handling = while_handling

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and self.while_handling:
            exc = sys.exc_info()[1]
        return not (closed_normally(exc) or cancelled_answer(exc))


_HANDLER_CLOSE_FILTER = _DropNormalClose(while_handling=True)
_ASYNCIO_CLOSE_FILTER = _DropNormalClose(while_handling=False)


def _add_filter(logger_name: str, log_filter: logging.Filter) -> None:
    logger = logging.getLogger(logger_name)
    if log_filter not in logger.filters:
        logger.addFilter(log_filter)


def quiet_library_loggers(level: str = "INFO") -> None:
    """amqtt logs every connection at INFO and websockets logs failed handshakes as errors
    with tracebacks. Keep amqtt's warnings (refused logins, slow clients, ...) minus the
    probe noise and the noise of a browser tab closing (:class:`_DropNormalClose`), and
    nothing from websockets. With level DEBUG everything stays visible. Idempotent; changes
    only these libraries' loggers (and drops asyncio's "never retrieved" report only for a
    clean WebSocket close)."""
    if level.upper() == "DEBUG":
        return
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    _add_filter("amqtt.broker", _PROBE_FILTER)
    _add_filter("amqtt.mqtt.protocol.handler", _HANDLER_CLOSE_FILTER)
    _add_filter("asyncio", _ASYNCIO_CLOSE_FILTER)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)


def _bind(host: str, port: int) -> str:
    return f"{url_host(host)}:{port}"


def queue_limits(settings: Settings) -> QueueLimits:
    """The bounds of every session's queue (docs/broker.md, "Delivery guarantees")."""
    return QueueLimits(
        messages=settings.max_queued_messages,
        bytes=settings.max_queued_bytes,
        service_user=settings.service_user,
        service_messages=settings.service_max_queued_messages,
        service_bytes=settings.service_max_queued_bytes,
    )


def broker_config(settings: Settings) -> dict[str, Any]:
    """The amqtt config dict for these settings (also what RallycastBroker receives)."""
    return {
        "listeners": {
            TCP_LISTENER: {
                "type": "tcp",
                "bind": _bind(settings.bind, settings.mqtt_port),
                "max_connections": settings.max_connections,
            },
            WS_LISTENER: {
                "type": "ws",
                "bind": _bind(settings.bind, settings.ws_port),
                "max_connections": settings.max_connections,
            },
        },
        # Only the plugins we need: amqtt's defaults (event/packet loggers, $SYS) cost
        # ~2.6x CPU per delivered message.
        "plugins": {
            ACCESS_PLUGIN: {
                "password_file": str(settings.password_file),
                "service_user": settings.service_user,
                "max_subscriptions": settings.max_subscriptions,
                "login_attempts_per_minute": settings.login_attempts_per_minute,
            },
            PERSISTENCE_PLUGIN: {
                "file": str(Path(settings.data_dir) / STORE_FILE),
                "max_queued_messages": settings.max_queued_messages,
                "max_queued_bytes": settings.max_queued_bytes,
                "service_user": settings.service_user,
                "service_max_queued_messages": settings.service_max_queued_messages,
                "service_max_queued_bytes": settings.service_max_queued_bytes,
            },
        },
    }


class EmbeddedBroker(RallycastBroker):
    """The broker ``start_broker`` runs: RallycastBroker (broker/hardening.py, the one module
    that overrides amqtt's private methods) with ``max_payload_bytes`` set from Settings:

    - publishes whose payload is larger than Settings.max_payload_bytes are dropped, like
      mosquitto's ``message_size_limit``: not forwarded, not retained, the client stays
      connected;
    - a persistent session resumed by ANOTHER user does not hand that user the messages
      queued for the previous one: RallycastBroker checks each against the new user's read
      rights first, as mosquitto does.
    """


@dataclass
class RunningBroker:
    broker: Broker
    bind: str
    host: str  # address local clients connect to (127.0.0.1 when bound to every interface)
    mqtt_port: int
    ws_port: int
    settings: Settings = field(repr=False)

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{url_host(self.host)}:{self.mqtt_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{url_host(self.host)}:{self.ws_port}/mqtt"

    @property
    def listening(self) -> str:
        """Where it really listens, then the URLs for this machine: ``listening on all IPv4
        interfaces (0.0.0.0), MQTT port 1883 and WebSocket port 9001 (mqtt://127.0.0.1:1883
        and ws://127.0.0.1:9001/mqtt from this machine)``."""
        return (
            f"listening on {bind_description(self.bind)}, MQTT port {self.mqtt_port} and "
            f"WebSocket port {self.ws_port} ({self.mqtt_url} and {self.ws_url} from this machine)"
        )

    async def stop(self) -> None:
        """Stop the listeners and close every connection (within STOP_TIMEOUT seconds)."""
        try:
            await asyncio.wait_for(self.broker.shutdown(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("broker shutdown took longer than %.0f s; abandoned", STOP_TIMEOUT)


async def start_broker(settings: Settings) -> RunningBroker:
    """Start the embedded broker in the running event loop."""
    # 0700: the password hashes, the store and the service's client id stay private.
    await asyncio.to_thread(private_data_dir, settings.data_dir)
    quiet_library_loggers(settings.log_level)
    broker = EmbeddedBroker(broker_config(settings), queue_limits=queue_limits(settings))
    broker.max_payload_bytes = settings.max_payload_bytes
    broker.client_limits = BrokerLimits(
        max_packet_bytes=settings.max_packet_bytes,
        reserved_connections=settings.reserved_connections,
        service_user=settings.service_user,
    )
    await broker.start()
    # The store's files were just created (umask permitting 0644): owner only.
    await asyncio.to_thread(private_data_dir, settings.data_dir)
    running = RunningBroker(
        broker=broker,
        bind=settings.bind,
        host=settings.local_host,
        mqtt_port=listening_port(broker, TCP_LISTENER),
        ws_port=listening_port(broker, WS_LISTENER),
        settings=settings,
    )
    log.info("broker %s", running.listening)
    return running
