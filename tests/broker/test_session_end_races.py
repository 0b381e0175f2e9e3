"""Attacks on a session's end while a fan-out is under way (issue 16's lean connections).

The fan-out (``RallycastBroker._run_broadcast``) walks a snapshot of a filter's subscribers
and awaits the RECEIVE ACL check of each one it has no cached decision for; anything can
happen to a subscriber it has not reached yet. A persistent session that a clean CONNECT of
the same client id ends for good [MQTT-3.1.2-6] must not get the message afterwards: not in a
new outbox, not as a row in the store (which a restart or its next persistent CONNECT would
deliver).
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from amqtt.contexts import Action

from broker.hardening import RallycastBroker
from tests.broker.test_mass_disconnect import WAIT, Client, connect_with_will, embedded, open_all

TOPIC = "clubs/beta/game"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_persistent_session_ended_by_a_clean_connect_mid_fan_out_gets_no_message(
    tmp_path, broker_test_users
):
    users = broker_test_users.passwords
    async with embedded(tmp_path, broker_test_users) as running:
        broker: RallycastBroker = running.broker
        # The fan-out reaches "gate" first (subscription order) and waits on its ACL check.
        gate = Client(connect_with_will("gate"), (TOPIC,))
        await open_all(running, [gate])
        persistent = Client(
            connect_with_will("device", "beta", users["beta"], clean=False), (TOPIC,), qos=1
        )
        await open_all(running, [persistent])
        gate_session = broker._sessions["gate"][0]
        reached, release = asyncio.Event(), asyncio.Event()
        check = broker._topic_filtering

        async def slow_check(session, topic, action):
            if session is gate_session and action == Action.RECEIVE and topic == TOPIC:
                reached.set()
                await release.wait()
            return await check(session, topic, action)

        broker._topic_filtering = slow_check  # type: ignore[method-assign]
        await broker.internal_message_broadcast(TOPIC, b"before-clean", 1)
        await asyncio.wait_for(reached.wait(), WAIT)

        # Same client id, clean session: the persistent session ends for good.
        fresh = Client(connect_with_will("device", "beta", users["beta"], clean=True))
        await open_all(running, [fresh])
        assert broker._sessions["device"][0].clean_session
        release.set()
        await asyncio.wait_for(gate.wait_for(1, TOPIC), WAIT)
        assert gate.payloads(TOPIC) == [b"before-clean"]
        await asyncio.sleep(0.3)  # the store writes behind

        # The message was published while the old session still held the filter; the new,
        # clean session never subscribed: it must not be queued or stored for "device".
        session = broker._sessions["device"][0]
        outbox = getattr(session, "outbox", None)
        assert outbox is None or (not outbox.pending and not outbox.inflight)
        assert fresh.payloads(TOPIC) == []
        data_dir = running.settings.data_dir
        with sqlite3.connect(f"{data_dir}/broker.db") as db:
            rows = db.execute(
                "SELECT COUNT(*) FROM queued WHERE client_id = ?", ("device",)
            ).fetchone()[0]
        assert rows == 0, "a row for the ended session is in the store"
        fresh.transport.close()
