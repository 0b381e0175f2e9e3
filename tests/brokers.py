"""Broker fixtures: a real broker per test on 127.0.0.1, ephemeral ports, a temp data dir.

Fixtures (all function-scoped; each yields a :class:`BrokerEndpoint`):

- ``amqtt_broker``: our embedded broker (``broker.server.start_broker``, auth + ACL +
  retained store) in a background thread with its own event loop. Starts in ~50 ms. Usable
  from sync tests (paho) and async tests alike (it does not run on the test's loop).
- ``amqtt_broker_process``: the same broker as a subprocess (``python -m broker.cli``), for
  tests that ``kill()`` it (SIGKILL) and restart it.
- ``mosquitto_broker``: a real ``mosquitto`` run from OUR ``mosquitto.conf`` + ``mosquitto.acl``
  (only ports, paths and the run-as user rewritten). Skipped locally / failed under CI when the
  binary is missing (``require_program``).
- ``nats_broker`` (tests/cluster.py): a 3-node NATS cluster; clients go to the nodes in turn.
- ``any_broker``: parametrized over ``amqtt_broker`` and ``mosquitto_broker`` (test ids
  ``[amqtt]`` / ``[mosquitto]``): write a test once, it runs on both. The broker protocol
  suite adds ``nats_broker`` (``[nats]``); ``RALLYCAST_TEST_BROKERS=amqtt,mosquitto,nats``
  adds it to every suite.
- ``any_broker_process``: parametrized over ``amqtt_broker_process`` and ``mosquitto_broker``
  (both can be killed with SIGKILL), and ``nats_broker`` as above.

Every broker has the same users (``endpoint.users``: user -> clear password, test only):
the service user ``rallycast-service`` (``endpoint.service_user``) and the club users
``alpha`` and ``beta`` (clubs ``alpha`` and ``beta``); anonymous = spectator.

``BrokerEndpoint``::

    endpoint.kind                      # "amqtt" | "mosquitto" | "nats"
    endpoint.host, .mqtt_port, .ws_port, .data_dir, .users, .service_user
    endpoint.url(user=None, transport="tcp")   # "mqtt://alpha:pw@127.0.0.1:PORT", "ws://.../mqtt"
    endpoint.settings(**overrides)     # scorer.config.Settings pointing at this broker (no creds)
    c = endpoint.client("alpha", transport="websockets")  # connected paho client, loop started,
                                       # disconnected at teardown; raises ConnectionRefusedError
    endpoint.connack("alpha", "wrong") # CONNACK reason code of one connection attempt (0 = ok)
    rec = endpoint.recorder(["clubs/alpha/game"], user=None)   # a subscriber that records
    rec.granted                        # SUBACK codes per filter (128 = refused; mosquitto
                                       # grants every subscribe and filters on delivery)
    rec.wait_for(lambda m: m.topic == ..., timeout=5) -> Received   # or AssertionError
    rec.assert_nothing(timeout=1.0)    # nothing at all arrives within the bounded wait
    endpoint.restart()                 # SYNC: graceful stop + start on the same ports/data dir
    endpoint.restart(kill=True)        # SIGKILL + start (process fixtures only)
    endpoint.kill()                    # SIGKILL, no restart (process fixtures only)
    await endpoint.arestart(...)       # the same from an async test (runs in a thread)

Clients created through ``endpoint.client``/``recorder`` are tracked and closed at teardown.
``endpoint.client(..., client_id="x", clean_session=False, on_message=cb)`` makes a persistent
session (``on_message`` is set before connecting, so queued messages are not missed).

A second or specially configured mosquitto (e.g. a bridge): in a fixture of your own,
``yield from serve_mosquitto(tmp_path / "other", broker_test_users, extra_config_text)``.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from argon2 import PasswordHasher

REPO = Path(__file__).resolve().parent.parent
SERVICE_USER = "rallycast-service"
CLUB_USERS = ("alpha", "beta")
# Test-only argon2 parameters: the fixture's users verify in ~2 ms instead of ~0.2 s.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, deadline: float, alive: Callable[[], bool]) -> None:
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("broker exited during startup")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------
# Clients


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Recorder:
    """A connected subscriber that records everything it receives."""

    def __init__(self) -> None:
        self.client: mqtt.Client  # set by BrokerEndpoint.recorder once connected
        self.messages: list[Received] = []
        self.granted: list[int] = []
        self._changed = threading.Condition()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(
                Received(message.topic, message.payload, message.qos, bool(message.retain))
            )
            self._changed.notify_all()

    def subscribe(self, topics: list[str], qos: int = 1, timeout: float = 5.0) -> list[int]:
        """Subscribe and wait for the SUBACK; returns its codes (0-2 granted QoS, 128 refused)."""
        done = threading.Event()
        codes: list[int] = []

        def on_subscribe(_c: Any, _u: Any, _mid: int, reason_codes: list[Any], _p: Any) -> None:
            codes.extend(int(getattr(rc, "value", rc)) for rc in reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        result, _mid = self.client.subscribe([(topic, qos) for topic in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        assert done.wait(timeout), f"no SUBACK for {topics} within {timeout} s"
        self.granted = codes
        return codes

    def wait_for(
        self, match: Callable[[Received], bool] = lambda _m: True, timeout: float = 5.0
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:60]) for m in self.messages]
                    raise AssertionError(f"no matching message within {timeout} s; got {seen}")
                self._changed.wait(left)

    def assert_nothing(self, timeout: float = 1.0) -> None:
        time.sleep(timeout)
        with self._changed:
            assert not self.messages, f"expected no message, got {self.messages}"


# --------------------------------------------------------------------------------------------
# The endpoint given to tests


@dataclass
class BrokerEndpoint:
    kind: str
    host: str
    data_dir: Path
    users: dict[str, str]
    service_user: str
    _runner: Any = field(repr=False)
    _clients: list[mqtt.Client] = field(default_factory=list, repr=False)

    @property
    def mqtt_port(self) -> int:
        return int(self._runner.mqtt_port)

    @property
    def ws_port(self) -> int:
        return int(self._runner.ws_port)

    def url(self, user: str | None = None, transport: str = "tcp") -> str:
        creds = f"{user}:{self.users[user]}@" if user else ""
        if transport == "websockets":
            return f"ws://{creds}{self.host}:{self.ws_port}/mqtt"
        return f"mqtt://{creds}{self.host}:{self.mqtt_port}"

    def settings(self, **overrides: Any) -> Any:
        """Settings for a component that talks to this broker (credentials are not in it)."""
        from scorer.config import Club, load_settings

        values: dict[str, Any] = {
            "data_dir": str(self.data_dir.parent / "app"),
            "bind": "127.0.0.1",
            "mqtt_port": self.mqtt_port,
            "ws_port": self.ws_port,
            "http_port": 0,
            "broker_url": self.url(),
            "public_ws_url": f"ws://{self.host}:{self.ws_port}/mqtt",
            "service_user": self.service_user,
            "clubs": (Club("alpha", "Alpha TTC"), Club("beta", "Beta TTC")),
        }
        values.update(overrides)
        return load_settings(env={}, overrides=values)

    def _new_client(
        self, user: str | None, password: str | None, transport: str, client_id: str, clean: bool
    ) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            transport=transport,
            clean_session=clean,
        )
        if transport == "websockets":
            client.ws_set_options(path="/mqtt")
        if user is not None:
            client.username_pw_set(user, self.users.get(user) if password is None else password)
        return client

    def connack(
        self, user: str | None = None, password: str | None = None, transport: str = "tcp"
    ) -> int:
        """The CONNACK code of one connection attempt (0 accepted, 5 not authorised, ...)."""
        client = self._new_client(user, password, transport, "", True)
        codes: list[int] = []
        done = threading.Event()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            codes.append(int(getattr(reason, "value", reason)))
            done.set()

        client.on_connect = on_connect
        client.on_disconnect = lambda *_a: done.set()
        port = self.ws_port if transport == "websockets" else self.mqtt_port
        client.connect(self.host, port, keepalive=10)
        client.loop_start()
        try:
            assert done.wait(5), "no CONNACK within 5 s"
        finally:
            client.disconnect()
            client.loop_stop()
        assert codes, "connection closed without a CONNACK"
        # paho maps 3.1.1 code 5 to its v5 reason "Not authorized" (135); report MQTT 3 codes.
        return {128: 2, 133: 2, 134: 4, 135: 5, 136: 3}.get(codes[0], codes[0])

    def client(
        self,
        user: str | None = None,
        *,
        transport: str = "tcp",
        password: str | None = None,
        client_id: str = "",
        clean_session: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
        on_message: Callable[..., None] | None = None,
        timeout: float = 5.0,
    ) -> mqtt.Client:
        """A connected paho client (loop started). ``will`` = (topic, payload, qos, retain);
        ``on_message`` is installed before connecting (a resumed persistent session gets its
        queued messages right after the CONNACK)."""
        client = self._new_client(user, password, transport, client_id, clean_session)
        if on_message is not None:
            client.on_message = on_message
        if will is not None:
            client.will_set(*will)
        connected = threading.Event()
        codes: list[Any] = []

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            codes.append(reason)
            connected.set()

        client.on_connect = on_connect
        port = self.ws_port if transport == "websockets" else self.mqtt_port
        client.connect(self.host, port, keepalive=30)
        client.loop_start()
        self._clients.append(client)
        if not connected.wait(timeout):
            raise TimeoutError(f"no CONNACK from {self.kind} within {timeout} s")
        if codes[0] != 0:
            raise ConnectionRefusedError(f"{self.kind} refused {user or 'anonymous'}: {codes[0]}")
        return client

    def recorder(
        self, topics: list[str] | None = None, user: str | None = None, qos: int = 1, **kwargs: Any
    ) -> Recorder:
        """A connected client recording what it receives, subscribed to ``topics``."""
        recorder = Recorder()
        recorder.client = self.client(user, on_message=recorder._on_message, **kwargs)
        if topics:
            recorder.subscribe(topics, qos=qos)
        return recorder

    def close_clients(self) -> None:
        for client in self._clients:
            try:
                client.disconnect()
            finally:
                client.loop_stop()
        self._clients.clear()

    def restart(self, kill: bool = False) -> None:
        """Stop (gracefully, or SIGKILL with kill=True) and start again on the same ports and
        data dir. Synchronous; from async tests use ``await endpoint.arestart()``."""
        self._runner.restart(kill=kill)

    def kill(self) -> None:
        """SIGKILL the broker (process fixtures only); ``restart()`` brings it back."""
        self._runner.kill()

    def stop(self) -> None:
        self._runner.stop()

    def start(self) -> None:
        self._runner.start()

    async def arestart(self, kill: bool = False) -> None:
        await asyncio.to_thread(self.restart, kill)


# --------------------------------------------------------------------------------------------
# Users


@dataclass(frozen=True)
class TestUsers:
    passwords: dict[str, str]
    argon2_file: str  # contents of our data_dir/passwd
    mosquitto_file: Path | None  # made with mosquitto_passwd, when mosquitto is installed


@pytest.fixture(scope="session")
def broker_test_users(tmp_path_factory: pytest.TempPathFactory) -> TestUsers:
    passwords = {user: secrets.token_urlsafe(12) for user in (SERVICE_USER, *CLUB_USERS)}
    argon2_file = "".join(f"{u}:{FAST_HASHER.hash(p)}\n" for u, p in sorted(passwords.items()))
    mosquitto_file = None
    if shutil.which("mosquitto_passwd"):
        mosquitto_file = tmp_path_factory.mktemp("mosquitto-users") / "passwd"
        for user, password in passwords.items():
            subprocess.run(
                [
                    "mosquitto_passwd",
                    *([] if mosquitto_file.exists() else ["-c"]),
                    "-b",
                    str(mosquitto_file),
                    user,
                    password,
                ],
                check=True,
                capture_output=True,
            )
    return TestUsers(passwords, argon2_file, mosquitto_file)


def _write_argon2_users(data_dir: Path, users: TestUsers) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "passwd"
    path.write_text(users.argon2_file, encoding="utf-8")
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------
# Runners


class ThreadedAmqtt:
    """start_broker() on an event loop of its own, in a daemon thread."""

    kind = "amqtt"

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.mqtt_port = 0
        self.ws_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: Any = None

    def start(self) -> None:
        from broker.server import start_broker
        from scorer.config import load_settings

        settings = load_settings(
            env={},
            overrides={
                "data_dir": str(self.data_dir),
                "bind": "127.0.0.1",
                "mqtt_port": self.mqtt_port,
                "ws_port": self.ws_port,
                "log_level": os.environ.get("RALLYCAST_TEST_BROKER_LOG", "INFO"),
            },
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="amqtt-broker", daemon=True
        )
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_broker(settings), self._loop)
        try:
            self._running = future.result(START_TIMEOUT)
        except BaseException:
            self.stop()  # no thread or loop left behind
            raise
        self.mqtt_port, self.ws_port = self._running.mqtt_port, self._running.ws_port

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, thread = self._loop, self._thread
        try:
            if self._running is not None:
                asyncio.run_coroutine_threadsafe(self._running.stop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert thread is not None
            thread.join(5)
            loop.close()
            self._loop = self._thread = self._running = None

    def kill(self) -> None:
        raise NotImplementedError(
            "the in-thread broker cannot be SIGKILLed: use amqtt_broker_process/any_broker_process"
        )

    def restart(self, kill: bool = False) -> None:
        if kill:
            self.kill()
        self.stop()
        self.start()


class BrokerProcess:
    """Common part of the subprocess runners: start, SIGTERM/SIGKILL, restart on same ports."""

    kind = ""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.mqtt_port = 0
        self.ws_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"{self.kind}.log"

    def _spawn(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> None:
        self._spawn()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()  # SIGKILL
            self.process.wait(5)
            self.process = None

    def restart(self, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""


class AmqttProcess(BrokerProcess):
    kind = "amqtt"
    _URL_RE = re.compile(r"(mqtt|ws)://[^:/\s]+:(\d+)")

    def _spawn(self) -> None:
        stdout_path = self.data_dir / "broker.stdout"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
        command = [
            sys.executable, "-m", "broker.cli",
            "--bind", "127.0.0.1",
            "--mqtt-port", str(self.mqtt_port),
            "--ws-port", str(self.ws_port),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        with open(stdout_path, "wb") as out, open(self.log_path, "ab") as err:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ports = dict(
                (kind, int(port))
                for kind, port in self._URL_RE.findall(stdout_path.read_text(errors="replace"))
            )
            if "mqtt" in ports and "ws" in ports:
                self.mqtt_port, self.ws_port = ports["mqtt"], ports["ws"]
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill() if self.process and self.process.poll() is None else None
        raise RuntimeError(f"`python -m broker.cli` did not start:\n{self.log_tail()}")


class MosquittoProcess(BrokerProcess):
    kind = "mosquitto"

    def __init__(self, data_dir: Path, password_file: Path, extra_config: str = ""):
        super().__init__(data_dir)
        self.password_file = password_file
        self.extra_config = extra_config  # appended verbatim (e.g. a bridge section)
        self.ports_fixed = False
        self.config_path = data_dir / "mosquitto.conf"

    def write_config(self) -> None:
        """Our mosquitto.conf with the lines that name ports, paths and the user rewritten."""
        rewritten = {
            "password_file": f"password_file {self.data_dir / 'mosquitto.passwd'}",
            "acl_file": f"acl_file {REPO / 'mosquitto.acl'}",
            "user": f"user {getpass.getuser()}",
            "persistence_location": f"persistence_location {self.data_dir}/",
            "listener 1883": f"listener {self.mqtt_port} 127.0.0.1",
            "listener 9001": f"listener {self.ws_port} 127.0.0.1",
        }
        seen = set()
        lines = []
        for line in (REPO / "mosquitto.conf").read_text().splitlines():
            key = next((k for k in rewritten if line == k or line.startswith(k + " ")), None)
            if key is not None:
                seen.add(key)
                line = rewritten[key]
            lines.append(line)
        missing = set(rewritten) - seen
        assert not missing, f"mosquitto.conf lost the lines the fixture rewrites: {missing}"
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_config)

    def _spawn(self) -> None:
        for _attempt in range(3):
            if not self.mqtt_port:
                self.mqtt_port, self.ws_port = free_port(), free_port()
            self.write_config()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    ["mosquitto", "-c", str(self.config_path)], stdout=log, stderr=log
                )
            deadline = time.monotonic() + START_TIMEOUT
            try:
                proc = self.process
                for port in (self.mqtt_port, self.ws_port):
                    _wait_listening(port, deadline, lambda p=proc: p.poll() is None)
            except RuntimeError:
                self.process = None
                if not self.ports_fixed:
                    # Most likely a port taken between free_port() and mosquitto's bind.
                    self.mqtt_port = self.ws_port = 0
                time.sleep(0.2)
                continue
            self.ports_fixed = True  # restarts keep the ports clients know
            return
        raise RuntimeError(f"mosquitto did not start:\n{self.log_tail()}")


# --------------------------------------------------------------------------------------------
# Fixtures


def _endpoint(runner: Any, users: TestUsers) -> BrokerEndpoint:
    return BrokerEndpoint(
        kind=runner.kind,
        host="127.0.0.1",
        data_dir=runner.data_dir,
        users=dict(users.passwords),
        service_user=SERVICE_USER,
        _runner=runner,
    )


def _serve(runner: Any, users: TestUsers) -> Iterator[BrokerEndpoint]:
    runner.start()
    endpoint = _endpoint(runner, users)
    try:
        yield endpoint
    finally:
        endpoint.close_clients()
        runner.stop()


@pytest.fixture
def amqtt_broker(tmp_path: Path, broker_test_users: TestUsers) -> Iterator[BrokerEndpoint]:
    data_dir = tmp_path / "broker"
    _write_argon2_users(data_dir, broker_test_users)
    yield from _serve(ThreadedAmqtt(data_dir), broker_test_users)


@pytest.fixture
def amqtt_broker_process(tmp_path: Path, broker_test_users: TestUsers) -> Iterator[BrokerEndpoint]:
    data_dir = tmp_path / "broker"
    _write_argon2_users(data_dir, broker_test_users)
    yield from _serve(AmqttProcess(data_dir), broker_test_users)


def mosquitto_runner(data_dir: Path, users: TestUsers, extra_config: str = "") -> MosquittoProcess:
    """A MosquittoProcess (not started) with the test users; for tests that need a second
    mosquitto or extra configuration (e.g. a bridge). Start with ``serve_mosquitto``."""
    from tests.conftest import require_program

    require_program("mosquitto")
    require_program("mosquitto_passwd")
    assert users.mosquitto_file is not None
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir / "mosquitto.passwd"
    shutil.copyfile(users.mosquitto_file, password_file)
    password_file.chmod(0o600)
    return MosquittoProcess(data_dir, password_file, extra_config)


def serve_mosquitto(
    data_dir: Path, users: TestUsers, extra_config: str = ""
) -> Iterator[BrokerEndpoint]:
    """Generator for a fixture of your own: ``yield from serve_mosquitto(dir, users, conf)``."""
    yield from _serve(mosquitto_runner(data_dir, users, extra_config), users)


@pytest.fixture
def mosquitto_broker(tmp_path: Path, broker_test_users: TestUsers) -> Iterator[BrokerEndpoint]:
    yield from serve_mosquitto(tmp_path / "broker", broker_test_users)


# The brokers `any_broker` runs on. "nats" is the 3-node NATS cluster of tests/cluster.py
# (nats_broker): the broker protocol suite (tests/broker/test_behaviour.py) always includes it;
# RALLYCAST_TEST_BROKERS=amqtt,mosquitto,nats runs every other suite on it too.
ANY_BROKERS = os.environ.get("RALLYCAST_TEST_BROKERS", "amqtt,mosquitto").split(",")
ALL_BROKERS = ["amqtt", "mosquitto", "nats"]


def broker_fixture(request: pytest.FixtureRequest) -> BrokerEndpoint:
    return request.getfixturevalue(f"{request.param}_broker")


def broker_process_fixture(request: pytest.FixtureRequest) -> BrokerEndpoint:
    name = "amqtt_broker_process" if request.param == "amqtt" else f"{request.param}_broker"
    return request.getfixturevalue(name)


any_broker = pytest.fixture(params=ANY_BROKERS, name="any_broker")(broker_fixture)
any_broker_process = pytest.fixture(params=ANY_BROKERS, name="any_broker_process")(
    broker_process_fixture
)
