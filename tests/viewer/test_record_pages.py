"""The record pages and the JSON API (viewer/record.py): list, paging, player filter, match
page with its charts, downloads (CSV/JSON round trip), API shapes and CORS; in Chromium on a
phone: a match that just ended moves into the club page's Recent results, and its page
draws one chart per game with a serve mark per point (screenshots in test-artifacts/)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from scorer import export
from scorer.config import Club, Settings
from scorer.record import RecordReader, RecordWriter
from scorer.record_fill import fill, played_log, store_log
from scorer.stats import match_stats
from tests.scorer.test_stats import known_log
from tests.viewer.conftest import accepted
from tests.viewer.pagekit import live_api_when
from viewer.app import create_app

ORIGIN = "https://club.example.org"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("record")
    fill(data, "alpha", 25)
    store_log(data, "alpha", "known", known_log())  # started at 1000 s: the oldest
    store_log(data, "alpha", "slash", played_log("A/B", "Bob", 1, 500.0))
    store_log(data, "alpha", "formula", played_log("=1+2", "'Zed", 2, 100.0))
    writer = RecordWriter(data)
    writer.sync()
    writer.close()
    return data


@pytest.fixture(scope="module")
def client(data_dir: Path) -> TestClient:
    settings = Settings(
        data_dir=data_dir, clubs=(Club("alpha", "Alpha TTC"), Club("beta")), ws_port=19001,
        embed_origins=(ORIGIN,),
    )  # fmt: skip
    return TestClient(create_app(settings))


def ids(html: str) -> list[str]:
    return re.findall(r'<tr data-match="([^"]+)"', html)


def test_matches_are_listed_newest_first_and_paged(client: TestClient) -> None:
    first = client.get("/clubs/alpha/matches")
    assert first.status_code == 200
    assert ids(first.text) == [f"fill-{n:06d}" for n in range(24, 4, -1)]
    second = client.get("/clubs/alpha/matches?page=2")
    assert ids(second.text) == [f"fill-{n:06d}" for n in range(4, -1, -1)] + [
        "known", "slash", "formula",
    ]  # fmt: skip
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    assert client.get("/clubs/alpha/matches?page=0").status_code == 400
    assert client.get("/clubs/alpha/matches?page=x").status_code == 400
    assert client.get("/clubs/beta/matches").status_code == 200
    assert client.get("/clubs/nope/matches").status_code == 404


def test_player_filter_and_player_page(client: TestClient) -> None:
    html = client.get("/clubs/alpha/matches", params={"player": "A/B"}).text
    assert ids(html) == ["slash"]
    page = client.get("/clubs/alpha/players/A/B")
    assert page.status_code == 200 and ids(page.text) == ["slash"]
    assert 'id="rating"' in page.text and "Bob" in page.text  # head-to-head row
    assert client.get("/clubs/alpha/players/Nobody").status_code == 404


def test_match_page_shows_result_games_charts_and_stats(client: TestClient) -> None:
    response = client.get("/clubs/alpha/matches/known")
    assert response.status_code == 200
    html = response.text
    assert "2:1" in html
    assert html.count('<svg class="lead-chart"') == 3
    assert html.count('class="serve-mark"') == 49  # one per point standing
    assert html.count('class="chart-timeout"') == 1 and html.count('class="chart-expedite"') == 1
    stats = re.search(r'<table class="results stats" id="stats">(.*?)</table>', html, re.S)
    assert stats and "16 / 25" in stats.group(1) and "9 / 25" in stats.group(1)
    assert "Games to 10-10: 1" in html and "12.0 s" in html
    csp = response.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and " style=" not in html  # SVG uses attributes only
    assert client.get("/clubs/alpha/matches/nope").status_code == 404
    assert client.get("/clubs/beta/matches/known").status_code == 404  # not that club's
    assert "Партия" in client.get("/clubs/alpha/matches/known?lang=ru").text


def test_club_page_shows_recent_results_and_ladder(client: TestClient) -> None:
    html = client.get("/clubs/alpha").text
    assert 'id="recent-results"' in html
    assert ids(html) == [f"fill-{n:06d}" for n in range(24, 19, -1)]
    assert '<ol class="ladder" id="ladder">' in html


def test_match_csv_and_json_round_trip(client: TestClient, data_dir: Path) -> None:
    log = RecordReader(data_dir).log("known")
    stats = match_stats("known", log)
    rows = export.read_match_csv(client.get("/clubs/alpha/matches/known.csv").text)
    points = [(g["game_no"], p) for g in stats["games"] for p in g["points"]]
    assert len(rows) == len(points) == 49
    for row, (game_no, point) in zip(rows, points, strict=True):
        assert (row["game_no"], row["won_by"], row["server"]) == (
            game_no, point["side"], point["server"],
        )  # fmt: skip
        assert [row["score1"], row["score2"]] == point["score"]
        assert row["seconds"] == point["seconds"]
    document = client.get("/clubs/alpha/matches/known.json").json()
    assert document["log"] == log  # the point log, as stored: replaying it gives the stats
    assert match_stats("known", document["log"]) == document["stats"] == stats
    assert client.get("/clubs/alpha/matches/known.xml").status_code == 404


def test_club_csv_round_trips_to_the_api_summary(client: TestClient) -> None:
    response = client.get("/clubs/alpha/matches.csv")
    assert response.headers["content-type"].startswith("text/csv")
    from_csv = export.read_club_csv(response.text)
    from_json = client.get("/clubs/alpha/matches.json").json()["matches"]
    assert len(from_csv) == 28
    assert "\r\nformula,1,finished," in response.text and ",'=1+2,''Zed," in response.text
    for row in from_json:
        row.pop("club")
    assert from_csv == from_json


def test_api_matches_are_paged_and_checked(client: TestClient) -> None:
    body = client.get("/api/clubs/alpha/matches?per_page=5&page=2").json()
    assert (body["total"], body["page"], body["per_page"]) == (28, 2, 5)
    assert [m["match_id"] for m in body["matches"]] == [f"fill-{n:06d}" for n in range(19, 14, -1)]
    first = body["matches"][0]
    assert set(first) == {
        "match_id", "club", "table", "status", "started_at", "ended_at", "players",
        "game_type", "best_of", "games_won", "winner", "games", "duration_s",
    }  # fmt: skip
    bad = client.get("/api/clubs/alpha/matches?per_page=1000")
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
    missing = client.get("/api/clubs/nope/matches")
    assert missing.status_code == 404 and missing.json()["code"] == "no_club"
    match = client.get("/api/clubs/alpha/matches/known").json()
    assert match["match"]["games"] == [[11, 5], [10, 12], [11, 0]]
    assert match["stats"]["totals"]["deuce_games"] == 1
    assert client.get("/api/clubs/alpha/matches/nope").json()["code"] == "no_match"
    live = client.get("/api/clubs/alpha/live").json()
    assert live == {  # no broker followed in this test: not known, not "no match"
        "club": {"id": "alpha", "name": "Alpha TTC"},
        "topic": "clubs/alpha/game",
        "known": False,
        "snapshot": None,
        # Every table of the club (issue 12, docs/api.md); alpha has one.
        "tables": [{"table": 1, "name": "Table 1", "topic": "clubs/alpha/game", "snapshot": None}],
    }
    assert "Bob" in client.get("/api/clubs/alpha/players?prefix=B").json()["players"]
    ladder = client.get("/api/clubs/alpha/ladder").json()["ladder"]
    assert sum(r["played"] for r in ladder) == 2 * 28  # every finished singles counts


def test_cors_only_for_configured_origins(client: TestClient) -> None:
    allowed = client.get("/api/clubs/alpha/matches", headers={"Origin": ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "Origin" in allowed.headers["vary"]
    other = client.get("/api/clubs/alpha/matches", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    error = client.get("/api/clubs/nope/live", headers={"Origin": ORIGIN})
    assert error.headers["access-control-allow-origin"] == ORIGIN
    preflight = client.options(
        "/api/clubs/alpha/live",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-methods"] == "GET"
    assert client.post("/api/clubs/alpha/live").status_code == 405  # read-only


def test_the_club_page_has_both_sides_parts_in_order(client: TestClient) -> None:
    # Live first (with its sound/speech buttons), then the record (recent results, ladder),
    # then the links (the embed snippet among them) and the QR code.
    html = client.get("/clubs/alpha").text
    parts = ['id="liveGameSection"', 'id="announce-controls"', 'id="recent-results"',
             'id="ladder"', "/clubs/alpha/embed/snippet", 'class="club-qr"']  # fmt: skip
    where = [html.find(part) for part in parts]
    assert -1 not in where, dict(zip(parts, where, strict=True))
    assert where == sorted(where)
    for script in ("announce.js", "announce-page.js", "record.js"):
        assert f"/{script}" in html, script


API_PATHS = [
    "/api/clubs/{club_id}/live",
    "/api/clubs/{club_id}/matches",
    "/api/clubs/{club_id}/matches/{match_id}",
    "/api/clubs/{club_id}/players",
    "/api/clubs/{club_id}/ladder",
]


def test_the_api_has_one_route_per_resource_and_no_catch_all(client: TestClient) -> None:
    # The embed's live route and the record's routes are one table (viewer/api.py): each path
    # once, and no pattern that would answer for another's paths (docs/api.md lists these).
    paths = [r.path for r in client.app.routes if r.path.startswith("/api/")]
    assert sorted(paths) == sorted(API_PATHS)
    # /live is the embed element's shape, whoever mounted it (not a record "tables" shape).
    live = set(client.get("/api/clubs/alpha/live").json())
    assert live == {"club", "topic", "known", "snapshot", "tables"}


def test_api_paths_no_route_serves_answer_json_with_cors(client: TestClient) -> None:
    for path in ("/api/clubs/alpha/nothing", "/api/clubs/alpha/live/x", "/api/other"):
        missing = client.get(path, headers={"Origin": ORIGIN})
        assert missing.status_code == 404, path
        assert missing.json()["code"] == "not_found", path
        assert missing.headers["access-control-allow-origin"] == ORIGIN
    for path in ("/api/clubs/alpha/live", "/api/clubs/alpha/matches", "/api/clubs/alpha/ladder"):
        refused = client.delete(path, headers={"Origin": ORIGIN})
        assert refused.status_code == 405, path
        assert refused.json()["code"] == "method_not_allowed"
        assert "GET" in refused.headers["allow"]
    # Pages keep their HTML error page.
    assert client.get("/clubs/nope").headers["content-type"].startswith("text/html")


def test_the_live_api_is_no_store_and_the_record_api_no_cache(client: TestClient) -> None:
    assert client.get("/api/clubs/alpha/live").headers["cache-control"] == "no-store"
    assert client.get("/api/clubs/alpha/ladder").headers["cache-control"] == "no-cache"
    for path in API_PATHS:
        url = path.format(club_id="alpha", match_id="known")
        assert client.get(url).headers["x-content-type-options"] == "nosniff", url


def test_phone_a_finished_match_moves_to_recent_results_and_its_page_charts(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    scorer = stack.scorer("alpha")
    club = open_page(stack.url("/clubs/alpha"), width=390, height=844, mobile=True)
    assert club.is_visible("#no-matches")
    accepted(scorer, {"cmd": "start", "player1": "Ann", "player2": "Bob", "best_of": 3})
    club.wait_for_selector("#liveGameSection", state="visible")
    for number, side in enumerate([2] * 3 + [1] * 11 + [1, 2] * 10 + [1, 1], start=1):
        match_id = accepted(scorer, {"cmd": "point", "side": side})["match_id"]
        if number == 2:
            accepted(scorer, {"cmd": "timeout", "side": 1})
        if number == 14 + 4:  # 4 points into game 2
            accepted(scorer, {"cmd": "expedite"})
    # Game 3 never starts: Ann won 11-3 and 12-10, best of 3.
    club.wait_for_selector(f'#recent-results tr[data-match="{match_id}"]', timeout=15000)
    assert club.is_hidden("#no-matches")
    # The record came from the store; the live API from the viewer's follower, maybe later.
    live = live_api_when(
        stack.url("/api/clubs/alpha/live"),
        lambda b: (s := b["snapshot"]) and s["match_id"] == match_id and s["rev"] >= 39,
    )
    assert live["known"] and live["snapshot"]["match_id"] == match_id
    assert live["snapshot"]["rev"] >= 39
    club.screenshot(path=str(artifacts_dir / "record-club-recent.png"), full_page=True)
    club.click(f'#recent-results tr[data-match="{match_id}"] a')
    club.wait_for_selector("#chart-2 svg")
    assert club.locator("svg.lead-chart").count() == 2
    assert club.locator("#chart-1 .serve-mark").count() == 14
    assert club.locator("#chart-2 .serve-mark").count() == 22
    assert club.locator("#chart-1 .chart-timeout").count() == 1
    assert club.locator("#chart-2 .chart-expedite").count() == 1
    width = club.evaluate("document.querySelector('#chart-2 svg').getBoundingClientRect().width")
    assert 300 <= width <= 390  # fits the phone's width, no sideways scrolling
    assert club.evaluate("document.documentElement.scrollWidth") <= 390
    club.screenshot(path=str(artifacts_dir / "record-match-phone.png"), full_page=True)
    club.emulate_media(media="print")
    club.screenshot(path=str(artifacts_dir / "record-match-print.png"), full_page=True)


def test_start_form_suggests_the_names_the_club_has_used(client: TestClient) -> None:
    def suggested(html: str) -> list[str]:
        found = re.search(r'<datalist id="player-names">(.*?)</datalist>', html)
        assert found
        return re.findall(r'<option value="([^"]*)">', found.group(1))

    html = client.get("/clubs/alpha/score").text
    names = suggested(html)
    assert {"Ann", "Bob", "A/B", "Иван Иванов"} <= set(names)
    assert html.count('list="player-names"') == 4
    assert suggested(client.get("/clubs/beta/score").text) == []
