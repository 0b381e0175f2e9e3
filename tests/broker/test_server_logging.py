"""What the embedded broker logs when browser tabs come and go (``quiet_library_loggers``):
the ordinary end of a page view leaves no warning and no traceback; a real fault still does.

The tab is a real WebSocket MQTT client against the real broker (``amqtt_broker``). It sends a
SUBSCRIBE and a few PINGREQs and closes at once with 1001 "going away", as a browser does when
a tab closes: the broker's answers then hit a closed connection. amqtt 0.12.1 logs each as
``Unhandled exception: received 1001 (going away) ...`` and leaves the failed ``handle_*``
tasks unread, so asyncio adds ``Task exception was never retrieved`` with a traceback (for
the ConnectionClosedOK, and for the answers amqtt cancelled when the connection ended:
``ProtocolHandlerError: Packet handling was cancelled``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from broker.packets import PINGREQ, connect_packet, subscribe_packet
from broker.server import cancelled_answer, closed_normally, quiet_library_loggers

NOISY_LOGGERS = ("amqtt.mqtt.protocol.handler", "asyncio")
TABS = 5
WAIT = 10.0


class Witness(logging.Filter):
    """Sees every record of a logger before the broker's filters do (inserted first), so the
    test knows the event really happened and was not merely absent."""

    def __init__(self) -> None:
        super().__init__()
        self.normal_closes = 0
        self.other: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        import sys

        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        if closed_normally(exc) or cancelled_answer(exc):
            self.normal_closes += 1
        elif exc is not None:
            self.other.append(record.getMessage())
        return True


@pytest.fixture
def witness() -> Iterator[Witness]:
    seen = Witness()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).filters.insert(0, seen)
    yield seen
    for name in NOISY_LOGGERS:
        logging.getLogger(name).removeFilter(seen)


def open_tab(endpoint, number: int):
    tab = connect(
        f"ws://127.0.0.1:{endpoint.ws_port}/mqtt", subprotocols=["mqtt"], compression=None
    )
    tab.send(connect_packet(f"tab-{number}"))
    assert tab.recv(timeout=5)[:2] == b"\x20\x02"  # CONNACK
    return tab


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
        gc.collect()  # asyncio reports an unread task exception when the task is freed
    return True


def close_tabs_until(endpoint, close, happened) -> bool:
    """Batches of TABS tabs that each send a page's last packets and are then ended by
    ``close(tab)``, until ``happened()`` (at most 5 batches). Whether an end overtakes the
    broker's answers is a race, so a test loops until it has a real occurrence to check."""
    for batch in range(5):
        for number in range(TABS):
            tab = open_tab(endpoint, batch * TABS + number)
            tab.send(subscribe_packet("clubs/+/game"))
            for _ in range(4):
                tab.send(PINGREQ)
            close(tab)
        if wait_until(happened, timeout=WAIT / 2):
            return True
    return False


def noise(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if "going away" in r.getMessage()
        or (r.exc_info and (closed_normally(r.exc_info[1]) or cancelled_answer(r.exc_info[1])))
    ]


def test_a_tab_closing_leaves_no_warning_and_no_traceback(amqtt_broker, witness, caplog):
    caplog.set_level(logging.INFO)
    quiet_library_loggers("INFO")
    # The tab closes (1001, as a browser does) before the broker's answers go out.
    closed = close_tabs_until(
        amqtt_broker, lambda tab: tab.close(code=1001), lambda: witness.normal_closes >= 1
    )
    assert closed, "the tabs' close never reached amqtt's error path: the test reproduces nothing"
    time.sleep(0.2)
    gc.collect()
    assert noise(caplog.records) == []
    assert witness.other == []


def test_a_dropped_connection_is_still_reported(amqtt_broker, witness, caplog):
    """No close frame at all (the network or the process died): not a tab closing."""
    caplog.set_level(logging.INFO)
    quiet_library_loggers("INFO")
    # The TCP connection goes without a WebSocket close.
    dropped = close_tabs_until(amqtt_broker, lambda tab: tab.socket.close(), lambda: witness.other)
    assert dropped, "the abrupt close never reached amqtt's error path"
    shown = [r.getMessage() for r in caplog.records if r.name in NOISY_LOGGERS]
    assert any("no close frame" in message for message in shown), shown


def test_other_unread_task_exceptions_still_show(caplog):
    caplog.set_level(logging.INFO)
    quiet_library_loggers("INFO")

    async def fails() -> None:
        raise RuntimeError("a real fault")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        del task
        gc.collect()

    asyncio.run(main())
    gc.collect()
    reported = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert reported and "a real fault" in str(reported[0].exc_info[1])


def test_with_debug_everything_stays(amqtt_broker, caplog):
    # quiet_library_loggers("DEBUG") changes nothing: an operator chasing a fault sees it all.
    before = {name: list(logging.getLogger(name).filters) for name in NOISY_LOGGERS}
    quiet_library_loggers("DEBUG")
    assert {name: list(logging.getLogger(name).filters) for name in NOISY_LOGGERS} == before
