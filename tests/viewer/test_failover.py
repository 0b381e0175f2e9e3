"""End to end on the 3-node NATS cluster (ISSUE 14): the scorer service, a Python scorer and
real Chromium pages, all given the LIST of the nodes' URLs, while node 1 is killed (-9) in the
middle of a match. docs/scale.md "Failover".

One test, so the cluster's start (~6 s, shared with tests/broker/test_cluster.py) and the
failover are paid once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from scorer.client import ScoreClient
from scorer.service import ScorerService
from tests.cluster import ClusterEndpoint, rejoin_until_every_node_serves, until_every_node_serves
from tests.viewer.conftest import ViewerThread, texts
from tests.viewer.pagekit import live_api_when

pytestmark = pytest.mark.browser

START = {"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob"}
LIVE = "#liveGameSection"
PRESS_INTERVAL = 0.2  # s: 5 presses a second
PRESSES_BEFORE_KILL = 10
PRESSES_AFTER_KILL = 15
CATCH_UP = 5.0  # s: every page shows the latest score within this (the figure)
# s: a node serves a retained snapshot it got live within this (its own JetStream consumer
# brings it after the PUBACK; docs/scale.md)
SETTLE = 5.0
FOLLOWER_CATCH_UP = 10.0  # s: the viewer's follower has the latest snapshot after the pages
PAGE_TRIES = 20  # pages opened at most to have one on each node (each picks one at random)


def score_shown(page: Any) -> list[str]:
    return page.evaluate(
        """(scope) => [1, 2].map((side) => {
             const el = document.querySelector(
               scope + ' [data-field="score"][data-side="' + side + '"]');
             return el ? el.textContent : null; })""",
        LIVE,
    )


def first_node(page: Any, ws_urls: list[str]) -> int:
    """The node (0-based) this page connected to first: preconnect.js's shuffled pick."""
    return ws_urls.index(page.evaluate("() => window.RallycastEarly.url"))


def retained_rev(cluster: ClusterEndpoint, node: int) -> int | None:
    """The rev of the snapshot a new spectator on ``node`` gets (anonymous, QoS 0, as the
    pages); None if none comes within 5 s."""
    got: list[dict[str, Any]] = []
    arrived = threading.Event()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain and message.payload:
            got.append(json.loads(message.payload))
            arrived.set()

    try:
        client = cluster.client(None, node=node, on_message=on_message)
    except TimeoutError:  # no CONNACK in 5 s: a rejoined node may hold it until JetStream is
        return None  # ready on it; the caller asserts on the rev
    client.subscribe("clubs/alpha/game", 0)
    try:
        return got[0]["rev"] if arrived.wait(5) else None
    finally:
        client.disconnect()


