"""The test brokers' runners (tests/support/runners.py)."""

from __future__ import annotations

import os
from typing import Any

from rallycast.bench.launch import PORT_REGISTRY, _ephemeral_low


def test_a_restartable_broker_starts_on_ports_claimed_below_the_ephemeral_range(
    any_broker_process: Any, amqtt_broker: Any
) -> None:
    # A restart binds the same ports again. A port the kernel picked for port 0 lies in the
    # ephemeral range, where any outgoing connection on the machine can take it while the
    # broker is down (loop run B9 on 2ec84ac: the club page's broker restart failed with
    # "address already in use").
    for broker in (any_broker_process, amqtt_broker):
        ports = (broker.mqtt_port, broker.ws_port)
        assert all(0 < port < _ephemeral_low() for port in ports), (broker.kind, ports)
        claimers = {(PORT_REGISTRY / str(port)).read_text() for port in ports}
        assert claimers == {str(os.getpid())}, (broker.kind, ports, claimers)
        broker.restart()
        assert (broker.mqtt_port, broker.ws_port) == ports
