"""Faults found by attacking the real service at specific windows (docs/reliability.md):
each test names the fault it pins. Real brokers on 127.0.0.1, bounded waits."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rallycast.bench.launch import up_command
from scorer import topics
from scorer.client import ScoreClient
from scorer.datadir_lock import lock_data_dir
from scorer.service import KEEPALIVE, ScorerService
from scorer.store import STORE_FILE_NAME, MatchStore
from tests.scorer.servicekit import (
    ROOT,
    WAIT,
    FreezableProxy,
    Scorer,
    ServiceProcess,
    Watcher,
    current_snapshot,
    service_running,
    service_settings,
    wait_for,
)

PROCESS_START = 20.0  # seconds: a Python subprocess on a busy 2-core machine
START = {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3}


def test_a_spectator_cannot_learn_the_services_client_id_from_the_probe(any_broker, tmp_path):
    """An anonymous spectator may read rallycast/status/#; the probe topic lives there. It
    must not carry the service's MQTT client id: with it, anyone can connect under that id
    and take the service's session over (MQTT-3.1.4-2): the service is thrown off, and a
    persistent session's queued commands go to the intruder."""
    with service_running(any_broker, tmp_path / "service") as service:
        # Both brokers' ACLs let the service read its probe (broker/acl.py, mosquitto.acl).
        assert service._probe_enabled  # noqa: SLF001
        client_id = service._client._client_id.decode()  # noqa: SLF001
        spectator = Watcher(any_broker, "rallycast/status/#")
        try:
            deadline = time.monotonic() + WAIT
            seen: list[str] = []
            while time.monotonic() < deadline and not any("/probe/" in t for t in seen):
                seen += [t for t in list(spectator._queues) if t not in seen]  # noqa: SLF001
                time.sleep(0.1)
            probes = [t for t in seen if "/probe/" in t]
            assert probes, "no probe seen within the wait"
            assert all(client_id not in t for t in probes), probes
        finally:
            spectator.close()


def wait_status(watcher: Watcher, wanted: bytes, timeout: float = PROCESS_START) -> None:
    wait_for(lambda: watcher.next(topics.SCORER_STATUS, timeout).payload == wanted, timeout)


def wait_exit(service: ServiceProcess, timeout: float = 2 * WAIT) -> int | None:
    assert service.process is not None
    try:
        return service.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@dataclass
class OnlineService:
    """A ``rallycast scorer`` subprocess said ``online``, scorer alpha and a status watcher."""

    service: ServiceProcess
    alpha: Scorer
    status: Watcher


@contextmanager
def online_service(
    broker: Any, data_dir: Path, service_endpoint: Any = None
) -> Iterator[OnlineService]:
    """Starts a ServiceProcess on ``data_dir`` (connected to ``service_endpoint``, by default
    ``broker``) with alpha and a status watcher on ``broker``; yields once the status says
    online; stops the service, then closes alpha (whichever the body left in ``.alpha``) and
    the watcher."""
    run = OnlineService(
        ServiceProcess(service_endpoint or broker, data_dir),
        Scorer(broker, "alpha"),
        Watcher(broker, topics.SCORER_STATUS),
    )
    try:
        run.service.start()
        wait_status(run.status, b"online")
        yield run
    finally:
        run.service.stop()
        run.alpha.close()
        run.status.close()


def test_a_second_service_on_the_same_data_dir_refuses_to_start_and_the_first_keeps_serving(
    any_broker, tmp_path
):
    """Two services on one data dir share the MQTT client id (each throws the other off the
    broker, MQTT-3.1.4-2) and the store (each appends from its own copy of the matches): the
    second must refuse to start, say why, and leave the first alone."""
    data_dir = tmp_path / "service"
    first = ServiceProcess(any_broker, data_dir)
    second = ServiceProcess(any_broker, data_dir)
    alpha = Scorer(any_broker, "alpha")
    status = Watcher(any_broker, topics.SCORER_STATUS)
    first.start()
    try:
        wait_status(status, b"online")
        assert alpha.send(START)["ok"]
        second.start()
        code = wait_exit(second, PROCESS_START)
        assert code == 1, f"the second service did not refuse (exit {code}):\n{second.output()}"
        assert first.process is not None
        assert (
            f"data dir {data_dir} is in use by rallycast scorer (pid {first.process.pid})"
            in second.output()
        )
        assert "Traceback" not in second.output()
        for _ in range(5):
            assert alpha.send({"cmd": "point", "side": 1})["ok"]
        assert "lost the broker" not in first.output()
    finally:
        second.stop()
        first.stop()
        alpha.close()
        status.close()


