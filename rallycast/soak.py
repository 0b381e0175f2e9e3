"""``rallycast soak``: drive real matches through the real clients while the broker, the
scorer service or ``rallycast up`` is killed with SIGKILL and restarted, then check the books.

Layouts (each on 127.0.0.1, ephemeral ports, a fresh temporary data dir):

- ``embedded``: ``python -m broker.cli`` and ``rallycast scorer`` as two processes; kills hit
  either (kinds ``broker`` and ``service``). Command lines, ports and the mosquitto config
  come from ``rallycast/bench/launch.py``, as for the benchmarks and the test fixtures.
- ``up``: ``rallycast up`` (broker + service + pages in one process); kind ``up``.
- ``mosquitto``: mosquitto run from our ``mosquitto.conf`` (ports, paths and user rewritten)
  and ``rallycast scorer``; kinds ``broker`` and ``service``.

Drivers: one ``scorer.client.ScoreClient`` per club (the club's scorer user), pressing +1, -1
and undo at ``--rate`` presses/s with up to ``--in-flight`` presses awaiting their reply, and
starting a new match when one ends. Every press carries a unique id; for each the driver
records the reply it got (ok, refused with its code, or none within the bound).

Faults: ``--kills`` SIGKILLs per layout, the kinds taken in turn in a shuffled order, one at a
random moment of each equal slice of the pressing time, each followed by a random downtime of
0-2 s and a restart (waited for, bounded). A kill also waits until every press sent before the
latest restart was ready has its reply (at most ``--reply-timeout`` s past its moment): on a
loaded machine a restart takes seconds, and kills back to back would stack their outages past
a press's reply bound, failing "answers each" for the plan's sake. All randomness comes from
``--seed``.

Checks, once everything runs again and the store is quiet (docs/reliability.md):

1. every id that got an ``ok`` reply is in the club's logs exactly once (over all its matches);
2. every log entry carries an id the driver sent to that club (nothing invented);
3. each club's retained snapshot equals ``Match.from_log(current log).snapshot()`` (no match:
   no retained snapshot);
4. no id is in the logs more than once (also those that got no reply), and no id whose only
   reply was a refusal is in them (a refusal is final).

Exit status 0: every check holds; 1: a violation (the offending ids and the command that
reproduces the run are printed); 2: the soak could not run (e.g. mosquitto missing).
"""

from __future__ import annotations

import argparse
import collections
import json
import queue
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.process import stop_process
from rallycast.bench.launch import (
    SERVICE_USER,
    BrokerNotInstalled,
    broker_env,
    embedded_command,
    free_ports,
    mosquitto_config,
    mosquitto_program,
    port_accepts,
    up_command,
    write_mosquitto_passwords,
)

LAYOUTS: dict[str, tuple[str, ...]] = {
    "embedded": ("broker", "service"),
    "up": ("up",),
    "mosquitto": ("broker", "service"),
}
CLUB_IDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
MAX_DOWNTIME = 2.0  # seconds between a SIGKILL and the restart
START_TIMEOUT = 20.0  # seconds for a (re)started process to be ready
KILL_MARGIN = 1.0  # seconds before the deadline a kill waiting for replies goes ahead anyway
SETTLE_TIMEOUT = 30.0  # seconds for the system to be connected and quiet at the end
QUIET_SECONDS = 3.0  # the store unchanged this long = quiet
RETAINED_WAIT = 3.0  # seconds to wait for the retained snapshots at the end
STOP_TIMEOUT = 10.0  # seconds for a graceful stop before SIGKILL
# What the service logs when it has connected (and subscribed); `up` logs it too.
SERVICE_CONNECTED = "rallycast.scorer: connected to "
SHOW_IDS = 20  # offending ids printed per kind of violation
# Seconds between kills below which a press may go unanswered just because nothing stays up
# long enough: downtime <= 2 s + restart ~1 s + the clients' reconnect backoff <= 4 s.
KILL_SPACING_HINT = 8.0


class SoakError(RuntimeError):
    """The soak could not run (a process did not start, a program is missing)."""


class NotInstalled(SoakError):
    pass


# --------------------------------------------------------------------------------------------
# Options and records


@dataclass
class SoakOptions:
    layout: str = "embedded"
    presses: int = 600  # per layout, over all clubs
    kills: int = 6  # per layout, over its kinds
    seed: int = 0
    duration_limit: float = 120.0  # seconds of pressing and killing per layout
    clubs: int = 3
    rate: float = 5.0  # presses/s per club
    in_flight: int = 8  # presses awaiting their reply, per club
    # Seconds a press waits for its reply; ScoreClient resends the same id meanwhile (its
    # own default bound is 30 s).
    reply_timeout: float = 30.0
    require_replies: bool = False  # an unreplied press is a violation (liveness)
    work_dir: Path | None = None  # None: a temporary dir (removed after a clean run)
    keep: bool = False

    def command(self, layout: str | None = None) -> str:
        """The command line that repeats this run (same seed, same bounds)."""
        return (
            f"rallycast soak --layout {layout or self.layout} --presses {self.presses} "
            f"--kills {self.kills} --seed {self.seed} --duration-limit {self.duration_limit:g} "
            f"--clubs {self.clubs} --rate {self.rate:g} --in-flight {self.in_flight} "
            f"--reply-timeout {self.reply_timeout:g}"
            + (" --require-replies" if self.require_replies else "")
        )


