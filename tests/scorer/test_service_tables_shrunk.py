"""A club whose configured tables went down while a table still had a match (issue 12): the
match must not be stuck forever, live on the broker and missing from the record."""

from __future__ import annotations

from scorer.config import Club
from scorer.record import RecordReader
from tests.scorer.servicekit import Scorer, current_snapshot, service_running
from tests.scorer.test_service import START


def test_a_match_left_on_a_dropped_table_can_be_ended_and_is_kept_in_the_record(
    amqtt_broker, tmp_path
):
    data_dir = tmp_path / "service"
    third = Scorer(amqtt_broker, "alpha", table=3)
    try:
        with service_running(amqtt_broker, data_dir, clubs=(Club("alpha", tables=3),)):
            started = third.send(START)
            assert started["ok"] and third.send("1+")["ok"]
        with service_running(amqtt_broker, data_dir, clubs=(Club("alpha", tables=2),)) as service:
            assert third.send("1+")["code"] == "no_such_table"  # no scoring there any more
            ended = third.send({"cmd": "end"})
            assert ended["ok"] is True, ended
            snapshot = current_snapshot(amqtt_broker, "alpha", table=3)
            assert snapshot is not None and snapshot["status"] == "abandoned"
            assert service._record is not None and service._record.wait_idle()
            rows, total = RecordReader(data_dir).matches("alpha")
            assert total == 1 and rows[0].match_id == started["match_id"]
            assert rows[0].table == "3"
    finally:
        third.close()


def test_a_resent_delete_on_a_dropped_table_gets_its_own_reply_again(amqtt_broker, tmp_path):
    data_dir = tmp_path / "service"
    third = Scorer(amqtt_broker, "alpha", table=3)
    try:
        with service_running(amqtt_broker, data_dir, clubs=(Club("alpha", tables=3),)):
            assert third.send(START)["ok"]
        with service_running(amqtt_broker, data_dir, clubs=(Club("alpha", tables=2),)):
            deleted = third.send({"cmd": "delete", "id": "d3"})
            assert deleted["ok"] is True
            # Its reply was lost on the way; the sender resends the same command, same id.
            again = third.send({"cmd": "delete", "id": "d3"})
            assert (again["ok"], again["code"], again["id"]) == (True, None, "d3"), again
    finally:
        third.close()
