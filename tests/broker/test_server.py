"""start_broker / RunningBroker, the retained store, and `rallycast broker` as a process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.auth import PasswordFile
from broker.packets import connect_packet
from broker.server import start_broker
from rallycast.bench.wire import raw_client
from scorer.client import stop_loop
from scorer.config import load_settings
from tests.support.endpoints import FAST_HASHER
from tests.support.runners import STOPS_WITHIN_S

REPO = Path(__file__).resolve().parents[2]


def settings_for(tmp_path: Path, **overrides):
    values = {"data_dir": str(tmp_path), "bind": "127.0.0.1", "mqtt_port": 0, "ws_port": 0}
    values.update(overrides)
    return load_settings(env={}, overrides=values)


def accepts_on_both_ports(running, host: str) -> None:
    """A TCP connection to ``host`` on the broker's MQTT port and on its WebSocket port is
    accepted (OSError when one is refused)."""
    for port in (running.mqtt_port, running.ws_port):
        with socket.create_connection((host, port), timeout=2):
            pass


async def test_start_broker_reports_the_ports_it_really_bound(tmp_path):
    running = await start_broker(settings_for(tmp_path))
    try:
        assert running.mqtt_port > 0 and running.ws_port > 0
        assert running.mqtt_port != running.ws_port
        assert running.mqtt_url == f"mqtt://127.0.0.1:{running.mqtt_port}"
        assert running.ws_url == f"ws://127.0.0.1:{running.ws_port}/mqtt"
        accepts_on_both_ports(running, "127.0.0.1")
    finally:
        await running.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.mqtt_port), timeout=1)


async def test_wildcard_bind_gives_loopback_urls(tmp_path):
    running = await start_broker(settings_for(tmp_path, bind="0.0.0.0"))
    try:
        assert running.bind == "0.0.0.0"
        assert running.mqtt_url.startswith("mqtt://127.0.0.1:")
    finally:
        await running.stop()


def test_users_added_or_removed_while_running_take_effect_without_restart(amqtt_broker):
    passwords = PasswordFile(amqtt_broker.data_dir / "passwd", FAST_HASHER)
    assert amqtt_broker.connack("gamma", "pw-gamma") == 5
    passwords.set("gamma", "pw-gamma")
    assert amqtt_broker.connack("gamma", "pw-gamma") == 0
    passwords.remove("alpha")
    assert amqtt_broker.connack("alpha") == 5


def raw_connack(port: int, user: str, password: str) -> int:
    """The CONNACK return code of one MQTT 3.1.1 CONNECT (clean session, no client id) sent
    over a plain socket (paho waits ~0.4 s after a refused CONNACK)."""
    with raw_client(port) as client:
        client.send(connect_packet("", user, password, keepalive=10))
        code = client.connack(5.0)
    assert code is not None, "closed without a CONNACK"
    return code


def test_repeated_wrong_password_connects_cost_one_argon2_check(amqtt_broker, monkeypatch):
    # a real-cost hash (~0.2 s of CPU per check), as `rallycast passwd` writes it
    passwords = PasswordFile(amqtt_broker.data_dir / "passwd")
    passwords.set("gamma", "pw-gamma")
    checks = []
    real_verify = PasswordFile.verify_hash

    def counting_verify(self, hashed, password):
        checks.append(password)
        return real_verify(self, hashed, password)

    monkeypatch.setattr(PasswordFile, "verify_hash", counting_verify)
    for _ in range(50):
        assert raw_connack(amqtt_broker.mqtt_port, "gamma", "wrong") == 5
    # The cost counted, not timed (a timing bound failed at load 20: loop run B1 on cc480fa).
    assert checks == ["wrong"]
    assert raw_connack(amqtt_broker.mqtt_port, "gamma", "pw-gamma") == 0  # right after


def test_binary_retained_payload_survives_restart_byte_for_byte(amqtt_broker):
    payload = bytes(range(256)) * 4
    service = amqtt_broker.client(amqtt_broker.service_user)
    service.publish("clubs/alpha/game", payload, qos=1, retain=True).wait_for_publish(5)
    amqtt_broker.close_clients()
    amqtt_broker.restart()
    spectator = amqtt_broker.recorder(["clubs/alpha/game"])
    assert spectator.wait_for().payload == payload


# -- `rallycast broker` as a process ---------------------------------------------------------


def run_broker_process(data_dir: Path) -> tuple[subprocess.Popen[str], int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "rallycast.cli", "broker", "--bind", "127.0.0.1",
         "--mqtt-port", "0", "--ws-port", "0", "--data-dir", str(data_dir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 15
    while len(ports) < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.match(r"listening (mqtt|ws)://127\.0\.0\.1:(\d+)", line)
        if found:
            ports[found[1]] = int(found[2])
    if len(ports) < 2:
        process.kill()
        pytest.fail(f"rallycast broker did not print its URLs: {process.communicate()}")
    return process, ports["mqtt"], ports["ws"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_prints_urls_and_stops_promptly_with_clients_connected(tmp_path, signum):
    process, mqtt_port, ws_port = run_broker_process(tmp_path)
    clients = []
    try:
        for transport, port in (("tcp", mqtt_port), ("websockets", ws_port)):
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, transport=transport
            )
            if transport == "websockets":
                client.ws_set_options(path="/mqtt")
            assert client.connect("127.0.0.1", port) == 0
            client.loop_start()
            clients.append(client)
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signum)
        process.wait(STOPS_WITHIN_S + 5)
        assert time.monotonic() - started < STOPS_WITHIN_S
        assert process.returncode == 0
    finally:
        for client in clients:
            stop_loop(client)
        if process.poll() is None:
            process.kill()


def connect_and_wait_for_connack(client: mqtt.Client, port: int, timeout: float = 5.0) -> None:
    """Connect on 127.0.0.1 and return once the CONNACK is in (not after a guessed sleep)."""
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(timeout), f"no CONNACK on port {port} within {timeout} s"


def test_ordinary_disconnects_leave_no_tracebacks_in_the_log(tmp_path):
    process, mqtt_port, ws_port = run_broker_process(tmp_path)
    try:
        # a polite client, and two that vanish without DISCONNECT (TCP and WebSocket)
        polite = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        connect_and_wait_for_connack(polite, mqtt_port)
        polite.disconnect()
        stop_loop(polite)
        for transport, port in (("tcp", mqtt_port), ("websockets", ws_port)):
            rude = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, transport=transport
            )
            if transport == "websockets":
                rude.ws_set_options(path="/mqtt")
            connect_and_wait_for_connack(rude, port)
            stop_loop(rude)
            rude.socket().close()
        with socket.create_connection(("127.0.0.1", mqtt_port)):
            pass  # a probe: connect, send nothing, close (health checks do this)
        with socket.create_connection(("127.0.0.1", mqtt_port)) as raw:
            raw.sendall(b"\x10\xff")  # half a CONNECT, then gone
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=5)
    noisy = [line for line in err.splitlines() if re.search(r"Traceback|WARNING|ERROR", line)]
    assert not noisy, err


async def test_broker_binds_an_ipv6_address(tmp_path):
    running = await start_broker(settings_for(tmp_path, bind="::1"))
    try:
        assert running.mqtt_url == f"mqtt://[::1]:{running.mqtt_port}"
        accepts_on_both_ports(running, "::1")
    finally:
        await running.stop()
