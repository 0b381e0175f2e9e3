"""``rallycast bench pages``: how fast a live page shows a score, measured in real Chromium.

- press -> screen: a scorer's command is published from the page's own JavaScript context (a
  second mqtt.js client signed in as the club's scorer), goes through the broker and the scorer
  service, comes back as a snapshot, and is rendered; a MutationObserver notes when the new
  score is in the DOM. Both ends use the page's ``performance.now()``: one clock, no skew.
  Presses alternate +1 and -1 on side 1, one at a time (latency, not throughput).
- navigation -> first score: ``performance.now()`` when live.js first rendered the club's
  current snapshot (the one embedded in the page by the server, or else the retained one from
  MQTT), i.e. milliseconds since the navigation started.

With no ``base_url`` it runs its own embedded broker + scorer service + viewer on loopback
ports in a temporary data dir (the "embedded default"), so only 127.0.0.1 is involved.

    python -m rallycast.bench.pages --presses 200 --navigations 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BENCH_CLUB = "bench"
PRESS_TIMEOUT_MS = 5000
MAX_PRESSES = 2000  # bounded: the machine is shared
MAX_NAVIGATIONS = 200

# Runs in the page: sign in as the scorer, start a match, then press and wait, one at a time.
PRESS_LOOP_JS = """
async ([user, password, presses, timeoutMs]) => {
  const cfg = Rallycast.config;
  const scorer = mqtt.connect(Rallycast.brokerUrl(), { protocolVersion: 4, username: user, password, clean: true,
                                     reconnectPeriod: 0, clientId: 'bench-' + Math.random() });
  await new Promise((ok, fail) => { scorer.once('connect', ok); scorer.once('error', fail); });
  const cell = () => document.querySelector('#liveGameSection [data-field="score"][data-side="1"]');
  const waitFor = (test) => new Promise((ok, fail) => {
    if (test()) return ok(performance.now());
    const timer = setTimeout(() => { observer.disconnect(); fail(new Error('no change in time')); }, timeoutMs);
    const observer = new MutationObserver(() => {
      if (test()) { const t = performance.now(); observer.disconnect(); clearTimeout(timer); ok(t); }
    });
    observer.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  const send = (command) => scorer.publish(cfg.topics.cmd, JSON.stringify(command), { qos: 1 });
  send({ cmd: 'start', game_type: 'single', player1: 'Bench A', player2: 'Bench B',
         best_of: 7, force: true, id: 'bench-start-' + Math.random() });
  await waitFor(() => !document.getElementById('liveGameSection').hidden && cell().textContent === '0');
  const latencies = [];
  for (let i = 0; i < presses; i++) {
    const plus = i % 2 === 0;
    const want = plus ? '1' : '0';
    const t0 = performance.now();
    send(plus ? { cmd: 'point', side: 1, id: 'b' + i } : { cmd: 'point', side: 1, delta: -1, id: 'b' + i });
    const t1 = await waitFor(() => cell().textContent === want);
    latencies.push(t1 - t0);
  }
  scorer.end(true);
  return latencies;
}
"""


# Milestones of a page load, in ms since the navigation started.
MILESTONES_JS = """
() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const mark = (name) => (performance.getEntriesByName(name)[0] || {}).startTime;
  return { html_received: nav.responseEnd, websocket_open: mark('rallycast:ws-open'),
           scripts_run: nav.domContentLoadedEventStart, mqtt_connected: mark('rallycast:connected'),
           score_shown: Rallycast.firstScoreAt,
           first_paint: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime };
}
"""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th smallest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p99_ms": round(percentile(values, 0.99), 1),
        "max_ms": round(max(values), 1),
        "mean_ms": round(statistics.fmean(values), 1),
    }


@contextlib.contextmanager
def embedded_stack() -> Iterator[tuple[str, str, str]]:
    """Broker + scorer service + viewer on 127.0.0.1 ephemeral ports, in a thread with its own
    event loop; yields (base_url, club, scorer password) and removes everything after."""
    from broker.auth import PasswordFile
    from broker.server import start_broker
    from scorer.config import Club, Settings
    from scorer.service import ScorerService
    from viewer.server import start_viewer

    with tempfile.TemporaryDirectory(prefix="rallycast-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp), bind="127.0.0.1", mqtt_port=0, ws_port=0, http_port=0,
            clubs=(Club(BENCH_CLUB, "Bench"),), log_level="WARNING",
        )  # fmt: skip
        club_password, service_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        passwords = PasswordFile(settings.password_file)
        passwords.set(BENCH_CLUB, club_password)
        passwords.set(settings.service_user, service_password)

        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="bench-stack", daemon=True)
        thread.start()

        def run(coroutine: Any, timeout: float = 15) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

        broker = run(start_broker(settings))
        live = replace(
            settings, mqtt_port=broker.mqtt_port, ws_port=broker.ws_port,
            broker_url=broker.mqtt_url,  # the viewer follows the retained snapshots here
        )  # fmt: skip
        service = ScorerService(live, url=broker.mqtt_url, password=service_password)
        viewer = None
        try:
            service.start()
            if not service.wait_until_connected(10):
                raise RuntimeError("the scorer service did not connect to the bench broker")
            viewer = run(start_viewer(live))
            yield viewer.url, BENCH_CLUB, club_password
        finally:
            service.stop()
            if viewer is not None:
                run(viewer.stop())
            run(broker.stop())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def bench_pages(
    *,
    presses: int = 200,
    navigations: int = 20,
    base_url: str | None = None,
    club: str = BENCH_CLUB,
    password: str | None = None,
    chromium: str = CHROMIUM,
) -> dict[str, Any]:
    """Measure press -> screen and navigation -> first score. Without ``base_url`` it runs
    its own embedded stack; with one, give the club and its scorer password."""
    presses = max(1, min(presses, MAX_PRESSES))
    navigations = max(1, min(navigations, MAX_NAVIGATIONS))
    if base_url is None:
        with embedded_stack() as (url, own_club, own_password):
            return bench_pages(
                presses=presses, navigations=navigations, base_url=url,
                club=own_club, password=own_password, chromium=chromium,
            )  # fmt: skip
    if password is None:
        raise ValueError("bench_pages needs the club's scorer password with base_url")

    from playwright.sync_api import sync_playwright

    page_url = f"{base_url.rstrip('/')}/clubs/{club}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(page_url)
            page.wait_for_function(
                "() => window.Rallycast && Rallycast.client && Rallycast.client.connected"
            )
            latencies = page.evaluate(PRESS_LOOP_JS, [club, password, presses, PRESS_TIMEOUT_MS])

            # Navigation -> first score of the retained snapshot, three ways: a first visit
            # (new browser profile: nothing cached), returning visits in a new tab (static
            # files cached; the tab's renderer process starts too), and navigations in the
            # same tab (a spectator following a link or reloading).
            def first_score(visit: Any, steps: dict[str, list[float]] | None = None) -> float:
                visit.goto(page_url)
                visit.wait_for_function("() => window.Rallycast && Rallycast.firstScoreAt > 0")
                if steps is not None:
                    for step, at in visit.evaluate(MILESTONES_JS).items():
                        # A mark a busy browser did not record (no first paint of a page
                        # left at once) is left out of that step, not counted as 0.
                        if at is not None:
                            steps.setdefault(step, []).append(at)
                return float(visit.evaluate("() => Rallycast.firstScoreAt"))

            cold = browser.new_context()
            first_visit = first_score(cold.new_page())
            cold.close()
            new_tab: list[float] = []
            for _ in range(navigations):
                visit = context.new_page()
                new_tab.append(first_score(visit))
                visit.close()
            same_tab: list[float] = []
            milestones: dict[str, list[float]] = {}
            for _ in range(navigations):
                same_tab.append(first_score(page, milestones))
        finally:
            browser.close()
    return {
        "press_to_screen": summary(latencies),
        "first_score_first_visit_ms": round(first_visit, 1),
        "first_score_new_tab": summary(new_tab),
        "first_score_same_tab": summary(same_tab),
        # Where a same-tab navigation's time goes (p50, ms since the navigation started).
        "first_score_steps_p50_ms": {
            step: round(statistics.median(values), 1) for step, values in milestones.items()
        },
        "page": page_url,
    }


def add_pages_arguments(parser: Any) -> None:
    parser.add_argument("--presses", type=int, default=200, help="presses to time (200)")
    parser.add_argument("--navigations", type=int, default=20, help="page loads to time (20)")
    parser.add_argument("--url", help="a running viewer (default: start an embedded stack)")
    parser.add_argument("--club", default=BENCH_CLUB, help="the club, with --url")
    parser.add_argument("--password", help="the club's scorer password, with --url")


def print_pages_bench(args: argparse.Namespace) -> int:
    result = bench_pages(
        presses=args.presses, navigations=args.navigations, base_url=args.url,
        club=args.club, password=args.password,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rallycast.bench.pages", description=__doc__.splitlines()[0]
    )
    add_pages_arguments(parser)
    return print_pages_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
