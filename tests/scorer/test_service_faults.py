"""Faults found by attacking the real service at specific windows (docs/reliability.md):
each test names the fault it pins. Real brokers on 127.0.0.1, bounded waits."""

from __future__ import annotations

import time

import pytest

from tests.scorer.servicekit import WAIT, Watcher, service_running

START = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}


def test_a_spectator_cannot_learn_the_services_client_id_from_the_probe(any_broker, tmp_path):
    """An anonymous spectator may read rallycast/status/#; the probe topic lives there. It
    must not carry the service's MQTT client id: with it, anyone can connect under that id
    and take the service's session over (MQTT-3.1.4-2): the service is thrown off, and a
    persistent session's queued commands go to the intruder."""
    with service_running(any_broker, tmp_path / "service") as service:
        if not service._probe_enabled:  # noqa: SLF001
            pytest.skip(f"{any_broker.kind}: the service may not read its probe (broker/acl.py)")
        client_id = service._client._client_id.decode()  # noqa: SLF001
        spectator = Watcher(any_broker, "rallycast/status/#")
        try:
            deadline = time.monotonic() + WAIT
            seen: list[str] = []
            while time.monotonic() < deadline and not any("/probe/" in t for t in seen):
                seen += [t for t in list(spectator._queues) if t not in seen]  # noqa: SLF001
                time.sleep(0.1)
            probes = [t for t in seen if "/probe/" in t]
            assert probes, "no probe seen within the wait"
            assert all(client_id not in t for t in probes), probes
        finally:
            spectator.close()
