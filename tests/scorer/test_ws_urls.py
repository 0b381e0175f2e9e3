"""The one rule that turns the settings into the pages' broker URLs (scorer/ws_urls.py)."""

from __future__ import annotations

import pytest

from scorer.config import Settings
from scorer.ws_urls import page_ws_urls, public_ws_urls, ws_connect_sources, ws_origin


@pytest.mark.parametrize(
    ("scheme", "host", "expected"),
    [
        ("http", "127.0.0.1", ["ws://127.0.0.1:19001/mqtt"]),
        ("https", "club.example.org", ["wss://club.example.org:19001/mqtt"]),
        ("http", "::1", ["ws://[::1]:19001/mqtt"]),
        ("http", "[fe80::1]", ["ws://[fe80::1]:19001/mqtt"]),
        ("http", "my_pc.local", ["ws://my_pc.local:19001/mqtt"]),
        ("http", 'evil"><script>', []),
        ("http", "", []),
    ],
)
def test_without_a_public_url_a_page_uses_its_own_host_on_ws_port(scheme, host, expected):
    assert page_ws_urls(Settings(ws_port=19001), scheme, host) == expected


def test_a_public_url_or_a_clusters_nodes_win_whatever_the_page_host():
    nodes = "wss://n1.example.org/mqtt, wss://n2.example.org:8443/mqtt,ws://10.0.0.3:9001/mqtt"
    settings = Settings(public_ws_url=nodes)
    expected = ["wss://n1.example.org/mqtt", "wss://n2.example.org:8443/mqtt",
                "ws://10.0.0.3:9001/mqtt"]  # fmt: skip
    assert public_ws_urls(settings) == expected
    assert page_ws_urls(settings, "http", "anything") == expected
    assert ws_connect_sources(settings, "x") == (
        "wss://n1.example.org wss://n2.example.org:8443 ws://10.0.0.3:9001"
    )
    assert ws_origin(settings, "x") == "wss://n1.example.org"


def test_the_csp_sources_name_the_page_host_or_fall_back_to_any_websocket():
    settings = Settings(ws_port=9001)
    assert ws_connect_sources(settings, "10.0.0.5") == "ws://10.0.0.5:9001 wss://10.0.0.5:9001"
    assert ws_connect_sources(settings, "::1") == "ws://[::1]:9001 wss://[::1]:9001"
    assert ws_connect_sources(settings, "my_pc.local") == "ws: wss:"
    assert ws_origin(settings, "10.0.0.5") == "ws://10.0.0.5:9001"
