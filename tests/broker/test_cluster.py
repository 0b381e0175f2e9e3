"""The 3-node NATS cluster losing a node (kill -9) in the middle of a match, at the broker level:
retained snapshots on every node, QoS 1 publishes that got a PUBACK are not lost, a late joiner
and the rejoined node get the current snapshot. docs/scale.md.

The end-to-end part (the scorer service and the pages failing over through a list of broker
URLs) builds on this; see docs/scale.md for what each component does on failover.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from broker.acl import Role
from broker.cluster import permissions, topic_filter_subjects
from scorer.client import stop_loop
from tests.brokers import Recorder
from tests.cluster import (
    NATS_ACK_WAIT,
    ClusterEndpoint,
    rejoin_until_every_node_serves,
    until_every_node_serves,
)

SNAPSHOT = "clubs/alpha/game"
COMMANDS = "clubs/alpha/game/cmd"
CATCH_UP = 5.0  # s: every page shows the latest score within this after a node is lost
# s: after the node leading the MQTT message stream is lost, nats-server 2.9.10 answers QoS 1
# publishes again after ~5 s (a new stream leader; 2.15.1: at once). docs/scale.md.
FAILOVER_PAUSE = 10.0
# s: a QoS 1 consumer whose raft leader was on the killed node delivers nothing until the two
# others elect a new one (4-9 s without a heartbeat, then a vote): the service's commands
# resume after that (docs/scale.md; more than 10 s in 2 of 5 runs).
CONSUMER_FAILOVER = 25.0
# s: a node serves a retained snapshot it received live within this (it learns it from its own
# JetStream consumer after the PUBACK; docs/scale.md)
SETTLE = 5.0


def rev_of(payload: bytes) -> int:
    return int(json.loads(payload)["rev"])


CONNECT_WITHIN = 30.0  # s: how long the publishers look for a node (ScoreClient resends 30 s)


class FailoverPublisher:
    """A QoS 1 publisher with a list of nodes: on a lost connection it connects to the next
    node and resends what has no PUBACK yet, as senders with a URL list do (paho's own
    reconnect only retries the same host)."""

    def __init__(self, broker: ClusterEndpoint, user: str, nodes: list[int]):
        self.broker = broker
        self.user = user
        self.nodes = nodes
        self.acked: list[Any] = []  # keys whose PUBACK arrived, in order
        self._pending: dict[int, tuple[Any, str, bytes, bool]] = {}  # mid -> message
        self._unacked: dict[Any, tuple[str, bytes, bool]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.failovers = 0
        self._index = 0
        self.client = self._connect()

    def _connect(self) -> mqtt.Client:
        # As the shipped clients do (scorer/client.py Failover; ScoreClient resends for 30 s):
        # the next node in the list, then the next, until one answers. Right after a node's
        # loss a survivor may hold a CONNECT until JetStream has its leaders again.
        deadline = time.monotonic() + CONNECT_WITHIN
        tried: list[str] = []
        while True:
            node = self.nodes[self._index % len(self.nodes)]
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
            client.username_pw_set(self.user, self.broker.users[self.user])
            client.on_connect = lambda *_a: self._connected.set()
            client.on_disconnect = lambda *_a: self._connected.clear()
            client.on_publish = self._on_publish
            ports = self.broker._runner.layout.ports[node]
            try:
                client.connect(self.broker.host, ports.mqtt, keepalive=5)
            except OSError as exc:  # the killed node: connection refused
                tried.append(f"n{node + 1}: {exc}")
            else:
                client.loop_start()
                if self._connected.wait(min(5.0, max(0.1, deadline - time.monotonic()))):
                    return client
                tried.append(f"n{node + 1}: no CONNACK within 5 s")
                stop_loop(client)
                client.disconnect()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no node took the CONNECT within {CONNECT_WITHIN} s: {tried}")
            self._index += 1
            time.sleep(0.2)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is not None and entry[0] in self._unacked:
                del self._unacked[entry[0]]
                self.acked.append(entry[0])

    def _send(self, key: Any, topic: str, payload: bytes, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            self._pending[info.mid] = (key, topic, payload, retain)

    def publish(self, key: Any, topic: str, payload: bytes, retain: bool = False) -> None:
        with self._lock:
            self._unacked[key] = (topic, payload, retain)
        self._ensure_connected()
        self._send(key, topic, payload, retain)

    def _ensure_connected(self) -> None:
        if self._connected.is_set():
            return
        stop_loop(self.client)
        self._index += 1
        self.failovers += 1
        self.client = self._connect()
        with self._lock:
            self._pending.clear()
            resend = list(self._unacked.items())
        for key, (topic, payload, retain) in resend:  # the same key: receivers dedupe
            self._send(key, topic, payload, retain)

    def drain(self, timeout: float = 10.0) -> None:
        """Until every message has its PUBACK (failing over if the node went away)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._ensure_connected()
            with self._lock:
                if not self._unacked:
                    return
            time.sleep(0.05)
        raise AssertionError(f"no PUBACK within {timeout} s for {sorted(self._unacked)}")

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


