"""The phone scoring page in real Chromium (360 px wide, touch) against the real broker and
scorer service: sign in, start a match, score it while two spectators watch, refusals and a
wrong password explained."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.viewer.pagekit import assert_frames_shown, assert_minute_left

pytestmark = pytest.mark.browser

PHONE = {"width": 360, "height": 740, "mobile": True}


def sign_in(page: Any, password: str) -> None:
    page.fill("#password", password)
    page.click("#signin-form button[type=submit]")


def pad(page: Any, side: int, kind: str = "plus") -> str:
    """The selector of side ``side``'s button: the pads stand where the players stand, so
    which pad is side 1 depends on the ends (the page says in #scorer[data-left])."""
    left = int(page.get_attribute("#scorer", "data-left") or 1)
    end = "left" if left == side else "right"
    return f"button[data-cmd='{kind}'][data-end='{end}']"


def test_a_scorer_page_and_two_spectators_play_a_full_friendly_game(
    any_stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    stack = any_stack  # on the embedded broker, then on mosquitto
    spectators = [open_page(stack.url("/clubs/alpha")) for _ in range(2)]
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    phone.screenshot(path=str(artifacts_dir / "score-sign-in.png"))
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_selector("#start-form", state="visible")
    phone.fill("input[name=p1a]", "Иван Иванов")
    phone.fill("input[name=p2a]", "Пётр Петров")
    phone.select_option("select[name=best_of]", "1")
    phone.screenshot(path=str(artifacts_dir / "score-start-form.png"))
    phone.click("#start-form button[type=submit]")
    phone.wait_for_selector("#match", state="visible")
    for page in spectators:
        page.wait_for_selector("#liveGameSection", state="visible")

    # Ivan wins 11-6: every press waits for the service's "OK" before the next one.
    presses = [1, 2, 1, 1, 2, 2, 1, 1, 2, 1, 1, 2, 1, 2, 1, 1, 1]
    for number, side in enumerate(presses):
        if number == 8:
            phone.screenshot(path=str(artifacts_dir / "score-mid-match.png"))
        phone.evaluate("() => { document.getElementById('reply').textContent = ''; }")
        phone.tap(pad(phone, side))
        phone.wait_for_function("() => document.getElementById('reply').textContent === 'OK'")
    assert presses.count(1) == 11 and presses.count(2) == 6

    expected1 = ["0"] + [str(presses[: i + 1].count(1)) for i in range(len(presses))]
    expected2 = ["0"] + [str(presses[: i + 1].count(2)) for i in range(len(presses))]
    for page in spectators:
        scope = "liveGameSection"
        page.wait_for_function(
            "() => document.querySelector('[data-field=status]').textContent.includes('Иван Иванов')"
        )
        assert_frames_shown(page, "score", "1", scope, expected1)
        assert_frames_shown(page, "score", "2", scope, expected2)
    assert spectators[0].inner_text("#liveGameSection [data-field=status]") == (
        "Match won by Иван Иванов"
    )
    # The match is over: the phone shows the result (never straight to the start form), and
    # the spectators' section goes away.
    phone.wait_for_selector("#result", state="visible")
    assert phone.inner_text("#result .result-head") == "Match won by Иван Иванов"
    assert phone.locator("#start-form").is_hidden()
    for page in spectators:
        page.wait_for_selector("#liveGameSection", state="hidden", timeout=6000)
    snapshot = stack.service.matches["alpha"].match.snapshot()
    assert snapshot["status"] == "finished"
    assert snapshot["game_data"]["winner"] == "Иван Иванов"


def test_the_scorer_page_shows_why_a_command_was_refused_and_stays_signed_in_on_reload(
    stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    scorer = stack.scorer("alpha")
    assert scorer.send({"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob"})[
        "ok"
    ]
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_selector("#match", state="visible")
    phone.tap(pad(phone, 2, "minus"))  # -1 at 0 is refused by the rules
    phone.wait_for_function("() => document.getElementById('reply').dataset.kind === 'refused'")
    reason = phone.inner_text("#reply")
    assert reason.startswith("Refused: ") and len(reason) > len("Refused: ") + 3, reason
    phone.screenshot(path=str(artifacts_dir / "score-refused.png"))
    assert stack.service.matches["alpha"].rev == 1

    # The device token stays on the phone (never the password): a reload signs in by itself.
    phone.reload()
    phone.wait_for_selector("#match", state="visible")
    phone.tap(pad(phone, 2))
    phone.wait_for_function("() => document.getElementById('reply').textContent === 'OK'")
    assert stack.service.matches["alpha"].match.snapshot()["game_data"]["score2"] == 1


def test_a_wrong_password_says_so_and_nothing_is_stored(
    any_stack: Any, open_page: Any, artifacts_dir: Path
) -> None:
    stack = any_stack  # on the embedded broker, then on mosquitto
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    phone.failures.allowed.append("WebSocket")  # the broker closes the refused connection
    phone.failures.allowed.append("status of 401")  # the sign-in endpoint refuses it
    sign_in(phone, "not-the-password")
    phone.wait_for_function(
        "() => document.getElementById('signin-message').textContent.startsWith('Wrong password')"
    )
    assert phone.locator("#signin-form").is_visible()
    assert phone.evaluate("() => Object.keys(localStorage).length") == 0
    phone.screenshot(path=str(artifacts_dir / "score-wrong-password.png"))
    # Another club's password does not open this club either.
    sign_in(phone, stack.endpoint.users["beta"])
    phone.wait_for_function(
        "() => document.getElementById('signin-message').textContent.startsWith('Wrong password')"
    )


def test_starting_over_a_match_in_progress_needs_the_new_match_button(
    stack: Any, open_page: Any
) -> None:
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_selector("#start-form", state="visible")
    phone.fill("input[name=p1a]", "Ann")
    phone.fill("input[name=p2a]", "Bob")
    phone.click("#start-form button[type=submit]")
    phone.wait_for_selector("#match", state="visible")
    first = stack.service.matches["alpha"].match_id

    phone.click(".tools button[data-cmd=new]")
    phone.wait_for_selector("#force-note", state="visible")
    phone.click("button[data-cmd=back]")  # changed their mind: the match is still there
    phone.wait_for_selector("#match", state="visible")
    phone.click(".tools button[data-cmd=new]")
    phone.wait_for_selector("#force-note", state="visible")
    phone.check("input[name=game_type][value=double]")
    for name, value in (("p1a", "Ann"), ("p1b", "Ada"), ("p2a", "Bob"), ("p2b", "Ben")):
        phone.fill(f"input[name={name}]", value)
    phone.click("#start-form button[type=submit]")
    phone.wait_for_selector("#match", state="visible")
    phone.wait_for_function(
        "() => document.querySelector('[data-field=name][data-side=left]').textContent === 'Ann / Ada'"
    )
    assert stack.service.matches["alpha"].match_id != first


def test_undo_timeout_and_a_two_tap_end_send_their_commands(stack: Any, open_page: Any) -> None:
    scorer = stack.scorer("alpha")
    start = {"cmd": "start", "game_type": "single", "player1": "Ann", "player2": "Bob"}
    assert scorer.send(start)["ok"]
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_selector("#match", state="visible")

    def press(selector: str) -> None:
        phone.evaluate("() => { document.getElementById('reply').textContent = ''; }")
        phone.tap(selector)
        phone.wait_for_function("() => document.getElementById('reply').textContent === 'OK'")

    press(pad(phone, 1))
    press(pad(phone, 1))
    press("button[data-cmd=undo]")
    called = time.monotonic()  # the timeout starts between this and its "OK"
    press(pad(phone, 2, "timeout"))
    answered = time.monotonic()
    snapshot = stack.service.matches["alpha"].match.snapshot()
    assert (snapshot["game_data"]["score1"], snapshot["timeouts_used"]) == (1, [0, 1])
    # The timeout shows with its 1-minute countdown until the next point.
    phone.wait_for_selector("[data-show-if=timeout]", state="visible")
    assert phone.inner_text("#match [data-field=timeout]") == "Timeout – Bob"
    assert_minute_left(phone, "#match [data-clock=timeout]", called, answered)
    # Side 2 has had its timeout: its button is off, side 1's is not.
    assert phone.is_disabled(pad(phone, 2, "timeout"))
    assert phone.is_enabled(pad(phone, 1, "timeout"))

    phone.tap("button[data-cmd=end]")  # one tap only arms it
    assert phone.inner_text("button[data-cmd=end]") == "Tap again to end"
    phone.wait_for_timeout(300)
    assert stack.service.matches["alpha"].match.status == "in_progress"
    phone.tap("button[data-cmd=end]")
    # Abandoned: the result says so; a new match is one explicit tap away.
    phone.wait_for_selector("#result", state="visible")
    assert phone.inner_text("#result .result-head") == "Match abandoned"
    assert stack.service.matches["alpha"].match.status == "abandoned"
    phone.click("#result button[data-cmd=new]")
    phone.wait_for_selector("#start-form", state="visible")
