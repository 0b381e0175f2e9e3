"""Several tables per club (issue 12), end to end on a real broker (embedded amqtt AND
mosquitto): each (club, table) has its own match, retained snapshot, replies and events; the
delivery guarantee (a resent id applied once, restarts, store failures rolled back, stale
retained snapshots corrected) holds on every table; ids stay at-most-once per club across its
tables; a table beyond the club's configured count is refused; a store written before tables
keeps its matches as table 1."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from scorer import topics
from scorer.config import Club
from scorer.record import RecordReader
from scorer.store import STORE_FILE_NAME, MatchStore
from tests.scorer.servicekit import (
    Scorer,
    Watcher,
    current_snapshot,
    fail_store_encoding,
    service_running,
    wait_for,
)
from tests.scorer.test_service import START, accepted

DATA = Path(__file__).parent / "data"
# Written by the store of commit b2721dd (before tables): alpha has a match at rev 3 (ids s1,
# p1, p2: Ann 1 - Bob 1), beta one at rev 1 (id b1).
STORE_BEFORE_TABLES = DATA / "store-before-tables.sqlite3"
ALPHA = Club("alpha", tables=3, table_names=("Centre court",))
CLUBS = (ALPHA, Club("beta", tables=2))


def scores(snapshot: dict) -> tuple[int, int]:
    return snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]


@pytest.fixture
def tables(any_broker):
    """alpha's scorers at tables 1, 2 and 3."""
    scorers = {n: Scorer(any_broker, "alpha", table=n) for n in (1, 2, 3)}
    yield scorers
    for scorer in scorers.values():
        scorer.close()


def test_each_table_has_its_own_match_snapshot_replies_and_events(any_broker, tmp_path, tables):
    with service_running(any_broker, tmp_path / "service", clubs=CLUBS):
        one, two = tables[1], tables[2]
        first_start = one.send({**START, "id": "t1-start"})
        assert first_start == accepted("t1-start", 1, first_start["match_id"], table=1)
        started = two.send({**START, "id": "t2-start", "player1": "Cy", "player2": "Di"})
        assert started["ok"] and started["table"] == 2 and started["rev"] == 1
        for side in (1, 1, 2):
            reply = two.send({"cmd": "point", "side": side})
            assert reply["ok"] and reply["table"] == 2 and reply["match_id"] == started["match_id"]
        assert one.send("1+")["rev"] == 2

        first = current_snapshot(any_broker, "alpha")
        second = current_snapshot(any_broker, "alpha", table=2)
        assert (first["table"], first["table_name"], scores(first)) == (1, "Centre court", (1, 0))
        assert (second["table"], second["table_name"], scores(second)) == (2, "Table 2", (2, 1))
        assert second["game_data"]["player1"] == "Cy" and first["game_data"]["player1"] == "Ann"
        assert first["match_id"] != second["match_id"]
        assert current_snapshot(any_broker, "alpha", timeout=0.5, table=3) is None

        # Each table's topics carry that table's messages only.
        events = [json.loads(m.payload) for m in two.watcher.pending(topics.events("alpha", 2))]
        assert [e["table"] for e in events] == [2] * 4
        assert {e["match_id"] for e in events} == {started["match_id"]}
        table_1_events = one.watcher.pending(topics.events("alpha"))
        assert {json.loads(m.payload)["table"] for m in table_1_events} == {1}
        assert tables[3].watcher.pending(topics.events("alpha", 3)) == []
        assert tables[3].watcher.pending(topics.replies("alpha", 3)) == []


def test_a_table_beyond_the_clubs_configured_tables_is_refused_and_changes_nothing(
    any_broker, tmp_path
):
    fourth = Scorer(any_broker, "alpha", table=4)
    stranger = Scorer(any_broker, "beta", table=2)  # not configured below: one table
    try:
        with service_running(any_broker, tmp_path / "service", clubs=(ALPHA,)) as service:
            reply = fourth.send({**START, "id": "too-far"})
            assert reply == {
                "id": "too-far",
                "ok": False,
                "error": reply["error"],
                "code": "no_such_table",
                "params": {"table": 4, "tables": 3},
                "rev": 0,
                "match_id": None,
                "table": 4,
            }
            assert "no table 4" in reply["error"]
            assert stranger.send(START)["code"] == "no_such_table"
            assert current_snapshot(any_broker, "alpha", timeout=0.5, table=4) is None
            assert fourth.watcher.pending(topics.events("alpha", 4)) == []
            assert not service.matches
            # The id was not used up: the club's table 1 applies it.
            one = Scorer(any_broker, "alpha")
            try:
                assert one.send({**START, "id": "too-far"})["ok"] is True
            finally:
                one.close()
    finally:
        fourth.close()
        stranger.close()


