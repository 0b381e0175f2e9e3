"""`bench_pages` runs end to end on its own embedded stack (a few presses, not the full 200)."""

from __future__ import annotations

import pytest

from rallycast.bench.pages import CHROMIUM, bench_pages, percentile
from tests.conftest import require_program

pytestmark = pytest.mark.browser


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 201)]
    assert percentile(values, 0.5) == 100.0
    assert percentile(values, 0.99) == 198.0
    assert percentile([7.0], 0.99) == 7.0


def test_bench_pages_measures_presses_and_first_scores_on_an_embedded_stack() -> None:
    require_program(CHROMIUM)
    result = bench_pages(presses=6, navigations=3)
    press = result["press_to_screen"]
    assert press["n"] == 6
    assert 0 < press["p50_ms"] <= press["p99_ms"] <= press["max_ms"] < 5000
    assert 0 < result["first_score_first_visit_ms"] < 10000
    assert result["first_score_new_tab"]["n"] == result["first_score_same_tab"]["n"] == 3
