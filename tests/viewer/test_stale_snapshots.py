"""A broker that serves an old retained snapshot (nats-server after a node's loss, docs/scale.md
"Failover"; a bridge catching up) must not take a page back in time: a lower rev of the same
match is ignored (docs/pages.md), and so is a snapshot of another match last updated before the
one shown."""

from __future__ import annotations

from typing import Any

import pytest

from tests.viewer.conftest import accepted, contract_snapshot, publish_snapshot, score_on_page

pytestmark = pytest.mark.browser

START = {"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob"}
PAGES = {"/clubs/alpha": "#liveGameSection", "/clubs/alpha/display": "#board"}


# The two scores shown, sorted: the club page puts them by player, the display by end.
SCORES_JS = """(scope) => Array.from(document.querySelectorAll(scope + ' [data-field="score"]'))
  .map((e) => e.textContent).sort().join(' ')"""


def shown(page: Any, scope: str) -> str:
    return page.evaluate(SCORES_JS, scope)


def wait_shown(page: Any, scope: str, a: int, b: int) -> None:
    page.wait_for_function(
        f"([scope, want]) => ({SCORES_JS})(scope) === want",
        arg=[scope, " ".join(sorted([str(a), str(b)]))],
    )


@pytest.mark.parametrize("path", sorted(PAGES))
def test_an_older_snapshot_of_another_match_does_not_take_the_page_back(
    stack: Any, open_page: Any, path: str
) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    accepted(scorer, {"cmd": "point", "side": 1})
    old = stack.service.matches["alpha"].match.snapshot()  # match 1 at 1-0
    accepted(scorer, dict(START, player1="Cleo", player2="Dan", force=True))  # replaces it
    for _ in range(3):
        accepted(scorer, {"cmd": "point", "side": 2})
    current = stack.service.matches["alpha"].match.snapshot()  # match 2 at 0-3
    assert current["match_id"] != old["match_id"]
    assert old["updated_at"] < current["updated_at"]
    scope = PAGES[path]
    page = open_page(stack.url(path))
    wait_shown(page, scope, 0, 3)
    page.wait_for_function("() => window.Rallycast && Rallycast.client.connected")

    # A stale copy of match 1 arrives (as a stale node's retained message would), then a
    # stale rev of match 2: both ignored; then the next real change shows.
    publish_snapshot(stack, contract_snapshot(old))
    publish_snapshot(stack, contract_snapshot(current, rev=current["rev"] - 1,
                                              game_data={"score2": 2}))  # fmt: skip
    accepted(scorer, {"cmd": "point", "side": 1})
    wait_shown(page, scope, 1, 3)
    seen = page.evaluate(
        "(scope) => window.__rc.log.filter((e) => e.kind === 'text' && e.field === 'name')"
        ".map((e) => e.text)",
        scope,
    )
    assert "Ann" not in seen, seen
    assert shown(page, scope) == "1 3"


def test_a_newer_match_replaces_the_shown_one(stack: Any, open_page: Any) -> None:
    scorer = stack.scorer("alpha")
    accepted(scorer, START)
    page = open_page(stack.url("/clubs/alpha"))
    wait_shown(page, "#liveGameSection", 0, 0)
    accepted(scorer, dict(START, player1="Cleo", player2="Dan", force=True))
    accepted(scorer, {"cmd": "point", "side": 2})
    wait_shown(page, "#liveGameSection", 0, 1)
    assert score_on_page(page) == ("0", "1")
    assert page.inner_text('#liveGameSection [data-field="name"][data-side="1"]') == "Cleo"