def test_an_id_is_applied_at_most_once_per_club_across_its_tables(any_broker, tmp_path, tables):
    with service_running(any_broker, tmp_path / "service", clubs=CLUBS):
        for scorer in tables.values():
            assert scorer.send(START)["ok"]
        press = {"id": "press-1", "cmd": "point", "side": 1}
        first = tables[2].send(press)
        assert (first["ok"], first["rev"], first["table"]) == (True, 2, 2)
        # The resend on its own table: answered again, applied once.
        assert tables[2].send(press) == first
        # The same id on another table of the club is another press, not a resend.
        for other in (1, 3):
            reused = tables[other].send(press)
            assert (reused["ok"], reused["code"], reused["table"]) == (False, "id_reused", other)
        assert scores(current_snapshot(any_broker, "alpha", table=2)) == (1, 0)
        assert scores(current_snapshot(any_broker, "alpha")) == (0, 0)
        assert scores(current_snapshot(any_broker, "alpha", table=3)) == (0, 0)
        # Another club may use the same id on its own table 2.
        beta = Scorer(any_broker, "beta", table=2)
        try:
            assert beta.send(START)["ok"]
            assert beta.send(press)["rev"] == 2
        finally:
            beta.close()


def test_clubs_and_tables_never_see_each_others_commands(any_broker, tmp_path, tables):
    beta = Scorer(any_broker, "beta", table=2)
    try:
        with service_running(any_broker, tmp_path / "service", clubs=CLUBS):
            assert tables[2].send(START)["ok"]
            assert beta.send({**START, "player1": "Cy", "player2": "Di"})["ok"]
            beta.watcher.pending(topics.game("beta", 2))
            beta.watcher.pending(topics.events("beta", 2))
            # alpha's scorer tries to score on beta's table 2: the broker drops or refuses it.
            tables[2].watcher.publish(
                topics.commands("beta", 2), json.dumps({"cmd": "point", "side": 2})
            )
            assert tables[2].send("1+")["rev"] == 2
            assert beta.watcher.nothing_on(topics.replies("beta", 2))
            assert beta.watcher.pending(topics.game("beta", 2)) == []
            assert beta.watcher.pending(topics.events("beta", 2)) == []
            assert scores(current_snapshot(any_broker, "beta", table=2)) == (0, 0)
            assert current_snapshot(any_broker, "beta", timeout=0.5) is None  # table 1: none
            assert tables[1].watcher.pending(topics.game("alpha")) == []
            assert scores(current_snapshot(any_broker, "alpha", table=2)) == (1, 0)
    finally:
        beta.close()


def test_a_restart_keeps_every_tables_match_and_a_resend_is_answered_not_applied(
    any_broker, tmp_path, tables
):
    data_dir = tmp_path / "service"
    presses = {n: {"id": f"t{n}-p", "cmd": "point", "side": 1} for n in (1, 2, 3)}
    with service_running(any_broker, data_dir, clubs=CLUBS):
        for table, scorer in tables.items():
            assert scorer.send({**START, "player1": f"P{table}"})["ok"]
            for _ in range(table):
                assert scorer.send("1+")["ok"]
            answered = scorer.send(presses[table])
            assert answered["rev"] == table + 2
    # Wipe the retained copies: only a republish from the store can bring them back.
    wiper = Watcher(any_broker, user=any_broker.service_user)
    for table in (1, 2, 3):
        wiper.publish(topics.game("alpha", table), b"", retain=True)
    wiper.close()
    with service_running(any_broker, data_dir, clubs=CLUBS):
        for table, scorer in tables.items():
            restored = wait_for(
                lambda t=table: current_snapshot(any_broker, "alpha", timeout=0.5, table=t)
            )
            assert (restored["table"], restored["rev"]) == (table, table + 2)
            assert restored["game_data"]["player1"] == f"P{table}"
            assert scores(restored) == (table + 1, 0)
            again = scorer.send(presses[table])
            assert (again["ok"], again["rev"], again["table"]) == (True, table + 2, table)
            assert scorer.send("undo")["rev"] == table + 3
            assert scores(current_snapshot(any_broker, "alpha", table=table)) == (table, 0)


def test_a_store_failure_on_table_2_rolls_back_and_the_resend_applies_once(
    any_broker, tmp_path, tables, monkeypatch
):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir, clubs=CLUBS) as service:
        assert tables[2].send(START)["ok"]
        fail_store_encoding(monkeypatch, OSError("disk full"))
        press = {"id": "t2-press", "cmd": "point", "side": 2}
        refused = tables[2].send(press)
        assert (refused["ok"], refused["code"], refused["rev"], refused["table"]) == (
            False,
            "store_failed",
            1,
            2,
        )
        assert service.matches["alpha", 2].rev == 1
        assert not service._store._db.in_transaction
        assert tables[2].send(press)["rev"] == 2  # the resend, once the store works
        assert tables[2].send(press)["rev"] == 2
        assert scores(current_snapshot(any_broker, "alpha", table=2)) == (0, 1)
    store = MatchStore(data_dir)
    try:
        assert {(m.club_id, m.table): len(m.log) for m in store.current_matches()} == {
            ("alpha", 2): 2
        }
    finally:
        store.close()