def spectator(broker: ClusterEndpoint, node: int) -> Recorder:
    """A page: anonymous, MQTT over WebSocket, QoS 0 (no JetStream consumer per page)."""
    return broker.recorder([SNAPSHOT], node=node, qos=0, transport="websockets")


@pytest.fixture
def cluster(nats_broker: ClusterEndpoint) -> ClusterEndpoint:
    return nats_broker


# -- configuration ---------------------------------------------------------------------------


def test_topic_filters_become_nats_subjects():
    assert topic_filter_subjects("clubs/+/game") == ["clubs.*.game"]
    assert topic_filter_subjects("rallycast/status/#") == ["rallycast.status", "rallycast.status.>"]
    assert topic_filter_subjects("#") == [">"]
    for bad in ("clubs//game", "a.b/c"):
        with pytest.raises(ValueError):
            topic_filter_subjects(bad)


def test_spectators_may_publish_nothing_and_clubs_only_their_own_commands():
    assert permissions(Role.ANONYMOUS, None)["publish"] == {"deny": [">"]}
    alpha = permissions(Role.CLUB, "alpha")["publish"]["allow"]
    # Its commands on every table: table 1 and clubs/alpha/tables/<n>/game/cmd (issue 12).
    own_commands = ["clubs.alpha.game.cmd", "clubs.alpha.tables.*.game.cmd"]
    assert [s for s in alpha if s.startswith("clubs.")] == own_commands
    service = permissions(Role.SERVICE, "rallycast-service")["publish"]["allow"]
    assert "clubs.*.game" in service and "clubs.*.tables.*.game" in service
    assert not [s for s in service if s.endswith(".cmd")]


def test_club_users_read_every_table_of_their_club_and_spectators_every_clubs_tables():
    alpha = permissions(Role.CLUB, "alpha")["subscribe"]["allow"]
    for subject in ("clubs.alpha.tables.*.game", "clubs.alpha.tables.*.game.reply"):
        assert subject in alpha
    assert not [s for s in alpha if s.startswith("clubs.") and not s.startswith("clubs.alpha.")]
    spectator = permissions(Role.ANONYMOUS, None)["subscribe"]["allow"]
    assert "clubs.*.tables.*.game" in spectator and "clubs.*.tables.*.game.events" in spectator
    assert not [s for s in spectator if s.endswith((".cmd", ".reply"))]