def _garble_header(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.write(b"not a database, not at all " * 4)


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_garble_header, _truncate_half], ids=["garbled", "torn"])
def test_a_damaged_store_stops_the_service_with_a_sentence_and_clears_no_snapshot(
    any_broker, tmp_path, damage
):
    """A store that cannot be read must not be served as an empty one (that clears every
    club's retained snapshot and forgets the ids it answered, so resends apply twice)."""
    data_dir = tmp_path / "service"
    alpha = Scorer(any_broker, "alpha")
    try:
        with service_running(any_broker, data_dir):
            alpha.send(START)
            for _ in range(10):
                alpha.send({"cmd": "point", "side": 1})
        before = current_snapshot(any_broker, "alpha")
        assert before is not None and before["rev"] == 11
        store = MatchStore(data_dir)  # checkpoint the WAL into the file, as a clean stop would
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # noqa: SLF001
        store.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{data_dir / STORE_FILE_NAME}{suffix}").unlink(missing_ok=True)
        damage(data_dir / STORE_FILE_NAME)
        service = ServiceProcess(any_broker, data_dir)
        service.start()
        code = wait_exit(service, PROCESS_START)
        output = service.output()
        assert code == 1, f"the service started on a damaged store (exit {code}):\n{output}"
        assert "cannot use the match store" in output and "Traceback" not in output, output
        assert current_snapshot(any_broker, "alpha") == before
    finally:
        alpha.close()


def _store_files(data_dir: Path) -> list[Path]:
    return [Path(f"{data_dir / STORE_FILE_NAME}{s}") for s in ("", "-wal", "-shm")]


def test_a_full_disk_refuses_each_press_with_store_failed_and_the_resend_applies_it_once(
    any_broker, tmp_path
):
    """A disk that fills up mid-match (modelled with RLIMIT_FSIZE on the real service: a
    write that grows a file fails with EFBIG, as on a full disk): every press is refused
    with store_failed and changes nothing, and the status says stalled (not online: no
    press can be applied); once there is room, the resends of the same ids are applied
    once each, the status is online again, and a restart agrees."""
    data_dir = tmp_path / "service"
    with online_service(any_broker, data_dir) as run:
        service, alpha, status = run.service, run.alpha, run.status
        alpha.send(START)
        for side in (1, 2):
            assert alpha.send({"cmd": "point", "side": side})["ok"]
        assert service.process is not None
        pid = service.process.pid
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        full = max(path.stat().st_size for path in _store_files(data_dir) if path.exists())
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (full, hard))
        presses = [{"id": f"full-{n}", "cmd": "point", "side": 1} for n in range(3)]
        for press in presses:
            reply = alpha.send(press)
            assert (reply["ok"], reply["code"], reply["rev"]) == (False, "store_failed", 3), reply
        assert current_snapshot(any_broker, "alpha")["rev"] == 3
        # Connected, probes fine, but no press can be applied: not "online".
        wait_status(status, b"stalled", WAIT)
        assert "the match store refuses writes" in service.output()

        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        for expected, press in enumerate(presses, start=4):
            reply = alpha.send(press)
            assert (reply["ok"], reply["rev"]) == (True, expected), reply
        wait_status(status, b"online", WAIT)
        for expected, press in enumerate(presses, start=4):  # resent again: answered, not applied
            assert alpha.send(press)["rev"] == expected
        after = current_snapshot(any_broker, "alpha")
        assert (after["rev"], after["game_data"]["score1"]) == (6, 4)

        service.kill()
        wait_status(status, b"offline", 10)
        service.start()
        wait_status(status, b"online")
        assert alpha.send(presses[0])["rev"] == 4
        assert alpha.send({"cmd": "point", "side": 2})["rev"] == 7


