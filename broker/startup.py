"""Starting the embedded broker from a command (``rallycast up``, ``rallycast broker``): a
listener that cannot open becomes one plain sentence that says what to do, not a traceback.

    try:
        running = await start_broker_plainly(settings)
    except StartFailed as exc:
        print(f"rallycast broker: {exc}")   # e.g. "port 1883 is in use: stop the other broker
                                            # or pass --mqtt-port"
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.server import RunningBroker
    from scorer.config import Settings


class StartFailed(Exception):
    """A command cannot start; the message says why and what to do."""


def os_error(exc: BaseException) -> OSError | None:
    """``exc`` or the OSError behind it (amqtt wraps it in its BrokerError)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return cause


def listen_failure(
    error: OSError, port: int, flag: str, other: str, bind: str | None = None
) -> StartFailed:
    """The sentence for a listener on ``port`` (set by ``flag``) that could not open."""
    if error.errno == errno.EADDRINUSE:
        return StartFailed(f"port {port} is in use: stop the other {other} or pass {flag}")
    if error.errno == errno.EADDRNOTAVAIL and bind is not None:
        return StartFailed(f"cannot listen on {bind}: not an address of this machine (see --bind)")
    return StartFailed(f"cannot listen on port {port}: {error.strerror or error} (see {flag})")


def broker_listen_failure(exc: BaseException, settings: Settings) -> StartFailed | None:
    """What to tell the user when the broker could not open its listeners (None: another
    fault). The OSError names the address, e.g. ``('0.0.0.0', 9001)``."""
    error = os_error(exc)
    if error is None:
        return None
    if settings.ws_port and f", {settings.ws_port})" in str(error):
        return listen_failure(error, settings.ws_port, "--ws-port", "broker", settings.bind)
    return listen_failure(error, settings.mqtt_port, "--mqtt-port", "broker", settings.bind)


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = record.exc_text = None
    return True


async def start_broker_plainly(settings: Settings) -> RunningBroker:
    """``broker.server.start_broker``, but a listener that cannot open raises StartFailed
    (amqtt's own "Broker startup failed" line is kept, without its traceback)."""
    from broker.server import start_broker

    amqtt_log = logging.getLogger("amqtt.broker")
    amqtt_log.addFilter(_without_traceback)
    try:
        return await start_broker(settings)
    except Exception as exc:
        failure = broker_listen_failure(exc, settings)
        if failure is None:
            raise
        raise failure from exc
    finally:
        amqtt_log.removeFilter(_without_traceback)
