"""Where the pages' browsers find the broker: the settings turned into the MQTT-over-WebSocket
URLs a page connects to, and the origins its Content-Security-Policy allows. One rule, next to
the settings it reads (``public_ws_url``, ``ws_port``); the viewer puts the URLs into each
page's config block and the browser (viewer/static/preconnect.js) uses them as they are.

The rule: ``public_ws_url`` when set (one URL, or a cluster's nodes comma-separated, in that
order); else the page's own host on ``ws_port`` with the path ``/mqtt``, ``wss://`` when the
page came over https (as the browser saw it: uvicorn applies the proxy headers), ``ws://``
otherwise."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from scorer.config import Settings, url_host

# A host name or address as it may stand in a URL (RFC 3986 reg-name without sub-delims, or
# an IPv6 address); anything else in a Host header is not echoed into a page.
URL_HOST_RE = re.compile(r"^[A-Za-z0-9._~%\-]+$|^\[?[0-9A-Fa-f:.]+\]?$")
# Stricter, for the CSP header: a host that cannot end a source expression early.
CSP_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+$|^[0-9A-Fa-f:.]+$")


def public_ws_urls(settings: Settings) -> list[str]:
    """The WebSocket URLs of ``public_ws_url`` (a cluster's nodes, comma-separated); [] when
    the pages use their own host on ws_port."""
    return [url.strip() for url in settings.public_ws_url.split(",") if url.strip()]


def page_ws_urls(settings: Settings, scheme: str, host: str) -> list[str]:
    """The broker URLs for a page served as ``scheme://host/...`` (``scheme`` "http" or
    "https", ``host`` without port, an IPv6 address with or without brackets). [] only when
    ``public_ws_url`` is empty and ``host`` is not a usable URL host (the page then says it
    cannot connect rather than connect somewhere a Host header chose)."""
    urls = public_ws_urls(settings)
    if urls:
        return urls
    if not host or not URL_HOST_RE.fullmatch(host):
        return []
    ws = "wss" if scheme in ("https", "wss") else "ws"
    return [f"{ws}://{url_host(host.strip('[]'))}:{settings.ws_port}/mqtt"]


def ws_connect_sources(settings: Settings, host: str) -> str:
    """The CSP ``connect-src`` sources for the broker's WebSocket: the origins of
    ``public_ws_url``; else the page's host on ws_port (ws and wss); ``ws: wss:`` for a host
    that cannot be written into the header safely."""
    urls = public_ws_urls(settings)
    if urls:
        origins = {}
        for url in urls:
            parts = urlsplit(url)
            origins[f"{parts.scheme}://{parts.netloc}"] = None
        return " ".join(origins)
    if not CSP_HOST_RE.fullmatch(host or ""):
        return "ws: wss:"
    host = url_host(host)
    return f"ws://{host}:{settings.ws_port} wss://{host}:{settings.ws_port}"


def ws_origin(settings: Settings, host: str) -> str:
    """One origin for the words of the embed snippet page (``public_ws_url``'s first, else
    ``ws://<host>:<ws_port>``)."""
    urls = public_ws_urls(settings)
    if urls:
        parts = urlsplit(urls[0])
        return f"{parts.scheme}://{parts.netloc}"
    return f"ws://{url_host(host)}:{settings.ws_port}"
