"""``rallycast up`` as a user runs it: one process, no configuration, ephemeral ports; score with
mosquitto_pub using the printed credentials, watch with mosquitto_sub; Ctrl-C stops it fast."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from rallycast.bench.launch import embedded_command, up_command
from scorer import topics
from scorer.client import parse_broker_url
from tests.conftest import require_program
from tests.scorer.servicekit import ROOT, Watcher
from tests.support.runners import STOPS_WITHIN_S

READY_TIMEOUT = 30.0  # seconds: first start hashes passwords (argon2) on a busy machine


def up_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    env["HOME"] = str(tmp_path / "home")  # nothing from the developer's own data dir
    # A test run inside a systemd unit (a CI runner) must not look like `up` under systemd,
    # which writes new passwords to a file instead of printing them.
    env.pop("INVOCATION_ID", None)
    return env


class Up:
    def __init__(self, data_dir: Path, tmp_path: Path, bind: str = "127.0.0.1") -> None:
        self.output_path = tmp_path / f"up-{time.monotonic_ns()}.log"
        self._output = self.output_path.open("w")
        self.process = subprocess.Popen(
            up_command(data_dir, bind),
            cwd=ROOT,
            env=up_env(tmp_path),
            stdout=self._output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while "Stop with Ctrl-C." not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"rallycast up did not start:\n{self.output()}")
            time.sleep(0.05)
        self.mqtt_port = int(re.search(r"mqtt://(?:\[[^]]+\]|[^:/\s]+):(\d+)", self.output())[1])
        self.http_url = re.search(r"club page:\s+(http://\S+)/clubs/demo", self.output()).group(1)

    def output(self) -> str:
        return self.output_path.read_text()

    def password(self) -> str | None:
        found = re.search(r"scorer login: user demo password (\S+)", self.output())
        return found.group(1) if found else None

    def interrupt(self) -> float:
        """SIGINT (Ctrl-C); returns how long it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOPS_WITHIN_S + 5)
        finally:
            self._output.close()
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._output.close()


