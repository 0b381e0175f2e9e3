"""Server-side SVG charts for the record pages: no script, prints as drawn, scales to the
phone's width (viewBox + width 100%). Colours are SVG presentation attributes (the pages'
CSP allows no inline style). Pure: numbers in, SVG text out; every number comes from
scorer/stats.py (pages never compute scores)."""

from __future__ import annotations

from html import escape
from typing import Any

from markupsafe import Markup

SIDE_COLOURS = {1: "#1f6feb", 2: "#d9480f"}
PLOT_WIDTH = 340  # user units for the points, whatever their number (reads on a phone)
HEIGHT_PER_POINT = 10  # user units per point of lead
PAD_LEFT, PAD_RIGHT, PAD_TOP, SERVE_ROW = 30, 8, 14, 22


def lead_chart(game: dict[str, Any], players: list[str], words: dict[str, str]) -> Markup:
    """The lead over one game (``stats["games"][i]``): a step line above the middle while
    side 1 leads, below while side 2 leads; under it one mark per point in the colour of the
    side that served it; dashed lines where a timeout was called (T1/T2) and where the
    expedite system began (E). ``words``: ``{"title", "served", "timeout", "expedite"}``."""
    points = game["points"]
    count = max(len(points), 11)
    step = PLOT_WIDTH / count
    leads = [0] + [point["lead"] for point in points]
    top = max(3, max(leads))
    bottom = max(3, -min(leads))
    width = PAD_LEFT + PLOT_WIDTH + PAD_RIGHT
    zero = PAD_TOP + top * HEIGHT_PER_POINT
    plot_bottom = zero + bottom * HEIGHT_PER_POINT
    height = plot_bottom + SERVE_ROW + 6

    def x(index: int) -> float:
        return round(PAD_LEFT + index * step, 2)

    def y(lead: int) -> float:
        return zero - lead * HEIGHT_PER_POINT

    title = escape(words["title"])
    parts = [
        f'<svg class="lead-chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{title}" xmlns="http://www.w3.org/2000/svg" '
        f'preserveAspectRatio="xMinYMin meet">',
        f"<title>{title}</title>",
        # The middle line (level) and the lead scale.
        f'<line x1="{PAD_LEFT}" y1="{zero}" x2="{x(count)}" y2="{zero}" stroke="currentColor" '
        f'stroke-width="1" opacity="0.6"/>',
    ]
    for lead in range(-bottom, top + 1):
        if lead and (lead % 2 == 0 or lead in (top, -bottom)):
            parts.append(
                f'<text x="{PAD_LEFT - 4}" y="{y(lead) + 3}" font-size="9" text-anchor="end" '
                f'fill="{SIDE_COLOURS[1 if lead > 0 else 2]}">+{abs(lead)}</text>'
            )
    parts.append(
        f'<text x="{PAD_LEFT - 4}" y="{zero + 3}" font-size="9" text-anchor="end" '
        f'fill="currentColor">0</text>'
    )
    # Step line: flat across each rally, a step at each point.
    path = [f"M{x(0)},{y(0)}"]
    for index, lead in enumerate(leads[1:], start=1):
        path.append(f"H{x(index)}V{y(lead)}")
    parts.append(
        f'<path d="{"".join(path)}" fill="none" stroke="currentColor" stroke-width="2" '
        f'stroke-linejoin="round"/>'
    )
    for index, point in enumerate(points, start=1):
        colour = SIDE_COLOURS[point["side"]]
        parts.append(
            f'<circle cx="{x(index)}" cy="{y(point["lead"])}" r="3" fill="{colour}">'
            f"<title>{escape(_point_title(point, players, words))}</title></circle>"
        )
        # Who served this point: a bar in the server's colour under the chart.
        serve = point["server"]
        parts.append(
            f'<rect class="serve-mark" data-server="{serve}" x="{x(index) - step / 2 + 0.5:.2f}" '
            f'y="{plot_bottom + 8}" width="{max(step - 1, 1):.2f}" height="8" fill="{SIDE_COLOURS[serve]}"/>'
        )
    parts.append(
        f'<text x="{PAD_LEFT - 4}" y="{plot_bottom + 16}" font-size="8" text-anchor="end" '
        f'fill="currentColor">{escape(words["served"])}</text>'
    )
    for timeout in game["timeouts"]:
        parts.append(_marker(x(timeout["after"]) + step / 2, PAD_TOP, plot_bottom,
                             f"T{timeout['side']}", SIDE_COLOURS[timeout["side"]],
                             "timeout"))  # fmt: skip
    if game["expedite_from"] is not None:
        at = game["expedite_from"]
        parts.append(_marker(x(at) + (step / 2 if at else 4), PAD_TOP, plot_bottom, "E",
                             "currentColor", "expedite"))  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


def _marker(at: float, top: float, bottom: float, label: str, colour: str, kind: str) -> str:
    return (
        f'<g class="chart-{kind}"><line x1="{at}" y1="{top}" x2="{at}" y2="{bottom}" '
        f'stroke="{colour}" stroke-dasharray="3 3" stroke-width="1.5"/>'
        f'<text x="{at + 2}" y="{top - 3}" font-size="9" fill="{colour}">{label}</text></g>'
    )


def _point_title(point: dict[str, Any], players: list[str], words: dict[str, str]) -> str:
    score = point["score"]
    return f"{score[0]}–{score[1]} · {words['served']}: {point['server_name']}"