# 1.5 keep-alives [MQTT-3.1.2-24], plus the broker's own clock: mosquitto counts whole
# seconds and took 16.3-17.3 s on an idle machine and past 20 s at load 26 (loop run A1 of
# session 7); amqtt takes 15.0-15.3 s. Still well under the 45 s a 30 s keep-alive took.
FROZEN_OFFLINE_WITHIN = 1.5 * KEEPALIVE + 15


def test_a_frozen_service_is_said_offline_within_30_s_and_applies_the_press_once_thawed(
    any_broker, tmp_path
):
    """A frozen service (SIGSTOP: a suspended VM, a swap storm) cannot say anything: the
    broker's keep-alive check must publish its last will soon, not after 45 s while pages
    say online and every press waits. Once thawed, the press sent meanwhile counts once."""
    with online_service(any_broker, tmp_path / "service") as run:
        service, alpha, status = run.service, run.alpha, run.status
        alpha.send(START)
        assert service.process is not None
        frozen_at = time.monotonic()
        service.process.send_signal(signal.SIGSTOP)
        try:
            alpha.send_raw('{"id": "while-frozen", "cmd": "point", "side": 1}')
            wait_status(status, b"offline", FROZEN_OFFLINE_WITHIN)
            took = time.monotonic() - frozen_at
        finally:
            service.process.send_signal(signal.SIGCONT)
        print(f"a frozen service was said offline after {took:.1f} s")
        assert took < FROZEN_OFFLINE_WITHIN
        reply = alpha.reply_to("while-frozen", PROCESS_START)
        assert (reply["ok"], reply["rev"]) == (True, 2), reply
        wait_status(status, b"online")
        assert alpha.send("1+")["rev"] == 3


def test_a_press_refused_for_no_match_is_not_applied_by_its_resend_to_the_next_match(
    any_broker, tmp_path
):
    """A board's +1 between matches is refused (no_match); its reply is lost, the board
    resends the same id after a new match has started: the resend must get the same
    refusal, not score a point nobody pressed in the new match."""
    alpha = Scorer(any_broker, "alpha")
    try:
        with service_running(any_broker, tmp_path / "service"):
            early = {"id": "between-matches", "cmd": "point", "side": 1}
            first = alpha.send(early)
            assert (first["ok"], first["code"]) == (False, "no_match")
            started = alpha.send(START)
            again = alpha.send(early)
            assert again == first, again
            snapshot = current_snapshot(any_broker, "alpha")
            assert (snapshot["rev"], snapshot["match_id"]) == (1, started["match_id"])
            assert snapshot["game_data"]["score1"] == 0
    finally:
        alpha.close()


def test_a_delete_answered_with_no_match_does_not_delete_the_next_match_after_a_restart(
    any_broker, tmp_path
):
    """A delete sent when there is no match (reply lost), a restart, a new match, then the
    delete's resend: the resend is answered from the store, the new match stays."""
    data_dir = tmp_path / "service"
    alpha = Scorer(any_broker, "alpha")
    delete = {"id": "delete-nothing", "cmd": "delete"}
    try:
        with service_running(any_broker, data_dir):
            first = alpha.send(delete)
            assert (first["ok"], first["rev"], first["match_id"]) == (True, 0, None)
        with service_running(any_broker, data_dir):
            started = alpha.send(START)
            assert alpha.send(delete) == first
            snapshot = current_snapshot(any_broker, "alpha")
            assert snapshot is not None and snapshot["match_id"] == started["match_id"]
    finally:
        alpha.close()


def test_a_broker_that_comes_back_without_its_retained_snapshots_gets_them_again(
    any_broker_process, tmp_path
):
    """The broker is killed and comes back with an empty store (its persistence file lost):
    the service must publish every club's snapshot again, at the store's rev, so pages do
    not show "no match" or a stale score."""
    broker = any_broker_process
    with online_service(broker, tmp_path / "service") as run:
        alpha, status = run.alpha, run.status
        started = alpha.send(START)
        for _ in range(3):
            alpha.send("1+")
        alpha.close()
        status.close()
        broker.kill()
        lost = [p for p in broker.data_dir.iterdir() if p.suffix == ".db" or ".db-" in p.name]
        assert lost, sorted(p.name for p in broker.data_dir.iterdir())
        for path in lost:
            path.unlink()
        broker.start()
        snapshot = wait_for(lambda: current_snapshot(broker, "alpha"), PROCESS_START)
        assert (snapshot["match_id"], snapshot["rev"]) == (started["match_id"], 4)
        alpha = run.alpha = Scorer(broker, "alpha")
        assert alpha.send({"cmd": "point", "side": 2}, with_id=True)["rev"] == 5


