"""The frame check the page tests use (pagekit.frame_problems): a spectator may skip frames
only across a reconnect, and never shows a frame that was not made or goes back."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from tests.viewer.pagekit import frame_problems

FRAMES = ["0", "1", "2", "3"]


def shown(*texts: str) -> list[tuple[float, str]]:
    """``texts`` shown 100 ms apart, from 100 ms."""
    return [(100.0 * (i + 1), text) for i, text in enumerate(texts)]


def test_every_frame_in_order_passes() -> None:
    assert frame_problems(shown("0", "1", "2", "3"), FRAMES, []) == []


def test_repeats_on_either_side_count_once() -> None:
    assert frame_problems(shown("0", "0", "1", "2", "2", "3"), ["0", "1", "1", "2", "3"], []) == []


def test_a_skipped_frame_without_a_reconnect_fails() -> None:
    problems = frame_problems(shown("0", "1", "3"), FRAMES, [])
    assert len(problems) == 1 and "['2'] skipped" in problems[0], problems


def test_a_skipped_frame_across_a_reconnect_passes() -> None:
    assert frame_problems(shown("0", "1", "3"), FRAMES, [250.0]) == []


def test_a_reconnect_elsewhere_does_not_excuse_a_skip() -> None:
    # Offline before "1" was shown, or after "3": the skip between them is unexplained.
    for offline in ([150.0], [350.0], [200.0], [300.0]):
        assert frame_problems(shown("0", "1", "3"), FRAMES, offline), offline


def test_a_skip_before_the_first_text_needs_a_reconnect_too() -> None:
    assert frame_problems(shown("2", "3"), FRAMES, [])
    assert frame_problems(shown("2", "3"), FRAMES, [50.0]) == []


def test_a_text_that_was_never_a_frame_fails_even_across_a_reconnect() -> None:
    problems = frame_problems(shown("0", "1", "7", "3"), FRAMES, [250.0])
    assert any("'7'" in p and "not a later frame" in p for p in problems), problems


def test_going_back_fails_even_across_a_reconnect() -> None:
    problems = frame_problems(shown("0", "2", "1", "3"), FRAMES, [150.0, 250.0])
    assert any("'1'" in p and "not a later frame" in p for p in problems), problems


def test_a_frame_that_comes_again_later_may_be_shown_again() -> None:
    # -1 and undo: side 1 goes 0, 1, 0, 1; each text is a later frame.
    assert frame_problems(shown("0", "1", "0", "1"), ["0", "1", "0", "1"], []) == []
    # Skipping the dip back to 0 is a skip like any other.
    assert frame_problems(shown("0", "1"), ["0", "1", "0", "1"], [])
    assert frame_problems(shown("0", "1", "1"), ["0", "1", "0", "1"], [])
    # Across a reconnect the page may land on the last 1 straight from the first 0 or 1.
    assert frame_problems(shown("0", "1"), ["0", "1", "0", "1"], [150.0]) == []
    assert frame_problems(shown("0", "1"), ["0", "1", "0", "1"], [250.0]) == []
    # Landing on the same text writes nothing; the next frame then follows as usual.
    assert frame_problems(shown("0", "1", "2"), ["0", "1", "0", "1", "2"], [250.0]) == []
    assert frame_problems(shown("0", "1", "2"), ["0", "1", "0", "1", "2"], [])


def test_a_page_that_stopped_short_of_the_last_frame_fails() -> None:
    problems = frame_problems(shown("0", "1", "2"), FRAMES, [])
    assert len(problems) == 1 and "do not end on the last frame '3'" in problems[0], problems
    assert frame_problems([], FRAMES, [])
    assert frame_problems(shown("0", "1", "2"), FRAMES, [50.0, 250.0])


def simulated_page(
    frames: list[str], offline_after: set[int]
) -> tuple[list[tuple[float, str]], list[float]]:
    """What a page shows of ``frames`` (one per 100 ms) when it goes offline right after the
    frames in ``offline_after`` and is back before the next frame but one: it renders every
    frame it receives, only changes are written, and a reconnect brings the newest frame."""
    shown: list[tuple[float, str]] = []
    offline: list[float] = []
    away_until = -1
    for i, frame in enumerate(frames):
        t = 100.0 * (i + 1)
        if i <= away_until:
            continue  # published while the page was offline: never received
        if i in offline_after:
            offline.append(t + 10)
            away_until = i + 2
            latest = frames[min(i + 3, len(frames) - 1)]  # the retained snapshot on reconnect
            for when, text in ((t, frame), (t + 300 - 5, latest)):
                if not shown or shown[-1][1] != text:
                    shown.append((when, text))
            continue
        if not shown or shown[-1][1] != frame:
            shown.append((t, frame))
    return shown, offline


def score_frames(changes: list[int]) -> list[str]:
    """Side 1's score after each change (+1 or -1, never below 0), from 0."""
    frames, score = ["0"], 0
    for change in changes:
        score = max(0, score + change)
        frames.append(str(score))
    return frames


@given(
    changes=st.lists(st.sampled_from([1, 1, 1, -1]), min_size=1, max_size=30),
    data=st.data(),
)
def test_a_page_that_received_every_frame_but_across_reconnects_always_passes(
    changes: list[int], data: st.DataObject
) -> None:
    frames = score_frames(changes)
    away = data.draw(st.sets(st.integers(0, len(frames) - 1), max_size=3))
    shown_, offline = simulated_page(frames, away)
    assert frame_problems(shown_, frames, offline) == [], (frames, shown_, offline)


@given(
    changes=st.lists(st.sampled_from([1, 1, 1, -1]), min_size=2, max_size=30),
    data=st.data(),
)
def test_a_page_that_missed_a_frame_while_connected_always_fails(
    changes: list[int], data: st.DataObject
) -> None:
    frames = score_frames(changes)
    # A frame whose loss changes what a page shows: not a repeat of a neighbour.
    lossy = [
        i
        for i in range(1, len(frames))
        if frames[i] != frames[i - 1] and (i + 1 == len(frames) or frames[i] != frames[i + 1])
    ]
    assume(lossy)
    lost = data.draw(st.sampled_from(lossy))
    received = frames[:lost] + frames[lost + 1 :]
    shown_, offline = simulated_page(received, set())
    assert frame_problems(shown_, frames, offline), (frames, lost, shown_)
