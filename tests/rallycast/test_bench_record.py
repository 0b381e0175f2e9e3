"""``rallycast bench record`` runs end to end at a small size and prints every figure (the
10,000-match figures are in docs/benchmarks.md; speed is not asserted on a shared machine)."""

from __future__ import annotations

from rallycast.cli import main


def test_record_bench_prints_every_page(capsys) -> None:
    assert main(["bench", "record", "--matches", "60", "--requests", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("60 matches stored in")
    for page in ("match list, page 1", "match list, any page", "match list, by player",
                 "match page", "player page", "club page", "API match list"):  # fmt: skip
        assert page in out


def test_record_bench_refuses_sizes_out_of_bounds(capsys) -> None:
    assert main(["bench", "record", "--matches", "0"]) == 2