def test_a_press_held_by_the_network_while_another_scorer_replaces_the_match_does_not_score_in_the_new_one(  # noqa: E501
    any_broker, tmp_path
):
    """ScoreClient: a press made while match 1 was shown, held by the network until another
    scorer has force-started match 2, must not score in match 2 (it was meant for match 1):
    the client sends the match it was showing, and the service refuses it (wrong_match)."""
    proxy = FreezableProxy(any_broker.host, any_broker.mqtt_port, upstream=True)
    other = Scorer(any_broker, "alpha")
    password = any_broker.users["alpha"]
    try:
        with service_running(any_broker, tmp_path / "service"):
            first = other.send(START)
            with ScoreClient(f"mqtt://alpha:{password}@127.0.0.1:{proxy.port}", "alpha") as phone:
                shown = wait_for(lambda: phone.snapshot, WAIT)
                assert shown["match_id"] == first["match_id"]
                proxy.freeze()
                outcome: list[Any] = []
                pressing = threading.Thread(
                    target=lambda: outcome.append(phone.send({"cmd": "point", "side": 1}, 20))
                )
                pressing.start()
                # The press is built (with match 1) before match 2 starts: a thread that
                # runs late would build it after the phone shows match 2 (loop run A2 on
                # f7b39d2: the press then rightly scored in match 2).
                wait_for(lambda: phone._waiting)
                second = other.send({**START, "force": True})
                assert second["ok"] and second["match_id"] != first["match_id"]
                wait_for(lambda: (phone.snapshot or {}).get("match_id") == second["match_id"])
                proxy.thaw()
                pressing.join(25)
                assert outcome, "the press got no reply"
                reply = outcome[0]
                assert (reply["ok"], reply["code"]) == (False, "wrong_match"), reply
                snapshot = current_snapshot(any_broker, "alpha")
                assert (snapshot["match_id"], snapshot["rev"]) == (second["match_id"], 1)
                # The client follows the new match: its next press counts there.
                assert phone.send({"cmd": "point", "side": 1})["rev"] == 2
    finally:
        proxy.close()
        other.close()


KILLED_AFTER_COMMIT = {
    # command -> (match after it, rev, score); the match stands at 0-1, rev 2, before it.
    "point": ({"cmd": "point", "side": 1}, "same", 3, (1, 1)),
    "force-start": ({**START, "player1": "Cy", "force": True}, "new", 1, (0, 0)),
    "undo": ({"cmd": "undo"}, "same", 3, (0, 0)),
}


@pytest.mark.parametrize("kind", sorted(KILLED_AFTER_COMMIT))
def test_kill_9_after_the_commit_before_the_reply_left_the_service_is_answered_once_after_restart(
    any_broker_process, tmp_path, kind
):
    """The worst window of the service: the press is committed, but the snapshot, the reply
    and the PUBACK are still in the service's socket (held here by a proxy) when it is
    killed. After the restart the broker redelivers the press (no PUBACK came): it is
    answered with the original reply, not applied again; the snapshot is the store's."""
    broker = any_broker_process
    proxy = FreezableProxy(broker.host, broker.mqtt_port, upstream=True)
    via_proxy = SimpleNamespace(
        host="127.0.0.1",
        mqtt_port=proxy.port,
        users=broker.users,
        service_user=broker.service_user,
    )
    data_dir = tmp_path / "service"
    try:
        with online_service(broker, data_dir, via_proxy) as run:
            service, alpha, status = run.service, run.alpha, run.status
            started = alpha.send(START)
            point = alpha.send({"cmd": "point", "side": 2})
            assert point["rev"] == 2
            proxy.freeze()
            command, which_match, rev, score = KILLED_AFTER_COMMIT[kind]
            alpha.send_raw(json.dumps({**command, "id": "committed"}))
            wait_for(lambda: stored_ids(data_dir) >= 3, WAIT)  # committed, in the store
            assert alpha.watcher.nothing_on(topics.replies("alpha"), 0.3)
            service.kill()
            proxy.close()
            # The broker learns of the death from the proxy's close, at the latest from the
            # service's keep-alive (1.5 x 10 s); how fast is not what this test is about.
            wait_status(status, b"offline", PROCESS_START)
            restarted = ServiceProcess(broker, data_dir)
            restarted.start()
            try:
                # The freeze may have held the last press's PUBACK too: the broker delivers
                # it again and reply_to checks it is answered exactly as before.
                reply = alpha.reply_to("committed", PROCESS_START)
                assert (reply["ok"], reply["rev"]) == (True, rev), reply
                assert alpha.watcher.nothing_on(topics.replies("alpha"), 1.0)
                snapshot = current_snapshot(broker, "alpha")
                assert snapshot["rev"] == rev and snapshot["match_id"] == reply["match_id"]
                assert (snapshot["match_id"] == started["match_id"]) == (which_match == "same")
                data = snapshot["game_data"]
                assert (data["score1"], data["score2"]) == score
                # The sender's own resend is answered the same way.
                alpha.send_raw(json.dumps({**command, "id": "committed"}))
                assert alpha.watcher.next_json(topics.replies("alpha")) == reply
                assert alpha.send("2+")["rev"] == rev + 1
            finally:
                restarted.stop()
    finally:
        proxy.close()


