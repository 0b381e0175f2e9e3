"""Free ports for processes that bind them later, and again after a kill -9
(``rallycast/bench/launch.py`` ``free_ports``).

The choice is random; these tests script it (:class:`Offers`) so each holds a handful of
sockets for microseconds: a test that bound thousands of ports at once would itself take a
port another worker's broker is about to bind."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rallycast.bench import launch
from rallycast.bench.launch import (
    PORT_HOLD_SECONDS,
    REPO,
    _ephemeral_low,
    _port_claims,
    free_port_block,
    free_ports,
)


class Offers:
    """Stands in for ``launch.random``: ``randrange`` offers ``ports`` first, then random ones;
    ``shuffle`` puts ``first`` at the front."""

    def __init__(self, ports: Sequence[int] = (), first: int | None = None) -> None:
        self.ports: Iterator[int] = iter(ports)
        self.first = first

    def randrange(self, start: int, stop: int) -> int:
        return next(self.ports, None) or random.randrange(start, stop)

    def shuffle(self, items: list[int]) -> None:
        random.shuffle(items)
        if self.first is not None:
            if self.first in items:
                items.remove(self.first)
            items.insert(0, self.first)


def _age(registry: Path, ports: list[int] | range) -> None:
    past = time.time() - PORT_HOLD_SECONDS - 1
    for port in ports:
        os.utime(registry / str(port), (past, past))


def test_a_group_of_free_ports_never_holds_the_same_port_twice(monkeypatch) -> None:
    # A 3-node cluster takes 15 ports at once; picked one at a time, a repeat came about
    # once in 100 starts ("bind: address already in use" on the second bind).
    port = free_ports(1, registry=None)[0]
    monkeypatch.setattr(launch, "random", Offers([port] * 5))
    ports = free_ports(3, registry=None)
    assert len(set(ports)) == 3, ports


def test_ports_for_restarted_processes_come_from_below_the_ephemeral_range(tmp_path) -> None:
    # A process restarted on its port after kill -9 must not find it taken by an outgoing
    # connection or a port-0 listener.
    low = _ephemeral_low()
    ports = free_ports(20, registry=tmp_path / "ports")
    assert all(1024 <= port < low for port in ports), (low, ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # free as promised


CLAIM_AND_WAIT = (
    "import sys; from pathlib import Path; from rallycast.bench.launch import free_ports; "
    "print(*free_ports(10, registry=Path(sys.argv[1])), flush=True); sys.stdin.read()"
)


def _other_process_claims(registry: Path) -> tuple[subprocess.Popen[str], list[int]]:
    other = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(registry)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert other.stdout is not None
    return other, [int(port) for port in other.stdout.readline().split()]


def test_a_port_handed_to_another_process_is_not_handed_out_again_while_unbound(
    tmp_path: Path, monkeypatch
) -> None:
    # The soak's `rallycast up` found its port taken as it started ("port 29478 is in use"):
    # another xdist worker had been handed the same port, free by the bind check alone while
    # the first process was still starting.
    registry = tmp_path / "ports"
    other, theirs = _other_process_claims(registry)
    try:
        assert len(set(theirs)) == 10  # all unbound again, as between a pick and a bind
        monkeypatch.setattr(launch, "random", Offers(theirs))
        ours = free_ports(5, registry=registry)
        assert not set(ours) & set(theirs), ours
        # Past the hold time the claims still stand while their process lives (a pytest
        # worker restarts its session's brokers on their ports)...
        _age(registry, theirs)
        monkeypatch.setattr(launch, "random", Offers(theirs))
        assert not set(free_ports(5, registry=registry)) & set(theirs)
    finally:
        other.communicate("", timeout=30)
    # ...and are given out again once it has gone (some of them: any may be bound meanwhile
    # by a process that does not use this registry).
    monkeypatch.setattr(launch, "random", Offers(theirs))
    assert set(free_ports(5, registry=registry)) & set(theirs)


def test_a_claim_stands_for_the_hold_time_after_its_process_ends(tmp_path, monkeypatch) -> None:
    # A claimer's children may outlive it (a bench that started brokers and was killed).
    registry = tmp_path / "ports"
    other, theirs = _other_process_claims(registry)
    other.communicate("", timeout=30)
    monkeypatch.setattr(launch, "random", Offers(theirs))
    assert not set(free_ports(5, registry=registry)) & set(theirs)


def test_a_block_of_ports_is_claimed_whole_and_skipped_if_any_port_is_claimed(
    tmp_path: Path, monkeypatch
) -> None:
    registry = tmp_path / "ports"
    base = free_port_block(3, registry=registry)
    assert all(
        (registry / str(port)).read_text() == str(os.getpid())
        for port in (base, base + 1, base + 2)
    )
    # A block overlapping a claimed port is passed over even when offered first.
    overlapping = base + 2
    monkeypatch.setattr(launch, "random", Offers(first=overlapping))
    other = free_port_block(3, registry=registry)
    assert other != overlapping
    assert not {other, other + 1, other + 2} & {base, base + 1, base + 2}


def test_claims_are_checked_and_written_under_one_lock(tmp_path: Path) -> None:
    registry = tmp_path / "ports"
    with _port_claims(registry) as claim:
        assert claim([40000, 40001])
        assert not claim([40001, 40002])  # all or nothing
        assert claim.free([40002])
        assert not (registry / "40002").exists()


def test_a_registry_that_cannot_be_written_falls_back_to_the_bind_check(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    ports = free_ports(5, registry=blocked / "ports")
    assert len(set(ports)) == 5


@pytest.mark.parametrize("kind", ["link", "open to others", "another user's"])
def test_a_registry_that_is_not_this_users_private_directory_is_not_used(
    tmp_path: Path, kind: str
) -> None:
    # The registry lives under /tmp: a directory planted there by someone else, or a link to
    # one, would let them steer where claims are written and which ports are handed out.
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    registry = target
    if kind == "link":
        registry = tmp_path / "link"
        registry.symlink_to(target)
    elif kind == "open to others":
        target.chmod(0o777)
    else:
        if os.getuid() != 0:
            pytest.skip("only root can give a directory to another user")
        os.chown(target, 65534, 65534)
    assert len(set(free_ports(5, registry=registry))) == 5
    assert list(target.iterdir()) == []
