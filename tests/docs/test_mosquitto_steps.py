"""docs/broker.md's mosquitto steps, run as a club admin would type them on Debian, against a
real mosquitto started from Debian's stock ``/etc/mosquitto/mosquitto.conf``, as root, with
mosquitto switching to the user ``mosquitto`` as it does on a Debian server.

Each line of the doc's ``sh`` blocks is run (``apt-get`` is checked, not run). The only
changes: every path moves under a temporary root (``/etc/mosquitto`` -> ``ROOT/etc/mosquitto``
and so on; the setup script takes ``ETC``), the listeners move to ephemeral ports on
127.0.0.1 (other tests and helpers use 1883), and ``systemctl restart/reload mosquitto`` is
what Debian's unit does: ``mosquitto -c /etc/mosquitto/mosquitto.conf`` after creating its
run and log directories, and SIGHUP. A line the test does not know fails it: the doc cannot
gain a step nobody ran.

Then a match is scored through the service to the club page, with ``rallycast scorer`` and
``rallycast viewer`` started as the doc says."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from rallycast.bench.launch import free_port
from scorer import topics
from tests.conftest import require_program
from tests.scorer.servicekit import Scorer, Watcher

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "broker.md"
SCRIPT = REPO / "deploy" / "mosquitto-setup.sh"
WAIT = 10.0

# Debian 12's /etc/mosquitto/mosquitto.conf (package mosquitto 2.0.11-1.2+deb12u1), as shipped.
DEBIAN_MOSQUITTO_CONF = """\
# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""
SYSTEM_PATH_RE = re.compile(r"(?<![\w/.])/(?:etc|var|run)/")
# Steps that only make or change files: run as written, with the paths moved.
FILE_COMMANDS = ("install", "cp", "chown", "chmod", "mkdir")
BLOCK_RE = re.compile(r"```sh\n(.*?)```", re.S)
SNAPSHOT_RE = re.compile(r'<script type="application/json" id="rc-snapshot">(.*?)</script>', re.S)


def doc_sh_blocks() -> list[str]:
    return BLOCK_RE.findall(DOC.read_text(encoding="utf-8"))


def doc_block_with(text: str) -> list[str]:
    """The lines of the one ``sh`` block of docs/broker.md that contains ``text`` (the script's
    own copy aside: it starts with ``#!``)."""
    found = [b for b in doc_sh_blocks() if text in b and not b.startswith("#!")]
    assert len(found) == 1, f"docs/broker.md: {len(found)} sh blocks contain {text!r}"
    return [line for line in found[0].splitlines() if line.strip()]