@dataclass
class Press:
    id: str
    club: str
    kind: str  # start | 1+ | 2+ | 1- | 2- | undo
    sent_at: float  # seconds since the run started
    outcome: str = "pending"  # ok | refused | no_reply
    code: str | None = None  # refusal code (or the no-reply exception's name)
    error: str | None = None
    rev: int | None = None
    replied_at: float | None = None


@dataclass
class Kill:
    kind: str
    at: float  # seconds since the run started
    downtime: float
    ready_after: float | None = None  # seconds from the restart to ready (None: never)


@dataclass
class Evidence:
    """What the checks read: the driver's records and the final state."""

    presses: list[Press]
    # id -> every reply the clients saw for it (also those that came after send() gave up)
    replies: dict[str, list[dict[str, Any]]]
    # club -> [(match_id, log)] for every match the club ever had, oldest first
    logs: dict[str, list[tuple[str, list[dict[str, Any]]]]]
    # club -> (match_id, log) of its current match, or None
    current: dict[str, tuple[str, list[dict[str, Any]]] | None]
    # club -> the retained snapshot read at the end (None: none / empty)
    retained: dict[str, dict[str, Any] | None]


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)  # ok, but not in the logs
    duplicated: list[str] = field(default_factory=list)  # in the logs more than once
    invented: list[str] = field(default_factory=list)  # in the logs, never sent (to that club)
    refused_applied: list[str] = field(default_factory=list)  # refused, yet in the logs
    snapshot_mismatch: list[str] = field(default_factory=list)  # club: what differs
    unreplied_applied: int = 0  # no reply, in the logs once (allowed)
    unreplied_not_applied: int = 0  # no reply, not in the logs (allowed)
    late_ok: int = 0  # no reply within the bound, an ok came later
    unreplied: list[str] = field(default_factory=list)  # no reply at all (ids)
    replies_required: bool = False  # --require-replies: an unreplied press is a violation
    problems: list[str] = field(default_factory=list)  # the run itself went wrong

    def violations(self) -> dict[str, list[str]]:
        found = {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "invented": self.invented,
            "refused_applied": self.refused_applied,
            "snapshot_mismatch": self.snapshot_mismatch,
            "unreplied": self.unreplied if self.replies_required else [],
            "problems": self.problems,
        }
        return {name: items for name, items in found.items() if items}


def refusal_code(reply: dict[str, Any]) -> str:
    """The reply's machine-readable code; for a service that sends none yet, one read from
    the English text (marked with ``~``)."""
    code = reply.get("code")
    if isinstance(code, str) and code:
        return code
    text = str(reply.get("error") or "")
    for needle, guessed in (
        ("is over", "match_over"),
        ("no point to take back", "no_point_to_remove"),
        ("a match is in progress", "match_in_progress"),
        ("no match", "no_match"),
        ("could not save", "store_failed"),
        ("internal error", "internal_error"),
    ):
        if needle in text:
            return "~" + guessed
    return "~other"


# --------------------------------------------------------------------------------------------
# The checks (pure: records and state in, findings out)


def check(evidence: Evidence, *, require_replies: bool = False) -> Findings:
    """Compare what the senders were told with what the store and the broker hold.
    ``require_replies``: a press that never got a reply is a violation too (liveness: for
    senders that resend until the reply comes)."""
    from scorer.config import Club
    from scorer.engine import Match

    findings = Findings(replies_required=require_replies)
    sent = {press.id: press for press in evidence.presses}
    ok_ids = {press.id for press in evidence.presses if press.outcome == "ok"}
    late_ok = {
        press.id
        for press in evidence.presses
        if press.outcome != "ok" and any(r.get("ok") for r in evidence.replies.get(press.id, []))
    }
    findings.late_ok = len(late_ok)
    ok_ids |= late_ok  # the service said ok: it must be in the state, in time or not
    refused_only = {
        press.id
        for press in evidence.presses
        if press.outcome == "refused" and press.id not in ok_ids
    }

    counts: collections.Counter[str] = collections.Counter()
    for club, matches in sorted(evidence.logs.items()):
        for match_id, log in matches:
            for seq, entry in enumerate(log, start=1):
                entry_id = entry.get("id")
                if entry_id is None:
                    findings.invented.append(f"{club}/{match_id}#{seq} (no id)")
                    continue
                key = str(entry_id)
                press = sent.get(key)
                if press is None or press.club != club:
                    findings.invented.append(f"{key} ({club}/{match_id}#{seq})")
                    continue
                counts[key] += 1
    findings.lost = sorted(i for i in ok_ids if counts[i] == 0)
    findings.duplicated = sorted(i for i, n in counts.items() if n > 1)
    findings.refused_applied = sorted(i for i in refused_only if counts[i] > 0)
    for press in evidence.presses:
        if press.outcome != "ok" and press.outcome != "refused" and press.id not in ok_ids:
            findings.unreplied.append(press.id)
            if counts[press.id] == 0:
                findings.unreplied_not_applied += 1
            elif counts[press.id] == 1:
                findings.unreplied_applied += 1

    for club in sorted(evidence.retained.keys() | evidence.current.keys()):
        current = evidence.current.get(club)
        shown = evidence.retained.get(club)
        expected = Match.from_log(current[0], current[1]).snapshot() if current else None
        if expected is not None:
            # As the service publishes it on table 1's topic (the soak's clubs have no
            # configured table names).
            expected = {**expected, "table": 1, "table_name": Club(club).table_name(1)}
        if expected == shown:
            continue
        if expected is None or shown is None:
            findings.snapshot_mismatch.append(
                f"{club}: retained {_brief(shown)}, store {_brief(expected)}"
            )
            continue
        keys = sorted(k for k in expected.keys() | shown.keys() if expected.get(k) != shown.get(k))
        findings.snapshot_mismatch.append(
            f"{club}: retained {_brief(shown)}, store {_brief(expected)}; differ in {keys}"
        )
    return findings