def stored_ids(data_dir: Path) -> int:
    """How many command ids the store holds (read without disturbing the service)."""
    import sqlite3

    db = sqlite3.connect(f"file:{data_dir / STORE_FILE_NAME}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM command_ids").fetchone()[0])
    finally:
        db.close()


def test_clock_jumps_back_and_forth_change_nothing_a_restart_would_not_rebuild(
    any_broker, tmp_path
):
    """The wall clock jumps (NTP correction, a board computer without an RTC booting in
    1970): times are only labels; the score, undo and the rebuilt match agree."""
    data_dir = tmp_path / "service"
    moments = iter([1.0e9, 5.0, 2.0e9, 1.7e9, -1.0, 1.8e9, 3.0, 1.9e9] * 4)
    settings = service_settings(any_broker, data_dir)
    password = any_broker.users[any_broker.service_user]
    alpha = Scorer(any_broker, "alpha")
    try:
        service = ScorerService(settings, password=password, clock=lambda: next(moments))
        service.start()
        try:
            assert service.wait_until_connected(WAIT)
            alpha.send(START)
            for command in ("1+", "2+", {"cmd": "timeout", "side": 1}, "1+", "undo", "redo"):
                assert alpha.send(command)["ok"]
            live = current_snapshot(any_broker, "alpha")
        finally:
            service.stop()
        with service_running(any_broker, data_dir):
            rebuilt = current_snapshot(any_broker, "alpha")
            assert alpha.send("undo")["rev"] == 8
        assert live is not None and rebuilt is not None
        assert {k: v for k, v in rebuilt.items() if k != "updated_at"} == {
            k: v for k, v in live.items() if k != "updated_at"
        }
    finally:
        alpha.close()


def test_a_broker_frozen_for_20_s_loses_no_press_and_the_status_comes_back_online(
    any_broker_process, tmp_path
):
    """The broker freezes (SIGSTOP: a swap storm on the club's laptop) for longer than the
    keep-alive: the press sent into the frozen broker is applied once after the thaw, a
    resend of it is answered, and the status is online again within seconds."""
    broker = any_broker_process
    process = broker._runner.process  # noqa: SLF001
    with online_service(broker, tmp_path / "service") as run:
        alpha = run.alpha
        alpha.send(START)
        press = '{"id": "into-the-freeze", "cmd": "point", "side": 1}'
        process.send_signal(signal.SIGSTOP)
        try:
            alpha.watcher.client.publish(topics.commands("alpha"), press, qos=1)
            time.sleep(20.0)  # the fault itself: a freeze longer than 1.5 keep-alives
        finally:
            process.send_signal(signal.SIGCONT)
        thawed = time.monotonic()
        replies = []
        deadline = thawed + PROCESS_START
        while time.monotonic() < deadline and not replies:
            try:
                reply = alpha.watcher.next_json(topics.replies("alpha"), 1.0)
            except AssertionError:
                alpha.send_raw(press)  # the sender's resend (the first copy may be lost)
                continue
            if reply["id"] == "into-the-freeze":
                replies.append(reply)
        assert replies, "the press was never answered"
        assert (replies[0]["ok"], replies[0]["rev"]) == (True, 2), replies
        print(f"answered {time.monotonic() - thawed:.1f} s after the thaw")
        wait_for(
            lambda: (current_snapshot(broker, "alpha", 1.0) or {}).get("rev") == 2, PROCESS_START
        )
        alpha.send_raw(press)
        # After a copy from the resend loop above or START's again (its PUBACK was frozen).
        assert alpha.reply_to("into-the-freeze")["rev"] == 2
        wait_for(lambda: retained_status(broker) == b"online", PROCESS_START, 0.2)
        print(f"online {time.monotonic() - thawed:.1f} s after the thaw")
        assert alpha.send("2+")["rev"] == 3