def mosquitto_pub(up: Up, password: str, message: str) -> None:
    subprocess.run(
        [
            require_program("mosquitto_pub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(up.mqtt_port),
            "-u",
            "demo",
            "-P",
            password,
            "-q",
            "1",
            "-t",
            "clubs/demo/game/cmd",
            "-m",
            message,
        ],  # fmt: skip
        check=True,
        timeout=10,
    )


def retained_snapshot(up: Up) -> dict:
    result = subprocess.run(
        [
            require_program("mosquitto_sub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(up.mqtt_port),
            "-t",
            "clubs/demo/game",
            "-C",
            "1",
            "-W",
            "5",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_snapshot(up: Up, rev: int) -> dict:
    deadline = time.monotonic() + 10
    while True:
        snapshot = retained_snapshot(up)
        if snapshot["rev"] >= rev or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_up_scores_with_mosquitto_clients_and_stops_on_ctrl_c(tmp_path, data_dir):
    require_program("mosquitto_pub")
    up = Up(data_dir, tmp_path)
    try:
        password = up.password()
        assert password, up.output()
        # The password is printed once; the commands let the shell fill in "$PASSWORD".
        assert up.output().count(password) == 1, up.output()
        assert f'mosquitto_pub -h 127.0.0.1 -p {up.mqtt_port} -u demo -P "$PASSWORD"' in (
            up.output()
        )
        assert '--user demo --password "$PASSWORD"' in up.output()
        assert f"Data dir:     {data_dir.resolve()}" in up.output()
        for page in ("", "/score", "/display", "/overlay"):
            assert f"{up.http_url}/clubs/demo{page}" in up.output()
        # Where it listens, in words: bound to 127.0.0.1 here, so this machine only.
        http_port = int(up.http_url.rsplit(":", 1)[1])
        assert re.search(
            r"\d\d:\d\d:\d\d,\d{3} INFO rallycast.broker: broker listening on 127.0.0.1 only, "
            rf"MQTT port {up.mqtt_port} and WebSocket port \d+ \(mqtt://127.0.0.1:{up.mqtt_port} "
            r"and ws://127.0.0.1:\d+/mqtt from this machine\)",
            up.output(),
        ), up.output()
        assert (
            f"INFO rallycast.viewer: pages listening on 127.0.0.1 only, port {http_port} "
            f"({up.http_url} from this machine)" in up.output()
        )
        assert f"Listening on: 127.0.0.1 only (ports MQTT {up.mqtt_port}," in up.output()
        assert "Other devices cannot connect: it listens on 127.0.0.1 only" in up.output()
        assert f"passwd add demo --generate --data-dir {data_dir}" in up.output()
        with urllib.request.urlopen(f"{up.http_url}/clubs/demo", timeout=5) as response:
            assert response.status == 200

        mosquitto_pub(up, password, '{"cmd": "start", "player1": "Ann", "player2": "Bob"}')
        mosquitto_pub(up, password, "1+")
        mosquitto_pub(up, password, "1+")
        mosquitto_pub(up, password, "2+")
        snapshot = wait_for_snapshot(up, 4)
        assert snapshot["rev"] == 4
        assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (2, 1)

        took = up.interrupt()
        assert up.process.returncode == 0, up.output()
        assert took < STOPS_WITHIN_S, f"stopping took {took:.2f} s"
        assert up.output().rstrip().endswith("rallycast up: stopped"), up.output()
        assert "Traceback" not in up.output() and "ERROR" not in up.output()
    finally:
        up.kill()

    # The second start: no configuration again, credentials kept (not shown again), the
    # match restored from the store, the secret file private.
    again = Up(data_dir, tmp_path)
    try:
        assert again.password() is None
        assert "password set at first start" in again.output()
        assert "'PASSWORD'" not in again.output()  # never the literal word
        assert wait_for_snapshot(again, 4)["rev"] == 4
        mosquitto_pub(again, password, "undo")
        assert wait_for_snapshot(again, 5)["game_data"]["score2"] == 0
        assert (data_dir / "service.secret").stat().st_mode & 0o077 == 0
        assert password not in (data_dir / "passwd").read_text()  # only its hash
        took = again.interrupt()
        assert took < STOPS_WITHIN_S
    finally:
        again.kill()


def retained_status(data_dir: Path) -> tuple[bytes, bool]:
    """The retained scorer status in the broker's store: run the broker alone on the data dir
    (rallycast up is stopped) and read it like a page would."""
    broker = subprocess.Popen(
        embedded_command(data_dir),
        cwd=ROOT,
        env=up_env(data_dir.parent),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = broker.stdout.readline()  # "listening mqtt://127.0.0.1:PORT"
        port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", line)[1])
        watcher = Watcher(SimpleNamespace(host="127.0.0.1", mqtt_port=port), topics.SCORER_STATUS)
        try:
            message = watcher.next(topics.SCORER_STATUS)
        finally:
            watcher.close()
        return message.payload, message.retain
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_up_cleanly_and_leaves_the_scorer_offline(tmp_path, data_dir, signum):
    up = Up(data_dir, tmp_path)
    try:
        started = time.monotonic()
        up.process.send_signal(signum)
        assert up.process.wait(STOPS_WITHIN_S + 5) == 0
        assert time.monotonic() - started < STOPS_WITHIN_S
    finally:
        up.kill()
    # The service said so before the broker stopped: pages show "scorer offline".
    assert retained_status(data_dir) == (b"offline", True)


@pytest.mark.parametrize("flag", ["--mqtt-port", "--ws-port", "--http-port"])
def test_a_taken_port_is_said_before_the_data_dir_is_written(tmp_path, data_dir, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            up_command(data_dir, **{flag[2:].replace("-", "_"): port}),
            cwd=ROOT,
            env=up_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    other = "web server" if flag == "--http-port" else "broker"
    assert f"port {port} is in use: stop the other {other} or pass {flag}" in result.stderr
    assert "Traceback" not in output and "ERROR" not in output
    assert not data_dir.exists()  # nothing written: no password to lose


def test_a_second_up_on_the_same_data_dir_is_refused(tmp_path, data_dir):
    first = Up(data_dir, tmp_path)
    try:
        result = subprocess.run(
            up_command(data_dir), cwd=ROOT, env=up_env(tmp_path),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        assert (
            f"data dir {data_dir} is in use by rallycast up (pid {first.process.pid})"
            in result.stderr
        )
        assert first.process.poll() is None
    finally:
        first.interrupt()
        first.kill()
    # Stopped (or killed): the lock goes with the process.
    again = Up(data_dir, tmp_path)
    again.interrupt()
    again.kill()


def test_the_other_devices_hint_names_this_machines_ipv4_addresses(tmp_path, monkeypatch):
    from broker.server import RunningBroker
    from rallycast import up as up_module
    from scorer.config import Settings

    addresses = up_module.ipv4_addresses()
    assert all(not a.startswith("127.") and socket.inet_aton(a) for a in addresses)
    monkeypatch.setattr(up_module, "ipv4_addresses", lambda: ["192.0.2.7", "198.51.100.2"])
    settings = Settings(data_dir=tmp_path, bind="0.0.0.0")
    broker = RunningBroker(None, "0.0.0.0", "127.0.0.1", 1883, 9001, settings)
    text = up_module.banner(settings, up_module.Credentials("s", {}), broker, None)
    assert "use this machine's address (192.0.2.7, 198.51.100.2) instead of 127.0.0.1" in text
    assert socket.gethostname() not in text.split("Stop with")[0].split("From other")[1]


def test_on_ipv6_the_printed_urls_parse(tmp_path):
    # (Not through `rallycast up --bind ::1`: amqtt does not listen on IPv6 literals yet.)
    from broker.server import RunningBroker
    from rallycast.up import Credentials, banner
    from scorer.config import Settings

    settings = Settings(data_dir=tmp_path, bind="::1")
    broker = RunningBroker(None, "::1", "::1", 1883, 9001, settings)
    text = banner(settings, Credentials("secret", {"demo": "pw"}), broker, None)
    assert "mqtt://[::1]:1883" in text and "ws://[::1]:9001/mqtt" in text
    url = re.search(r"score --club demo --url (\S+)", text)[1]
    address = parse_broker_url(url)
    assert (address.host, address.port) == ("::1", 1883)
    for shown in re.findall(r"(?:mqtt|ws)://\S+", text):
        parse_broker_url(shown)  # every URL shown is usable
    assert "-h ::1 -p 1883" in text  # mosquitto_pub/sub take the address bare


# --- a configuration `up` cannot use: one line, exit 2, nothing created -----------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("mqtt_port = 70000", "setting 'mqtt_port' = 70000 (from config file {config}): must be"),
        ('log_level = "LOUD"', "setting 'log_level' = 'LOUD' (from config file {config}): use"),
        ("mqtt_port = ", "config file {config} is not valid TOML"),
        ("http_prot = 8080", "unknown settings ['http_prot'] (did you mean 'http_port'?)"),
        (
            '[[clubs]]\nid = "a"\n[[clubs]]\nid = "a"',
            "club id 'a' is given twice ([[clubs]] #1 and #2, lines 3 and 5)",
        ),
        ("ws_port = 1883", "settings 'mqtt_port' and 'ws_port' are both 1883"),
        ("http_port = 9001", "settings 'ws_port' and 'http_port' are both 9001"),
        (None, "config file {config} is a directory"),
    ],
    ids=["port-range", "log-level", "toml", "unknown", "clubs", "ws-port", "http-port", "dir"],
)
def test_a_bad_config_stops_up_before_anything_is_created(tmp_path, data_dir, text, message):
    config = tmp_path / "rallycast.toml"
    if text is None:
        config.mkdir()
    else:
        config.write_text(f'data_dir = "{data_dir}"\n{text}\n')
    result = subprocess.run(
        [sys.executable, "-m", "rallycast.cli", "up", "--config", str(config)],
        cwd=ROOT,
        env=up_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # no password printed: none was made
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("rallycast up: ")
    assert message.format(config=config) in result.stderr
    assert not data_dir.exists()
    assert not (tmp_path / "home").exists()  # nor the default data dir


# --- what the banner and the logs tell -------------------------------------------------------


def test_the_password_hint_names_the_data_dir_up_used_and_works(tmp_path):
    from broker.auth import PasswordFile
    from broker.server import RunningBroker
    from rallycast.up import Credentials, banner
    from scorer.config import Settings

    data_dir = tmp_path / "club data"  # a space: the printed command must quote it
    settings = Settings(data_dir=data_dir)
    broker = RunningBroker(None, "127.0.0.1", "127.0.0.1", 1883, 9001, settings)
    for shown in ({"demo": "pw"}, {}):  # first start, later starts
        text = banner(settings, Credentials("secret", shown), broker, None)
        hint = re.search(r"passwd add demo --generate[^)\n]*", text)[0]
        assert hint == f"passwd add demo --generate --data-dir '{data_dir}'", text
    # The hint as printed writes where `up` reads (a real process, a real file).
    result = subprocess.run(
        [sys.executable, "-m", "rallycast.cli", *shlex.split(hint)],
        cwd=ROOT,
        env=up_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    password = re.search(r"password for demo: (\S+)", result.stdout)[1]
    assert PasswordFile(data_dir / "passwd").verify("demo", password)
    assert not (tmp_path / "home").exists()


def test_the_password_hint_has_no_data_dir_for_the_default_one(tmp_path, monkeypatch):
    from rallycast.up import passwd_command
    from scorer.config import Settings, default_data_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    settings = Settings(data_dir=default_data_dir())
    assert passwd_command(settings, "demo") == "rallycast passwd add demo --generate"


@pytest.mark.parametrize(
    "bind, words",
    [
        ("0.0.0.0", "all IPv4 interfaces"),
        ("", "all interfaces"),
        ("::", "all IPv6 interfaces"),
        ("127.0.0.1", "127.0.0.1 only"),
        ("10.0.0.5", "10.0.0.5 only"),
    ],
)
def test_the_broker_says_which_interfaces_it_listens_on(tmp_path, bind, words):
    from broker.server import RunningBroker
    from scorer.config import Settings

    settings = Settings(data_dir=tmp_path, bind=bind)
    broker = RunningBroker(None, bind, settings.local_host, 1883, 9001, settings)
    assert broker.listening.startswith(
        f"listening on {words}, MQTT port 1883 and WebSocket port 9001 ("
    )
    assert broker.listening.endswith(f"{broker.mqtt_url} and {broker.ws_url} from this machine)")
