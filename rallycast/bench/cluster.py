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

from dataclasses import dataclass, field
from pathlib import Path

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
from rallycast.bench.launch import BrokerNotInstalled, free_port

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
    ports = [NodePorts(*(free_port() for _ in range(5))) for _ in range(NODES)]
    layout = ClusterLayout(workdir / "nats-cluster", ports)
    # Cost 4: one login; the measurement is about deliveries.
    layout.write({service_user: BcryptPasswordFile.hash(password, 4)}, service_user)
    cluster = Cluster(layout, program)
    cluster.start()
    return ClusterBroker(cluster)
