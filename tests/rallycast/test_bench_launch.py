"""Free ports for processes that bind them later, and again after a kill -9
(``rallycast/bench/launch.py`` ``free_ports``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rallycast.bench.launch import (
    PORT_HOLD_SECONDS,
    REPO,
    _ephemeral_low,
    free_port,
    free_port_block,
    free_ports,
)


def test_a_group_of_free_ports_never_holds_the_same_port_twice() -> None:
    # A 3-node cluster takes 15 ports at once; picked one at a time from ~12,000, a repeat
    # came about once in 100 starts ("bind: address already in use" on the second bind).
    for _ in range(20):
        ports = free_ports(200, registry=None)
        assert len(set(ports)) == 200, sorted(p for p in ports if ports.count(p) > 1)


def test_ports_for_restarted_processes_come_from_below_the_ephemeral_range() -> None:
    # A process restarted on its port after kill -9 must not find it taken by an outgoing
    # connection or a port-0 listener.
    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports), (low, ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # free as promised


def test_a_port_handed_to_another_process_is_not_handed_out_again_while_unbound(
    tmp_path: Path,
) -> None:
    # The soak's `rallycast up` found its port taken as it started ("port 29478 is in use"):
    # another xdist worker had been handed the same port, free by the bind check alone while
    # the first process was still starting.
    registry = tmp_path / "ports"
    code = (
        "import sys; from pathlib import Path; from rallycast.bench.launch import free_ports; "
        "print(*free_ports(300, registry=Path(sys.argv[1])))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(registry)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    theirs = {int(port) for port in other.stdout.split()}
    assert len(theirs) == 300
    # All 300 are unbound again now, as between a pick and its process's bind.
    ours = set(free_ports(3000, registry=registry))
    assert not ours & theirs, sorted(ours & theirs)


def test_a_claim_older_than_the_hold_time_is_given_out_again(tmp_path: Path) -> None:
    registry = tmp_path / "ports"
    first = free_ports(50, registry=registry)
    past = time.time() - PORT_HOLD_SECONDS - 1
    for port in first:
        os.utime(registry / str(port), (past, past))
    # The space below the ephemeral range is ~12,000 ports: with the 50 expired, the
    # registry holds nothing, so a large pick must meet some of them again.
    again = set(free_ports(6000, registry=registry))
    assert again & set(first)
    # ...and a fresh claim is honoured.
    assert not set(free_ports(3000, registry=registry)) & again


def test_a_registry_that_cannot_be_written_falls_back_to_the_bind_check(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    ports = free_ports(5, registry=blocked / "ports")
    assert len(set(ports)) == 5


def test_a_block_of_ports_is_free_claimed_and_kept_from_other_callers(tmp_path: Path) -> None:
    registry = tmp_path / "ports"
    bases = [free_port_block(30, registry=registry) for _ in range(3)]
    blocks = [set(range(base, base + 30)) for base in bases]
    assert not (blocks[0] & blocks[1] or blocks[0] & blocks[2] or blocks[1] & blocks[2])
    claimed = set().union(*blocks)
    assert all((registry / str(port)).exists() for port in claimed)
    assert not set(free_ports(3000, registry=registry)) & claimed


def test_a_registry_that_is_a_link_or_another_users_directory_is_not_used(tmp_path: Path) -> None:
    # The registry lives under /tmp: a directory planted there by someone else, or a link to
    # one, would let them steer where claims are written.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    assert len(set(free_ports(5, registry=link))) == 5
    assert list(elsewhere.iterdir()) == []

    if os.getuid() == 0:  # as root, give the directory away to nobody
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
        assert len(set(free_ports(5, registry=foreign))) == 5
        assert list(foreign.iterdir()) == []