def _brief(snapshot: dict[str, Any] | None) -> str:
    if snapshot is None:
        return "none"
    data = snapshot.get("game_data") or {}
    return (
        f"{snapshot.get('match_id')} rev {snapshot.get('rev')} "
        f"{data.get('score1')}-{data.get('score2')} games {snapshot.get('games')}"
    )


# --------------------------------------------------------------------------------------------
# Processes


class Component:
    """One process of a layout, restartable. Ready = ``ports`` accept connections and, when
    ``marker`` is set, the log has one more line with it than before this start."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str],
        ports: tuple[int, ...] = (),
        marker: str | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.ports = ports
        self.marker = marker
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def marker_count(self, marker: str | None = None) -> int:
        wanted = marker or self.marker
        if wanted is None:
            return 0
        try:
            return self.log_path.read_text(errors="replace").count(wanted)
        except FileNotFoundError:
            return 0

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start and wait until ready; returns the seconds that took. Raises SoakError."""
        started = time.monotonic()
        before = self.marker_count()
        with self.log_path.open("ab") as log:
            log.write(f"\n--- soak: start #{self.starts + 1} of {self.name}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env=self.env, cwd=self.log_path.parent
            )
        self.starts += 1
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SoakError(
                    f"{self.name} exited with status {self.process.returncode} while starting; "
                    f"its log:\n{self.log_tail()}"
                )
            if all(port_accepts(port) for port in self.ports) and (
                self.marker is None or self.marker_count() > before
            ):
                return time.monotonic() - started
            time.sleep(0.05)
        raise SoakError(
            f"{self.name} was not ready within {timeout:g} s; its log:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: no clean stop, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; False when it had to be killed."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return True
        stop_process(process, grace=timeout)
        return process.returncode != -signal.SIGKILL

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


@dataclass
class System:
    """A started layout: its processes by kill kind, where clients connect, where the
    service keeps its store, and the clubs' scorer passwords."""

    layout: str
    components: dict[str, Component]  # kill kind -> process
    mqtt_port: int
    service_data_dir: Path
    club_passwords: dict[str, str]
    # The process that logs SERVICE_CONNECTED (the service, or up).
    service: Component
    # Broker restarts: the service must have connected after the latest one.
    broker_kind: str | None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def start(self) -> None:
        order = [k for k in ("broker", "service", "up") if k in self.components]
        for kind in order:
            self.components[kind].start()

    def stop(self) -> list[str]:
        """Graceful stop, the service first; names of those that had to be killed."""
        killed = []
        for kind in ("service", "up", "broker"):
            component = self.components.get(kind)
            if component is not None and not component.stop():
                killed.append(component.name)
        return killed

    def kill_all(self) -> None:
        for component in self.components.values():
            component.kill()


def _write_users(path: Path, users: dict[str, str]) -> None:
    """Our argon2 password file, made with the machinery of ``rallycast passwd`` (cheap
    argon2 parameters: the soak logs in again after every restart; the hash says its own
    parameters, so the broker verifies it as any other)."""
    from argon2 import PasswordHasher

    from broker.auth import PasswordFile

    passwords = PasswordFile(path, PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    for user, password in users.items():
        passwords.set(user, password)


def build_system(layout: str, work: Path, clubs: list[str]) -> System:
    """Write users, secrets and configuration for ``layout`` under ``work``; start nothing."""
    from scorer.service import ensure_service_secret

    python = sys.executable
    service_dir = work / "service"
    service_secret = ensure_service_secret(service_dir if layout != "up" else work / "up")
    club_passwords = {club: secrets.token_urlsafe(12) for club in clubs}
    users = {SERVICE_USER: service_secret, **club_passwords}
    mqtt_port, ws_port, http_port = free_ports(3)
    quiet = {"RALLYCAST_LOG_LEVEL": "WARNING"}
    service_argv = [
        python, "-m", "rallycast.cli", "scorer",
        "--url", f"mqtt://127.0.0.1:{mqtt_port}",
        "--data-dir", str(service_dir),
    ]  # fmt: skip
    service_env = broker_env({"RALLYCAST_LOG_LEVEL": "INFO"})

    if layout == "up":
        data = work / "up"
        _write_users(data / "passwd", users)
        up = Component(
            "rallycast up",
            up_command(data, mqtt_port=mqtt_port, ws_port=ws_port, http_port=http_port),
            data / "up.log",
            env=broker_env({"RALLYCAST_LOG_LEVEL": "INFO", "RALLYCAST_CLUBS": ",".join(clubs)}),
            ports=(mqtt_port,),
            marker=SERVICE_CONNECTED,
        )
        return System(layout, {"up": up}, mqtt_port, data, club_passwords, up, None)

    service = Component(
        "rallycast scorer",
        service_argv,
        service_dir / "service.log",
        env=service_env,
        marker=SERVICE_CONNECTED,
    )
    if layout == "embedded":
        data = work / "broker"
        _write_users(data / "passwd", users)
        broker = Component(
            "python -m broker.cli",
            embedded_command(data, mqtt_port, ws_port),
            data / "broker.log",
            env=broker_env(quiet),
            ports=(mqtt_port, ws_port),
        )
    elif layout == "mosquitto":
        data = work / "mosquitto"
        (data / "mosquitto-data").mkdir(parents=True)
        try:
            program = mosquitto_program()
            write_mosquitto_passwords(data / "mosquitto.passwd", users)
        except BrokerNotInstalled as exc:
            raise NotInstalled(f"{exc} (apt-get install mosquitto)") from None
        try:
            text = mosquitto_config(
                mqtt_port, ws_port, password_file=data / "mosquitto.passwd",
                persistence_dir=data / "mosquitto-data",
            )  # fmt: skip
        except RuntimeError as exc:
            raise SoakError(str(exc)) from None
        config = data / "mosquitto.conf"
        config.write_text(text)
        broker = Component(
            "mosquitto",
            [program, "-c", str(config)],
            data / "mosquitto.log",
            env=broker_env(),
            ports=(mqtt_port, ws_port),
        )
    else:
        raise SoakError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    return System(
        layout,
        {"broker": broker, "service": service},
        mqtt_port,
        service_dir,
        club_passwords,
        service,
        "broker",
    )


# --------------------------------------------------------------------------------------------
# The drivers: one real client per club


class ClubDriver:
    """Presses for one club through ``ScoreClient``, paced, at most ``in_flight`` awaiting
    their reply; keeps a record per press."""

    def __init__(
        self,
        club: str,
        url: str,
        password: str,
        rng: random.Random,
        options: SoakOptions,
        clock: Callable[[], float],
    ) -> None:
        from scorer.client import ScoreClient

        self.club = club
        self.rng = rng
        self.options = options
        self.clock = clock
        self.presses: list[Press] = []
        self.replies: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self._replies_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(options.in_flight)
        self._workers: list[threading.Thread] = []
        self.client = ScoreClient(
            url,
            club,
            user=club,
            password=password,
            timeout=10.0,  # to connect and subscribe
            on_reply=self._on_reply,
        )
        self.client.wait_for_snapshot(2.0)

    def _on_reply(self, reply: dict[str, Any]) -> None:
        reply_id = reply.get("id")
        if reply_id is not None:
            with self._replies_lock:
                self.replies[str(reply_id)].append(reply)

    def next_command(self) -> tuple[str, dict[str, Any]]:
        from scorer.engine import ENDED_STATUSES

        snapshot = self.client.snapshot
        if snapshot is None or snapshot.get("status") in ENDED_STATUSES:
            return "start", {
                "cmd": "start",
                "game_type": "single",
                "player1": f"{self.club} Ann",
                "player2": f"{self.club} Bob",
                "best_of": self.rng.choice((1, 3)),
            }
        roll = self.rng.random()
        side = self.rng.choice((1, 2))
        if roll < 0.8:
            return f"{side}+", {"cmd": "point", "side": side}
        if roll < 0.9:
            return f"{side}-", {"cmd": "point", "side": side, "delta": -1}
        return "undo", {"cmd": "undo"}

    def run(self, quota: int, deadline: float, stop: threading.Event) -> None:
        """Press ``quota`` times at the driver's rate (or until ``deadline``/``stop``)."""
        interval = 1.0 / self.options.rate
        next_at = time.monotonic()
        for number in range(1, quota + 1):
            while not self._slots.acquire(timeout=0.2):
                if stop.is_set() or time.monotonic() > deadline:
                    return
            if stop.is_set() or time.monotonic() > deadline:
                self._slots.release()
                return
            kind, command = self.next_command()
            press = Press(f"soak-{self.club}-{number:06d}", self.club, kind, self.clock())
            command["id"] = press.id
            self.presses.append(press)
            worker = threading.Thread(
                target=self._send, args=(press, command), name=f"press-{press.id}", daemon=True
            )
            self._workers.append(worker)
            worker.start()
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                stop.wait(pause)
            else:
                next_at = time.monotonic()  # behind (all slots were busy): do not burst

    def _send(self, press: Press, command: dict[str, Any]) -> None:
        try:
            reply = self.client.send(command, timeout=self.options.reply_timeout)
        except Exception as exc:  # NoReply, NotConnected, ConnectFailed, ...: no reply
            press.outcome = "no_reply"
            press.code = type(exc).__name__
            press.error = str(exc)
        else:
            press.replied_at = self.clock()
            press.rev = reply.get("rev")
            if reply.get("ok"):
                press.outcome = "ok"
            else:
                press.outcome = "refused"
                press.code = refusal_code(reply)
                press.error = reply.get("error")
        finally:
            self._slots.release()

    def caught_up(self, since: float) -> bool:
        """No press sent before clock time ``since`` still waits for its reply."""
        return not any(p.outcome == "pending" and p.sent_at < since for p in self.presses)

    def drain(self, timeout: float) -> int:
        """Wait for the presses awaiting a reply; returns how many still wait."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return sum(worker.is_alive() for worker in self._workers)

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------------------------
# Faults


def plan_kills(kinds: tuple[str, ...], count: int, rng: random.Random) -> list[tuple[str, float]]:
    """(kind, fraction of the pressing time) per kill: kinds in turn, shuffled; one kill at a
    random point of each equal slice, the first 5 % and the last 15 % left alone."""
    order = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(order)
    span = 0.80 / max(count, 1)
    return [(kind, 0.05 + span * (i + rng.uniform(0.1, 0.9))) for i, kind in enumerate(order)]


class Faults:
    """Runs the kill plan in a thread: SIGKILL, downtime, restart (waited for)."""

    def __init__(
        self,
        system: System,
        plan: list[tuple[str, float]],
        rng: random.Random,
        press_seconds: float,
        deadline: float,
        clock: Callable[[], float],
        caught_up: Callable[[float], bool] = lambda since: True,
        catch_up_within: float = 0.0,
    ) -> None:
        self.system = system
        self.plan = plan
        self.rng = rng
        self.press_seconds = press_seconds
        self.deadline = deadline
        self.clock = clock
        # caught_up(t): every press sent before clock time t has its reply (ClubDriver).
        self.caught_up = caught_up
        self.catch_up_within = catch_up_within  # seconds a kill waits for that, at most
        self.kills: list[Kill] = []
        self.problems: list[str] = []
        # How many times the service had logged SERVICE_CONNECTED at the latest broker start.
        self.service_connects_at_broker_start = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        ready_at: float | None = None  # clock time the latest restart was ready
        for kind, fraction in self.plan:
            at = self._started + fraction * self.press_seconds
            while time.monotonic() < at and not self.stop.is_set():
                self.stop.wait(min(0.1, at - time.monotonic()))
            # What the latest outage held up goes through before the next one; the wait ends
            # early enough for the kill to happen before the deadline.
            latest = min(at + self.catch_up_within, self.deadline - KILL_MARGIN)
            while (
                ready_at is not None
                and not self.caught_up(ready_at)
                and time.monotonic() < latest
                and not self.stop.is_set()
            ):
                self.stop.wait(0.1)
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return
            downtime = self.rng.uniform(0.0, MAX_DOWNTIME)
            component = self.system.components[kind]
            kill = Kill(kind, self.clock(), downtime)
            self.kills.append(kill)
            component.kill()
            time.sleep(downtime)
            if kind == self.system.broker_kind:
                self.service_connects_at_broker_start = self.system.service.marker_count()
            try:
                kill.ready_after = component.start()
            except SoakError as exc:
                self.problems.append(f"{component.name} did not come back: {exc}")
                return
            ready_at = self.clock()


# --------------------------------------------------------------------------------------------
# Settling and reading the final state


def _store_rows(data_dir: Path) -> int | None:
    """Entries in the match store (read-only; None while it cannot be read)."""
    path = data_dir / "matches.sqlite3"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


def settle(system: System, faults: Faults, timeout: float = SETTLE_TIMEOUT) -> list[str]:
    """Everything runs, the service has connected since the latest broker start, and the
    store has not changed for QUIET_SECONDS. Returns problems (empty: settled)."""
    deadline = time.monotonic() + timeout
    problems = []
    for kind, component in system.components.items():
        if not component.running:
            if kind == system.broker_kind:
                faults.service_connects_at_broker_start = system.service.marker_count()
            try:
                component.start()
            except SoakError as exc:
                return [f"{component.name} could not be started for the final check: {exc}"]
    while system.service.marker_count() <= faults.service_connects_at_broker_start:
        if time.monotonic() > deadline:
            return [f"{system.service.name} did not reconnect within {timeout:g} s"]
        time.sleep(0.1)
    last, since = _store_rows(system.service_data_dir), time.monotonic()
    while time.monotonic() - since < QUIET_SECONDS:
        if time.monotonic() > deadline:
            problems.append(f"the match store was still changing after {timeout:g} s")
            break
        time.sleep(0.25)
        rows = _store_rows(system.service_data_dir)
        if rows != last:
            last, since = rows, time.monotonic()
    return problems


def read_retained(
    url_port: int, clubs: list[str], timeout: float = RETAINED_WAIT
) -> dict[str, Any]:
    """Each club's retained snapshot as a new spectator gets it (None: none or empty)."""
    import paho.mqtt.client as mqtt

    from scorer import topics
    from scorer.client import stop_loop

    got: dict[str, Any] = {}
    arrived: queue.Queue[str] = queue.Queue()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        club = topics.club_of(message.topic)
        if club is not None and club not in got:
            try:
                got[club] = json.loads(message.payload) if message.payload else None
            except ValueError:
                got[club] = {"unreadable": message.payload[:80].decode(errors="replace")}
            arrived.put(club)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"soak-check-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv311,
    )
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topics.game(x), 1) for x in clubs])
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", url_port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise SoakError("could not subscribe to the retained snapshots at the end")
        # Retained messages come right after the SUBACK; a club without one sends nothing.
        deadline = time.monotonic() + timeout
        while len(got) < len(clubs) and time.monotonic() < deadline:
            try:
                arrived.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
    finally:
        client.disconnect()
        stop_loop(client)
    return {club: got.get(club) for club in clubs}


