"""Hostile table levels on a real broker (issue 12): a table level that looks like a number to
``str.isdigit`` but is not one (``²``, Arabic-Indic digits, 5,000 digits) is refused like any
other bad level, and the client's session goes on."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.acl import allowed, role_of

# isdigit() is True for each, but none is a table number written plainly.
ODD_TABLE_LEVELS = ["\u00b2", "\u0663", "\u00b9\u00b2", "9" * 5000, "0" * 4400 + "2"]


@pytest.mark.parametrize(
    "level", ODD_TABLE_LEVELS, ids=["sup2", "arabic3", "sup12", "huge", "zeros"]
)
def test_a_club_publishing_to_an_odd_table_level_is_refused_and_stays_connected(
    amqtt_broker: Any, level: str
) -> None:
    service = amqtt_broker.recorder(
        ["clubs/+/tables/+/game/cmd", "clubs/+/game/cmd"], user=amqtt_broker.service_user
    )
    club = amqtt_broker.client("alpha")
    bad = f"clubs/alpha/tables/{level}/game/cmd"
    club.publish(bad, b'{"cmd": "+1", "side": 1}', qos=1).wait_for_publish(5)
    # The same connection still publishes: the bad topic broke nothing.
    club.publish("clubs/alpha/tables/2/game/cmd", b"after", qos=1).wait_for_publish(5)
    got = service.wait_for(lambda m: m.payload == b"after", timeout=5)
    assert got.topic == "clubs/alpha/tables/2/game/cmd"
    assert club.is_connected()
    assert all(m.topic != bad for m in service.messages)


@pytest.mark.parametrize(
    "level", ODD_TABLE_LEVELS, ids=["sup2", "arabic3", "sup12", "huge", "zeros"]
)
def test_a_spectator_subscribing_to_an_odd_table_level_gets_a_refusal(
    amqtt_broker: Any, level: str
) -> None:
    spectator = amqtt_broker.recorder(user=None)
    assert spectator.subscribe([f"clubs/alpha/tables/{level}/game"]) == [128]
    assert spectator.subscribe(["clubs/alpha/tables/+/game"]) == [1]


@given(
    user=st.sampled_from([None, "alpha", "rallycast-service", "nobody_"]),
    action=st.sampled_from(["publish", "subscribe", "receive"]),
    levels=st.lists(
        st.sampled_from(["clubs", "alpha", "tables", "game", "cmd", "+", "#", "", "2", "01"])
        | st.text(max_size=5),
        min_size=1,
        max_size=7,
    ),
)
def test_the_acl_decides_every_topic_without_raising(user, action, levels) -> None:
    # An exception in the ACL plugin drops the client's connection (or leaves its SUBSCRIBE
    # unanswered): every topic must get a plain yes or no.
    topic = "/".join(levels)
    assert allowed(user, role_of(user, "rallycast-service"), action, topic) in (True, False)
