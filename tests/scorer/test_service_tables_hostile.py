"""Hostile commands on table topics through real mosquitto (whose ACL cannot check the table
level) and the real scorer service (issue 12): retained commands on table topics, and table
levels outside the scheme (``tables/1``, ``tables/03``, ``tables/²``), change nothing, also
after a restart, and never stop the service."""

from __future__ import annotations

import json
import logging

from scorer import topics
from scorer.config import Club
from tests.scorer.servicekit import Scorer, Watcher, current_snapshot, service_running
from tests.scorer.test_service import START

CLUBS = (Club("alpha", tables=3),)
# Level 3 values mosquitto lets the club's user publish under (its ACL's '+').
OFF_SCHEME = ["1", "03", "\u00b2", "9" * 300, "65"]


def test_retained_and_off_scheme_table_commands_change_nothing_across_restarts(
    mosquitto_broker, tmp_path, caplog
):
    broker = mosquitto_broker
    data_dir = tmp_path / "service"
    second = Scorer(broker, "alpha", table=2)
    ninth = Watcher(broker, topics.replies("alpha", 9), user="alpha")
    retained = [topics.commands("alpha", 2), topics.commands("alpha", 9)] + [
        f"clubs/alpha/tables/{level}/game/cmd" for level in OFF_SCHEME
    ]
    try:
        for index, topic in enumerate(retained):
            command = json.dumps({"id": f"kept-{index}", **START})
            second.watcher.publish(topic, command, retain=True)
        for _ in range(2):
            with service_running(broker, data_dir, clubs=CLUBS) as service:
                reply = second.watcher.next_json(topics.replies("alpha", 2))
                assert (reply["id"], reply["code"], reply["table"]) == (
                    "kept-0", "retained_command", 2
                )  # fmt: skip
                beyond = ninth.next_json(topics.replies("alpha", 9))
                assert (beyond["id"], beyond["code"]) == ("kept-1", "no_such_table")
                # The service still serves table 2 (and nothing above started a match).
                started = second.send(START)
                assert started["ok"] and started["rev"] == 1, started
                assert second.send({"cmd": "delete"})["ok"]
                assert not service.matches
        # Off-scheme topics are ignored with a warning, never an error of the service's own.
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage()[:200] for r in errors]
        for table in (1, 2, 3):
            assert current_snapshot(broker, "alpha", 0.3, table=table) is None
    finally:
        for topic in retained:
            second.watcher.publish(topic, b"", retain=True)
        second.close()
        ninth.close()
