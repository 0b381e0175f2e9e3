"""Helpers for the scorer-service tests: run the service against a test broker (in-process or
as a ``rallycast scorer`` subprocess) and watch topics with plain paho clients."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.client import stop_loop
from scorer.config import Settings
from scorer.service import SECRET_FILE_NAME, ScorerService

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0  # seconds: the longest any single expected message may take on a busy machine
QUIET = 0.7  # seconds of silence that show a message did NOT come


def service_settings(endpoint: Any, data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        broker_url=f"mqtt://{endpoint.host}:{endpoint.mqtt_port}",
        service_user=endpoint.service_user,
        **overrides,
    )


@contextmanager
def service_running(endpoint: Any, data_dir: Path, **overrides: Any) -> Iterator[ScorerService]:
    """The service in this process (paho thread), connected before the body runs."""
    settings = service_settings(endpoint, data_dir, **overrides)
    service = ScorerService(settings, password=endpoint.users[endpoint.service_user])
    service.start()
    try:
        assert service.wait_until_connected(WAIT), "the service did not connect"
        yield service
    finally:
        service.stop()


def fail_store_encoding(monkeypatch: Any, *errors: BaseException) -> None:
    """The store's next ``len(errors)`` value encodings raise ``errors`` in turn (a full
    disk, a value json cannot write); every later one works as before."""
    import scorer.store as store_module

    real_encode = store_module._encode
    failures = iter(errors)

    def failing(value: Any) -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_encode(value)

    monkeypatch.setattr(store_module, "_encode", failing)


@dataclass
class ServiceProcess:
    """``rallycast scorer`` as a subprocess (so a test can kill -9 it)."""

    endpoint: Any
    data_dir: Path
    process: subprocess.Popen[str] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = self.data_dir / SECRET_FILE_NAME
        secret.write_text(self.endpoint.users[self.endpoint.service_user] + "\n")
        secret.chmod(0o600)
        self.log_path = self.data_dir / "service.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
        env["RALLYCAST_SERVICE_USER"] = self.endpoint.service_user
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rallycast.cli",
                    "scorer",
                    "--url",
                    f"mqtt://{self.endpoint.host}:{self.endpoint.mqtt_port}",
                    "--data-dir",
                    str(self.data_dir),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def kill(self) -> None:
        """kill -9: no clean stop, no 'offline' of its own (the broker sends the will)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(5)

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


