"""Tables on the pages, HTTP side (issue 12): what each page's config block and HTML say
about a club's tables, and the clear 400/404 page for a ``?table=`` that names no table."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from scorer.config import Club, Settings
from tests.viewer.pagekit import page_config
from viewer.app import create_app
from viewer.i18n import STRINGS
from viewer.tables import record_table_label, table_label

CLUBS = (
    Club("alpha", "Alpha TTC", tables=3, table_names=("Centre court",)),
    Club("beta", "Beta TTC"),
)
SETTINGS = Settings(clubs=CLUBS, ws_port=19001)


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(SETTINGS))


def test_the_club_page_has_one_card_per_table_in_order_and_follows_all_with_two_filters(
    client: TestClient,
) -> None:
    response = client.get("/clubs/alpha")
    config = page_config(response.text)
    assert config["gameFilters"] == ["clubs/alpha/game", "clubs/alpha/tables/+/game"]
    assert [(t["table"], t["name"], t["topics"]["game"]) for t in config["tables"]] == [
        (1, "Centre court", "clubs/alpha/game"),
        (2, "Table 2", "clubs/alpha/tables/2/game"),
        (3, "Table 3", "clubs/alpha/tables/3/game"),
    ]
    cards = re.findall(r'<section id="([^"]+)" class="live" data-table="(\d)" data-topic="([^"]+)"',
                       response.text)  # fmt: skip
    assert cards == [
        ("liveGameSection", "1", "clubs/alpha/game"),
        ("liveGameSection-2", "2", "clubs/alpha/tables/2/game"),
        ("liveGameSection-3", "3", "clubs/alpha/tables/3/game"),
    ]
    # One table: one card, as before tables, with no table name on it.
    beta = client.get("/clubs/beta").text
    assert beta.count('class="live"') == 1 and "live-table-name" not in beta


def test_table_names_follow_the_page_language_unless_configured(client: TestClient) -> None:
    config = page_config(client.get("/clubs/alpha?lang=ru").text)
    assert [t["name"] for t in config["tables"]] == ["Centre court", "Стол 2", "Стол 3"]
    club = CLUBS[0]
    assert table_label(club, 2, STRINGS["en"]) == "Table 2"
    assert record_table_label(club, "1", STRINGS["en"]) == "Centre court"
    assert record_table_label(club, 3, STRINGS["ru"]) == "Стол 3"
    assert record_table_label(club, None, STRINGS["en"]) == ""
    assert record_table_label(club, "annex", STRINGS["en"]) == "annex"


@pytest.mark.parametrize("page", ["display", "overlay", "score", "embed"])
def test_a_page_for_a_table_follows_that_tables_topics(client: TestClient, page: str) -> None:
    response = client.get(f"/clubs/alpha/{page}?table=2")
    assert response.status_code == 200
    if page == "embed":
        assert '<rallycast-live club="alpha" table="2"' in response.text
        return
    config = page_config(response.text)
    assert config["topics"] == {
        "game": "clubs/alpha/tables/2/game",
        "cmd": "clubs/alpha/tables/2/game/cmd",
        "reply": "clubs/alpha/tables/2/game/reply",
    }
    assert config["table"] == {"table": 2, "name": "Table 2"}


@pytest.mark.parametrize("page", ["display", "overlay", "score", "embed"])
@pytest.mark.parametrize(
    ("value", "status"),
    [("x", 400), ("0", 400), ("02", 400), ("-1", 400), ("1.5", 400), ("", 400), (" 2", 400),
     ("65", 400), ("4", 404), ("64", 404)],
)  # fmt: skip
def test_a_table_value_that_names_no_table_is_a_clear_error_page(
    client: TestClient, page: str, value: str, status: int
) -> None:
    response = client.get(f"/clubs/alpha/{page}", params={"table": value})
    assert response.status_code == status
    text = response.text
    if status == 400:
        assert "<h1>Bad table</h1>" in text and "a table number from 1 to 3" in text
    else:
        assert "<h1>No such table</h1>" in text
        assert f"Alpha TTC has 3 table(s); there is no table {int(value)}." in text
    # Links to the tables the club has, so the next step is one tap.
    for n, name in ((1, "Centre court"), (2, "Table 2"), (3, "Table 3")):
        assert f'<a href="?table={n}"><bdi>{name}</bdi></a>' in text
    assert "rallycast-config" in text  # a whole page, never a blank screen


def test_a_one_table_club_takes_table_1_and_refuses_table_2(client: TestClient) -> None:
    assert client.get("/clubs/beta/display?table=1").status_code == 200
    assert client.get("/clubs/beta/display?table=2").status_code == 404


def test_the_display_names_its_table_and_the_overlay_help_lists_the_table_option(
    client: TestClient,
) -> None:
    display = client.get("/clubs/alpha/display?table=3").text
    assert '<bdi class="board-table" id="board-table">Table 3</bdi>' in display
    assert "<code>table</code>" in client.get("/clubs/alpha/overlay/help").text
    assert "<code>table</code>" not in client.get("/clubs/beta/overlay/help").text
    # The scorer's page offers the club's tables, the URL's one chosen.
    score = client.get("/clubs/alpha/score?table=3").text
    pick = score[
        score.index('id="table-pick"') : score.index("</select>", score.index("table-pick"))
    ]
    assert re.findall(r'<option value="(\d)"( selected)?>([^<]+)</option>', pick) == [
        ("1", "", "Centre court"), ("2", "", "Table 2"), ("3", " selected", "Table 3"),
    ]  # fmt: skip
    assert page_config(score)["askedTable"] == 3
    assert page_config(client.get("/clubs/alpha/score").text)["askedTable"] is None
    assert 'id="table-pick"' not in client.get("/clubs/beta/score").text


def test_the_record_pages_name_the_table_a_match_was_played_on(tmp_path) -> None:
    from scorer.record import RecordWriter
    from scorer.record_fill import played_log, store_log

    store_log(tmp_path, "alpha", "on-centre", played_log("Ann", "Bob", 1, 1000.0))
    store_log(tmp_path, "alpha", "on-three", played_log("Cleo", "Dan", 2, 5000.0))
    store_log(tmp_path, "alpha", "no-table", played_log("Eve", "Fay", 1, 9000.0))
    writer = RecordWriter(tmp_path)
    writer.sync()
    # The table as the service records it (scorer/record.py's table_id column); a row
    # summarised before tables existed has none.
    with writer._db:
        writer._db.execute("UPDATE results SET table_id = NULL WHERE match_id = 'no-table'")
        writer._db.execute("UPDATE results SET table_id = '1' WHERE match_id = 'on-centre'")
        writer._db.execute("UPDATE results SET table_id = '3' WHERE match_id = 'on-three'")
    writer.close()
    client = TestClient(create_app(Settings(data_dir=tmp_path, clubs=CLUBS, ws_port=19001)))

    listed = client.get("/clubs/alpha/matches?lang=ru").text
    rows = re.findall(r'<tr data-match="([^"]+)".*?</td>\s*<td>(.*?)</td>', listed, re.S)
    assert rows == [
        ("no-table", "<bdi></bdi>"),
        ("on-three", "<bdi>Стол 3</bdi>"),
        ("on-centre", "<bdi>Centre court</bdi>"),
    ]
    assert '<th scope="col" data-col="table">Стол</th>' in listed
    page = client.get("/clubs/alpha/matches/on-three?lang=en").text
    assert '<bdi id="match-table">Table 3</bdi>' in page
    assert 'id="match-table"' not in client.get("/clubs/alpha/matches/no-table").text
    # The club page's recent results too, and record.js gets the names in the config.
    club = client.get("/clubs/alpha").text
    assert "<bdi>Centre court</bdi></td>" in club


def test_a_one_table_clubs_lists_have_no_table_column_until_a_match_names_another_table(
    tmp_path,
) -> None:
    from scorer.record import RecordWriter
    from scorer.record_fill import played_log, store_log

    store_log(tmp_path, "beta", "on-one", played_log("Ann", "Bob", 1, 1000.0))
    writer = RecordWriter(tmp_path)
    writer.sync()
    with writer._db:  # the service records table 1 as "1"
        writer._db.execute("UPDATE results SET table_id = '1' WHERE match_id = 'on-one'")
    client = TestClient(create_app(Settings(data_dir=tmp_path, clubs=CLUBS, ws_port=19001)))
    for path in ("/clubs/beta/matches", "/clubs/beta", "/clubs/beta/players/Ann"):
        page = client.get(path).text
        assert 'data-match="on-one"' in page, path
        assert 'data-col="table"' not in page, path
    # A match from a time the club had more tables names its table again.
    with writer._db:
        writer._db.execute("UPDATE results SET table_id = '2' WHERE match_id = 'on-one'")
    writer.close()
    assert 'data-col="table"' in client.get("/clubs/beta/matches").text
