"""``rallycast bench hostile``: the attacks of issue 9 against the embedded broker and mosquitto
(our mosquitto.conf), side by side, on 127.0.0.1 only, each for a bounded time.

Per attack and broker, a fresh broker with two users (the service and the club ``bench``) runs
a real scorer (QoS 1 commands on ``clubs/bench/game/cmd`` at 10/s, from 127.0.0.3) and a real
service (persistent session ``rallycast-service-<8 hex>``, subscribed to ``clubs/+/game/cmd``)
while the attack runs, plus a legitimate login every 0.5 s (127.0.0.3). Printed:

- RSS growth: the broker's peak RSS during the attack minus its RSS before (MB);
- CPU per command: broker CPU (user + system) during the attack / commands acknowledged (ms);
- commands lost: acknowledged by the broker (PUBACK) but never delivered to the service;
- logins refused: legitimate logins (right password) refused or unanswered within 3 s;
- a detail figure for the attack (see ATTACKS).

Attacks (what each thread does, bounded in time and count):

- ``memory``: 4 anonymous TCP clients each announce a 200 MB PUBLISH and stream zeros,
  reconnecting when closed; plus 1 WebSocket client doing the same in 60 KB frames;
- ``takeover``: an anonymous client connects with the service's client id every 0.75 s;
- ``logins``: 20 wrong passwords a second for the club user, from 127.0.0.2 (the broker is
  fresh: the right password is not cached; argon2 with its default cost on the embedded one);
- ``subscriptions``: one anonymous client asks for 100,000 filters ``clubs/xN/game`` (500
  per SUBSCRIBE) before the measurement;
- ``idle``: max_connections 200 on both brokers; sockets that never send CONNECT are opened
  (at most 400 held) and re-opened when dropped;
- ``violations``: 20 connections a second as the club user, each sending a protocol
  violation then PINGREQ; detail = connections still open 2 s later;
- ``retained``: the club user publishes a retained command; detail = retained commands a new
  subscriber then receives (1 = it would replay on every restart).

    rallycast bench hostile --attacks memory logins --attack-seconds 5
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from broker.packets import PINGREQ, connect_packet, encode_publish, encode_string, encode_varint
from rallycast.bench.launch import (
    SERVICE_USER,
    BrokerNotInstalled,
    BrokerProcess,
    start_embedded,
)
from rallycast.bench.launch import start_mosquitto as launch_mosquitto
from rallycast.bench.report import machine_description
from rallycast.bench.wire import (
    ZERO_MASK,
    closed_within,
    login,
    packet_body,
    raw_socket,
    read_connack,
    ws_socket,
)
from rallycast.bench.wire import ws_frame as masked_frame
from scorer.client import stop_loop

CLUB = "bench"
CMD_TOPIC = f"clubs/{CLUB}/game/cmd"
ATTACKS = ("memory", "takeover", "logins", "subscriptions", "idle", "violations", "retained")
KINDS = ("embedded", "mosquitto")
SCORER_SOURCE = "127.0.0.3"
ATTACKER_SOURCE = "127.0.0.2"
IDLE_MAX_CONNECTIONS = 200


# -- brokers ---------------------------------------------------------------------------------


@dataclass
class Users:
    service: str = field(default_factory=lambda: base64.b32encode(os.urandom(10)).decode())
    club: str = field(default_factory=lambda: base64.b32encode(os.urandom(10)).decode())


def start_embedded_broker(
    workdir: Path, users: Users, max_connections: int | None
) -> BrokerProcess:
    from argon2 import PasswordHasher

    from broker.auth import PasswordFile

    data_dir = workdir / "embedded-data"
    cheap = PasswordFile(data_dir / "passwd", PasswordHasher(time_cost=1, memory_cost=8192))
    cheap.set(SERVICE_USER, users.service)
    PasswordFile(data_dir / "passwd").set(CLUB, users.club)  # argon2's default cost
    env = {"RALLYCAST_MAX_CONNECTIONS": str(max_connections)} if max_connections else {}
    return start_embedded("embedded", workdir, env)


def start_mosquitto(workdir: Path, users: Users, max_connections: int | None) -> BrokerProcess:
    return launch_mosquitto(
        workdir, {SERVICE_USER: users.service, CLUB: users.club}, max_connections
    )


@contextmanager
def broker_running(
    kind: str, workdir: Path, users: Users, max_connections: int | None = None
) -> Iterator[BrokerProcess]:
    start = start_mosquitto if kind == "mosquitto" else start_embedded_broker
    broker = start(workdir, users, max_connections)
    try:
        yield broker
    finally:
        broker.stop()


# -- raw sockets (rallycast/bench/wire.py)


def ws_frame(data: bytes) -> bytes:
    return masked_frame(data, mask=ZERO_MASK)  # a zero mask leaves the payload as is


# -- the real scorer and service -------------------------------------------------------------


class Legit:
    """The service (persistent session) and the scorer (QoS 1 commands at 10/s)."""

    def __init__(self, broker: BrokerProcess, users: Users) -> None:
        self.port = broker.mqtt_port
        self.users = users
        self.service_id = f"rallycast-service-{os.urandom(4).hex()}"
        self.received: set[str] = set()
        self.names: dict[int, str] = {}  # mid -> command, as published
        self.acked_mids: set[int] = set()
        self.sent = 0
        self.logins = 0
        self.logins_refused = 0
        self._lock = threading.Lock()
        self.service = self._client(self.service_id, SERVICE_USER, users.service, clean=False)
        self.service.on_message = self._on_message
        self.scorer: mqtt.Client | None = None

    def _client(self, client_id: str, user: str, password: str, clean: bool) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean,
        )
        client.username_pw_set(user, password)
        client.reconnect_delay_set(0.1, 1)
        return client

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.add(message.payload.decode())

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        # No lock here: paho may call this while holding its own locks (the press thread
        # takes them in publish()).
        self.acked_mids.add(mid)

    def start_service(self) -> None:
        connected = threading.Event()

        def on_connect(client: mqtt.Client, *_a: object) -> None:
            client.subscribe("clubs/+/game/cmd", qos=1)
            connected.set()

        self.service.on_connect = on_connect
        self.service.connect("127.0.0.1", self.port, keepalive=10)
        self.service.loop_start()
        if not connected.wait(10):
            raise RuntimeError("the service could not connect")

    def start_scorer(self) -> None:
        scorer = self._client(f"scorer-{os.urandom(3).hex()}", CLUB, self.users.club, clean=True)
        scorer.on_publish = self._on_publish
        connected = threading.Event()
        scorer.on_connect = lambda *_a: connected.set()
        scorer.connect("127.0.0.1", self.port, keepalive=10, bind_address=SCORER_SOURCE)
        scorer.loop_start()
        connected.wait(10)
        self.scorer = scorer

    def press(self) -> None:
        if self.scorer is None:
            return
        name = f"cmd-{self.sent}"
        self.sent += 1
        info = self.scorer.publish(CMD_TOPIC, name.encode(), qos=1)
        self.names[info.mid] = name

    def try_login(self) -> None:
        self.logins += 1
        if login(self.port, SCORER_SOURCE, CLUB, self.users.club) != 0:
            self.logins_refused += 1

    @property
    def acknowledged(self) -> set[str]:
        return {self.names[mid] for mid in list(self.acked_mids) if mid in self.names}

    def lost(self) -> int:
        with self._lock:
            received = set(self.received)
        return len(self.acknowledged - received)

    def stop(self) -> None:
        for client in (self.scorer, self.service):
            if client is not None:
                with suppress(Exception):
                    client.disconnect()
                stop_loop(client)


# -- attacks ---------------------------------------------------------------------------------


@dataclass
class Attack:
    """One attack: ``setup`` runs before the measurement, ``run`` in threads during it."""

    detail_name: str
    run: Callable[[BrokerProcess, Legit, threading.Event, dict[str, int]], None]
    threads: int = 1
    setup: Callable[[BrokerProcess, Legit, dict[str, int]], None] | None = None
    max_connections: int | None = None
    login_first: bool = False  # start the attack before the scorer logs in


HUGE = 200 * 1024 * 1024


def memory_attack(broker: BrokerProcess, _legit: Legit, stop: threading.Event, d: dict) -> None:
    chunk = bytes(65536)
    while not stop.is_set():
        try:
            with raw_socket(broker.mqtt_port) as sock:
                sock.sendall(connect_packet(f"mem-{os.urandom(3).hex()}"))
                read_connack(sock)
                sock.sendall(b"\x30" + encode_varint(HUGE))
                sent = 0
                sock.settimeout(1.0)
                while sent < HUGE and not stop.is_set():
                    n = sock.send(chunk)
                    sent += n
                    d["_bytes"] = d.get("_bytes", 0) + n
                    d["MB sent"] = d["_bytes"] >> 20
        except OSError:
            time.sleep(0.05)


def memory_ws_attack(broker: BrokerProcess, _legit: Legit, stop: threading.Event, d: dict) -> None:
    frame = ws_frame(bytes(60000))
    while not stop.is_set():
        try:
            with ws_socket(broker.ws_port) as sock:
                sock.sendall(ws_frame(connect_packet(f"memws-{os.urandom(3).hex()}")))
                sock.sendall(ws_frame(b"\x30" + encode_varint(HUGE)))
                sock.settimeout(1.0)
                sent = 0
                while sent < HUGE and not stop.is_set():
                    sock.sendall(frame)
                    sent += len(frame)
                    d["_bytes"] = d.get("_bytes", 0) + len(frame)
                    d["MB sent"] = d["_bytes"] >> 20
        except OSError:
            time.sleep(0.05)


def memory_both(broker: BrokerProcess, legit: Legit, stop: threading.Event, d: dict) -> None:
    threads = [
        threading.Thread(target=memory_attack, args=(broker, legit, stop, d)) for _ in range(4)
    ]
    threads.append(threading.Thread(target=memory_ws_attack, args=(broker, legit, stop, d)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def takeover_attack(broker: BrokerProcess, legit: Legit, stop: threading.Event, d: dict) -> None:
    while not stop.is_set():
        try:
            with raw_socket(broker.mqtt_port) as sock:
                sock.sendall(connect_packet(legit.service_id))  # anonymous, clean session
                if read_connack(sock) == 0:
                    d["take-overs accepted"] = d.get("take-overs accepted", 0) + 1
                stop.wait(0.75)
        except OSError:
            stop.wait(0.1)


def login_attack(broker: BrokerProcess, _legit: Legit, stop: threading.Event, d: dict) -> None:
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        n += 1
        code = login(broker.mqtt_port, ATTACKER_SOURCE, CLUB, f"wrong-{n}")
        d["wrong tried"] = n
        if code == 0:
            d["wrong accepted"] = d.get("wrong accepted", 0) + 1
        stop.wait(max(0.0, 0.05 - (time.monotonic() - started)))  # 20 a second


def subscriptions_setup(broker: BrokerProcess, _legit: Legit, d: dict) -> None:
    sock = raw_socket(broker.mqtt_port, timeout=30)
    d["_socket"] = sock  # type: ignore[assignment]  # held open during the measurement
    sock.sendall(connect_packet(f"subs-{os.urandom(3).hex()}"))
    read_connack(sock)
    granted = 0
    deadline = time.monotonic() + 60
    buffer = b""
    for packet_no in range(200):  # 200 x 500 = 100,000 filters
        filters = b"".join(
            encode_string(f"clubs/x{packet_no * 500 + n}/game") + b"\x00" for n in range(500)
        )
        body = (packet_no + 1).to_bytes(2, "big") + filters
        sock.sendall(b"\x82" + encode_varint(len(body)) + body)
        while True:  # the SUBACK: 0x90, length, packet id, 500 codes
            suback = packet_body(buffer)
            if suback is not None:
                start, end = suback
                granted += sum(1 for code in buffer[start + 2 : end] if code != 0x80)
                buffer = buffer[end:]
                break
            if time.monotonic() > deadline:
                d["filters granted"] = granted
                return
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                d["filters granted"] = granted
                return
            buffer += chunk
    d["filters granted"] = granted


def subscriptions_idle(_b: BrokerProcess, _legit: Legit, stop: threading.Event, _d: dict) -> None:
    stop.wait()


def idle_attack(broker: BrokerProcess, _legit: Legit, stop: threading.Event, d: dict) -> None:
    held: list[socket.socket] = []
    try:
        while not stop.is_set():
            opened = 0
            alive = []
            for sock in held:
                try:
                    sock.setblocking(False)
                    if sock.recv(1) == b"":
                        sock.close()
                        d["idle dropped"] = d.get("idle dropped", 0) + 1
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    d["idle dropped"] = d.get("idle dropped", 0) + 1
                    continue
                alive.append(sock)
            held = alive
            while len(held) < 2 * IDLE_MAX_CONNECTIONS and opened < 40 and not stop.is_set():
                try:
                    held.append(raw_socket(broker.mqtt_port, ATTACKER_SOURCE))
                    opened += 1
                except OSError:
                    break
            stop.wait(0.2)  # at most 200 new sockets a second
    finally:
        for sock in held:
            sock.close()


VIOLATIONS = (
    encode_publish(b"boards/+/press", b"x", 1, False, 1),
    encode_publish(b"", b"x", 1, False, 1),
    b"\x36\x07\x00\x01a\x00\x01xy",  # QoS 3
    b"\x80\x06\x00\x01\x00\x01a\x00",  # SUBSCRIBE flags 0000
    b"\x82\x02\x00\x01",  # SUBSCRIBE without a filter
    connect_packet("again"),  # a second CONNECT
    b"\x32\x07\x00\x02\xc3\x28\x00\x01x",  # invalid UTF-8 topic
)


def violation_attack(broker: BrokerProcess, legit: Legit, stop: threading.Event, d: dict) -> None:
    n = 0
    watching: list[tuple[float, socket.socket]] = []
    while not stop.is_set() or watching:
        if not stop.is_set():
            started = time.monotonic()
            try:
                sock = raw_socket(broker.mqtt_port, ATTACKER_SOURCE)
                sock.sendall(connect_packet(f"bad-{n}", CLUB, legit.users.club))
                if read_connack(sock) == 0:
                    sock.sendall(VIOLATIONS[n % len(VIOLATIONS)] + PINGREQ)
                    watching.append((time.monotonic() + 2.0, sock))
                    d["violations sent"] = d.get("violations sent", 0) + 1
                else:
                    sock.close()
            except OSError:
                pass
            n += 1
        now = time.monotonic()
        for due, sock in [w for w in watching if w[0] <= now]:
            watching.remove((due, sock))
            if not closed_within(sock, 0.01):
                d["still open after 2 s"] = d.get("still open after 2 s", 0) + 1
            sock.close()
        if not stop.is_set():
            stop.wait(max(0.0, 0.05 - (time.monotonic() - started)))
        else:
            time.sleep(0.05)
    d.setdefault("still open after 2 s", 0)


def retained_attack(broker: BrokerProcess, legit: Legit, stop: threading.Event, d: dict) -> None:
    with raw_socket(broker.mqtt_port) as sock:
        sock.sendall(connect_packet("board-retain", CLUB, legit.users.club))
        read_connack(sock)
        sock.sendall(encode_publish(CMD_TOPIC.encode(), b"1+", 1, True, 9))
        with suppress(OSError):
            sock.settimeout(2)
            sock.recv(16)
    # A new subscriber (the service after a restart) gets what is retained there.
    with raw_socket(broker.mqtt_port) as sock:
        sock.sendall(
            connect_packet(f"late-{os.urandom(3).hex()}", SERVICE_USER, legit.users.service)
        )
        read_connack(sock)
        body = b"\x00\x01" + encode_string(CMD_TOPIC) + b"\x01"
        sock.sendall(b"\x82" + encode_varint(len(body)) + body)
        received, deadline = b"", time.monotonic() + 1.5
        with suppress(OSError):
            while time.monotonic() < deadline:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        d["retained commands replayed"] = int(b"1+" in received)
    stop.wait()


ATTACK_TABLE: dict[str, Attack] = {
    "memory": Attack("MB sent", memory_both),
    "takeover": Attack("take-overs accepted", takeover_attack),
    "logins": Attack("wrong tried", login_attack, login_first=True),
    "subscriptions": Attack("filters granted", subscriptions_idle, setup=subscriptions_setup),
    "idle": Attack("idle dropped", idle_attack, max_connections=IDLE_MAX_CONNECTIONS),
    "violations": Attack("still open after 2 s", violation_attack),
    "retained": Attack("retained commands replayed", retained_attack),
}


# -- measurement -----------------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    broker: str
    rss_growth_mb: float
    cpu_ms_per_command: float
    commands: int
    lost: int
    logins: int
    logins_refused: int
    detail_name: str
    detail: int


def measure(kind: str, name: str, seconds: float, workdir: Path, say: Callable[[str], None]) -> Row:
    attack = ATTACK_TABLE[name]
    users = Users()
    details: dict[str, int] = {}
    with broker_running(kind, workdir, users, attack.max_connections) as broker:
        legit = Legit(broker, users)
        try:
            legit.start_service()
            if not attack.login_first:
                legit.start_scorer()
            if attack.setup is not None:
                attack.setup(broker, legit, details)
            stop = threading.Event()
            worker = threading.Thread(
                target=attack.run, args=(broker, legit, stop, details), daemon=True
            )
            rss_before = peak = broker.rss()
            cpu_before = broker.cpu_seconds()
            worker.start()
            if attack.login_first:
                time.sleep(1.0)  # the flood is on before the scorer's first login
                legit.try_login()
                legit.start_scorer()
            started = time.monotonic()
            next_press = next_login = started
            while time.monotonic() - started < seconds:
                now = time.monotonic()
                if now >= next_press:
                    legit.press()
                    next_press += 0.1
                if now >= next_login:
                    threading.Thread(target=legit.try_login, daemon=True).start()
                    next_login += 0.5
                peak = max(peak, broker.rss())
                time.sleep(0.02)
            cpu = broker.cpu_seconds() - cpu_before
            stop.set()
            worker.join(15)
            drain = time.monotonic() + 5
            while legit.lost() and time.monotonic() < drain:
                time.sleep(0.1)
            peak = max(peak, broker.rss())
        finally:
            legit.stop()
            sock = details.pop("_socket", None)
            if isinstance(sock, socket.socket):
                sock.close()
    commands = max(len(legit.acknowledged), 1)
    row = Row(
        name,
        kind,
        (peak - rss_before) / 2**20,
        cpu * 1000 / commands,
        len(legit.acknowledged),
        legit.lost(),
        legit.logins,
        legit.logins_refused,
        attack.detail_name,
        int(details.get(attack.detail_name, 0)),
    )
    say(f"{kind} {name}: done")
    return row


HEADER = (
    f"{'attack':<14}{'broker':<11}{'RSS +MB':>9}{'CPU ms/cmd':>12}{'cmds':>6}{'lost':>6}"
    f"{'logins':>8}{'refused':>9}  detail"
)


def format_row(row: Row) -> str:
    return (
        f"{row.attack:<14}{row.broker:<11}{row.rss_growth_mb:>9.1f}{row.cpu_ms_per_command:>12.2f}"
        f"{row.commands:>6}{row.lost:>6}{row.logins:>8}{row.logins_refused:>9}"
        f"  {row.detail_name}: {row.detail}"
    )


def run_hostile_bench(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    kinds = [kind for kind in args.brokers if kind in KINDS]
    say(f"machine: {machine_description()}")
    say(
        f"command: rallycast bench hostile --attacks {' '.join(args.attacks)}"
        f" --brokers {' '.join(kinds)} --attack-seconds {args.attack_seconds:g}"
    )
    if not 1 <= args.attack_seconds <= 60:
        print("rallycast bench hostile: --attack-seconds must be 1..60", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rallycast-hostile-") as tmp:
        for name in args.attacks:
            for kind in kinds:
                workdir = Path(tmp) / f"{kind}-{name}"
                workdir.mkdir()
                try:
                    rows.append(measure(kind, name, args.attack_seconds, workdir, say))
                except BrokerNotInstalled as exc:
                    say(f"{kind}: skipped ({exc})")
                except (OSError, RuntimeError, TimeoutError) as exc:
                    print(f"rallycast bench hostile: {kind} {name}: {exc}", file=sys.stderr)
                    return 1
    say("")
    say(HEADER)
    for row in rows:
        say(format_row(row))
    say(
        "RSS +MB: broker peak RSS during the attack minus before; CPU ms/cmd: broker CPU"
        " during the attack / commands acknowledged; lost: acknowledged but never delivered"
        " to the service; refused: legitimate logins (right password, 127.0.0.3) refused"
    )
    return 0


def add_hostile_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS),
        help="attacks to run (default: all)",
    )  # fmt: skip
    group.add_argument(
        "--attack-seconds", type=float, default=5.0,
        help="measurement time per attack and broker, 1..60 (default 5)",
    )  # fmt: skip