class Watcher:
    """A paho client that records every message it gets, per topic, in arrival order."""

    def __init__(
        self,
        endpoint: Any,
        *filters: str,
        user: str | None = None,
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self._queues: dict[str, queue.Queue[mqtt.MQTTMessage]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"watch-{uuid.uuid4().hex[:10]}",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if user is not None:
            self.client.username_pw_set(user, endpoint.users[user])
        self.granted: queue.Queue[list[Any]] = queue.Queue()
        self.connected: queue.Queue[Any] = queue.Queue()
        self.client.on_message = lambda c, u, m: self._queue(m.topic).put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.granted.put(codes)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.client.connect(endpoint.host, endpoint.mqtt_port, keepalive=30)
        self.client.loop_start()
        rc = self.connected.get(timeout=WAIT)
        assert not rc.is_failure, f"connect refused: {rc}"
        self.codes: list[Any] = []
        if filters:
            # A clean-session watcher follows as a page or ScoreClient does, at QoS 0: on the
            # NATS cluster QoS 0 and QoS 1 deliveries take different paths (core NATS and
            # JetStream) and are not ordered between them, so a QoS 1 watcher could get the
            # snapshot after the scorer's QoS 0 reply. A persistent one keeps QoS 1 (its
            # messages wait in its session while it is away).
            qos = 0 if clean_session else 1
            self.client.subscribe([(f, qos) for f in filters])
            self.codes = self.granted.get(timeout=WAIT)

    def _queue(self, topic: str) -> queue.Queue[mqtt.MQTTMessage]:
        with self._lock:
            return self._queues.setdefault(topic, queue.Queue())

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(WAIT)

    def next(self, topic: str, timeout: float = WAIT) -> mqtt.MQTTMessage:
        """The next message on ``topic``."""
        try:
            return self._queue(topic).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message on {topic} within {timeout} s") from None

    def next_json(self, topic: str, timeout: float = WAIT) -> Any:
        return json.loads(self.next(topic, timeout).payload)

    def nothing_on(self, topic: str, within: float = QUIET) -> bool:
        try:
            self._queue(topic).get(timeout=within)
        except queue.Empty:
            return True
        return False

    def pending(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Everything received on ``topic`` and not taken yet (taking it)."""
        taken = []
        q = self._queue(topic)
        while not q.empty():
            taken.append(q.get_nowait())
        return taken

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


def current_snapshot(
    endpoint: Any, club_id: str, timeout: float = 2.0, table: int = 1
) -> dict[str, Any] | None:
    """What a new spectator gets on the retained topic of the club's table (None = no match)."""
    watcher = Watcher(endpoint, topics.game(club_id, table))
    try:
        message = watcher.next(topics.game(club_id, table), timeout)
    except AssertionError:
        return None
    finally:
        watcher.close()
    return json.loads(message.payload) if message.payload else None


class Scorer:
    """A scorer at one table of a club: publishes commands and matches replies by id (and
    keeps everything else it sees on the table's topics)."""

    def __init__(
        self, endpoint: Any, club_id: str, user: str | None = None, table: int = 1
    ) -> None:
        self.club_id = club_id
        self.table = table
        self.watcher_endpoint = endpoint
        self.watcher = Watcher(
            endpoint,
            topics.replies(club_id, table),
            topics.game(club_id, table),
            topics.events(club_id, table),
            user=user or club_id,
        )
        # Command id -> the reply it got, for telling a repeated reply from a new one.
        self.answered: dict[Any, dict[str, Any]] = {}

    @property
    def reply_topic(self) -> str:
        return topics.replies(self.club_id, self.table)

    def send_raw(self, payload: bytes | str) -> None:
        self.watcher.publish(topics.commands(self.club_id, self.table), payload)

    def send(self, command: dict[str, Any] | str, *, with_id: bool = True) -> dict[str, Any]:
        """Publish and return the reply to this command."""
        if isinstance(command, dict):
            command = dict(command)
            if with_id:
                command.setdefault("id", uuid.uuid4().hex)
            self.send_raw(json.dumps(command))
            wanted = command.get("id")
        else:
            self.send_raw(command)
            wanted = None
        while True:
            reply = self.watcher.next_json(self.reply_topic)
            if reply.get("id") == wanted:
                self.answered[wanted] = reply
                return reply

    def reply_to(self, command_id: str, timeout: float = WAIT) -> dict[str, Any]:
        """The reply to ``command_id``, after the service went away and came back. Replies
        read first must repeat exactly ones this scorer already got: the broker
        delivers again a command whose PUBACK the dead service never sent (paho sends it just
        after the reply), and the restarted service answers it as before instead of applying
        it twice. Any other reply fails the test."""
        while True:
            reply = self.watcher.next_json(self.reply_topic, timeout)
            if reply.get("id") == command_id:
                self.answered[command_id] = reply
                return reply
            assert reply == self.answered.get(reply.get("id")), (reply, self.answered)

    def close(self) -> None:
        self.watcher.close()


def wait_for(predicate: Any, timeout: float = WAIT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 between one client and the broker with one direction that
    can be frozen (``freeze()``) and thawed (``thaw()``: what was held arrives).

    By default the broker -> client direction: nothing more is read from the broker, so
    nothing reaches the client, while the client -> broker direction keeps flowing (a
    subscriber stall). ``upstream=True`` freezes the other one: what the client publishes is
    held (a phone on a bad network) while everything the broker sends reaches it."""

    def __init__(self, host: str, port: int, *, upstream: bool = False) -> None:
        self.upstream = (host, port)
        self.freezes_upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self._sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(self.upstream, timeout=WAIT)
                broker.settimeout(None)
            except OSError:
                client.close()
                continue
            self._sockets += [client, broker]
            up, down = self.freezes_upstream, not self.freezes_upstream
            threading.Thread(target=self._pump, args=(client, broker, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, client, down), daemon=True).start()

    def _flowing(self) -> bool:
        """Wait while frozen; False once the proxy is closed."""
        while not self.flowing.wait(0.1):
            if self.closed.is_set():
                return False
        # close() sets `flowing` too, to wake this wait: held bytes must die with the
        # connection, not slip out before close() shuts the sockets down.
        return not self.closed.is_set()

    def _pump(self, source: Any, target: Any, freezable: bool) -> None:
        try:
            while not self.closed.is_set():
                if freezable and not self._flowing():
                    return
                data = source.recv(65536)
                if not data:
                    break
                # Held here too once frozen: also a chunk read just before the freeze.
                if freezable and not self._flowing():
                    return
                target.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() first, as in close(): the other pump may be blocked reading one of
            # these, and a socket closed under a blocked read stays connected.
            for sock in (source, target):
                for end in (partial(sock.shutdown, socket.SHUT_RDWR), sock.close):
                    try:
                        end()
                    except OSError:
                        pass

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        self.listener.close()
        # shutdown() first: close() alone does not end a connection another thread is
        # blocked on, and the broker would wait for the keep-alive to see it gone.
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
