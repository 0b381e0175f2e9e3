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


# -- a seeded flood through the real service: >= 5,000 payloads per broker -------------------

FLOOD_SIZE = 5000
FLOOD_BATCH = 250  # under the brokers' per-session queue (max_queued_messages 1000)
FLOOD_SEED = 20261129
SURROGATES = ["\\ud800", "\\udfff", "\\ud83d", "x\\udc00y"]
STRING_FIELDS = [
    "cmd",
    "id",
    "player1",
    "player2",
    "player",
    "server",
    "receiver",
    "match",
    "game_type",
]


def flood_payloads(count: int, seed: int = FLOOD_SEED) -> list[bytes]:
    """``count`` payloads mixing every kind of bad input with valid commands (so the match
    keeps changing under the junk). Each fits the brokers' 16 KiB limit."""
    import random

    rng = random.Random(seed)
    names = ["Ann", "Bob", "Cy", "Dee", "Иван", "李", "🏓"]

    def valid() -> dict:
        kind = rng.random()
        if kind < 0.03:
            a, b = rng.sample(names, 2)
            return {
                "cmd": "start",
                "player1": a,
                "player2": b,
                "best_of": rng.choice([1, 3]),
                "force": True,
            }
        if kind < 0.75:
            return {"cmd": "point", "side": rng.choice([1, 2])}
        if kind < 0.85:
            return {"cmd": "point", "side": rng.choice([1, 2]), "delta": -1}
        return {
            "cmd": rng.choice(["undo", "timeout", "expedite"]),
            **({"side": rng.choice([1, 2])} if rng.random() < 0.5 else {}),
        }

    def json_text(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    def surrogate_field() -> str:
        field = rng.choice(STRING_FIELDS)
        base = dict(valid())
        base[field] = "__S__"
        text = json_text(base)
        return text.replace('"__S__"', '"' + rng.choice(SURROGATES) + '"')

    makers = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))),  # not UTF-8
        lambda: b"\xff" + json_text(valid()).encode(),
        lambda: json_text(valid())[:-1].encode() + b"\xc3",
        lambda: surrogate_field().encode(),
        lambda: ('{"cmd": "point", "side": 1, "' + rng.choice(SURROGATES) + '": 1}').encode(),
        lambda: (
            '{"cmd": "start", "game_type": "double", "players1": ["A", "'
            + rng.choice(SURROGATES)
            + '"], "players2": ["C", "D"], "force": true}'
        ).encode(),
        lambda: ('{"a": ' + "[" * rng.choice([100, 1000, 5000])).encode(),  # deep JSON
        lambda: ('{"cmd": "point", "side": ' + "[" * 3000 + "]" * 3000 + "}").encode(),
        lambda: (
            '{"cmd": "point", "side": '
            + rng.choice(["1e999", "-1e999", "1" + "0" * 5000, "1.0", "-0", "1e308", "2" * 400])
            + "}"
        ).encode(),  # huge numbers
        lambda: (
            '{"cmd": "point", "side": ' + rng.choice(["NaN", "Infinity", "-Infinity"]) + "}"
        ).encode(),
        lambda: (
            '{"id": ' + rng.choice(["NaN", "1e999", "9" * 5000]) + ', "cmd": "undo"}'
        ).encode(),
        lambda: json_text(
            {"cmd": "point", "side": rng.choice(["1", None, True, [1], {"s": 1}, 1.5, -1, 3])}
        ).encode(),  # wrong types
        lambda: json_text({"cmd": rng.choice([None, 1, [], {}, "", "POINT", "warp"])}).encode(),
        lambda: json_text(
            {"cmd": "start", "player1": "N" * 10_000, "player2": "Bob", "force": True}
        ).encode(),  # 10k-character names
        lambda: json_text({"cmd": "server", "player": "P" * 10_000}).encode(),
        lambda: json_text(
            dict(valid(), **{rng.choice(["extra", "Side", "ID", "x" * 50]): 1})
        ).encode(),  # unknown fields
        lambda: rng.choice(
            [" 1+ ", "\t2-\n", "UNDO ", " 1 + ", "1+\x00", "\n\n2+", "1++", "\u00a01+", "１+"]
        ).encode(),  # shorthands with whitespace
        lambda: json_text(rng.choice([[1, 2], "1+", 7, None, True])).encode(),
        lambda: json_text(
            {"cmd": "point", "side": 1, "id": rng.choice(["", "x" * 129, True, 1.5, [1], {"a": 1}])}
        ).encode(),
        lambda: json_text(
            {"cmd": "point", "side": 1, "match": rng.choice([7, "", None, "m"])}
        ).encode(),
        lambda: b"",
        lambda: json_text({"cmd": "delete", "extra": 1}).encode(),
    ]
    payloads: list[bytes] = []
    while len(payloads) < count:
        if rng.random() < 0.3:
            command = valid()
            if rng.random() < 0.5:
                command["id"] = f"f{len(payloads)}"
            payload = json_text(command).encode()
        else:
            payload = rng.choice(makers)()
        if len(payload) <= 16_000:
            payloads.append(payload)
    return payloads


def test_a_flood_of_bad_and_good_commands_gets_one_reply_each_and_a_consistent_store(
    any_broker, tmp_path
):
    import time

    import paho.mqtt.client as mqtt

    from tests.scorer.servicekit import WAIT, Watcher

    data_dir = tmp_path / "service"
    payloads = flood_payloads(FLOOD_SIZE)
    replies: list[dict] = []
    started = time.monotonic()
    with service_running(any_broker, data_dir):
        alpha = Scorer(any_broker, "alpha")
        try:
            alpha.send({"cmd": "start", "player1": "Ann", "player2": "Bob"})
            for first in range(0, len(payloads), FLOOD_BATCH):
                batch = payloads[first : first + FLOOD_BATCH]
                for payload in batch:
                    info = alpha.watcher.client.publish(topics.commands("alpha"), payload, qos=1)
                    assert info.rc == mqtt.MQTT_ERR_SUCCESS
                for _ in batch:
                    replies.append(alpha.watcher.next_json(topics.replies("alpha"), WAIT * 2))
            assert alpha.watcher.nothing_on(topics.replies("alpha"), 0.3)  # one reply each
            before = current_snapshot(any_broker, "alpha")
        finally:
            alpha.close()
    took = time.monotonic() - started
    assert len(replies) == len(payloads)
    assert not [r for r in replies if r.get("code") == "internal_error"]
    assert not [r for r in replies if "internal error" in (r.get("error") or "")]
    accepted = [r for r in replies if r["ok"]]
    assert 500 < len(accepted) < len(payloads) - 1000, len(accepted)  # both kinds were there
    # The store holds exactly what was published: a restart rebuilds the same snapshot.
    wiper = Watcher(any_broker, user=any_broker.service_user)
    wiper.publish(topics.game("alpha"), b"", retain=True)
    wiper.close()
    with service_running(any_broker, data_dir):
        from tests.scorer.servicekit import wait_for

        again = wait_for(lambda: current_snapshot(any_broker, "alpha", 0.5))
    assert again == before
    print(f"{len(payloads)} payloads on {any_broker.kind}: {took:.1f} s, {len(accepted)} accepted")
