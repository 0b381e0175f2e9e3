"""The TV display and the stream overlay in real Chromium against the real broker and service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.viewer.png import Png

pytestmark = pytest.mark.browser

TV = {"width": 1280, "height": 720}


def end_name(page: Any, end: str) -> str:
    return page.inner_text(f'.end-{end} [data-field="name"]')


def end_score(page: Any, end: str) -> str:
    return page.inner_text(f'.end-{end} [data-field="score"]')


def test_the_display_puts_the_names_where_the_players_stand_after_a_change_of_ends(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    display = open_page(stack.url("/clubs/alpha/display"), **TV)
    display.wait_for_selector("#board[data-state=idle]")
    assert display.locator(".board-idle").is_visible()
    scorer = stack.scorer("alpha")
    start = {"cmd": "start", "game_type": "single", "player1": "Lena", "player2": "Rob"}
    assert scorer.send(dict(start, best_of=3))["ok"]
    for side in (1, 1, 2):
        assert scorer.send({"cmd": "point", "side": side})["ok"]

    # Game 1: side 1 (Lena) starts at the left end.
    # Both scores in one wait: the left's 2 alone is also the 2-0 one point before.
    display.wait_for_function(
        "() => document.querySelector('.end-left [data-field=score]').textContent === '2'"
        " && document.querySelector('.end-right [data-field=score]').textContent === '1'"
    )
    assert (end_name(display, "left"), end_name(display, "right")) == ("Lena", "Rob")
    assert (end_score(display, "left"), end_score(display, "right")) == ("2", "1")
    display.screenshot(path=str(artifacts_dir / "display-game-1.png"))

    for _ in range(9):
        assert scorer.send({"cmd": "point", "side": 1})["ok"]  # 11-1
    display.wait_for_selector("#board[data-state=between_games]")
    # The players changed ends: Rob is now at the left end, Lena at the right.
    assert (end_name(display, "left"), end_name(display, "right")) == ("Rob", "Lena")
    assert (end_score(display, "left"), end_score(display, "right")) == ("1", "11")
    assert display.inner_text('.end-right [data-field="games"]') == "1"
    message = display.inner_text(".board-messages")
    assert "Game 1 to Lena, 11–1" in message and "Change ends" in message
    display.screenshot(path=str(artifacts_dir / "display-between-games.png"))

    for _ in range(11):
        assert scorer.send({"cmd": "point", "side": 1})["ok"]  # game 2 11-0: Lena wins 2-0
    display.wait_for_selector("#board[data-state=finished]")
    # After a best-of-3 the message gives the games (2–0), not the last game's 11–0.
    assert display.inner_text(".msg-result") == "Match won by Lena 2–0"
    display.screenshot(path=str(artifacts_dir / "display-match-won.png"))


def test_the_display_serve_indicator_follows_the_service(stack: Any, open_page: Any) -> None:
    scorer = stack.scorer("alpha")
    start = {"cmd": "start", "game_type": "single", "player1": "Lena", "player2": "Rob"}
    assert scorer.send(dict(start, first_server=2))["ok"]
    display = open_page(stack.url("/clubs/alpha/display"), **TV)
    display.wait_for_selector("#board[data-state=in_progress]")
    # Rob (side 2, at the right end) serves first; after two points Lena serves.
    assert display.get_attribute(".end-right .serve", "class") == "serve serving"
    assert display.get_attribute(".end-left .serve", "class") == "serve"
    for side in (1, 2):
        assert scorer.send({"cmd": "point", "side": side})["ok"]
    display.wait_for_function(
        "() => document.querySelector('.end-left .serve').classList.contains('serving')"
    )
    assert display.get_attribute(".end-right .serve", "class") == "serve"


def test_the_overlay_draws_a_score_bug_on_a_transparent_page(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    scorer = stack.scorer("alpha")
    start = {"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob"}
    assert scorer.send(start)["ok"]
    assert scorer.send({"cmd": "point", "side": 2})["ok"]
    query = "?bg=%23000000cc&fg=white&pos=top-left&scale=1"
    overlay = open_page(stack.url(f"/clubs/alpha/overlay{query}"), width=640, height=360)
    overlay.wait_for_selector("#bug", state="visible")
    overlay.wait_for_function("() => document.querySelector('.bug-score').textContent === '0'")
    path = artifacts_dir / "overlay.png"
    image = Png(overlay.screenshot(path=str(path), omit_background=True))
    assert image.pixel(image.width - 3, image.height - 3)[3] == 0, "the page is not transparent"
    assert image.pixel(2, 2)[3] == 0
    box = overlay.locator("#bug").bounding_box()
    inside = image.pixel(int(box["x"]) + 4, int(box["y"] + box["height"] / 2))
    assert abs(inside[3] - 0xCC) <= 2 and inside[:3] == (0, 0, 0), inside  # bg=#000000cc
    assert box["x"] < 40 and box["y"] < 40, box  # top-left

    # Position and scale come from the URL.
    overlay = open_page(
        stack.url("/clubs/alpha/overlay?pos=bottom-right&scale=2"), width=640, height=360
    )
    overlay.wait_for_selector("#bug", state="visible")
    big = overlay.locator("#bug").bounding_box()
    assert big["x"] + big["width"] > 600 and big["y"] + big["height"] > 320, big
    assert big["width"] > 1.8 * box["width"], (big, box)


# Headless Chromium grants no wake lock, so the page gets a stand-in that counts requests.
FAKE_WAKE_LOCK_JS = """
(() => {
  window.__wakeLocks = 0;
  Object.defineProperty(navigator, 'wakeLock', { value: {
    request: async (kind) => { window.__wakeLocks += 1; return { type: kind, release: async () => {} }; },
  } });
})();
"""


def test_the_display_asks_to_keep_the_screen_awake_and_asks_again_when_visible_again(
    stack: Any, open_page: Any, chromium: Any
) -> None:
    context = chromium.new_context(viewport=TV)
    try:
        page = context.new_page()
        page.add_init_script(FAKE_WAKE_LOCK_JS)
        page.goto(stack.url("/clubs/alpha/display"))
        page.wait_for_function("() => window.__wakeLocks === 1")
        # The browser releases the lock when the tab is hidden; coming back takes it again.
        page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
        page.wait_for_function("() => window.__wakeLocks === 2")
    finally:
        context.close()
