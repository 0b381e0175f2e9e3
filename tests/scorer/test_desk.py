"""The club's desk without the network (scorer/desk.py): one payload decoded once, the reply
and the publications as plain data, nothing changed before the store commits, the rule for
``start`` in one place (the engine's ``begins_new_match``)."""

from __future__ import annotations

import json

import pytest

from scorer import commands, topics
from scorer.commands import parse
from scorer.config import Club
from scorer.desk import Desk, Publication
from scorer.engine import Match, Refused, begins_new_match
from scorer.store import MatchStore, StoreError

START = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}


@pytest.fixture
def store(tmp_path):
    opened = MatchStore(tmp_path)
    yield opened
    opened.close()


def make_desk(store: MatchStore, tables: int = 2) -> Desk:
    return Desk(Club("alpha", tables=tables), lambda: store, lambda: 1_700_000_000.0)


def send(desk: Desk, command: dict | str, table: int = 1):
    payload = command if isinstance(command, str) else json.dumps(command)
    return desk.handle(payload.encode(), table=table)


def test_a_payload_is_decoded_once_from_topic_to_log(store, monkeypatch):
    desk = make_desk(store)
    send(desk, {"id": "s", **START})
    payload = json.dumps({"id": "p1", "cmd": "point", "side": 1})
    decoded = []
    real_loads = json.loads

    def counting(text, *args, **kwargs):
        if text == payload:
            decoded.append(text)
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(commands.json, "loads", counting)
    handled = desk.handle(payload.encode(), table=1)
    assert handled.reply["ok"] is True and handled.reply["rev"] == 2
    assert len(decoded) == 1


def test_the_desk_returns_the_reply_and_the_publications_as_plain_data(store):
    desk = make_desk(store)
    handled = send(desk, {"id": 1, **START}, table=2)
    assert handled.reply == {
        "id": 1,
        "ok": True,
        "error": None,
        "code": None,
        "rev": 1,
        "match_id": desk.tables[2].match_id,
        "table": 2,
    }
    snapshot, event = handled.publications
    assert snapshot.topic == topics.game("alpha", 2) and snapshot.retain is True
    assert (snapshot.payload["table"], snapshot.payload["table_name"]) == (2, "Table 2")
    assert event == Publication(
        topics.events("alpha", 2),
        {
            "kind": "start",
            "game_no": 1,
            "score": [0, 0],
            "rev": 1,
            "match_id": desk.tables[2].match_id,
            "table": 2,
        },
    )
    assert handled.store_worked and handled.store_error is None


def test_a_resend_is_answered_from_the_index_and_changes_nothing(store):
    desk = make_desk(store)
    send(desk, START)
    first = send(desk, {"id": "x", "cmd": "point", "side": 1})
    again = send(desk, {"id": "x", "cmd": "point", "side": 1}, table=1)
    assert again.reply == first.reply and again.publications == []
    assert desk.tables[1].rev == 2
    # The same id on another table of the club is another press: refused, not applied.
    other = send(desk, {"id": "x", "cmd": "point", "side": 1}, table=2)
    assert other.reply["code"] == "id_reused"


@pytest.mark.parametrize("write", ["append", "start_match", "clear_current"])
def test_a_write_the_store_refuses_leaves_the_desk_as_it_was(store, monkeypatch, write):
    desk = make_desk(store)
    send(desk, START)
    send(desk, "1+")
    before = desk.tables[1]
    match, snapshot = before.match, before.match.snapshot()

    def refuse(*args, **kwargs):
        raise StoreError("disk full")

    monkeypatch.setattr(store, write, refuse)
    command = {
        "append": {"id": "a", "cmd": "point", "side": 2},
        "start_match": {"id": "a", **START, "force": True},
        "clear_current": {"id": "a", "cmd": "delete"},
    }[write]
    handled = send(desk, command)
    assert (handled.reply["code"], handled.reply["rev"]) == ("store_failed", 2)
    assert isinstance(handled.store_error, StoreError) and handled.publications == []
    assert desk.tables[1] is before and before.match is match
    assert match.snapshot() == snapshot and match.rev == 2
    monkeypatch.undo()
    assert send(desk, command).reply["ok"] is True  # the resend, once the store works


@pytest.mark.parametrize("presses", [[], ["1+"], [{"cmd": "end"}]])
@pytest.mark.parametrize("force", [False, True])
def test_a_start_begins_a_new_match_when_none_is_current_the_current_ended_or_it_forces(
    presses, force
):
    start = parse({**START, "force": True} if force else START)
    assert begins_new_match(None, start) is True
    current = Match("m")
    current.apply(START, 0.0)
    for press in presses:
        current.apply(press, 1.0)
    with pytest.raises(Refused) as refused:  # a started match never takes a start itself
        current.applied(start, 2.0)
    ended = refused.value.code == "match_over"
    assert refused.value.code == (
        "match_over" if presses and not presses[0] == "1+" else "match_in_progress"
    )
    assert begins_new_match(current, start) is (force or ended)
    assert begins_new_match(current, parse("1+")) is False
