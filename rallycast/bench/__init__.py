"""``rallycast bench TARGET``: measurements on loopback, one module per target.

- ``broker`` (``broker.py``): the embedded broker against mosquitto, N WebSocket subscribers;
- ``hostile`` (``hostile.py``): attacks by hostile clients, both brokers side by side;
- ``pages`` (``pages.py``): press -> screen and first score in headless Chromium;
- ``record`` (``record.py``): the record pages' time with many stored matches.

Shared: ``launch.py`` (brokers as subprocesses, also used by the test fixtures), ``wire.py``
(raw MQTT/WebSocket clients), ``report.py`` (the broker table). ``python -m rallycast.bench
serve-stock`` is the comparison broker's process (amqtt's own Broker, our config).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_broker_bench(args: argparse.Namespace) -> int:
    """The embedded broker against mosquitto (rallycast/bench/broker.py)."""
    from rallycast.bench.broker import run_broker_bench as run

    return run(args)


def run_hostile_bench(args: argparse.Namespace) -> int:
    """The attacks of issue 9, both brokers side by side (rallycast/bench/hostile.py)."""
    from rallycast.bench.hostile import run_hostile_bench as run

    return run(args)


def run_pages_bench(args: argparse.Namespace) -> int:
    """Press -> screen and navigation -> first score in real Chromium (rallycast/bench/pages.py)."""
    from rallycast.bench.pages import print_pages_bench

    return print_pages_bench(args)


def run_record_bench(args: argparse.Namespace) -> int:
    """Record pages' time with many stored matches (rallycast/bench/record.py)."""
    from rallycast.bench.record import print_record_bench

    return print_record_bench(args)


# target -> (function, help)
TARGETS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "broker": (run_broker_bench, "embedded broker vs mosquitto, N WebSocket subscribers"),
    "pages": (run_pages_bench, "press -> screen and first score in headless Chromium"),
    "hostile": (run_hostile_bench, "attacks by hostile clients, embedded broker vs mosquitto"),
    "record": (run_record_bench, "record pages' time with 10,000 stored matches"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to measure")
    from rallycast.bench.broker import BROKER_KINDS

    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--subscribers", type=int, nargs="+", default=[100], metavar="N",
        help="WebSocket subscribers, one run per value (default: 100; try 100 500 1000)",
    )  # fmt: skip
    broker.add_argument(
        "--brokers", nargs="+", choices=BROKER_KINDS, default=["embedded", "mosquitto"],
        help="brokers to measure (stock = amqtt's own Broker with our plugins)",
    )  # fmt: skip
    broker.add_argument("--rate", type=float, default=10.0, help="paced messages/s (default 10)")
    broker.add_argument("--seconds", type=float, default=10.0, help="paced phase length (10)")
    broker.add_argument(
        "--burst", type=int, default=0, help="burst messages (default: 100000/N, 20..500)"
    )
    broker.add_argument("--payload-bytes", type=int, default=400, help="payload size (400)")
    broker.add_argument(
        "--tables", type=int, default=1,
        help="snapshot topics (one club each): subscriber i follows table i %% T and the"
        " publisher goes round the tables (default 1)",
    )  # fmt: skip
    broker.add_argument(
        "--qos", type=int, choices=(0, 1), default=0, help="subscription QoS (pages use 0)"
    )
    broker.add_argument(
        "--kill-node", type=int, choices=(2, 3), default=None, metavar="K",
        help="nats only: after the phases, a paced phase with node K (2 or 3; the publisher"
        " is on node 1) killed with SIGKILL half-way, then restarted (docs/benchmarks.md)",
    )  # fmt: skip
    broker.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="seconds to wait for the last deliveries of a phase (30)",
    )  # fmt: skip

    from rallycast.bench.hostile import add_hostile_arguments
    from rallycast.bench.pages import add_pages_arguments
    from rallycast.bench.record import add_record_arguments

    add_hostile_arguments(parser.add_argument_group("hostile"))
    add_pages_arguments(parser.add_argument_group("pages"))
    add_record_arguments(parser.add_argument_group("record"))


def main(args: argparse.Namespace) -> int:
    from rallycast.bench.broker import MAX_SUBSCRIBERS

    function, _help = TARGETS[args.target]
    for value in getattr(args, "subscribers", None) or ():
        if not 1 <= value <= MAX_SUBSCRIBERS:
            print(f"rallycast bench: --subscribers must be 1..{MAX_SUBSCRIBERS}", file=sys.stderr)
            return 2
    if getattr(args, "tables", 1) < 1:
        print("rallycast bench: --tables must be at least 1", file=sys.stderr)
        return 2
    return function(args)