def test_cluster_config_for_three_hosts_routes_each_node_to_the_other_two(tmp_path):
    import subprocess
    import sys

    from tests.brokers import REPO

    out = tmp_path / "out"
    cli = [sys.executable, "-m", "rallycast.cli", "cluster", "--data-dir", str(tmp_path)]
    subprocess.run(
        [*cli, "passwd", "add", "riverside", "--password-stdin"],
        input="pw\n", text=True, check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    subprocess.run(
        [*cli, "config", "--hosts", "a.example,b.example,c.example", "--out", str(out)],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    first = (out / "n1" / "nats.conf").read_text()
    assert "server_name: n1" in first and 'include "../users.conf"' in first
    assert "@b.example:" in first and "@c.example:" in first and "@a.example:" not in first
    users = (out / "users.conf").read_text()
    assert '"user": "riverside"' in users and '"$2a$' in users
    assert 'no_auth_user: "_spectator"' in users
    assert users.count('"allowed_connection_types"') == 2  # the spectator and riverside


# -- retained snapshots across nodes ---------------------------------------------------------


def snapshot_payload(rev: int) -> bytes:
    # Sizes go up and down: a payload that kept bytes of a longer previous one, or of a
    # reused buffer, would differ from the one published.
    return json.dumps({"rev": rev, "pad": "x" * (rev * 397 % 1500)}).encode()


def test_snapshot_published_through_node_1_reaches_new_spectators_on_nodes_2_and_3_at_once(
    cluster,
):
    # Also the retained-payload corruption fixed upstream in late 2025 (nats-server PR 7622):
    # a node that holds a retained message because one of its subscriptions matched it, then
    # takes the next one for the same topic from another node. Live pages on nodes 2 and 3
    # keep those nodes holding it; each new spectator must get the published bytes exactly.
    live = [spectator(cluster, node) for node in (1, 2)]
    service = cluster.client(cluster.service_user, node=0)
    for rev in range(1, 31):
        payload = snapshot_payload(rev)
        info = service.publish(SNAPSHOT, payload, qos=1, retain=True)
        info.wait_for_publish(5)
        assert info.is_published()
        for node in (1, 2):  # right after the PUBACK: no settling time
            # Another node learns a retained message from its own JetStream consumer, after
            # the PUBACK: under load it can still serve the previous snapshot for a moment
            # (docs/scale.md). Never other bytes, and the new one within SETTLE.
            started = time.monotonic()
            # Before rev 1 there is nothing: a lagging node then sends no retained message.
            previous = [snapshot_payload(rev - 1)] if rev > 1 else []
            while True:
                late = spectator(cluster, node)
                try:
                    first = late.wait_for(timeout=2 if previous else 0.5)
                except AssertionError:
                    got = None  # nothing within the wait
                else:
                    assert first.retain, f"rev {rev} on n{node + 1}: not a retained message"
                    got = first.payload
                late.client.disconnect()
                assert got in [payload, *previous] or (got is None and not previous), (
                    f"rev {rev} on n{node + 1}: corrupt, older or no bytes {got and got[:60]!r}"
                )
                if got == payload:
                    break
                assert time.monotonic() - started < SETTLE, f"rev {rev} on n{node + 1} late"
                time.sleep(0.1)
    for page in live:
        page.wait_for(lambda m: m.payload == snapshot_payload(30))
        assert all(m.payload == snapshot_payload(rev_of(m.payload)) for m in page.messages)


# -- losing a node ---------------------------------------------------------------------------


def retained_now(cluster: ClusterEndpoint, node: int) -> int | None:
    """The rev a new spectator on ``node`` gets as its retained snapshot (None: none in 2 s,
    or no CONNACK in 5 s: a node that just rejoined may hold a CONNECT until JetStream is
    ready on it)."""
    try:
        late = spectator(cluster, node)
    except TimeoutError:
        return None
    try:
        return rev_of(late.wait_for(lambda m: m.retain, timeout=2).payload)
    except AssertionError:
        return None
    finally:
        late.client.disconnect()


def test_kill_9_of_a_node_mid_match_loses_no_acknowledged_publish_and_every_node_converges(
    cluster,
):
    # The service's command subscription (persistent, QoS 1) sits on node 3; pages on all
    # three nodes; the scorer and the snapshot publisher start on node 1, the one killed.
    service = cluster.recorder(
        [COMMANDS], user=cluster.service_user, node=2, client_id="svc", clean_session=False
    )
    scorer = FailoverPublisher(cluster, "alpha", nodes=[0, 1, 2])
    snapshots = FailoverPublisher(cluster, cluster.service_user, nodes=[0, 2, 1])
    # The match is on before the pages open, as on a match night: each node then holds the
    # snapshot in its cache of retained messages (the pages' SUBSCRIBE loaded it there).
    snapshots.publish(0, SNAPSHOT, json.dumps({"rev": 0}).encode(), retain=True)
    snapshots.drain()
    # Each node learns it from its own consumer after the PUBACK, just after the reset's
    # clear of the same topic (docs/scale.md): the pages open once every node serves it.
    served = until_every_node_serves(lambda node: retained_now(cluster, node), 0, SETTLE)
    assert served == dict.fromkeys(range(3), 0), served
    pages = [spectator(cluster, node) for node in range(3)]
    for page in pages:
        page.wait_for(lambda m: m.retain)
    # Where each node's retained-messages consumer lives, before node 1 goes (docs/scale.md
    # "Failover": a node whose consumer was on node 1 stops updating its retained snapshots).
    hosts = cluster.retained_consumer_hosts()
    assert sorted(hosts) == [0, 1, 2], hosts
    presses = 40  # at 5/s: 8 s of scoring, node 1 killed after 3 s
    killed_at = None
    try:
        for press in range(presses):
            scorer.publish(press, COMMANDS, json.dumps({"id": press, "cmd": "+1"}).encode())
            rev = press + 1
            snapshots.publish(rev, SNAPSHOT, json.dumps({"rev": rev}).encode(), retain=True)
            if press == 15:
                killed_at = time.monotonic()
                cluster.kill_node(0)
            time.sleep(0.2)
        scorer.drain()
        snapshots.drain()
        assert scorer.failovers >= 1 and snapshots.failovers >= 1
        # No press that got a PUBACK is lost: each reached the service (at least once).
        wanted = set(scorer.acked)
        assert wanted == set(range(presses))
        # The service's consumer may have had its raft leader on node 1 (CONSUMER_FAILOVER).
        service.wait_for(
            lambda _m: {json.loads(m.payload)["id"] for m in service.messages} >= wanted,
            timeout=CONSUMER_FAILOVER,
        )
        # Pages on the surviving nodes show the latest snapshot within CATCH_UP s.
        for node in (1, 2):
            pages[node].wait_for(lambda m: rev_of(m.payload) == presses, timeout=CATCH_UP)
        assert killed_at is not None
        # A late joiner on a surviving node gets the current snapshot as its retained message,
        # unless that node's retained-messages consumer was on node 1: nats-server 2.15.1 then
        # serves the snapshot of the moment of the kill (upstream fault, docs/scale.md
        # "Failover"), although the newer ones went through the stream and that node too.
        # The page saw the latest live; the node's retained copy comes through its consumer,
        # a moment later under load: polled for SETTLE s. The stale case (consumer on n1)
        # stays one probe: it serves the old snapshot from the kill on.
        for node in (1, 2):
            if hosts[node] == 0:
                got = retained_now(cluster, node)
            else:
                got = until_every_node_serves(
                    lambda n: retained_now(cluster, n), presses, SETTLE, nodes=[node]
                )[node]
            print(f"n{node + 1}: retained consumer on n{hosts[node] + 1}, serves rev {got}")
            if hosts[node] == 0:
                assert got is not None and got < presses, (node, got, hosts)
            else:
                assert got == presses, (node, got, hosts)
    finally:
        scorer.close()
        snapshots.close()
    # The killed node rejoins (with its JetStream files) and serves the same snapshot; its
    # return also revives the consumers it hosted, so every node serves the current one.
    served = rejoin_until_every_node_serves(
        cluster, 0, hosts, lambda node: retained_now(cluster, node), presses
    )
    assert served == dict.fromkeys(range(3), presses), (served, cluster.log_tail(0)[-1500:])


# -- the try-out ------------------------------------------------------------------------------


@pytest.mark.xdist_group("nats-cluster")  # a cluster of its own: in the NATS run (conftest)
def test_rallycast_cluster_up_starts_three_nodes_with_the_users_and_stops_them_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from rallycast.bench.launch import free_port_block
    from tests.brokers import REPO
    from tests.cluster import nats_program

    env = {**os.environ, "RALLYCAST_NATS_SERVER": nats_program(), "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "rallycast.cli", "cluster", "--data-dir", str(tmp_path)]
    subprocess.run(
        [*cli, "passwd", "add", "rallycast-service", "--password-stdin"],
        input="service-pw\n", text=True, env=env, check=True, capture_output=True,
    )  # fmt: skip
    # Each kind's consecutive ports (broker/cluster.py default_ports: NATS's three kinds at
    # base+0/10/20 per node), claimed so no other worker is handed one.
    bases = [free_port_block(3), free_port_block(3), free_port_block(23)]
    assert len(bases) == 3
    up = subprocess.Popen(
        [*cli, "up", "--mqtt-port", str(bases[0]), "--ws-port", str(bases[1]),
         "--nats-port", str(bases[2])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            lines.append(line)
            if not line or "Ctrl-C" in line:
                break
        assert "Ctrl-C" in lines[-1], "".join(lines)
        assert f"mqtt://127.0.0.1:{bases[0] + 2}" in "".join(lines)
        # The service's user publishes through node 1; a spectator on node 3 reads it.
        service = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        service.username_pw_set("rallycast-service", "service-pw")
        service.connect("127.0.0.1", bases[0])
        service.loop_start()
        info = service.publish(SNAPSHOT, b'{"rev": 1}', qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()
        service.disconnect()
        stop_loop(service)
        # Node 3 learns the retained message from its own consumer after the PUBACK
        # (docs/scale.md): a page that subscribed before that gets it on a new SUBSCRIBE.
        deadline = time.monotonic() + 10
        while True:
            got = threading.Event()
            page = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, transport="websockets"
            )
            page.ws_set_options(path="/mqtt")
            page.on_connect = lambda c, *_a: c.subscribe(SNAPSHOT, 0)
            page.on_message = lambda _c, _u, m, got=got: (
                got.set() if m.payload == b'{"rev": 1}' else None
            )
            page.connect("127.0.0.1", bases[1] + 2)
            page.loop_start()
            arrived = got.wait(2)
            page.disconnect()
            stop_loop(page)
            if arrived or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # a probe is a connect (until_every_node_serves)
        assert arrived, "no retained snapshot on node 3 within 10 s"
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        up.stdout.close()
    for node in (1, 2, 3):  # `up` waited for each node's process: none is left running
        pid = int((tmp_path / "nats" / f"n{node}" / "nats.pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_services_persistent_session_resumes_on_another_node_after_its_node_is_killed(
    cluster,
):
    # The service's session (its QoS 1 subscription, and commands queued while it is away)
    # lives in the replicated session and message streams, not on the node it used.
    service = cluster.recorder(
        [COMMANDS], user=cluster.service_user, node=0, client_id="svc-failover",
        clean_session=False,
    )  # fmt: skip
    scorer = cluster.client("alpha", node=2)
    info = scorer.publish(COMMANDS, b"before", qos=1)
    info.wait_for_publish(5)
    service.wait_for(lambda m: m.payload == b"before")
    cluster.kill_node(0)
    started = time.monotonic()
    info = scorer.publish(COMMANDS, b"while the service is away", qos=1)
    info.wait_for_publish(FAILOVER_PAUSE)
    assert info.is_published()
    # The service reconnects to node 2 with the same client id and no new SUBSCRIBE.
    resumed = cluster.recorder(
        None, user=cluster.service_user, node=1, client_id="svc-failover", clean_session=False
    )
    info = scorer.publish(COMMANDS, b"after", qos=1)
    info.wait_for_publish(5)
    resumed.wait_for(lambda m: m.payload == b"after", timeout=CONSUMER_FAILOVER)
    assert time.monotonic() - started < FAILOVER_PAUSE + CONSUMER_FAILOVER
    # The queued one: with it, unless the session's consumer had already sent it to the dead
    # node's connection: then after the ack_wait. Late, never lost; the scorer's resend of the
    # same id does not wait that long.
    resumed.wait_for(
        lambda m: m.payload == b"while the service is away",
        timeout=NATS_ACK_WAIT + CONSUMER_FAILOVER,
    )
    payloads = [m.payload for m in resumed.messages]
    assert payloads.count(b"while the service is away") == payloads.count(b"after") == 1
    # "before" may come again too: its PUBACK may have died with node 1.
    assert set(payloads) <= {b"before", b"while the service is away", b"after"}


def test_a_snapshot_set_right_after_a_clear_reaches_every_node_within_seconds(cluster):
    # Retained delivery across nodes is best effort upstream: a message set right after a
    # clear of the same topic was seen arriving ~3 s late on another node. What we rely on:
    # it does arrive (the service's republish on reconnect covers the rest).
    service = cluster.client(cluster.service_user, node=0)

    def publish(payload: bytes) -> None:
        info = service.publish(SNAPSHOT, payload, qos=1, retain=True)
        info.wait_for_publish(5)
        assert info.is_published()

    for round_no in range(8):
        publish(b"one-%d" % round_no)
        publish(b"")
        wanted = b"two-%d" % round_no
        publish(wanted)
        for node in (1, 2):
            deadline = time.monotonic() + CATCH_UP
            while True:
                page = spectator(cluster, node)
                try:
                    if page.wait_for(timeout=0.5).payload == wanted:
                        break
                except AssertionError:
                    pass  # nothing retained there yet
                assert time.monotonic() < deadline, f"round {round_no}: n{node + 1} lacks it"
        cluster.close_clients()
        service = cluster.client(cluster.service_user, node=0)
