"""Malformed commands never crash the service and never change a club's state (hypothesis,
bounded: 100 examples per broker against ONE running service)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from scorer import topics
from scorer.engine import Refused, parse_command
from tests.scorer.servicekit import Scorer, current_snapshot, service_running

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
COMMAND_NAMES = ["start", "point", "undo", "timeout", "expedite", "end", "server", "correct"]
FIELDS = ["side", "delta", "id", "player1", "player2", "players1", "best_of", "force", "player"]
COMMAND_LIKE = st.fixed_dictionaries(
    {"cmd": st.sampled_from(COMMAND_NAMES) | JSON_VALUES},
    optional={name: JSON_VALUES for name in FIELDS},
)
PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    COMMAND_LIKE.map(lambda value: json.dumps(value).encode()),
)


def is_malformed(payload: bytes) -> bool:
    """True when no part of Rallycast could take the payload for a command."""
    try:
        parse_command(payload)
    except Refused:
        pass
    else:
        return False
    try:
        decoded = json.loads(payload)
    except (ValueError, RecursionError):
        return True
    return not (isinstance(decoded, dict) and decoded.get("cmd") in ("delete", "clear"))


@pytest.fixture
def scored_match(any_broker, tmp_path):
    with service_running(any_broker, tmp_path / "service"):
        alpha = Scorer(any_broker, "alpha")
        alpha.send({"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3})
        alpha.send("1+")
        before = current_snapshot(any_broker, "alpha")
        alpha.watcher.pending(topics.game("alpha"))  # forget the snapshots so far
        yield alpha
        # After all the junk: the same state, and the service still works.
        assert current_snapshot(any_broker, "alpha") == before
        reply = alpha.send("2+")
        assert (reply["id"], reply["ok"], reply["error"], reply["rev"]) == (None, True, None, 3)
        alpha.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=PAYLOADS)
# Deep nesting: json.loads raises RecursionError (not a ValueError) on these.
@example(payload=b'{"a": ' + b"[" * 10_000)
@example(payload=b'{"cmd": "point", "side": ' + b"[" * 3_000 + b"]" * 3_000 + b"}")
@example(payload=b"[" * 10_000)
def test_malformed_commands_never_crash_the_service_nor_change_the_state(scored_match, payload):
    alpha = scored_match
    assume(is_malformed(payload))
    alpha.send_raw(payload)
    reply = alpha.watcher.next_json(topics.replies("alpha"))
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"]
    assert "internal error" not in reply["error"]  # refused for a reason, not by a bug
    assert reply["rev"] == 2
    assert alpha.watcher.pending(topics.game("alpha")) == []  # no new snapshot
