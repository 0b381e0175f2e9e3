"""The stream overlay's look from its URL (docs/pages.md): colours, corner, scale. Colours are
limited to forms that cannot carry anything but a colour."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

COLOUR_RE = re.compile(r"^(#[0-9a-fA-F]{3,4}|#[0-9a-fA-F]{6}|#[0-9a-fA-F]{8}|[a-zA-Z]{3,20})$")
OVERLAY_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "top", "bottom")
OVERLAY_DEFAULTS = {"bg": "#000000b3", "fg": "white", "accent": "#ffcc00", "pos": "top-left"}
OVERLAY_SCALE = (0.25, 5.0)


def overlay_options(query: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The overlay's look from its URL, and the list of parameters that are not valid."""
    options: dict[str, Any] = dict(OVERLAY_DEFAULTS, scale=1.0)
    problems: list[str] = []
    for name in ("bg", "fg", "accent"):
        if name in query:
            if COLOUR_RE.fullmatch(query[name]):
                options[name] = query[name]
            else:
                # A browser takes a typed "#" as the start of the fragment: bg= arrives empty.
                problems.append(
                    f"{name}: a colour like #000000cc, #fff or white; in a URL write # as %23"
                    f" ({name}=%23000000cc)"
                )
    if "pos" in query:
        if query["pos"] in OVERLAY_POSITIONS:
            options["pos"] = query["pos"]
        else:
            problems.append(f"pos: one of {', '.join(OVERLAY_POSITIONS)}")
    if "scale" in query:
        try:
            scale = float(query["scale"])
            if not OVERLAY_SCALE[0] <= scale <= OVERLAY_SCALE[1]:
                raise ValueError
            options["scale"] = scale
        except ValueError:
            problems.append(f"scale: a number from {OVERLAY_SCALE[0]} to {OVERLAY_SCALE[1]}")
    return options, problems
