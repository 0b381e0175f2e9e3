"""Device topics are scoped per club (issue 9): a club's user may use ``<root>/<its club>/#`` for
every device root (``boards``, ``stat``, ``tele``, ``cmnd``, ``zigbee2mqtt``, ``shellies``) and
nothing of another club's, on every broker (embedded amqtt, mosquitto with mosquitto.acl, the
NATS cluster). Refusals are asserted as in test_behaviour.py: the refused message does not reach
a subscriber that may read it, checked after an allowed sentinel from the same client.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.acl import Role, allowed
from scorer import topics
from tests.broker.test_behaviour import GRACE, only_sentinel_arrives, publish
from tests.brokers import ALL_BROKERS, broker_fixture

any_broker = pytest.fixture(params=ALL_BROKERS, name="any_broker")(broker_fixture)


# One device-style topic per root, for a club: what the vendors' devices publish once scoped.
def device_topics(club: str) -> list[str]:
    return [
        f"stat/{club}/table1/RESULT",
        f"tele/{club}/table1/LWT",
        f"cmnd/{club}/table1/POWER",
        f"zigbee2mqtt/{club}/button-1",
        f"shellies/{club}/button1/input_event/0",
        f"boards/{club}/table1/binary_sensor/home/state",
    ]


def test_every_device_root_is_scoped():
    # the test topics above cover every root the ACL grants
    assert {t.split("/")[0] for t in device_topics("alpha")} == set(topics.DEVICE_ROOTS)


def test_a_club_uses_its_own_device_topics(any_broker):
    reader = any_broker.recorder(topics.device_filters("alpha"), user="alpha")
    board = any_broker.client("alpha")
    for topic in device_topics("alpha"):
        publish(board, topic, topic.encode())
    for topic in device_topics("alpha"):
        reader.wait_for(lambda m, t=topic: m.topic == t)


def test_a_club_cannot_fake_another_clubs_board_press(any_broker):
    victim = any_broker.recorder(topics.device_filters("alpha"), user="alpha")
    attacker = any_broker.client("beta")
    for topic in device_topics("alpha"):
        publish(attacker, topic, b"fake press")
    # a sentinel from the attacker's connection that the victim's reader may see would prove
    # ordering; beta may not publish there, so alpha's own board sends it after beta's PUBACKs
    publish(any_broker.client("alpha"), "stat/alpha/table1/RESULT", b"sentinel")
    only_sentinel_arrives(victim, b"sentinel")


def test_a_club_cannot_read_another_clubs_device_topics(any_broker):
    snoop = any_broker.recorder(topics.device_filters("alpha") + ["stat/beta/#"], user="beta")
    own = any_broker.recorder(topics.device_filters("alpha"), user="alpha")
    board = any_broker.client("alpha")
    for topic in device_topics("alpha"):
        publish(board, topic, b"press")
    for topic in device_topics("alpha"):
        own.wait_for(lambda m, t=topic: m.topic == t)
    publish(any_broker.client("beta"), "stat/beta/table1/RESULT", b"sentinel")
    only_sentinel_arrives(snoop, b"sentinel")


def test_the_old_shared_device_topics_are_refused(any_broker):
    # before issue 9 every club could use stat/#, zigbee2mqtt/#, ...: a device left on the
    # shared roots reaches no club, so nothing can be faked through them
    # (the embedded broker refuses the wide filters; mosquitto grants them and checks on delivery)
    wide = ["stat/#", "zigbee2mqtt/#", "boards/#", "stat/alpha/#"]
    bridge = any_broker.recorder(wide, user="alpha")
    board = any_broker.client("alpha")
    for topic in ("stat/table1/RESULT", "zigbee2mqtt/button-1", "boards/table1/press"):
        publish(board, topic, b"shared")
    publish(board, "stat/alpha/table1/RESULT", b"sentinel")
    bridge.wait_for(lambda m: m.payload == b"sentinel")
    time.sleep(GRACE)
    # overlapping filters may deliver the sentinel twice on mosquitto
    assert {m.payload for m in bridge.messages} == {b"sentinel"}


@pytest.mark.parametrize("user", [None, "rallycast-service"])
def test_spectators_and_the_service_cannot_publish_device_topics(any_broker, user):
    user = any_broker.service_user if user else None
    reader = any_broker.recorder(topics.device_filters("alpha"), user="alpha")
    other = any_broker.client(user)
    for topic in device_topics("alpha"):
        publish(other, topic, b"fake press")
    publish(any_broker.client("alpha"), "stat/alpha/table1/RESULT", b"sentinel")
    only_sentinel_arrives(reader, b"sentinel")


# -- the role table itself (broker/acl.py), over every root and many club ids ----------------

club_ids = st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True)
tails = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), min_size=1, max_size=3)


@given(user=club_ids, other=club_ids, root=st.sampled_from(topics.DEVICE_ROOTS), tail=tails)
def test_role_table_scopes_every_device_root_to_the_users_club(user, other, root, tail):
    own = "/".join([root, user, *tail])
    theirs = "/".join([root, other, *tail])
    for action in ("publish", "subscribe", "receive"):
        assert allowed(user, Role.CLUB, action, own)
        assert allowed(user, Role.CLUB, action, theirs) is (other == user)
    assert allowed(user, Role.CLUB, "subscribe", f"{root}/{user}/#")
    for wide in (f"{root}/#", f"{root}/+/#", f"{root}/+/{tail[0]}"):
        assert not allowed(user, Role.CLUB, "subscribe", wide)
    if tail[0] != user:  # a device left on the shared root, without the club level
        assert not allowed(user, Role.CLUB, "publish", "/".join([root, *tail]))
    for role in (Role.ANONYMOUS, Role.SERVICE, Role.NONE):
        assert not allowed(user, role, "publish", own)
        assert not allowed(user, role, "subscribe", f"{root}/{user}/#")


def test_device_prefixes_follow_the_roots():
    assert topics.device_prefixes("riverside") == tuple(
        f"{root}/riverside/" for root in topics.DEVICE_ROOTS
    )
    assert topics.device_club_of("stat/riverside/table1/RESULT") == "riverside"
    assert topics.device_club_of("stat/table1") is None  # no club level
    assert topics.device_club_of("stat/River/x") is None  # not a club id
    assert topics.device_club_of("clubs/riverside/game") is None
    with pytest.raises(topics.BadClubId):
        topics.device_prefixes("River Side")
