"""The security and cache headers of every HTML page: a strict Content-Security-Policy (no
inline script or style; the broker's WebSocket the only other place a page may connect to,
from scorer/ws_urls.py), no sniffing, no referrer to other sites, revalidate every time."""

from __future__ import annotations

from starlette.requests import Request

from scorer.config import Settings
from scorer.ws_urls import ws_connect_sources


def security_headers(settings: Settings, request: Request, frame_ancestors: str) -> dict[str, str]:
    """The headers of a page; ``frame_ancestors`` is the CSP source list of who may frame it
    (``'none'``, ``'self'``, ``*`` or origins)."""
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",  # no inline script: the page's data travels as JSON
            # mqtt.js runs its keepalive timers in a blob: worker, so a background tab's
            # timers are not throttled into a disconnect.
            "worker-src blob:",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {ws_connect_sources(settings, request.url.hostname or '')}",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {frame_ancestors}",
        )
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-cache",
        "Vary": "Accept-Language, Cookie",
    }
