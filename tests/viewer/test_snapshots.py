"""The clients' never-back-in-time rule for snapshots (scorer/client.py older_than), the
same as the pages' SnapshotFilter (tests/viewer/test_stale_snapshots.py runs that one)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scorer.client import older_than


def snap(match: str, rev: int, updated: str) -> dict:
    return {"match_id": match, "rev": rev, "updated_at": updated}


def test_a_lower_rev_of_the_same_match_is_old_and_the_same_or_a_higher_one_is_not():
    shown = snap("m1", 5, "2026-11-30T10:00:05.000Z")
    assert older_than(snap("m1", 4, "2026-11-30T10:00:04.000Z"), shown)
    # The same snapshot again (the retained copy after a reconnect) is taken.
    assert not older_than(snap("m1", 5, "2026-11-30T10:00:05.000Z"), shown)
    assert not older_than(snap("m1", 6, "2026-11-30T10:00:06.000Z"), shown)
    assert not older_than(snap("m1", 1, ""), None)


def test_another_match_is_old_only_when_it_was_last_updated_before_the_shown_one():
    shown = snap("m2", 3, "2026-11-30T10:00:05.000Z")
    assert older_than(snap("m1", 40, "2026-11-30T10:00:04.999Z"), shown)
    assert not older_than(snap("m3", 1, "2026-11-30T10:00:05.000Z"), shown)
    assert not older_than(snap("m3", 1, "2026-11-30T10:00:05.001Z"), shown)
    # Without times (an older service) nothing is refused across matches.
    assert not older_than(snap("m1", 40, ""), shown)


@given(
    st.integers(1, 10**6),
    st.integers(1, 10**6),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.booleans(),
)
def test_of_two_snapshots_at_most_one_is_older_than_the_other(rev_a, rev_b, t_a, t_b, same):
    def iso(ms: int) -> str:
        # Fixed-width ISO text, as the engine writes it: text order is time order.
        return f"2026-11-30T00:00:00.{ms:013d}Z"

    a = snap("m", rev_a, iso(t_a))
    b = snap("m" if same else "n", rev_b, iso(t_b))
    assert not (older_than(a, b) and older_than(b, a))
