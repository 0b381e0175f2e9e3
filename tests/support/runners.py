"""Brokers for tests: the embedded one in a thread of this process (``ThreadedAmqtt``, ~50
ms to start) or as a subprocess (``AmqttProcess``, killable with SIGKILL), and a real mosquitto
(``MosquittoProcess``). The subprocesses start, stop and get their config through
``rallycast/bench/launch.py``, as the benchmarks do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from rallycast.bench.launch import (
    free_ports,
    mosquitto_config,
    spawn_embedded,
    spawn_mosquitto,
    stop_process,
)

START_TIMEOUT = 10.0
# How long a stop may take with clients connected: a `rallycast` process's exit after Ctrl-C
# or SIGTERM, measured from outside, and the broker's own shutdown in process. The product
# gives its shutdown at most 2 s (broker/server.py STOP_TIMEOUT, docs/broker.md) and the
# interpreter's exit comes on top; on 2 busy cores the process took 2.3 s (load 20, loop run B2
# on 35cdab3) and the in-process shutdown 3.0 s (load 24, A1 on cc480fa). A stop that waits on
# a client waits its keep-alive (60 s) or for ever, so this still tells a hang from a busy
# machine.
STOPS_WITHIN_S = 6.0
# A connection the broker must close (a protocol violation, an oversized packet, a refused
# CONNECT): no designed delay, yet a 2 s bound failed at load 20 (loop run B1 on 73e8bc5,
# "subscribe filter invalid UTF-8"; 100 runs of it alone took under 0.05 s each). A connection
# left open is closed only by keep-alive (the raw clients ask 60 s: 90 s), so 6 s still tells
# one from a busy machine. Before CONNECT the broker's 3 s CONNECT timeout also closes: those
# tests check the log for it.
CLOSES_WITHIN_S = 6.0


def kept_ports(mqtt_port: int, ws_port: int) -> tuple[int, int]:
    """The (MQTT, WebSocket) ports a runner starts on and binds again on every restart: its own
    once it has them, else two from free_ports() (below the ephemeral range, claimed). Not port
    0: the kernel picks those in the ephemeral range, where any outgoing connection on the
    machine may take one while the broker is down (loop run B9 on 2ec84ac: a restart failed
    with "address already in use")."""
    if mqtt_port and ws_port:
        return mqtt_port, ws_port
    first, second = free_ports(2)
    return first, second


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

        self.mqtt_port, self.ws_port = kept_ports(self.mqtt_port, self.ws_port)
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
        if self.process is not None:
            stop_process(self.process)
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
    """``python -m broker.cli`` on this runner's data dir (ports kept across restarts)."""

    kind = "amqtt"

    def _spawn(self) -> None:
        mqtt_port, ws_port = kept_ports(self.mqtt_port, self.ws_port)
        self.process, self.mqtt_port, self.ws_port = spawn_embedded(
            self.data_dir, self.log_path, mqtt_port=mqtt_port, ws_port=ws_port,
            timeout=START_TIMEOUT,
        )  # fmt: skip


class MosquittoProcess(BrokerProcess):
    kind = "mosquitto"

    def __init__(self, data_dir: Path, password_file: Path, extra_config: str = ""):
        super().__init__(data_dir)
        self.password_file = password_file
        self.extra_config = extra_config  # appended verbatim (e.g. a bridge section)
        self.ports_fixed = False
        self.config_path = data_dir / "mosquitto.conf"

    def config_text(self) -> str:
        """Our mosquitto.conf with the lines that name ports, paths and the user rewritten."""
        return mosquitto_config(
            self.mqtt_port, self.ws_port, password_file=self.data_dir / "mosquitto.passwd",
            persistence_dir=self.data_dir, extra=self.extra_config,
        )  # fmt: skip

    def _spawn(self) -> None:
        for _attempt in range(3):
            self.mqtt_port, self.ws_port = kept_ports(self.mqtt_port, self.ws_port)
            try:
                self.process = spawn_mosquitto(
                    self.config_path, self.config_text(), self.log_path,
                    (self.mqtt_port, self.ws_port), START_TIMEOUT,
                )  # fmt: skip
            except RuntimeError:
                self.process = None
                if not self.ports_fixed:
                    # Most likely a port taken between free_port() and mosquitto's bind.
                    self.mqtt_port = self.ws_port = 0
                continue
            self.ports_fixed = True  # restarts keep the ports clients know
            return
        raise RuntimeError(f"mosquitto did not start:\n{self.log_tail()}")