def requires_a_debian_root() -> None:
    require_program("mosquitto")
    require_program("mosquitto_passwd")
    if os.geteuid() != 0:
        message = "the documented steps run as root (chown to mosquitto, privilege drop)"
        if os.environ.get("CI"):  # as require_program: a skip would hide the doc's test
            pytest.fail(message + ": run CI as root")
        pytest.skip(message)
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no user mosquitto (Debian's mosquitto package creates it)")


def wait_listening(port: int, alive: Callable[[], bool], deadline: float) -> None:
    while time.monotonic() < deadline:
        assert alive(), "mosquitto stopped"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")


@dataclass
class DebianMosquitto:
    """A stand-in for Debian's /etc, /var and /run under ``root``, and what the steps did."""

    root: Path
    mqtt_port: int = field(default_factory=free_port)
    ws_port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "mosquitto"

    def moved(self, text: str) -> str:
        """Every /etc, /var or /run path in ``text`` under the temporary root."""
        return SYSTEM_PATH_RE.sub(lambda found: f"{self.root}{found.group(0)}", text)

    def install_debian_package(self) -> None:
        """What `apt-get install mosquitto` leaves: the main file, conf.d, the data dir."""
        (self.etc / "conf.d").mkdir(parents=True)
        (self.etc / "mosquitto.conf").write_text(self.moved(DEBIAN_MOSQUITTO_CONF))
        lib = self.root / "var" / "lib" / "mosquitto"
        lib.mkdir(parents=True)
        shutil.chown(lib, "mosquitto", "mosquitto")

    # -- the steps --

    def run(self, line: str, bridge_block: str = "") -> None:
        words = shlex.split(line, comments=True)
        if words[:2] == ["apt-get", "install"]:
            for package in words[2:]:
                require_program("mosquitto_pub" if package == "mosquitto-clients" else package)
        elif words == ["sh", "deploy/mosquitto-setup.sh"]:
            env = dict(os.environ, ETC=str(self.etc))
            done = subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        elif words[0] == "mosquitto_passwd":
            user = words[-1]
            self.passwords[user] = secrets.token_urlsafe(12)
            typed = f"{self.passwords[user]}\n{self.passwords[user]}\n"  # "asks twice"
            done = subprocess.run(
                [self.moved(word) for word in words], input=typed, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        elif words[0] in FILE_COMMANDS:
            done = subprocess.run(
                [self.moved(word) for word in words], cwd=REPO, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{line}: {done.stderr}"
        elif words[0] == "nano" and bridge_block:
            # The admin pastes the block into the file made just before (its mode stays).
            with open(self.moved(words[1]), "a", encoding="utf-8") as handle:
                handle.write(bridge_block)
        elif words == ["systemctl", "restart", "mosquitto"]:
            self.stop()
            self.start()
        elif words == ["systemctl", "reload", "mosquitto"]:
            assert self.process is not None
            self.process.send_signal(signal.SIGHUP)
        else:
            pytest.fail(f"docs/broker.md has a step this test does not run: {line!r}")

    def start(self) -> None:
        """Debian's mosquitto.service: ExecStartPre makes /run/mosquitto and /var/log/mosquitto
        for user mosquitto, then `mosquitto -c /etc/mosquitto/mosquitto.conf`."""
        for system_dir in ("/run/mosquitto", "/var/log/mosquitto"):
            made = Path(self.moved(system_dir))
            made.mkdir(parents=True, exist_ok=True, mode=0o740)
            shutil.chown(made, "mosquitto")
        self.use_test_ports()
        with (self.root / "mosquitto.out").open("ab") as output:  # the journal's part
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.etc / "mosquitto.conf")],
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + WAIT
        for port in (self.mqtt_port, self.ws_port):
            try:
                wait_listening(port, lambda: self.process.poll() is None, deadline)
            except AssertionError:
                raise AssertionError(f"mosquitto did not start:\n{self.log()}") from None

    def use_test_ports(self) -> None:
        fragment = self.etc / "conf.d" / "rallycast.conf"
        text = fragment.read_text()
        text = re.sub(r"(?m)^listener 1883 .*$", f"listener {self.mqtt_port} 127.0.0.1", text)
        text = re.sub(r"(?m)^listener 9001 .*$", f"listener {self.ws_port} 127.0.0.1", text)
        fragment.write_text(text)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(WAIT)
        self.process = None

    def log(self) -> str:
        """What mosquitto said: to stderr (the journal) and to Debian's log file."""
        said = []
        for path in (
            self.root / "mosquitto.out",
            Path(self.moved("/var/log/mosquitto/mosquitto.log")),
        ):
            if path.exists():
                said.append(path.read_text(errors="replace"))
        return "\n".join(said) or "(nothing)"

    # -- what a client needs --

    def endpoint(self) -> SimpleNamespace:
        """What tests/scorer/servicekit.py's Watcher and Scorer need."""
        return SimpleNamespace(
            host="127.0.0.1",
            mqtt_port=self.mqtt_port,
            users=self.passwords,
            service_user="rallycast-service",
        )


@pytest.fixture
def debian_mosquitto() -> Iterator[DebianMosquitto]:
    """A stock Debian mosquitto with docs/broker.md's first block of steps done and running."""
    requires_a_debian_root()
    # Not under pytest's tmp dir: that is 0700 root, and mosquitto runs as user mosquitto.
    root = Path(tempfile.mkdtemp(prefix="rallycast-debian-", dir="/tmp"))
    root.chmod(0o755)
    broker = DebianMosquitto(root)
    try:
        broker.install_debian_package()
        for line in doc_block_with("apt-get install mosquitto"):
            broker.run(line)
        assert broker.process is not None, "the steps never start mosquitto"
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


def owner_and_mode(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    return (
        pwd.getpwuid(info.st_uid).pw_name,
        grp.getgrgid(info.st_gid).gr_name,
        stat.S_IMODE(info.st_mode),
    )


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


# --------------------------------------------------------------------------------------------


def test_the_doc_shows_the_setup_script_word_for_word():
    assert SCRIPT.read_text(encoding="utf-8") in doc_sh_blocks(), (
        "docs/broker.md must show deploy/mosquitto-setup.sh exactly as it is"
    )


def test_the_header_of_mosquitto_conf_gives_the_same_steps_as_the_doc():
    header = (REPO / "mosquitto.conf").read_text(encoding="utf-8").split("\n\n# Settings")[0]
    steps = [line.split("#")[0].split() for line in doc_block_with("apt-get install mosquitto")]
    in_header = [
        line[1:].split("#")[0].split() for line in header.splitlines() if line.startswith("#   ")
    ]
    assert all(step in in_header for step in steps), (steps, in_header)


def test_our_file_in_conf_d_makes_a_stock_debian_mosquitto_refuse_to_start_without_the_script():
    """Why the script exists: `cp mosquitto.conf conf.d/` beside Debian's main file fails."""
    requires_a_debian_root()
    root = Path(tempfile.mkdtemp(prefix="rallycast-debian-", dir="/tmp"))
    try:
        broker = DebianMosquitto(root)
        broker.install_debian_package()
        shutil.copyfile(REPO / "mosquitto.conf", broker.etc / "conf.d" / "rallycast.conf")
        done = subprocess.run(
            ["mosquitto", "-c", str(broker.etc / "mosquitto.conf")],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert done.returncode != 0
        assert "Duplicate persistence_location value" in done.stdout + done.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_documented_steps_run_mosquitto_as_its_user_with_private_password_hashes(
    debian_mosquitto,
):
    broker = debian_mosquitto
    assert uid_of(broker.process.pid) == pwd.getpwnam("mosquitto").pw_uid
    for name in ("rallycast.passwd", "rallycast.acl"):
        assert owner_and_mode(broker.etc / name) == ("root", "mosquitto", 0o640), name
    assert set(broker.passwords) == {"rallycast-service", "riverside"}
    # The snapshots are kept where Debian's file says, by the user mosquitto.
    Watcher(broker.endpoint(), user="rallycast-service").publish(
        topics.game("riverside"), b'{"rev": 1}', retain=True
    )
    broker.stop()  # a clean stop saves the database
    database = broker.root / "var" / "lib" / "mosquitto" / "mosquitto.db"
    assert owner_and_mode(database)[0] == "mosquitto"
    # Running the script again keeps the users.
    broker.run("sh deploy/mosquitto-setup.sh")
    users = (broker.etc / "rallycast.passwd").read_text()
    assert users.startswith("rallycast-service:") and "\nriverside:" in users


def start_rallycast(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "rallycast.cli", *args],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_for_line(process: subprocess.Popen[str], log: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        assert process.poll() is None, f"stopped:\n{log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in:\n{log.read_text()}")


def test_a_match_scored_on_the_documented_mosquitto_reaches_the_club_page(
    debian_mosquitto, tmp_path
):
    broker = debian_mosquitto
    url = f"mqtt://127.0.0.1:{broker.mqtt_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    env["RALLYCAST_CLUBS"] = "riverside:Riverside TTC"  # the [[clubs]] the pages serve
    # The service's password in data_dir/service.secret, as the systemd layout keeps it.
    scorer_dir = tmp_path / "scorer"
    scorer_dir.mkdir(mode=0o700)
    secret = scorer_dir / "service.secret"
    secret.write_text(broker.passwords["rallycast-service"] + "\n")
    secret.chmod(0o600)
    # As docs/broker.md says: rallycast scorer --url ..., rallycast viewer --url ...
    service = start_rallycast(
        ["scorer", "--url", url, "--data-dir", str(scorer_dir)],
        env,
        tmp_path / "scorer.log",
    )
    viewer_log = tmp_path / "viewer.log"
    viewer = start_rallycast(
        ["viewer", "--url", url, "--bind", "127.0.0.1", "--http-port", "0",
         "--ws-port", str(broker.ws_port)],
        env,
        viewer_log,
    )  # fmt: skip
    try:
        status = Watcher(broker.endpoint(), topics.SCORER_STATUS)
        deadline = time.monotonic() + WAIT
        while status.next(topics.SCORER_STATUS, WAIT).payload != b"online":
            assert time.monotonic() < deadline, "the service never said online"
        page = wait_for_line(viewer, viewer_log, r"Riverside TTC: (http://\S+/clubs/riverside)")[1]

        scorer = Scorer(broker.endpoint(), "riverside")
        start = {"cmd": "start", "player1": "Ann", "player2": "Bob", "id": uuid.uuid4().hex}
        assert scorer.send(start)["ok"]
        for side in (1, 1, 2):
            reply = scorer.send({"cmd": "point", "side": side})
            assert reply["ok"], reply
        rev = reply["rev"]

        # What a browser gets: the page's HTML carries the current score...
        deadline = time.monotonic() + WAIT
        while True:
            with urllib.request.urlopen(page, timeout=5) as response:
                html = response.read().decode("utf-8")
            found = SNAPSHOT_RE.search(html)
            snapshot = json.loads(found.group(1)).get("clubs/riverside/game") if found else None
            if snapshot and snapshot["rev"] == rev:
                break
            assert time.monotonic() < deadline, f"the page never showed rev {rev}: {snapshot}"
            time.sleep(0.1)
        assert (snapshot["game_data"]["score1"], snapshot["game_data"]["score2"]) == (2, 1)
        # ...and mqtt.js then follows the broker's WebSocket listener as a spectator.
        assert spectator_over_websocket(broker.ws_port)["rev"] == rev
    finally:
        for process in (service, viewer):
            process.terminate()
            process.wait(WAIT)


def spectator_over_websocket(ws_port: int) -> dict:
    import paho.mqtt.client as mqtt

    from scorer.client import stop_loop

    got: list[bytes] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, transport="websockets"
    )
    client.ws_set_options(path="/mqtt")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.game("riverside"), 1)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.connect("127.0.0.1", ws_port)
    client.loop_start()
    try:
        deadline = time.monotonic() + WAIT
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.disconnect()
        stop_loop(client)
    assert got, "no retained snapshot over WebSocket"
    return json.loads(got[0])


def bridge_sample() -> str:
    blocks = re.findall(r"```conf\n(.*?)```", DOC.read_text(), flags=re.S)
    sample = [block for block in blocks if block.startswith("# rallycast-bridge-sample")]
    assert len(sample) == 1, "docs/broker.md lost its bridge sample"
    return sample[0]


def test_the_documented_bridge_file_is_read_private_and_survives_a_reload(
    debian_mosquitto, mosquitto_broker
):
    hall, central = debian_mosquitto, mosquitto_broker
    # The central test broker's club is `alpha`; its users are the fixture's.
    sample = (
        bridge_sample()
        .replace("riverside", "alpha")
        .replace("scores.example.org:1883", f"127.0.0.1:{central.mqtt_port}")
        .replace("CHANGE-ME", central.users["alpha"])
    )
    for line in doc_block_with("rallycast-bridge.conf"):
        hall.run(line, bridge_block=sample)
    bridge_file = hall.etc / "conf.d" / "rallycast-bridge.conf"
    assert owner_and_mode(bridge_file) == ("root", "mosquitto", 0o640)
    assert central.users["alpha"] in bridge_file.read_text()

    in_hall = Watcher(hall.endpoint(), topics.game("alpha"))
    service = central.recorder(["clubs/+/game/cmd"], user=central.service_user)
    service.client.publish(topics.game("alpha"), b'{"rev": 7}', qos=1, retain=True)
    assert in_hall.next(topics.game("alpha"), 15).payload == b'{"rev": 7}'

    # A reload (mosquitto, now user mosquitto, reads the files again) keeps the bridge.
    hall.run("systemctl reload mosquitto")
    time.sleep(0.5)  # SIGHUP has no acknowledgement; the next publish shows the result
    assert hall.process.poll() is None, hall.log()
    service.client.publish(topics.game("alpha"), b'{"rev": 8}', qos=1, retain=True)
    got = in_hall.next(topics.game("alpha"), 15).payload
    if got == b'{"rev": 7}':  # a bridge that reconnected gets the retained one again first
        got = in_hall.next(topics.game("alpha"), 15).payload
    assert got == b'{"rev": 8}'