def read_store(data_dir: Path, clubs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every match's log per club, the current match per club) from the match store."""
    from scorer.store import MatchStore

    store = MatchStore(data_dir)
    try:
        logs = {club: [(m, store.log(m)) for m in store.matches_of(club)] for club in clubs}
        current: dict[str, Any] = {club: None for club in clubs}
        for stored in store.current_matches():
            current[stored.club_id] = (stored.match_id, stored.log)
    finally:
        store.close()
    return logs, current


# --------------------------------------------------------------------------------------------
# One layout


@dataclass
class LayoutResult:
    layout: str
    seed: int
    options: SoakOptions
    presses: list[Press] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    seconds: float = 0.0
    work_dir: Path | None = None
    matches: int = 0
    resends: int = 0  # ScoreClient's resends of an id whose reply was late

    @property
    def ok(self) -> bool:
        return not self.findings.violations()

    def counts(self) -> dict[str, Any]:
        outcomes = collections.Counter(p.outcome for p in self.presses)
        refused = collections.Counter(p.code for p in self.presses if p.outcome == "refused")
        kills = collections.Counter(k.kind for k in self.kills)
        f = self.findings
        return {
            "kills": dict(sorted(kills.items())),
            "presses": len(self.presses),
            "ok": outcomes["ok"],
            "refused": dict(sorted(refused.items())),
            "unreplied": outcomes["no_reply"] + outcomes["pending"],
            "unreplied_applied": f.unreplied_applied,
            "unreplied_dropped": f.unreplied_not_applied,
            "late_ok": f.late_ok,
            "lost": len(f.lost),
            "duplicated": len(f.duplicated),
            "invented": len(f.invented),
            "refused_applied": len(f.refused_applied),
            "snapshot_mismatch": len(f.snapshot_mismatch),
            "matches": self.matches,
            "resends": self.resends,
        }


def run_layout(options: SoakOptions, say: Callable[[str], None] = print) -> LayoutResult:
    """Run one layout: start it, press and kill, settle, check. Raises NotInstalled when the
    layout's programs are missing, SoakError when it cannot start at all."""
    layout = options.layout
    if layout not in LAYOUTS:
        raise SoakError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    clubs = list(CLUB_IDS[: max(1, min(options.clubs, len(CLUB_IDS)))])
    result = LayoutResult(layout, options.seed, options)
    own_dir = options.work_dir is None
    work = Path(tempfile.mkdtemp(prefix=f"rallycast-soak-{layout}-")) if own_dir else None
    if work is None:
        assert options.work_dir is not None
        work = options.work_dir / layout
        work.mkdir(parents=True, exist_ok=False)
    result.work_dir = work
    started = time.monotonic()

    def clock() -> float:
        return round(time.monotonic() - started, 3)

    system = build_system(layout, work, clubs)
    drivers: list[ClubDriver] = []
    try:
        system.start()
        for club in clubs:
            rng = random.Random(f"{options.seed}:{layout}:{club}")
            drivers.append(
                ClubDriver(club, system.url, system.club_passwords[club], rng, options, clock)
            )
        quotas = [options.presses // len(clubs)] * len(clubs)
        for i in range(options.presses % len(clubs)):
            quotas[i] += 1
        press_seconds = min(max(quotas) / options.rate, options.duration_limit)
        deadline = time.monotonic() + options.duration_limit
        plan = plan_kills(LAYOUTS[layout], options.kills, random.Random(f"{options.seed}:{layout}"))
        faults = Faults(system, plan, random.Random(f"{options.seed}:{layout}:downtime"),
                        press_seconds, deadline, clock,
                        caught_up=lambda since: all(d.caught_up(since) for d in drivers),
                        catch_up_within=options.reply_timeout)  # fmt: skip
        say(
            f"[{layout}] {len(clubs)} clubs x {options.rate:g} presses/s, {options.presses} "
            f"presses, {options.kills} kills (seed {options.seed}); data in {work}"
        )
        spacing = 0.8 * press_seconds / max(options.kills, 1)
        if options.kills >= 6 and spacing < KILL_SPACING_HINT:  # (a few kills: room enough)
            say(
                f"[{layout}] note: a kill every {spacing:.1f} s on average; under "
                f"{KILL_SPACING_HINT:g} s the clients (reconnect backoff up to 4 s) may not get "
                "through between kills, and presses go unanswered for that reason alone "
                "(fewer --kills, more --presses or a lower --rate spread them out)"
            )
        stop = threading.Event()
        faults.start()
        pacers = [
            threading.Thread(target=d.run, args=(q, deadline, stop), name=f"pace-{d.club}")
            for d, q in zip(drivers, quotas, strict=True)
        ]
        for pacer in pacers:
            pacer.start()
        for pacer in pacers:
            pacer.join(max(0.0, deadline - time.monotonic()) + 1.0)
        stop.set()
        # Every kill of the plan happens (bounded by the duration limit).
        if not faults.join(max(0.0, deadline - time.monotonic()) + START_TIMEOUT + MAX_DOWNTIME):
            faults.stop.set()
            faults.join(START_TIMEOUT + MAX_DOWNTIME)
        for pacer in pacers:
            pacer.join(5.0)
        result.kills = faults.kills
        result.findings.problems.extend(faults.problems)
        say(f"[{layout}] presses done at {clock():.1f} s; waiting for replies and a quiet store")
        waiting = sum(d.drain(options.reply_timeout + 5.0) for d in drivers)
        if waiting:
            result.findings.problems.append(f"{waiting} presses still waited for send() to return")
        result.findings.problems.extend(settle(system, faults))
        retained = read_retained(system.mqtt_port, clubs)
    except BaseException:
        for driver in drivers:
            driver.close()
        system.kill_all()
        say(f"[{layout}] stopped early; logs kept in {work}")
        raise
    for driver in drivers:
        driver.close()
    killed = system.stop()
    if killed:
        result.findings.problems.append(f"did not stop within {STOP_TIMEOUT:g} s: {killed}")
    logs, current = read_store(system.service_data_dir, clubs)
    for driver in drivers:
        result.presses.extend(driver.presses)
        result.resends += int(getattr(driver.client, "resends", 0))
    replies: dict[str, list[dict[str, Any]]] = {}
    for driver in drivers:
        replies.update(driver.replies)
    result.matches = sum(len(matches) for matches in logs.values())
    evidence = Evidence(result.presses, replies, logs, current, retained)
    problems = result.findings.problems
    result.findings = check(evidence, require_replies=options.require_replies)
    result.findings.problems = problems
    result.seconds = time.monotonic() - started
    _write_records(work / "presses.jsonl", result)
    if result.ok and own_dir and not options.keep:
        shutil.rmtree(work, ignore_errors=True)
        result.work_dir = None
    return result


def _write_records(path: Path, result: LayoutResult) -> None:
    with path.open("w", encoding="utf-8") as out:
        for press in result.presses:
            out.write(json.dumps(press.__dict__) + "\n")
        for kill in result.kills:
            out.write(json.dumps({"kill": kill.__dict__}) + "\n")


# --------------------------------------------------------------------------------------------
# Report


def summary_table(results: list[LayoutResult]) -> str:
    """One column per layout, one row per figure (Markdown, so docs can take it as is)."""
    rows: list[tuple[str, list[str]]] = []
    counts = [r.counts() for r in results]
    kinds = sorted({kind for c in counts for kind in c["kills"]})
    for kind in kinds:
        rows.append((f"kill -9 {kind}", [str(c["kills"].get(kind, 0)) for c in counts]))
    rows.append(("presses sent", [str(c["presses"]) for c in counts]))
    rows.append(("matches played", [str(c["matches"]) for c in counts]))
    rows.append(("client resends", [str(c["resends"]) for c in counts]))
    rows.append(("replied ok", [str(c["ok"]) for c in counts]))
    codes = sorted({code for c in counts for code in c["refused"]})
    for code in codes:
        rows.append((f"refused {code}", [str(c["refused"].get(code, 0)) for c in counts]))
    rows.append(("no reply in time", [str(c["unreplied"]) for c in counts]))
    rows.append(("  of which applied", [str(c["unreplied_applied"]) for c in counts]))
    rows.append(("  of which never applied", [str(c["unreplied_dropped"]) for c in counts]))
    rows.append(("  of which ok later", [str(c["late_ok"]) for c in counts]))
    for name in ("lost", "duplicated", "invented", "refused_applied", "snapshot_mismatch"):
        rows.append((f"**{name}**", [str(c[name]) for c in counts]))
    rows.append(("verdict", ["pass" if r.ok else "FAIL" for r in results]))
    head = "| | " + " | ".join(r.layout for r in results) + " |"
    rule = "|---|" + "---:|" * len(results)
    body = [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    return "\n".join([head, rule, *body])


def violation_report(result: LayoutResult) -> str:
    lines = [f"[{result.layout}] VIOLATIONS (seed {result.seed}):"]
    by_id = {p.id: p for p in result.presses}
    for name, items in result.findings.violations().items():
        lines.append(f"  {name}: {len(items)}")
        for item in items[:SHOW_IDS]:
            press = by_id.get(item)
            detail = (
                f" ({press.kind}, sent at {press.sent_at:.2f} s, {press.outcome}"
                f"{' ' + press.code if press.code else ''})"
                if press
                else ""
            )
            lines.append(f"    {item}{detail}")
        if len(items) > SHOW_IDS:
            lines.append(f"    ... and {len(items) - SHOW_IDS} more")
    if result.kills:
        lines.append(
            "  kills: " + ", ".join(f"{k.kind}@{k.at:.1f}s+{k.downtime:.1f}s" for k in result.kills)
        )
    if result.work_dir is not None:
        lines.append(f"  logs and presses.jsonl kept in {result.work_dir}")
    lines.append(f"  reproduce: {result.options.command(result.layout)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# rallycast soak


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout", choices=[*LAYOUTS, "all"], default="all", help="what to run and kill"
    )
    parser.add_argument("--presses", type=int, default=600, help="presses per layout")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs per layout")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument(
        "--duration-limit",
        type=float,
        default=300.0,
        help="most seconds of pressing and killing per layout (the end adds <= ~2 min)",
    )
    parser.add_argument("--clubs", type=int, default=3, help=f"clubs (1-{len(CLUB_IDS)})")
    parser.add_argument("--rate", type=float, default=5.0, help="presses/s per club")
    parser.add_argument(
        "--in-flight", type=int, default=8, help="presses awaiting a reply, per club"
    )
    parser.add_argument(
        "--reply-timeout",
        type=float,
        default=30.0,
        help="seconds a press waits for its reply (the client resends its id meanwhile)",
    )
    parser.add_argument(
        "--require-replies",
        action="store_true",
        help="a press that never got a reply is a violation too (for resending senders)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")


def _check_bounds(args: argparse.Namespace) -> str | None:
    if not 1 <= args.presses <= 1_000_000:
        return "--presses must be 1 to 1000000"
    if not 0 <= args.kills <= 10_000:
        return "--kills must be 0 to 10000"
    if not 1 <= args.clubs <= len(CLUB_IDS):
        return f"--clubs must be 1 to {len(CLUB_IDS)}"
    if not 0.1 <= args.rate <= 100:
        return "--rate must be 0.1 to 100 presses/s"
    if not 1 <= args.in_flight <= 100:
        return "--in-flight must be 1 to 100"
    if not 1 <= args.duration_limit <= 86_400:
        return "--duration-limit must be 1 to 86400 seconds"
    if not 0.5 <= args.reply_timeout <= 600:
        return "--reply-timeout must be 0.5 to 600 seconds"
    return None


def main(args: argparse.Namespace) -> int:
    wrong = _check_bounds(args)
    if wrong:
        print(f"rallycast soak: {wrong}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    layouts = list(LAYOUTS) if args.layout == "all" else [args.layout]
    print(f"rallycast soak: seed {seed}", flush=True)
    results: list[LayoutResult] = []
    skipped: list[str] = []
    for layout in layouts:
        options = SoakOptions(
            layout=layout,
            presses=args.presses,
            kills=args.kills,
            seed=seed,
            duration_limit=args.duration_limit,
            clubs=args.clubs,
            rate=args.rate,
            in_flight=args.in_flight,
            reply_timeout=args.reply_timeout,
            require_replies=args.require_replies,
            keep=args.keep,
        )
        try:
            result = run_layout(options, say=lambda line: print(line, flush=True))
        except NotInstalled as exc:
            print(f"rallycast soak: layout {layout} skipped: {exc}", file=sys.stderr)
            skipped.append(layout)
            continue
        except SoakError as exc:
            print(f"rallycast soak: layout {layout} could not run: {exc}", file=sys.stderr)
            print(f"  reproduce: {options.command()}", file=sys.stderr)
            return 2
        results.append(result)
        print(f"[{layout}] done in {result.seconds:.0f} s", flush=True)
        if result.work_dir is not None:
            print(f"[{layout}] logs kept in {result.work_dir}", flush=True)
    if results:
        print()
        print(summary_table(results))
        print()
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(violation_report(result))
    if failed:
        return 1
    if not results:
        return 2
    print(f"rallycast soak: every check holds (seed {seed})")
    return 0


__all__ = [
    "Evidence",
    "Findings",
    "LayoutResult",
    "Press",
    "SoakOptions",
    "check",
    "configure",
    "main",
    "run_layout",
    "summary_table",
]
