"""Brokers (and ``rallycast up``) as subprocesses on 127.0.0.1, for the benchmarks, the soak
(``rallycast/soak.py``) and the test fixtures (``tests/support/runners.py`` builds on this
module; runtime code never imports tests).

- the embedded broker: ``python -m broker.cli`` (or ``python -m rallycast.bench serve-stock``,
  amqtt's own Broker with our config), its ports read from its ``listening URL`` lines;
  ``rallycast up``'s command line (:func:`up_command`);
- mosquitto: OUR ``mosquitto.conf`` and ``mosquitto.acl`` with only the lines naming ports,
  paths and the run-as user rewritten (:func:`mosquitto_config`), users from
  ``mosquitto_passwd``;
- ``stop_process`` (``broker/process.py``): SIGTERM, then SIGKILL after the grace time.

Every wait is bounded (``START_TIMEOUT``); ports come from :func:`free_ports`.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from broker.process import stop_process

REPO = Path(__file__).resolve().parents[2]
SERVICE_USER = "rallycast-service"
START_TIMEOUT = 20.0
LISTENING_RE = re.compile(r"listening (mqtt|ws)://[^:/\s]+:(\d+)")


class BrokerNotInstalled(FileNotFoundError):
    """The broker's program is missing: that broker is skipped, the others still run."""


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORT_TRIES = 200
# Ports handed out by free_ports(), one empty file per port, shared by every process of this
# user on the machine (xdist workers, a bench beside a test run): see free_ports.
PORT_REGISTRY = Path(tempfile.gettempdir()) / f"rallycast-ports-{os.getuid()}"
# A claim holds while the process that made it lives (a pytest worker restarts a session's
# brokers on their ports) and for this long after (its children may outlive it).
PORT_HOLD_SECONDS = 600.0


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections and port-0 binds."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """One port of :func:`free_ports` (two calls may return the same port: for a group of
    ports that must differ, such as a node's five or a broker's two, use ``free_ports(n)``)."""
    return free_ports(1)[0]


def free_ports(count: int, registry: Path | None = PORT_REGISTRY) -> list[int]:
    """``count`` different TCP ports free on 127.0.0.1 right now, chosen below the kernel's
    ephemeral range. Each is held bound until all are chosen, so no two are the same (picked
    one at a time they were: a 3-node cluster's 15 ports held a repeat about once in 100
    starts, "bind: address already in use").

    Brokers, nodes and ``rallycast up`` get such a port and bind it again after each kill -9
    (tests, the soak, the benchmarks). A port from the ephemeral range could be taken in
    between by any outgoing connection or port-0 listener on the machine (it was: "port 41835
    is in use" on a restart under parallel tests); below the range only another explicit bind
    can take it, and the choice is random among ~12,000 ports. Falls back to a port-0 bind
    when no such port is found (or the range starts too low to leave room below it).

    The explicit binds that remain are other callers of this function in other processes
    (xdist workers): a port is free here while the process it was chosen for still starts,
    and is free again between a kill -9 and the restart. One did take another's port ("port
    29478 is in use" as ``rallycast up`` started in the soak). So each port handed out is
    also claimed in ``registry`` (one file per port holding the claimer's pid, under a lock)
    and not handed out again by any process of this user while the claimer lives, nor for
    PORT_HOLD_SECONDS after. ``registry=None``, or one that cannot be written or is not this
    user's own private directory, gives the bind check alone."""
    low = _ephemeral_low()
    held: list[socket.socket] = []
    try:
        with _port_claims(registry) as claim:
            while len(held) < count:
                held.append(_bind_free(low, claim))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port_block(width: int, registry: Path | None = PORT_REGISTRY) -> int:
    """The first of ``width`` consecutive ports that are free and unclaimed, all claimed (as in
    :func:`free_ports`), for a program that numbers its ports from a base (``rallycast cluster
    up --mqtt-port``). Every base below the ephemeral range is tried, in random order.
    Raises RuntimeError when there is no such block."""
    low = _ephemeral_low()
    bases = list(range(max(1024, low - 12_000), max(1025, low - width)))
    random.shuffle(bases)
    with _port_claims(registry) as claim:
        for base in bases:
            block = range(base, base + width)
            if claim.free(block) and all(_bind_free_now(port) for port in block):
                claim(block)
                return base
    raise RuntimeError(f"no {width} consecutive free ports below {low}")


def _bind_free_now(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Claims:
    """Claims in one registry, used while its lock is held (:func:`_port_claims`)."""

    def __init__(self, registry: Path | None) -> None:
        self.registry = registry  # None: no registry, every port counts as unclaimed

    def free(self, ports: range | list[int]) -> bool:
        """No port of ``ports`` is claimed by a live process or within PORT_HOLD_SECONDS."""
        return self.registry is None or not any(self._held(port) for port in ports)

    def __call__(self, ports: range | list[int]) -> bool:
        """Claim all of ``ports`` for this process if none is held; False if one is."""
        if not self.free(ports):
            return False
        if self.registry is None:
            return True
        try:
            for port in ports:
                marker = os.open(
                    self.registry / str(port),
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600,
                )  # fmt: skip
                try:
                    os.write(marker, str(os.getpid()).encode())
                finally:
                    os.close(marker)
        except OSError:
            return False  # not a file we can write: leave that port alone
        return True

    def _held(self, port: int) -> bool:
        assert self.registry is not None
        marker = self.registry / str(port)
        try:
            made = marker.stat().st_mtime
            owner = int(marker.read_text() or 0)
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True  # unreadable: someone's, keep off it
        return time.time() - made < PORT_HOLD_SECONDS or (owner > 0 and psutil.pid_exists(owner))


@contextlib.contextmanager
def _port_claims(registry: Path | None) -> Iterator[_Claims]:
    """The claims in ``registry`` with its lock held, or no registry's (every port unclaimed)
    when it cannot be used: not a private directory of this user, or not writable."""
    lock = -1
    if registry is not None:
        try:
            registry.mkdir(mode=0o700, exist_ok=True)
            found = os.lstat(registry)
            # Under /tmp: a directory someone else made (or a link to one) is not ours to use.
            if (
                stat.S_ISDIR(found.st_mode)
                and found.st_uid == os.getuid()
                and stat.S_IMODE(found.st_mode) & 0o077 == 0
            ):
                lock = os.open(registry / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            lock = -1
    if lock < 0:
        yield _Claims(None)
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield _Claims(registry)
    finally:
        os.close(lock)  # releases the flock


def _bind_free(low: int, claim: _Claims) -> socket.socket:
    """A socket bound to a free, unclaimed port below ``low`` (else to port 0); the caller
    closes it."""
    if low > 10_000:
        for _ in range(PORT_TRIES):
            port = random.randrange(max(1024, low - 12_000), low)
            if not claim.free([port]):
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            claim([port])
            return sock
    for _ in range(PORT_TRIES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        if claim([int(sock.getsockname()[1])]):
            return sock
        sock.close()
    raise RuntimeError("no free unclaimed port")


@dataclass
class BrokerProcess:
    """A started broker: its process, real ports and log file; CPU and RSS via psutil."""

    kind: str
    process: subprocess.Popen[bytes]
    mqtt_port: int
    ws_port: int
    log_path: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        stop_process(self.process)


# -- the embedded broker


BENCH_MAX_CONNECTIONS = 20_000  # per listener, for the embedded and stock brokers


def broker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without RALLYCAST_* settings (the caller's own config must not leak
    into a measured broker), the repository on PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def embedded_command(
    data_dir: Path, mqtt_port: int = 0, ws_port: int = 0, *, stock: bool = False
) -> list[str]:
    """The command line of the embedded broker (``stock``: amqtt's own Broker, our config)."""
    module = ["rallycast.bench", "serve-stock"] if stock else ["broker.cli"]
    return [
        sys.executable, "-m", *module,
        "--bind", "127.0.0.1",
        "--mqtt-port", str(mqtt_port),
        "--ws-port", str(ws_port),
        "--data-dir", str(data_dir),
    ]  # fmt: skip


def up_command(
    data_dir: Path, bind: str = "127.0.0.1", *, mqtt_port: int = 0, ws_port: int = 0,
    http_port: int = 0,
) -> list[str]:  # fmt: skip
    """The command line of ``rallycast up`` on ``bind``; every port 0 (any free one) unless
    given."""
    return [
        sys.executable, "-m", "rallycast.cli", "up",
        "--data-dir", str(data_dir),
        "--bind", bind,
        "--mqtt-port", str(mqtt_port),
        "--ws-port", str(ws_port),
        "--http-port", str(http_port),
    ]  # fmt: skip


def read_listening(
    stdout_path: Path, alive: Callable[[], bool], deadline: float
) -> tuple[int, int]:
    """(MQTT port, WebSocket port) from the ``listening mqtt://HOST:PORT`` and ``listening
    ws://HOST:PORT/mqtt`` lines the broker writes to ``stdout_path``. RuntimeError when the
    broker exits first, TimeoutError past ``deadline`` (time.monotonic)."""
    while True:
        ports = {
            scheme: int(port)
            for scheme, port in LISTENING_RE.findall(stdout_path.read_text(errors="replace"))
        }
        if "mqtt" in ports and "ws" in ports:
            return ports["mqtt"], ports["ws"]
        if not alive():
            raise RuntimeError("the broker exited during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("the broker did not report its ports")
        time.sleep(0.02)  # a file has no event to wait on; bounded by the deadline


def spawn_embedded(
    data_dir: Path,
    log_path: Path,
    *,
    mqtt_port: int = 0,
    ws_port: int = 0,
    stock: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start the embedded broker on 127.0.0.1 and wait for its ports: (process, mqtt, ws).
    stderr (the log) is appended to ``log_path``; the process is killed when it does not start
    (RuntimeError/TimeoutError, with the log's tail)."""
    stdout_path = log_path.with_suffix(".stdout")
    command = embedded_command(data_dir, mqtt_port, ws_port, stock=stock)
    with open(stdout_path, "wb") as out, open(log_path, "ab") as err:
        process = subprocess.Popen(
            command, cwd=REPO, env=dict(env) if env is not None else broker_env(),
            stdout=out, stderr=err,
        )  # fmt: skip
    try:
        ports = read_listening(
            stdout_path, lambda: process.poll() is None, time.monotonic() + timeout
        )
    except (RuntimeError, TimeoutError) as exc:
        stop_process(process, grace=0.5)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise type(exc)(f"`{' '.join(command[1:4])}` did not start: {exc}\n{tail}") from None
    return process, *ports


# -- mosquitto


def mosquitto_program() -> str:
    """The mosquitto binary; BrokerNotInstalled when it or mosquitto_passwd is missing."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists() or not shutil.which("mosquitto_passwd"):
        raise BrokerNotInstalled("mosquitto / mosquitto_passwd are not installed")
    return mosquitto


def write_mosquitto_passwords(path: Path, users: Mapping[str, str]) -> None:
    """A mosquitto password file (mode 0600) with ``users`` (user -> clear password), made
    by mosquitto_passwd (its own hash format). BrokerNotInstalled without mosquitto_passwd."""
    program = shutil.which("mosquitto_passwd")
    if program is None:
        raise BrokerNotInstalled("mosquitto_passwd is not installed (apt-get install mosquitto)")
    path.unlink(missing_ok=True)
    for user, password in users.items():
        create = [] if path.exists() else ["-c"]
        subprocess.run(
            [program, *create, "-b", str(path), user, password],
            check=True,
            capture_output=True,
        )
    path.chmod(0o600)


def mosquitto_config(
    mqtt_port: int,
    ws_port: int,
    *,
    password_file: Path,
    persistence_dir: Path,
    max_connections: int | None = None,
    extra: str = "",
) -> str:
    """Our mosquitto.conf with only the lines naming ports, paths and the run-as user changed
    (and ``max_connections``, when given), then ``extra`` appended verbatim (e.g. a bridge).
    RuntimeError when mosquitto.conf lost a line this rewrites (the copy would listen on
    1883 or read the wrong users)."""
    replaced = {
        "password_file": f"password_file {password_file}",
        "acl_file": f"acl_file {REPO / 'mosquitto.acl'}",
        "user": f"user {getpass.getuser()}",
        "persistence_location": f"persistence_location {persistence_dir}/",
        "listener 1883": f"listener {mqtt_port} 127.0.0.1",
        "listener 9001": f"listener {ws_port} 127.0.0.1",
    }
    if max_connections:
        replaced["max_connections"] = f"max_connections {max_connections}"
    seen = set()
    lines = []
    for line in (REPO / "mosquitto.conf").read_text().splitlines():
        key = next((k for k in replaced if line == k or line.startswith(k + " ")), None)
        if key is not None:
            seen.add(key)
            line = replaced[key]
        lines.append(line)
    missing = set(replaced) - seen
    if missing:
        raise RuntimeError(f"mosquitto.conf lost the lines we rewrite: {sorted(missing)}")
    return "\n".join(lines) + "\n" + extra


def port_accepts(port: int) -> bool:
    """Whether 127.0.0.1:``port`` accepts a TCP connection now (0.2 s at most)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_ports_open(ports: tuple[int, ...], alive: Callable[[], bool], deadline: float) -> None:
    """Until each 127.0.0.1 port accepts a connection. RuntimeError when the process exits
    first, TimeoutError past ``deadline`` (time.monotonic)."""
    for port in ports:
        while True:
            if not alive():
                raise RuntimeError("the broker exited during startup")
            if port_accepts(port):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.02)  # connection refused returns at once: pace the retries


def spawn_mosquitto(
    config_path: Path, config_text: str, log_path: Path, ports: tuple[int, int],
    timeout: float = START_TIMEOUT,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Write ``config_text``, start mosquitto on it and wait until ``ports`` accept; the
    process is stopped and RuntimeError/TimeoutError raised when it does not start."""
    config_path.write_text(config_text)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [mosquitto_program(), "-c", str(config_path)], stdout=log, stderr=log
        )
    try:
        wait_ports_open(ports, lambda: process.poll() is None, time.monotonic() + timeout)
    except (RuntimeError, TimeoutError):
        stop_process(process, grace=0.5)
        raise
    return process


def start_mosquitto(
    workdir: Path, users: Mapping[str, str], max_connections: int | None = None
) -> BrokerProcess:
    """mosquitto with ``users`` in ``workdir`` on free ports (three tries: a port may be taken
    between free_port() and mosquitto's bind)."""
    mosquitto_program()
    password_file = workdir / "mosquitto.passwd"
    write_mosquitto_passwords(password_file, users)
    (workdir / "mosquitto-data").mkdir(exist_ok=True)
    log_path = workdir / "mosquitto.log"
    for _attempt in range(3):
        ports = tuple(free_ports(2))
        text = mosquitto_config(
            *ports, password_file=password_file, persistence_dir=workdir / "mosquitto-data",
            max_connections=max_connections,
        )  # fmt: skip
        try:
            process = spawn_mosquitto(workdir / "mosquitto.conf", text, log_path, ports)
        except RuntimeError:
            continue
        return BrokerProcess("mosquitto", process, *ports, log_path)
    raise RuntimeError(f"mosquitto did not start; see {log_path}")


def start_embedded(kind: str, workdir: Path, env: Mapping[str, str] | None = None) -> BrokerProcess:
    """The embedded broker (``kind`` "embedded", or "stock" for amqtt's own Broker) with the
    users already written to ``workdir/<kind>-data/passwd``."""
    log_path = workdir / f"{kind}.log"
    process, mqtt_port, ws_port = spawn_embedded(
        workdir / f"{kind}-data", log_path, stock=kind == "stock",
        env=broker_env(
            {
                "RALLYCAST_LOG_LEVEL": "WARNING",
                # The default (5000, 16 kept for logged-in users) would refuse subscribers
                # past 4984; a caller's own value (the hostile bench) wins.
                "RALLYCAST_MAX_CONNECTIONS": str(BENCH_MAX_CONNECTIONS),
                **(env or {}),
            }
        ),
    )  # fmt: skip
    return BrokerProcess(kind, process, mqtt_port, ws_port, log_path)
