"""``?table=`` on every page that takes one (issue 12): whatever the value, a page answers with
the table, or the clear 400/404 page, never a server error."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from scorer.config import Club, Settings
from viewer.app import create_app

SETTINGS = Settings(clubs=(Club("alpha", "Alpha TTC", tables=3),), ws_port=19001)
PAGES = ["display", "overlay", "score", "embed"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(SETTINGS), raise_server_exceptions=False)


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\u00b9\u00b2", "\u0663", "\uff12", "9" * 5000, "0" * 4400 + "2", "02", "+2", " 2",
     "2.0", "-1", "0", "", "1e1", "%00"],
)  # fmt: skip
def test_a_table_value_that_is_no_plain_number_gets_the_400_page(
    client: TestClient, page: str, value: str
) -> None:
    response = client.get(f"/clubs/alpha/{page}?table={quote(value)}")
    assert response.status_code == 400, response.text[:200]
    assert "?table=1" in response.text and "?table=3" in response.text  # links to the tables


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("value", ["4", "64", "65", "99", "100"])
def test_a_number_beyond_the_clubs_tables_gets_404_or_400(
    client: TestClient, page: str, value: str
) -> None:
    response = client.get(f"/clubs/alpha/{page}?table={value}")
    assert response.status_code == (404 if int(value) <= 64 else 400)


@pytest.mark.parametrize("page", PAGES)
def test_a_repeated_table_takes_the_last_value_on_server_and_page_alike(
    client: TestClient, page: str
) -> None:
    response = client.get(f"/clubs/alpha/{page}?table=2&table=3")
    assert response.status_code == 200
    text = response.text
    if page == "embed":
        assert 'table="3"' in text
    else:
        assert "clubs/alpha/tables/3/game" in text
