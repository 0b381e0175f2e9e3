"""``rallycast bench record``: page time of the record pages with many stored matches.

Fills a temporary data dir with ``--matches`` ended matches (real logs played through the
engine: a few hundred distinct ones, shifted in time, stored as the service stores them),
brings the record up to date, then requests each page ``--requests`` times through the
viewer's ASGI app in this process (routing, SQLite reads, the engine's replay for a match
page, template rendering, gzip; no network) and prints p50/p95/max per page.

    rallycast bench record --matches 10000 --requests 200
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from scorer.record import RecordWriter
from scorer.record_fill import NAMES, played_log
from scorer.store import MatchStore

CLUB = "bench"
DISTINCT_LOGS = 300
MAX_MATCHES = 100_000


def fill_fast(data_dir: Path, matches: int, seed: int = 7) -> None:
    """``matches`` ended matches in the service's store, one transaction (a bench fill)."""
    rng = random.Random(seed)
    logs = []
    for _ in range(DISTINCT_LOGS):
        one, two = rng.sample(NAMES, 2)
        logs.append(played_log(one, two, rng.choice((1, 2)), 0.0, rng=rng,
                               best_of=rng.choice((3, 5))))  # fmt: skip
    MatchStore(data_dir).close()  # the schema, as the service makes it
    db = sqlite3.connect(data_dir / "matches.sqlite3", isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    start = 1.7e9
    for number in range(matches):
        log = logs[number % DISTINCT_LOGS]
        shift = start + number * 3600
        match_id = f"bench-{number:06d}"
        db.execute(
            "INSERT INTO matches (match_id, club_id, created_at) VALUES (?, ?, ?)",
            (match_id, CLUB, shift),
        )
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, ?)",
            [
                (match_id, seq, json.dumps({**entry, "at": entry["at"] + shift}))
                for seq, entry in enumerate(log, start=1)
            ],
        )
    db.execute("COMMIT")
    db.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def run(matches: int, requests: int, data_dir: Path | None = None) -> dict[str, Any]:
    """Fill, sync, measure. Returns ``{"fill_s", "sync_s", "pages": {name: {p50, p95, max}}}``
    (milliseconds)."""
    from starlette.testclient import TestClient

    from scorer.config import Club, Settings
    from viewer.app import create_app

    with tempfile.TemporaryDirectory(prefix="rallycast-record-bench-") as temp:
        data = data_dir or Path(temp)
        began = time.perf_counter()
        fill_fast(data, matches)
        filled = time.perf_counter()
        writer = RecordWriter(data)
        writer.sync()
        writer.close()
        synced = time.perf_counter()
        settings = Settings(data_dir=data, clubs=(Club(CLUB),))
        client = TestClient(create_app(settings))
        rng = random.Random(3)
        pages = -(-matches // 20)
        paths = {
            "match list, page 1": lambda: f"/clubs/{CLUB}/matches",
            "match list, any page": lambda: f"/clubs/{CLUB}/matches?page={rng.randint(1, pages)}",
            "match list, by player": lambda: f"/clubs/{CLUB}/matches?player={rng.choice(NAMES)}",
            "match page": lambda: f"/clubs/{CLUB}/matches/bench-{rng.randrange(matches):06d}",
            "player page": lambda: f"/clubs/{CLUB}/players/{rng.choice(NAMES)}",
            "club page": lambda: f"/clubs/{CLUB}",
            "API match list": lambda: f"/api/clubs/{CLUB}/matches?page={rng.randint(1, pages)}",
        }
        results = {}
        for name, path in paths.items():
            client.get(path())  # warm: templates compiled, caches filled
            times = []
            for _ in range(requests):
                url = path()
                t0 = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}")
            results[name] = {
                "p50": statistics.median(times),
                "p95": percentile(times, 0.95),
                "max": max(times),
            }
        return {"fill_s": filled - began, "sync_s": synced - filled, "pages": results}


def add_record_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--matches", type=int, default=10_000, help="stored matches (10000)")
    group.add_argument("--requests", type=int, default=200, help="requests per page (200)")


def print_record_bench(args: argparse.Namespace) -> int:
    if not 1 <= args.matches <= MAX_MATCHES or not 1 <= args.requests <= 10_000:
        print(f"rallycast bench: --matches 1..{MAX_MATCHES}, --requests 1..10000")
        return 2
    result = run(args.matches, args.requests)
    print(f"{args.matches} matches stored in {result['fill_s']:.1f} s; record built in "
          f"{result['sync_s']:.1f} s; {args.requests} requests per page")  # fmt: skip
    print(f"{'page':<24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, figures in result["pages"].items():
        print(f"{name:<24} {figures['p50']:>8.1f} {figures['p95']:>8.1f} {figures['max']:>8.1f}")
    return 0
