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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.session import Session

from broker.hardening import RallycastBroker
from broker.limits import BrokerLimits, private_data_dir
from scorer.config import Settings, url_host

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


def quiet_library_loggers(level: str = "INFO") -> None:
    """amqtt logs every connection at INFO and websockets logs failed handshakes as errors
    with tracebacks. Keep amqtt's warnings (refused logins, slow clients, ...) minus the
    probe noise, and nothing from websockets. With level DEBUG everything stays visible.
    Idempotent; changes only these libraries' loggers."""
    if level.upper() == "DEBUG":
        return
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    amqtt_broker_log = logging.getLogger("amqtt.broker")
    if _PROBE_FILTER not in amqtt_broker_log.filters:
        amqtt_broker_log.addFilter(_PROBE_FILTER)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)


def _bind(host: str, port: int) -> str:
    return f"{url_host(host)}:{port}"


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
            PERSISTENCE_PLUGIN: {"file": str(Path(settings.data_dir) / STORE_FILE)},
        },
    }


class EmbeddedBroker(RallycastBroker):
    """Two checks amqtt's plugin hooks cannot make, as overrides of amqtt's delivery path:

    - publishes whose payload is larger than Settings.max_payload_bytes are dropped, like
      mosquitto's ``message_size_limit``: not forwarded, not retained, the client stays
      connected (the plugins never see a payload before the broadcast);
    - a persistent session resumed by ANOTHER user (MQTT allows it) does not hand that user
      the messages queued for the previous one: each is checked against the new user's read
      rights first, as mosquitto does.
    """

    max_payload_bytes = 0  # 0 = no limit; set per instance by start_broker

    async def _handle_message_delivery(self, client_session, handler, wait_deliver) -> bool:  # type: ignore[no-untyped-def]
        message = wait_deliver.result() if wait_deliver.done() else None
        limit = self.max_payload_bytes
        if limit and message is not None and message.data is not None and len(message.data) > limit:
            log.warning(
                "dropped a %d-byte publish on %r from %s (limit %d bytes)",
                len(message.data),
                message.topic,
                client_session.client_id,
                limit,
            )
            return True
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Despite its name, this queue holds what matched the session's subscriptions while it
        # was away. Called once the session is connected again: nothing new is queued meanwhile.
        queue = session.retained_messages
        waiting = [queue.get_nowait() for _ in range(queue.qsize())]
        handler = self._get_handler(session)
        deliveries = []
        for message in waiting:
            if not await self._topic_filtering(session, message.topic, Action.RECEIVE):
                log.info(
                    "dropped a message queued on %r: %s may not read it",
                    message.topic,
                    session.username or "anonymous",
                )
            elif handler is not None:
                # RETAIN 0: it matched an established subscription (MQTT 3.1.1, 3.3.1.3);
                # amqtt sends these with RETAIN 1.
                deliveries.append(
                    asyncio.ensure_future(
                        handler.mqtt_publish(message.topic, message.data, message.qos, retain=False)
                    )
                )
        if deliveries:
            await asyncio.wait(deliveries)


def listening_port(broker: Broker, listener: str) -> int:
    """The port a started listener really bound (the one the OS chose for port 0).

    amqtt keeps its servers in the private ``_servers`` dict and offers no public accessor;
    this function is the only place that reads it. ``.instance`` is an asyncio.Server (TCP) or
    a websockets Server, both with ``.sockets``.
    """
    server = broker._servers[listener]  # noqa: SLF001 - see docstring
    sockets = list(server.instance.sockets or ())
    if not sockets:
        raise RuntimeError(f"listener {listener!r} has no socket")
    return int(sockets[0].getsockname()[1])


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
    broker = EmbeddedBroker(
        broker_config(settings), max_queued_messages=settings.max_queued_messages
    )
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
    log.info("broker listening on %s and %s", running.mqtt_url, running.ws_url)
    return running