def test_kill_9_of_a_node_mid_match_loses_no_replied_press_and_every_page_catches_up(
    nats_broker: ClusterEndpoint, open_page: Any, tmp_path: Path
) -> None:
    cluster = nats_broker
    mqtt_urls = [cluster.node_url(i) for i in range(3)]
    ws_urls = [cluster.node_url(i, "websockets") for i in range(3)]
    settings = cluster.settings(
        data_dir=str(tmp_path / "app"),
        broker_url=",".join(mqtt_urls),
        public_ws_url=",".join(ws_urls),
    )
    service = ScorerService(settings, password=cluster.users[cluster.service_user])
    service.start()
    viewer = ViewerThread(settings)
    scorer = None
    try:
        assert service.wait_until_connected(10), "the scorer service did not connect"
        # Its persistent session ends after the test (the fixture's reset).
        cluster._runner.sessions.add(service._client._client_id.decode())
        viewer.start()
        # The service and the scorer start on node 1 (the first URL): both must fail over.
        scorer_url = ",".join([cluster.node_url(0, user="alpha"), *mqtt_urls[1:]])
        scorer = ScoreClient(scorer_url, "alpha", timeout=10)
        assert scorer.send(dict(START))["ok"]

        pages: dict[int, Any] = {}
        for _ in range(PAGE_TRIES):
            page = open_page(viewer.url + "/clubs/alpha")
            node = first_node(page, ws_urls)
            if node in pages:
                page.context.close()
            else:
                pages[node] = page
            if len(pages) == 3:
                break
        assert sorted(pages) == [0, 1, 2], f"pages only on nodes {sorted(pages)}"
        for page in pages.values():
            page.wait_for_function("() => window.Rallycast && Rallycast.client.connected")
            # The killed node: failed connects, and a send mqtt.js made as the socket closed.
            page.failures.allowed += ["WebSocket connection to", "WebSocket is already in CLOSING"]

        # Where each node's retained-messages consumer lives, before node 1 goes.
        hosts = cluster.retained_consumer_hosts()
        assert sorted(hosts) == [0, 1, 2], hosts
        replies: list[dict[str, Any]] = []
        slowest = 0.0
        for press in range(PRESSES_BEFORE_KILL + PRESSES_AFTER_KILL):
            if press == PRESSES_BEFORE_KILL:
                cluster.kill_node(0)
                killed_at = time.monotonic()
            started = time.monotonic()
            reply = scorer.send({"cmd": "point", "side": 1 + press % 2})
            slowest = max(slowest, time.monotonic() - started)
            assert reply["ok"], reply
            replies.append(reply)
            time.sleep(max(0.0, PRESS_INTERVAL - (time.monotonic() - started)))
        last_reply_at = time.monotonic()

        # No replied press lost, none applied twice: one rev per press, in order.
        revs = [reply["rev"] for reply in replies]
        assert revs == list(range(revs[0], revs[0] + len(revs))), revs
        # Both moved off the killed node (node 1) through their URL lists.
        assert service._failover is not None and service._failover.index != 0
        assert scorer.failover.index != 0
        current = service.matches["alpha"].match.snapshot()
        assert current["rev"] == revs[-1]
        # Alternate points from 0-0: the game never ends (deuce), the score is ceil/floor.
        expected = [str((len(replies) + 1) // 2), str(len(replies) // 2)]
        assert [current["game_data"]["score1"], current["game_data"]["score2"]] == [
            int(expected[0]),
            int(expected[1]),
        ]

        # Every page, the one whose node was killed too, shows the latest score within 5 s.
        for node, page in pages.items():
            page.wait_for_function(
                """([scope, a, b]) => {
                     const s = (side) => document.querySelector(
                       scope + ' [data-field="score"][data-side="' + side + '"]');
                     return s(1) && s(1).textContent === a && s(2).textContent === b;
                   }""",
                arg=[LIVE, *expected],
                timeout=max(1.0, CATCH_UP - (time.monotonic() - last_reply_at)) * 1000,
            )
            assert score_shown(page) == expected, f"page on n{node + 1}"
        assert time.monotonic() - last_reply_at <= CATCH_UP

        # A late joiner on each surviving node gets the current snapshot at once: a page
        # through the viewer's own copy (in its HTML; docs/scale.md "Failover"), an MQTT
        # spectator as the node's retained message.
        # The viewer's own follower is a subscriber apart from the pages and fails over
        # too (backoff 1-4 s): the late page's first score is its copy once it has caught up.
        live = live_api_when(
            viewer.url + "/api/clubs/alpha/live",
            lambda b: (b["snapshot"] or {}).get("rev") == revs[-1],
            timeout=FOLLOWER_CATCH_UP,
        )
        assert (live["snapshot"] or {}).get("rev") == revs[-1], live["snapshot"]
        late = open_page(viewer.url + "/clubs/alpha")
        assert texts(late, "score", "1", "liveGameSection")[:1] == expected[:1]
        assert texts(late, "score", "2", "liveGameSection")[:1] == expected[1:]
        # On a node whose retained-messages consumer was on node 1, nats-server 2.15.1 keeps
        # serving the snapshot of the moment of the kill (upstream fault, docs/scale.md
        # "Failover"): pinned exactly, so a fix upstream or a new cause shows here.
        # The others: the pages saw the latest live, the node's retained copy comes through
        # its consumer a moment later under load (polled; the stale case stays one probe).
        for node in (1, 2):
            if hosts[node] == 0:
                got = retained_rev(cluster, node)
            else:
                got = until_every_node_serves(
                    lambda n: retained_rev(cluster, n), revs[-1], SETTLE, nodes=[node]
                )[node]
            print(f"n{node + 1}: retained consumer on n{hosts[node] + 1}, serves rev {got}")
            if hosts[node] == 0:
                assert got is not None and got < revs[-1], (node, got, hosts)
            else:
                assert got == revs[-1], (node, got, hosts)

        # The killed node rejoins and serves the same snapshot; its return revives the
        # consumers it hosted, so every node serves the current snapshot again.
        served = rejoin_until_every_node_serves(
            cluster, 0, hosts, lambda node: retained_rev(cluster, node), revs[-1]
        )
        assert served == dict.fromkeys(range(3), revs[-1]), served
        print(
            f"failover: slowest press {slowest:.2f} s; {len(replies)} presses, "
            f"{time.monotonic() - killed_at:.1f} s since the kill"
        )
    finally:
        if scorer is not None:
            scorer.close()
        service.stop()
        if viewer._server is not None:
            viewer.stop()