def retained_status(endpoint: Any) -> bytes | None:
    """What a new spectator reads on rallycast/status/scorer now."""
    watcher = Watcher(endpoint, topics.SCORER_STATUS)
    try:
        return watcher.next(topics.SCORER_STATUS, 1.0).payload
    except AssertionError:
        return None
    finally:
        watcher.close()


def test_kill_9_with_garbage_after_the_last_wal_frame_keeps_every_committed_press(
    any_broker_process, tmp_path
):
    """kill -9 leaves the -wal and -shm files; a torn write after the last commit (garbage
    appended to the WAL, a stale -shm) must cost nothing that was committed."""
    broker = any_broker_process
    data_dir = tmp_path / "service"
    with online_service(broker, data_dir) as run:
        service, alpha, status = run.service, run.alpha, run.status
        started = alpha.send(START)
        for side in (1, 2, 1, 1, 2):
            assert alpha.send({"cmd": "point", "side": side})["ok"]
        service.kill()
        wal = Path(f"{data_dir / STORE_FILE_NAME}-wal")
        assert wal.exists() and wal.stat().st_size > 0
        with wal.open("ab") as handle:
            handle.write(os.urandom(3000))
        shm = Path(f"{data_dir / STORE_FILE_NAME}-shm")
        if shm.exists():
            shm.write_bytes(os.urandom(shm.stat().st_size))
        wait_status(status, b"offline", 2 * WAIT)
        service.start()
        wait_status(status, b"online")
        snapshot = current_snapshot(broker, "alpha")
        assert (snapshot["match_id"], snapshot["rev"]) == (started["match_id"], 6)
        assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (3, 2)
        assert alpha.send("undo")["rev"] == 7


def test_an_id_reused_for_another_command_is_refused_not_answered_as_done(any_broker, tmp_path):
    """A home-made board numbers its presses 1, 2, 3 and starts again at 1 after a reboot:
    the new press "1" (side 2) is not a resend of the old "1" (side 1). Answering it with
    the old reply would tell the board "done" for a press that was never applied. It is
    refused (id_reused), also after a restart; a true resend (same command) is answered."""
    data_dir = tmp_path / "service"
    alpha = Scorer(any_broker, "alpha")
    try:
        with service_running(any_broker, data_dir):
            alpha.send(START)
            first = alpha.send({"id": 1, "cmd": "point", "side": 1})
            assert (first["ok"], first["rev"]) == (True, 2)
            reused = alpha.send({"id": 1, "cmd": "point", "side": 2})
            assert (reused["ok"], reused["code"], reused["rev"]) == (False, "id_reused", 2)
            assert reused["params"] == {"id": 1}
            # The same command again is a resend: the original reply.
            assert alpha.send({"cmd": "point", "id": 1, "side": 1}) == first
            refused = alpha.send({"id": "r", "cmd": "point", "side": 1, "delta": -1, "match": "x"})
            assert refused["code"] == "wrong_match"
        with service_running(any_broker, data_dir):
            assert alpha.send({"id": 1, "cmd": "point", "side": 2})["code"] == "id_reused"
            assert alpha.send({"id": 1, "cmd": "point", "side": 1}) == first
            assert current_snapshot(any_broker, "alpha")["rev"] == 2
    finally:
        alpha.close()


