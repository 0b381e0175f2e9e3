"""The 3-node NATS cluster as a broker kind of ``rallycast bench broker`` (``--brokers nats``).

    rallycast bench broker --brokers embedded mosquitto nats --subscribers 1000 5000

The cluster is the one of ``rallycast cluster up`` (``broker.cluster``: our node template,
JetStream with 3 replicas, the users ``rallycast cluster`` writes) on 127.0.0.1 with free
ports. The publisher (the service user, TCP, QoS 1, retained) is on node 1; the WebSocket
spectators are spread over the three nodes in turn (subscriber i on node i % 3), as pages that
shuffle the node list are. CPU and RSS in the rows are the three nodes' sums; ``report()``
gives the CPU per delivery of each node, phase by phase. docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from broker.cluster import (
    NODES,
    BcryptPasswordFile,
    Cluster,
    ClusterError,
    ClusterLayout,
    NodePorts,
    find_nats_server,
)
from rallycast.bench.launch import BrokerNotInstalled, free_ports

KIND = "nats"


@dataclass
class ClusterBroker:
    """A started cluster, shaped as ``rallycast.bench.launch.BrokerProcess`` (kind, mqtt_port, ws_port,
    cpu_seconds, rss, stop) plus ``ws_port_for(i)``: the node of subscriber ``i``."""

    cluster: Cluster
    kind: str = KIND
    # Per-node CPU seconds at each cpu_seconds() call (run_phase calls it before and after).
    marks: list[list[float]] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)

    @property
    def ports(self) -> list[NodePorts]:
        return self.cluster.layout.ports

    @property
    def mqtt_port(self) -> int:
        return self.ports[0].mqtt

    @property
    def ws_port(self) -> int:
        return self.ports[0].ws

    def ws_port_for(self, index: int) -> int:
        return self.ports[index % len(self.ports)].ws

    @property
    def log_path(self) -> Path:
        return self.cluster.log_path(0)

    def _processes(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.cluster.processes if p is not None]

    def cpu_seconds(self) -> float:
        per_node = []
        for process in self._processes():
            times = process.cpu_times()
            per_node.append(times.user + times.system)
        self.marks.append(per_node)
        return sum(per_node)

    def rss(self) -> int:
        return sum(int(p.memory_info().rss) for p in self._processes())

    def report(self, deliveries: list[int]) -> list[str]:
        """CPU microseconds per delivery, node by node, for each phase (pairs of marks)."""
        lines = []
        for phase, count in enumerate(deliveries):
            if 2 * phase + 1 >= len(self.marks) or count <= 0:
                break
            before, after = self.marks[2 * phase], self.marks[2 * phase + 1]
            nodes = ", ".join(
                f"n{i + 1} {(a - b) * 1e6 / count:.1f}"
                for i, (b, a) in enumerate(zip(before, after, strict=True))
            )
            lines.append(f"  nats phase {phase + 1}: CPU us per delivery by node: {nodes}")
        return lines

    def stop(self) -> None:
        self.cluster.stop()


def start_cluster(workdir: Path, service_user: str, password: str) -> ClusterBroker:
    """Three nodes on 127.0.0.1 (free ports), ready (each answers a CONNECT) and with the MQTT
    streams in place. Raises BrokerNotInstalled without a nats-server program."""
    try:
        program = find_nats_server()
    except ClusterError as exc:
        raise BrokerNotInstalled(str(exc)) from None
    chosen = iter(free_ports(5 * NODES))
    ports = [NodePorts(*(next(chosen) for _ in range(5))) for _ in range(NODES)]
    layout = ClusterLayout(workdir / "nats-cluster", ports)
    # Cost 4: one login; the measurement is about deliveries.
    layout.write({service_user: BcryptPasswordFile.hash(password, 4)}, service_user)
    cluster = Cluster(layout, program)
    cluster.start()
    return ClusterBroker(cluster)


# -- a node killed during the paced phase (``--kill-node``) --------------------------------------


def retained_feed_hosts(http_ports: list[int], host: str = "127.0.0.1") -> dict[int, int]:
    """Node -> the node hosting its retained-messages feed (0-based), from the monitoring ports.

    nats-server keeps, per node, an in-memory index of the retained messages fed by ONE
    ephemeral R1 push consumer on ``$MQTT_rmsgs`` (server/mqtt.go), which JetStream places on
    a random node of the stream; when that node is lost, the node it fed serves old retained
    messages (docs/scale.md "Why a survivor serves an old retained snapshot"). The feed's
    deliver subject ``$MQTT.sub.<random>`` is subscribed on the node it feeds (``/subsz``);
    the consumer and its host are in ``/jsz``."""
    import json
    import urllib.request

    def monitor(node: int, path: str) -> dict[str, Any]:
        url = f"http://{host}:{http_ports[node]}{path}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)

    feeds: dict[str, int] = {}
    for node in range(len(http_ports)):
        for sub in monitor(node, "/subsz?subs=true&acc=%24G").get("subscriptions_list", []):
            if sub["subject"].startswith("$MQTT.sub."):
                feeds[sub["subject"]] = node
    hosts: dict[int, int] = {}
    for node in range(len(http_ports)):
        jsz = monitor(node, "/jsz?accounts=true&consumers=true&config=true")
        for account in jsz.get("account_details", []):
            for stream in account.get("stream_detail", []):
                if stream["name"] != "$MQTT_rmsgs":
                    continue
                for consumer in stream.get("consumer_detail", []):
                    fed = feeds.get(consumer["config"].get("deliver_subject", ""))
                    leader = consumer.get("cluster", {}).get("leader", f"n{node + 1}")
                    if fed is not None:
                        hosts[fed] = int(leader[1:]) - 1  # server names are n1..n3
    return hosts


RECONNECT_PERIOD = 1.0  # s: mqtt.js's reconnectPeriod on the pages, to the next node each time
RECONNECT_TRIES = 30  # per spectator and loss: then it counts as not reconnected
REJOIN_TIMEOUT = 30.0  # s: the killed node must accept a CONNECT again within this
REJOIN_SERVE = 10.0  # s: after that, it must serve each table's latest snapshot within this
PROBE_PAUSE = 0.5  # s between two probes of one node (each is a connect: docs/scale.md)
# s: a retained snapshot older than one acknowledged this long before the SUBSCRIBE is stale
# (younger ones may still be on their way to the node: replication lag, not the fault).
STALE_AFTER = 1.0


@dataclass
class SpectatorState:
    """One page across its connections: its table, the nodes it goes round, what it got."""

    index: int
    table: int
    node: int  # the node it is connected (or connecting) to
    best: int = -1  # highest snapshot seq received, live or retained (a page shows the newest)
    live: int = 0  # live (not retained) snapshots received on the phase's seqs
    lost_at: float | None = None  # monotonic time its connection dropped
    subscribe_sent_at: float | None = None  # its SUBSCRIBE to the new node went out
    resubscribed_at: float | None = None  # its SUBACK on the new node
    retained_after: int | None = None  # seq of the retained snapshot it got on the new node
    latest_at_subscribe: int = -1  # newest seq of its table with a PUBACK when it resubscribed
    settled_at_subscribe: int = -1  # newest seq with a PUBACK STALE_AFTER s before SUBSCRIBE
    seen: list[int] = field(default_factory=list)  # live seqs received in the phase
    tries: int = 0


@dataclass
class KillReport:
    subscribers: int
    tables: int
    killed: int  # 0-based node
    messages: int
    on_killed_node: int = 0
    reconnected: int = 0
    reconnect_s: list[float] = field(default_factory=list)
    missing_latest: int = 0  # spectators (any node) not on their table's latest at the end
    missing_latest_killed: int = 0  # of those, spectators that were on the killed node
    retained_behind: int = 0  # reconnected, its retained one older than the latest acked
    retained_stale: int = 0  # ... older than one acked STALE_AFTER s before its SUBSCRIBE
    retained_none: int = 0  # reconnected, got no retained snapshot at all
    gap_published: int = 0  # snapshots of their table published while they were away (sum)
    gap_dropped: int = 0  # of those, never received live (QoS 0: intermediate, not a loss)
    survivor_missing: int = 0  # live snapshots missing on spectators that never lost a link
    duplicates: int = 0  # ... received twice (a resent snapshot that had been stored)
    restart_s: float = float("nan")
    rejoined_latest: int = 0  # tables whose latest snapshot the restarted node serves
    wait_s: float = 0.0
    publisher_reconnects: int = 0  # the publisher's connection lost and made again
    resent: int = 0  # snapshots published again after a reconnect (no PUBACK before)
    feeds: dict[int, int] = field(default_factory=dict)  # node -> host of its retained feed

    def lines(self) -> list[str]:
        reconnect = sorted(self.reconnect_s)

        def pct(fraction: float) -> str:
            if not reconnect:
                return "-"
            return f"{reconnect[min(len(reconnect) - 1, int(fraction * len(reconnect)))]:.1f}"

        node = f"n{self.killed + 1}"
        feeds = ", ".join(f"n{a + 1} on n{b + 1}" for a, b in sorted(self.feeds.items()))
        return [
            f"  nats kill: {self.subscribers} spectators, {self.tables} tables, {self.messages}"
            f" paced snapshots, {node} killed (-9) half-way",
            f"    retained feeds before the kill: {feeds or 'unknown'} (a survivor whose feed"
            f" was on {node} serves old retained snapshots until {node} is back)",
            f"    on {node}: {self.on_killed_node}; reconnected to another node: "
            f"{self.reconnected} (SUBACK after the kill: p50 {pct(0.5)} s, max {pct(1.0)} s)",
            f"    missing the latest snapshot of their table at the end: {self.missing_latest}"
            f" of {self.subscribers} (of them were on {node}: {self.missing_latest_killed});"
            f" waited {self.wait_s:.1f} s after the last PUBACK",
            f"    retained snapshot on reconnect older than one acknowledged {STALE_AFTER:g} s"
            f" before its SUBSCRIBE: {self.retained_stale}; older than the latest acknowledged"
            f" at the SUBACK (with replication lag): {self.retained_behind}; none at all:"
            f" {self.retained_none}",
            f"    published between the loss and the new SUBSCRIBE: {self.gap_published}, not"
            f" received live: "
            f"{self.gap_dropped} (QoS 0 intermediate snapshots, replaced by the retained one)",
            f"    live snapshots missing on spectators that kept their connection:"
            f" {self.survivor_missing} (received twice: {self.duplicates}, the resent ones)",
            f"    publisher (first on n1) reconnected {self.publisher_reconnects} times, resent"
            f" {self.resent} snapshots that had no PUBACK",
            f"    {node} restarted: accepts CONNECT after {self.restart_s:.1f} s; serves the"
            f" latest snapshot of {self.rejoined_latest}/{self.tables} tables as retained"
            f" (within {REJOIN_SERVE:g} s)",
        ]


async def kill_run(
    broker: ClusterBroker, n: int, args: Any, password: str, say: Callable[[str], None]
) -> KillReport:
    """A paced phase with ``args.kill_node`` (1-based; 2 or 3: the publisher starts on n1)
    killed with SIGKILL half-way; its spectators reconnect after 1 s to another node, half to
    each (mqtt.js with a page's shuffled URL list), going on round the nodes if refused. Then the node is restarted. docs/benchmarks.md."""
    import asyncio
    import contextlib

    from rallycast.bench.broker import (
        CONNECT_BATCH,
        PUBLISH_WINDOW,
        STAMP,
        Tally,
        TcpPublisher,
        WsSubscriber,
        bench_payload,
        table_topic,
    )
    from rallycast.bench.launch import SERVICE_USER

    loop = asyncio.get_running_loop()
    killed = args.kill_node - 1
    tables = max(1, getattr(args, "tables", 1))
    nodes = len(broker.ports)
    report = KillReport(n, tables, killed, max(2, round(args.rate * args.seconds)))
    acked = [-1] * tables  # per table: newest seq with a PUBACK
    acked_at: list[list[tuple[float, int]]] = [[] for _ in range(tables)]  # (PUBACK at, seq)
    published: list[list[tuple[int, float]]] = [[] for _ in range(tables)]  # (seq, sent at)
    closing = False
    progress = asyncio.Event()  # a PUBACK arrived

    unacked: dict[int, None] = {}  # seqs with no PUBACK yet, in order: resent after a reconnect

    class Publisher(TcpPublisher):
        """The service's side; on a lost connection (NATS closes it when JetStream does not
        store a QoS 1 message within 5 s, as during a leader change) ``send`` reconnects."""

        def __init__(self) -> None:
            super().__init__(SERVICE_USER, password)
            self.seq_of: dict[int, int] = {}
            self.lost = False

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.lost = True
            for _ in range(PUBLISH_WINDOW):  # wake a publish waiting for a slot
                self.window.release()

        async def publish_seq(self, seq: int) -> None:
            if self.lost:
                raise ConnectionError("publisher: connection lost")
            await self.publish(
                lambda: bench_payload(seq, args.payload_bytes), table_topic(seq % tables, tables)
            )
            if self.lost:
                raise ConnectionError("publisher: connection lost")
            self.seq_of[self._next_id] = seq

        def _on_packet(self, first: int, body: bytes) -> None:
            if first >> 4 == 4:
                seq = self.seq_of.pop(int.from_bytes(body[:2], "big"), None)
                if seq is not None:
                    unacked.pop(seq, None)
                    acked[seq % tables] = max(acked[seq % tables], seq)
                    acked_at[seq % tables].append((time.monotonic(), seq))
                    progress.set()
            super()._on_packet(first, body)

    class Page(WsSubscriber):
        def __init__(self, state: SpectatorState) -> None:
            super().__init__(
                "127.0.0.1",
                broker.ports[state.node].ws,
                f"page-{state.index}-{state.tries}",
                0,
                Tally(),
                table_topic(state.table, tables),
            )
            self.state = state

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            state = self.state
            sub = self.subscribed
            was_on = sub.done() and not sub.cancelled() and sub.exception() is None
            if not closing and was_on:
                state.lost_at = time.monotonic()
                schedule(state)

        def _on_packet(self, first: int, body: bytes) -> None:
            if first >> 4 == 3:
                start = 2 + int.from_bytes(body[:2], "big")
                if len(body) < start + STAMP.size:
                    return
                seq, _sent = STAMP.unpack_from(body, start)
                state = self.state
                state.best = max(state.best, seq)
                if first & 0x01:  # retained: sent on SUBSCRIBE
                    if state.lost_at is not None and state.retained_after is None:
                        state.retained_after = seq
                else:
                    state.live += 1
                    state.seen.append(seq)
                return
            state = self.state
            if first >> 4 == 2 and state.lost_at is not None and body[1:2] == b"\x00":
                # CONNACK: the SUBSCRIBE goes out now; the node picks the retained snapshot
                # after this, so one acknowledged STALE_AFTER s before must be in it.
                state.subscribe_sent_at = time.monotonic()
                settled = state.subscribe_sent_at - STALE_AFTER
                state.settled_at_subscribe = max(
                    (seq for at, seq in acked_at[state.table] if at <= settled), default=-1
                )
            if first >> 4 == 9 and state.lost_at is not None and not self.subscribed.done():
                state.resubscribed_at = time.monotonic()
                state.latest_at_subscribe = acked[state.table]
            super()._on_packet(first, body)

    async def connect(state: SpectatorState) -> Page:
        page = Page(state)
        try:
            await loop.create_connection(lambda: page, "127.0.0.1", page.port)
            await asyncio.wait_for(page.subscribed, 30)
        except BaseException:
            if page.transport is not None:
                page.transport.abort()
            raise
        return page

    def schedule(state: SpectatorState) -> None:
        loop.call_later(RECONNECT_PERIOD, lambda: asyncio.ensure_future(reconnect(state)))

    pages: list[Page] = []

    async def reconnect(state: SpectatorState) -> None:
        while not closing and state.tries < RECONNECT_TRIES:
            state.tries += 1
            # Each page shuffled its URL list: half of a lost node's pages go to each other.
            state.node = (state.node + 1 + (state.index // nodes) % (nodes - 1)) % nodes
            try:
                pages.append(await connect(state))
                return
            except (OSError, TimeoutError, ConnectionError, PermissionError):
                await asyncio.sleep(RECONNECT_PERIOD)

    states = [SpectatorState(i, i % tables, i % nodes) for i in range(n)]
    for state in states:
        if state.node == killed:
            report.on_killed_node += 1
    publisher_node = 0

    async def open_publisher() -> Publisher:
        """Connect to the next node, round the list as the service does (bounded: 30 s)."""
        nonlocal publisher_node
        deadline = time.monotonic() + 30
        while True:
            try:
                _transport, fresh = await asyncio.wait_for(
                    loop.create_connection(
                        Publisher, "127.0.0.1", broker.ports[publisher_node].mqtt
                    ),
                    10,
                )
                await asyncio.wait_for(fresh.connected, 10)
                return fresh
            except (OSError, TimeoutError, ConnectionError, PermissionError):
                if time.monotonic() > deadline:
                    raise TimeoutError("publisher: no node accepted a CONNECT for 30 s") from None
                publisher_node = (publisher_node + 1) % nodes
                await asyncio.sleep(RECONNECT_PERIOD)

    async def send(seq: int) -> None:
        """Publish ``seq``; after a lost connection, the next node and every unacked seq again
        (bounded: 30 s per publish, 10 reconnects)."""
        nonlocal publisher, publisher_node
        unacked[seq] = None
        for _ in range(10):
            pending = [seq]
            if publisher.lost:
                if publisher.transport is not None:
                    publisher.transport.abort()
                publisher_node = (publisher_node + 1) % nodes
                publisher = await open_publisher()
                report.publisher_reconnects += 1
                pending = list(unacked)
                report.resent += len(pending) - 1
            try:
                for again in pending:
                    await asyncio.wait_for(publisher.publish_seq(again), 30)
                return
            except ConnectionError:
                continue
        raise TimeoutError("publisher: 10 reconnects for one snapshot")

    publisher = await open_publisher()
    try:
        # One snapshot per table first: each table has a retained snapshot before the phase.
        for seq in range(tables):
            await send(seq)
        deadline = time.monotonic() + 30
        while min(acked) < 0 and time.monotonic() < deadline:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 1.0)
        for start in range(0, n, CONNECT_BATCH):
            batch = states[start : start + CONNECT_BATCH]
            pages.extend(await asyncio.gather(*(connect(s) for s in batch)))
            if (start + len(batch)) % 1000 == 0 or start + len(batch) == n:
                say(f"  nats kill: {start + len(batch)}/{n} spectators connected")
        try:
            report.feeds = retained_feed_hosts([p.http for p in broker.ports])
        except (OSError, ValueError, KeyError) as exc:
            say(f"  nats kill: feeds unknown ({exc})")
        first = tables
        for state in states:
            state.live = 0
            state.seen.clear()
        started = time.monotonic()
        for k in range(report.messages):
            delay = started + k / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if k == report.messages // 2:
                say(f"  nats kill: SIGKILL n{killed + 1} after {k} snapshots")
                broker.cluster.kill_node(killed)
                killed_at = time.monotonic()
            seq = first + k
            # Bounded (send): no PUBACK for 30 s or 10 reconnects stop the run, and say so.
            await send(seq)
            published[seq % tables].append((seq, time.monotonic()))  # written now
        last = [max(s for s, _t in table) if table else table_index
                for table_index, table in enumerate(published)]  # fmt: skip
        deadline = time.monotonic() + args.drain_timeout
        waited_from = time.monotonic()
        while time.monotonic() < deadline:
            moved = [s for s in states if s.lost_at is not None]
            done = all(s.best >= last[s.table] for s in states) and all(
                s.resubscribed_at is not None for s in moved
            )
            if done and min(acked[t] >= last[t] for t in range(tables)):
                break
            await asyncio.sleep(0.1)
        report.wait_s = time.monotonic() - waited_from
        for state in states:
            table_seqs = published[state.table]
            if state.lost_at is None:
                report.survivor_missing += len({q for q, _t in table_seqs} - set(state.seen))
                report.duplicates += len(state.seen) - len(set(state.seen))
            else:
                if state.resubscribed_at is not None:
                    report.reconnected += 1
                    report.reconnect_s.append(state.resubscribed_at - killed_at)
                    sent = state.subscribe_sent_at or state.resubscribed_at
                    gap = {s for s, t in table_seqs if state.lost_at <= t <= sent}
                    report.gap_published += len(gap)
                    report.gap_dropped += len(gap - set(state.seen))
                    if state.retained_after is None:
                        report.retained_none += 1
                    else:
                        report.retained_behind += state.retained_after < state.latest_at_subscribe
                        report.retained_stale += state.retained_after < state.settled_at_subscribe
            if state.best != last[state.table]:
                report.missing_latest += 1
                report.missing_latest_killed += state.lost_at is not None
    finally:
        closing = True
        for page in pages:
            if page.transport is not None:
                page.transport.abort()
        if publisher.transport is not None:
            publisher.transport.abort()
    # The node comes back with its files and must serve every table's latest snapshot.
    restart_started = time.monotonic()
    broker.cluster.start_node(killed)
    await loop.run_in_executor(None, broker.cluster.wait_ready, [killed], REJOIN_TIMEOUT)
    report.restart_s = time.monotonic() - restart_started
    report.rejoined_latest = await _rejoined_latest(broker, killed, tables, last)
    return report


async def _rejoined_latest(broker: ClusterBroker, node: int, tables: int, last: list[int]) -> int:
    """Tables whose latest seq node ``node`` serves as the retained snapshot to a new
    spectator within REJOIN_SERVE s: a new spectator per probe (5 s each at most), again
    after PROBE_PAUSE s while the node serves an older one (it reads them back from its
    JetStream consumer after the restart, later on a loaded machine)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + REJOIN_SERVE
    served = 0
    for table in range(tables):
        while True:
            if await _retained_seq(broker, node, tables, table) == last[table]:
                served += 1
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(PROBE_PAUSE)
    return served


async def _retained_seq(broker: ClusterBroker, node: int, tables: int, table: int) -> int | None:
    """The seq of the retained snapshot a new spectator on ``node`` gets for ``table`` (None:
    no connection or no retained snapshot within 5 s)."""
    import asyncio

    from rallycast.bench.broker import STAMP, Tally, WsSubscriber, table_topic

    loop = asyncio.get_running_loop()
    got: asyncio.Future[int] = loop.create_future()

    class Probe(WsSubscriber):
        def _on_packet(self, first: int, body: bytes, got: Any = got) -> None:
            if first >> 4 == 3 and first & 0x01 and not got.done():
                start = 2 + int.from_bytes(body[:2], "big")
                got.set_result(STAMP.unpack_from(body, start)[0])
                return
            super()._on_packet(first, body)

    probe = Probe(
        "127.0.0.1", broker.ports[node].ws, f"probe-{table}", 0, Tally(),
        table_topic(table, tables),
    )  # fmt: skip
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda probe=probe: probe, "127.0.0.1", probe.port), 5
        )
        return await asyncio.wait_for(got, 5)
    except (OSError, TimeoutError, ConnectionError):
        return None
    finally:
        if probe.transport is not None:
            probe.transport.abort()
