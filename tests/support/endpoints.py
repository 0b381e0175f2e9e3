"""What a broker fixture yields (``BrokerEndpoint``) and the users every test broker has."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from argon2 import PasswordHasher

from rallycast.bench.launch import write_mosquitto_passwords
from scorer.client import stop_loop
from tests.support.clients import Recorder

CLUB_USERS = ("alpha", "beta")
# Test-only argon2 parameters: the fixture's users verify in ~2 ms instead of ~0.2 s.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


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
            stop_loop(client)
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

    def settle_retained(
        self, expected: dict[str, bytes | None] | None = None, timeout: float = 10.0
    ) -> None:
        """Until every node serves the same retained messages to a new subscriber, with
        ``expected``'s payload per topic (None: none). One broker has set them before its
        PUBACK here; this returns at once and its tests stay strict. A cluster overrides this
        (tests/cluster.py)."""

    def close_clients(self) -> None:
        for client in self._clients:
            try:
                client.disconnect()
            finally:
                stop_loop(client)
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


@dataclass(frozen=True)
class TestUsers:
    passwords: dict[str, str]
    argon2_file: str  # contents of our data_dir/passwd
    mosquitto_file: Path | None  # made with mosquitto_passwd, when mosquitto is installed


def make_test_users(passwords: dict[str, str], mosquitto_dir: Path | None) -> TestUsers:
    """TestUsers for ``passwords`` (user -> clear password); a mosquitto password file in
    ``mosquitto_dir`` too, when given (mosquitto_passwd installed)."""
    argon2_file = "".join(f"{u}:{FAST_HASHER.hash(p)}\n" for u, p in sorted(passwords.items()))
    mosquitto_file = None
    if mosquitto_dir is not None:
        mosquitto_file = mosquitto_dir / "passwd"
        write_mosquitto_passwords(mosquitto_file, passwords)
    return TestUsers(passwords, argon2_file, mosquitto_file)


def write_argon2_users(data_dir: Path, users: TestUsers) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "passwd"
    path.write_text(users.argon2_file, encoding="utf-8")
    path.chmod(0o600)