def test_rallycast_up_on_a_data_dir_in_use_says_so_in_one_sentence(tmp_path):
    data_dir = tmp_path / "data"
    holder = lock_data_dir(data_dir, "scorer", "rallycast scorer")  # a running service
    try:
        result = subprocess.run(
            up_command(data_dir),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=PROCESS_START * 2,
            env={k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")},
        )
    finally:
        holder.close()
    assert result.returncode == 1, result
    assert (
        "is in use by rallycast scorer (pid" in result.stderr and "Traceback" not in result.stderr
    )


def test_a_stale_snapshot_behind_a_backlog_of_commands_is_still_corrected(
    any_broker, tmp_path, monkeypatch
):
    """The service comes back to a backlog of queued commands (its persistent session) and a
    retained snapshot the store does not back (a match deleted just before a crash). The
    broker sends the backlog before the retained copies, so a retained copy must be compared
    whenever it comes, however long after the connection or the SUBACK: a long backlog must
    not leave the stale snapshot on every page.

    The clear is waited for as an event (a page's copy of the empty retained message), with
    a bound for the whole backlog: it comes after 150 commands and their 300 QoS 1
    publications, which took over 5 s at load 20 on mosquitto (loop run B2 on 8b9c87c)."""
    # A window far shorter than the backlog: the retained copies come after it is over.
    monkeypatch.setattr("scorer.service.RECONCILE_SECONDS", 0.01)
    data_dir = tmp_path / "service"
    beta = Scorer(any_broker, "beta")
    forger = Watcher(any_broker, user=any_broker.service_user)
    page = None
    try:
        with service_running(any_broker, data_dir):
            beta.send(START)
        stale = {"type": "game_update", "match_id": "deleted-before-the-crash", "rev": 9}
        forger.publish(topics.game("alpha"), json.dumps(stale), retain=True)
        page = Watcher(any_broker, topics.game("alpha"))
        assert json.loads(page.next(topics.game("alpha")).payload) == stale
        for n in range(150):  # queued for the service's session while it is away
            beta.send_raw(json.dumps({"id": f"q{n}", "cmd": "point", "side": 1 + n % 2}))
        with service_running(any_broker, data_dir):
            cleared = page.next(topics.game("alpha"), 8 * WAIT)
            assert cleared.payload == b"", cleared.payload
            assert stored_ids(data_dir) == 151
            assert current_snapshot(any_broker, "alpha") is None
    finally:
        beta.close()
        forger.close()
        if page is not None:
            page.close()


def test_a_refused_press_resent_after_a_restart_gets_the_same_refusal(any_broker, tmp_path):
    """A -1 refused at 0-0 (its reply lost), the service restarts, side 1 scores, then the
    -1's resend arrives: it must get its refusal again, not take the new point away."""
    data_dir = tmp_path / "service"
    alpha = Scorer(any_broker, "alpha")
    minus = {"id": "minus-at-love", "cmd": "point", "side": 1, "delta": -1}
    try:
        with service_running(any_broker, data_dir):
            alpha.send(START)
            first = alpha.send(minus)
            assert (first["ok"], first["code"]) == (False, "no_point_to_remove")
        with service_running(any_broker, data_dir):
            assert alpha.send("1+")["rev"] == 2
            assert alpha.send(minus) == first
            snapshot = current_snapshot(any_broker, "alpha")
            assert (snapshot["rev"], snapshot["game_data"]["score1"]) == (2, 1)
    finally:
        alpha.close()


def test_a_store_deleted_under_the_running_service_refuses_presses_instead_of_losing_them(
    any_broker, tmp_path
):
    """Someone cleans the data dir while the service runs: SQLite keeps writing to the
    deleted file, which no restart reads. A press saved there and answered ok would be lost
    at the next start: it is refused (store_failed) and the status says stalled."""
    data_dir = tmp_path / "service"
    alpha = Scorer(any_broker, "alpha")
    status = Watcher(any_broker, topics.SCORER_STATUS)
    try:
        with service_running(any_broker, data_dir):
            alpha.send(START)
            for path in _store_files(data_dir):
                path.unlink(missing_ok=True)
            reply = alpha.send({"cmd": "point", "side": 1})
            assert (reply["ok"], reply["code"]) == (False, "store_failed"), reply
            wait_for(lambda: retained_status(any_broker) == b"stalled", WAIT, 0.2)
            assert current_snapshot(any_broker, "alpha")["rev"] == 1
    finally:
        alpha.close()
        status.close()
