"""The record of play (scorer/record.py, scorer/record_hooks.py): summaries from the store,
paging, player filter, head-to-head, delete, retention, and the webhook on a real local HTTP
server (also from the real service on a real broker)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scorer.record import RecordReader, RecordWriter
from scorer.record_fill import fill, played_log, store_log
from scorer.record_hooks import deliver
from tests.scorer.servicekit import Scorer, service_running, wait_for


@pytest.fixture
def record(tmp_path: Path) -> tuple[Path, RecordReader]:
    data = tmp_path / "data"
    store_log(data, "club", "m1", played_log("Ann", "Bob", 1, 1000.0))
    store_log(data, "club", "m2", played_log("Cid", "Ann", 1, 9000.0))
    store_log(data, "club", "m3", played_log("Ann", "Bob", 2, 20000.0, abandon_after=3))
    store_log(data, "other", "o1", played_log("Ann", "Bob", 1, 30000.0))
    writer = RecordWriter(data)
    assert writer.sync() == 4
    assert writer.sync() == 0  # ended matches are summarized once
    writer.close()
    return data, RecordReader(data)


def test_list_is_newest_first_per_club_with_results(record) -> None:
    _, reader = record
    rows, total = reader.matches("club")
    assert total == 3 and [r.match_id for r in rows] == ["m3", "m2", "m1"]
    assert rows[0].status == "abandoned" and rows[0].winner is None
    assert rows[2].players == ("Ann", "Bob") and rows[2].games_won == (2, 0)
    assert rows[2].table == "1"  # the store's table of the match
    assert reader.matches("club", page=2, per_page=2)[0][0].match_id == "m1"


def test_player_filter_and_head_to_head(record) -> None:
    _, reader = record
    rows, total = reader.matches("club", player="Cid")
    assert total == 1 and rows[0].match_id == "m2"
    assert reader.matches("club", player="Nobody") == ([], 0)
    # Abandoned matches do not count in head-to-head; the other club's match is not ours.
    assert reader.head_to_head("club", "Ann") == [
        {"opponent": "Bob", "won": 1, "lost": 0},
        {"opponent": "Cid", "won": 0, "lost": 1},
    ]
    assert set(reader.players("club")) == {"Ann", "Bob", "Cid"}
    assert reader.players("club", "C") == ["Cid"]
    assert reader.players("club", "%") == []


def test_delete_removes_record_and_log_but_never_a_current_match(record) -> None:
    data, reader = record
    writer = RecordWriter(data)
    assert writer.delete("club", "m1") and reader.match("club", "m1") is None
    assert reader.log("m1") == []
    assert not writer.delete("other", "m2")  # not that club's
    assert not writer.delete("club", "nope")
    writer.close()


def test_retention_deletes_matches_ended_before_the_cutoff(record) -> None:
    data, reader = record
    writer = RecordWriter(data)
    gone = writer.expire(1, now=9000.0 + 86400 + 100)  # cutoff 9100
    assert set(gone) == {"m1"}  # m2 ended within a day of that moment
    assert reader.match("club", "m1") is None and reader.match("club", "m2") is not None
    writer.close()


def test_record_files_are_private(record) -> None:
    import stat

    data, _ = record
    for path in data.glob("record.sqlite3*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_data_dir_without_record_reads_empty(tmp_path: Path) -> None:
    reader = RecordReader(tmp_path)
    assert reader.matches("club") == ([], 0) and reader.match("club", "x") is None


def test_fill_stores_real_matches(tmp_path: Path) -> None:
    ids = fill(tmp_path, "club", 5)
    writer = RecordWriter(tmp_path)
    writer.sync()
    rows, total = writer.reader.matches("club")
    assert total == 5 and rows[0].match_id == ids[-1]
    assert all(r.status == "finished" and max(r.games_won) == 2 for r in rows)
    writer.close()


class Hook(BaseHTTPRequestHandler):
    """Answers 500 to the first ``fail`` POSTs, then 204; keeps the bodies."""

    fail = 0
    bodies: list[bytes] = []
    got = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        if len(type(self).bodies) <= type(self).fail:
            self.send_response(500)
        else:
            self.send_response(204)
            type(self).got.set()
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hook_server():
    handler = type("H", (Hook,), {"fail": 0, "bodies": [], "got": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_webhook_is_retried_until_a_2xx(hook_server) -> None:
    _, handler, url = hook_server
    handler.fail = 2
    assert deliver(url, {"event": "match_end"}, delays=(0.05, 0.1, 0.2))
    assert len(handler.bodies) == 3 and json.loads(handler.bodies[-1]) == {"event": "match_end"}


def test_webhook_gives_up_after_the_last_try(hook_server) -> None:
    _, handler, url = hook_server
    handler.fail = 100
    assert not deliver(url, {"event": "match_end"}, delays=(0.01, 0.01))
    assert len(handler.bodies) == 3


def test_webhook_to_nobody_gives_up_without_raising() -> None:
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert not deliver(f"http://127.0.0.1:{port}/", {}, delays=(0.01,))


def test_service_posts_the_result_and_records_the_match(amqtt_broker, tmp_path, hook_server):
    _, handler, url = hook_server
    handler.fail = 1  # the first try fails: the service's delivery retries
    data = tmp_path / "service"
    scorer = Scorer(amqtt_broker, "alpha")
    try:
        with service_running(amqtt_broker, data, webhook_urls=(url,)) as service:
            assert scorer.send({"cmd": "start", "player1": "Ann", "player2": "Bob"})["ok"]
            for _ in range(10):
                assert scorer.send("1+")["ok"]
            assert RecordReader(data).matches("alpha") == ([], 0)
            service._record.delays = (0.05,) * 3
            reply = scorer.send("1+")
            assert reply["ok"]
            assert handler.got.wait(10), "the webhook was not delivered"
            match = json.loads(handler.bodies[-1])["match"]
            assert match["match_id"] == reply["match_id"] and match["games"] == [[11, 0]]
            assert match["winner"] == 1 and match["players"] == ["Ann", "Bob"]
            rows = wait_for(lambda: RecordReader(data).matches("alpha")[0])
            assert rows[0].match_id == reply["match_id"]
            # Undo of the winning point takes the match out of the list again.
            assert scorer.send("undo")["ok"]
            assert service._record.wait_idle()
            assert RecordReader(data).matches("alpha") == ([], 0)
    finally:
        scorer.close()


def test_a_webhook_that_never_answers_does_not_slow_scoring(amqtt_broker, tmp_path):
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    scorer = Scorer(amqtt_broker, "alpha")
    try:
        with service_running(amqtt_broker, tmp_path / "service", webhook_urls=(url,)):
            assert scorer.send({"cmd": "start", "player1": "Ann", "player2": "Bob"})["ok"]
            for _ in range(11):
                assert scorer.send("1+")["ok"]  # the last one ends the match: a POST hangs
            began = time.monotonic()
            assert scorer.send({"cmd": "start", "player1": "Cid", "player2": "Dee"})["ok"]
            for _ in range(5):
                assert scorer.send("2+")["ok"]
            # Six round trips (well under a second; a loaded machine stretches them) against
            # a blocked command path, which would wait out the 10 s POST timeout first.
            assert time.monotonic() - began < 8.0
    finally:
        scorer.close()
        silent.close()


def test_the_service_adds_matches_the_record_lacks_when_it_starts(amqtt_broker, tmp_path):
    data = tmp_path / "service"
    ids = fill(data, "alpha", 3)  # stored before this record existed (or after it was lost)
    with service_running(amqtt_broker, data) as service:
        assert service._record.wait_idle()
        rows, total = RecordReader(data).matches("alpha")
    assert total == 3 and [r.match_id for r in rows] == ids[::-1]
