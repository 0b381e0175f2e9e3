"""`rallycast bench broker` at a tiny size: it runs both brokers and prints every figure.
No assertion on speed (the machine is shared); only that each figure is there and is a number."""

from __future__ import annotations

import math

import pytest

from rallycast.cli import main as rallycast
from tests.conftest import require_program

COLUMNS = [
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "CPU us/delivery",
    "RSS MB",
    "RSS KB per idle client",
]


@pytest.mark.mosquitto
@pytest.mark.timeout(120)
def test_bench_broker_prints_every_figure_for_both_brokers(capsys):
    require_program("mosquitto")
    require_program("mosquitto_passwd")
    status = rallycast(
        ["bench", "broker", "--subscribers", "5", "--rate", "20", "--seconds", "1"]
        + ["--burst", "20", "--drain-timeout", "10"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.startswith("machine: "), out
    header = next(line for line in out.splitlines() if line.startswith("broker "))
    for column in COLUMNS:
        assert column in header, f"no {column!r} column in {header!r}"

    table = out[out.index(header) :].splitlines()[1:]
    rows = {
        (cells[0], cells[2]): cells
        for cells in (line.split() for line in table)
        if cells and cells[0] in ("embedded", "mosquitto")
    }
    assert set(rows) == {
        ("embedded", "paced"),
        ("embedded", "burst"),
        ("mosquitto", "paced"),
        ("mosquitto", "burst"),
    }, out
    for (broker, phase), cells in rows.items():
        assert cells[1] == "5", cells
        expected = 20 * 5
        assert cells[4] == str(expected), f"{broker} {phase}: delivered {cells[4]} of {expected}"
        numbers = [float(cell) for cell in cells[5:]]
        assert len(numbers) == 8, cells
        assert all(math.isfinite(n) and n >= 0 for n in numbers), cells

    for phase in ("paced", "burst"):
        ratio = next(
            line
            for line in out.splitlines()
            if line.startswith(f"ratio embedded/mosquitto, 5 subs, {phase}")
        )
        for figure in ("CPU per delivery", "p99", "deliveries/s", "RSS per idle client"):
            assert figure in ratio, ratio