def test_reconcile_replaces_a_stale_snapshot_on_table_3_and_clears_a_ghost_on_table_2(
    any_broker, tmp_path, tables
):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir, clubs=CLUBS):
        assert tables[3].send(START)["ok"]
        assert tables[3].send("1+")["ok"]
        real = current_snapshot(any_broker, "alpha", table=3)
    ghost = Watcher(any_broker, user=any_broker.service_user)
    ghost.publish(
        topics.game("alpha", 3), json.dumps(dict(real, rev=40, match_id="ghost")), retain=True
    )
    ghost.publish(topics.game("alpha", 2), json.dumps(dict(real, table=2)), retain=True)
    ghost.publish(topics.game("beta", 2), json.dumps(dict(real, match_id="g")), retain=True)
    ghost.close()
    with service_running(any_broker, data_dir, clubs=CLUBS):
        wait_for(lambda: (current_snapshot(any_broker, "alpha", table=3) or {}).get("rev") == 2)
        wait_for(lambda: current_snapshot(any_broker, "alpha", timeout=0.3, table=2) is None)
        wait_for(lambda: current_snapshot(any_broker, "beta", timeout=0.3, table=2) is None)
        assert current_snapshot(any_broker, "alpha", table=3) == real


def test_a_match_on_table_2_goes_to_the_record_with_its_table(any_broker, tmp_path, tables):
    data_dir = tmp_path / "service"
    with service_running(any_broker, data_dir, clubs=CLUBS) as service:
        started = tables[2].send(START)
        assert tables[2].send("1+")["ok"] and tables[2].send({"cmd": "end"})["ok"]
        assert service._record is not None and service._record.wait_idle()
        rows, total = RecordReader(data_dir).matches("alpha")
        assert total == 1 and rows[0].match_id == started["match_id"]
        assert rows[0].table == "2"


def test_a_match_left_on_a_table_the_config_no_longer_has_can_still_be_deleted(
    any_broker, tmp_path
):
    data_dir = tmp_path / "service"
    third = Scorer(any_broker, "alpha", table=3)
    try:
        with service_running(any_broker, data_dir, clubs=CLUBS):
            assert third.send(START)["ok"]
        smaller = (Club("alpha", tables=2),)
        with service_running(any_broker, data_dir, clubs=smaller) as service:
            assert third.send("1+")["code"] == "no_such_table"
            assert ("alpha", 3) in service.matches
            assert third.send({"cmd": "delete", "id": "d3"})["ok"] is True
            assert ("alpha", 3) not in service.matches
            wait_for(lambda: current_snapshot(any_broker, "alpha", timeout=0.3, table=3) is None)
    finally:
        third.close()


# -- a store written before tables ------------------------------------------------------------


def test_a_store_from_before_tables_keeps_each_clubs_match_as_table_1(tmp_path):
    data_dir = tmp_path / "service"
    data_dir.mkdir()
    shutil.copy(STORE_BEFORE_TABLES, data_dir / STORE_FILE_NAME)
    store = MatchStore(data_dir)
    try:
        current = {(m.club_id, m.table): len(m.log) for m in store.current_matches()}
        assert current == {("alpha", 1): 3, ("beta", 1): 1}
        assert [key for key, _ in store.command_replies("alpha")] == ['"s1"', '"p1"', '"p2"']
        # The migrated store takes a second table's match beside table 1's.
        store.start_match("alpha", "on-table-2", {"cmd": "start", "at": 1.0}, table=2)
        current = {(m.club_id, m.table): m.match_id for m in store.current_matches()}
        assert current[("alpha", 1)] == "20261130-000000-a00000"
        assert current[("alpha", 2)] == "on-table-2"
    finally:
        store.close()
    again = MatchStore(data_dir)  # opening a migrated store again changes nothing
    try:
        assert len(again.current_matches()) == 3
    finally:
        again.close()


def test_a_service_on_a_store_from_before_tables_serves_its_matches_on_table_1(
    any_broker, tmp_path
):
    data_dir = tmp_path / "service"
    data_dir.mkdir()
    shutil.copy(STORE_BEFORE_TABLES, data_dir / STORE_FILE_NAME)
    alpha = Scorer(any_broker, "alpha")
    try:
        with service_running(any_broker, data_dir):
            shown = wait_for(lambda: current_snapshot(any_broker, "alpha", timeout=0.5))
            assert (shown["rev"], scores(shown), shown["table"]) == (3, (1, 1), 1)
            assert shown["table_name"] == "Table 1"
            # A resend of an id answered before the upgrade: the same answer, applied once.
            again = alpha.send({"id": "p2", "cmd": "point", "side": 2})
            assert (again["ok"], again["rev"], again["table"]) == (True, 3, 1)
            assert alpha.send({"id": uuid.uuid4().hex, "cmd": "point", "side": 1})["rev"] == 4
            assert scores(current_snapshot(any_broker, "alpha")) == (2, 1)
    finally:
        alpha.close()
