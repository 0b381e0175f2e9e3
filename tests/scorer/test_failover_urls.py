"""A LIST of broker URLs (a cluster's nodes, docs/scale.md "Failover"): parsing, the settings
that take one, and paho moving to the next node (scorer.client.Failover). The end-to-end kill
of a node is tests/viewer/test_failover.py."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scorer.client import (
    BrokerUrlError,
    ConnectFailed,
    Failover,
    ScoreClient,
    connect_and_wait,
    join_urls,
    make_client,
    parse_broker_url,
    stop_loop,
)
from scorer.config import ConfigError, Settings, load_settings
from scorer.service import ScorerService
from tests.brokers import free_port
from tests.scorer.servicekit import service_settings

START = {"cmd": "start", "game_type": "single", "player1": "A", "player2": "B"}


def test_a_comma_separated_list_gives_every_node_in_order_with_one_user():
    address = parse_broker_url(
        "mqtt://svc:pw@10.0.0.1:1883, mqtt://10.0.0.2:1884 ,mqtt://[::1]:1885"
    )
    assert address.nodes == (("10.0.0.1", 1883), ("10.0.0.2", 1884), ("::1", 1885))
    assert (address.user, address.password) == ("svc", "pw")
    assert address.url() == (
        "mqtt://svc:***@10.0.0.1:1883,mqtt://svc:***@10.0.0.2:1884,mqtt://svc:***@[::1]:1885"
    )
    assert parse_broker_url(address.url(with_password=True)) == address
    assert address.node_url(1) == "mqtt://svc:***@10.0.0.2:1884"


def test_a_single_url_has_one_node_and_prints_as_before():
    address = parse_broker_url("ws://example.org:9001/mqtt")
    assert address.nodes == (("example.org", 9001),)
    assert address.url() == "ws://example.org:9001/mqtt"


@pytest.mark.parametrize(
    ("urls", "complaint"),
    [
        ("mqtt://a:1883,", "empty entry"),
        ("mqtt://a:1883,,mqtt://b:1883", "empty entry"),
        ("mqtt://a:1883,ws://b:9001/mqtt", "same scheme and path"),
        ("ws://a:9001/mqtt,ws://b:9001/other", "same scheme and path"),
        ("mqtt://u:p@a:1883,mqtt://v:p@b:1883", "one user and password"),
        ("mqtt://u:p@a:1883,mqtt://u:q@b:1883", "one user and password"),
        ("mqtt://a:1883,http://b", "scheme must be one of"),
    ],
)
def test_a_bad_list_says_what_is_wrong(urls, complaint):
    with pytest.raises(BrokerUrlError, match=complaint):
        parse_broker_url(urls)
    with pytest.raises(ConfigError, match=complaint):
        load_settings(env={}, overrides={"broker_url": urls})


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "10.0.0.7", "n-3.example.org"]), st.integers(1, 65535)),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(["mqtt", "mqtts", "ws", "wss"]),
)
def test_any_list_of_nodes_parses_back_to_the_same_nodes(nodes, scheme):
    path = "/mqtt" if scheme.startswith("ws") else ""
    text = ",".join(f"{scheme}://{host}:{port}{path}" for host, port in nodes)
    address = parse_broker_url(text)
    assert list(address.nodes) == nodes
    assert parse_broker_url(address.url()) == address


def test_url_options_given_once_per_node_join_into_one_list():
    assert join_urls(None) is None
    assert join_urls(["mqtt://a:1", "mqtt://b:2,mqtt://c:3"]) == "mqtt://a:1,mqtt://b:2,mqtt://c:3"


def test_public_ws_url_takes_a_list_and_refuses_a_bad_entry():
    settings = load_settings(
        env={}, overrides={"public_ws_url": "wss://n1.example.org/mqtt,wss://n2.example.org/mqtt"}
    )
    assert settings.public_ws_url.count("wss://") == 2
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        load_settings(env={}, overrides={"public_ws_url": "wss://n1.example.org/mqtt,http://x"})


def test_failover_goes_round_the_nodes_only_after_an_unwanted_disconnect():
    address = parse_broker_url("mqtt://127.0.0.1:1,mqtt://127.0.0.1:2,mqtt://127.0.0.1:3")
    client = make_client(address)
    failover = Failover(client, address)
    failover.install()
    assert client.connect_timeout == 5.0
    visited = []
    for _ in range(4):
        failover.advance()
        visited.append((client.host, client.port))
    assert visited == [("127.0.0.1", 2), ("127.0.0.1", 3), ("127.0.0.1", 1), ("127.0.0.1", 2)]
    # A disconnect we asked for (success code) stays one: no move, no reconnect.
    ok = mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=0)
    client.on_disconnect(client, None, None, ok, None)
    assert failover.index == 1
    lost = mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=128)
    client.on_disconnect(client, None, None, lost, None)
    assert failover.index == 2
    failover.stop()
    client.on_disconnect(client, None, None, lost, None)
    assert failover.index == 2


def test_a_single_node_never_moves():
    address = parse_broker_url("mqtt://127.0.0.1:1883")
    client = make_client(address)
    failover = Failover(client, address)
    failover.advance()
    assert (failover.index, failover.switches) == (0, 0)


def test_connect_tries_each_node_and_names_each_failure(amqtt_broker):
    dead = free_port()
    address = parse_broker_url(
        f"mqtt://alpha:{amqtt_broker.users['alpha']}@127.0.0.1:{dead},"
        f"mqtt://127.0.0.1:{amqtt_broker.mqtt_port}"
    )
    client = make_client(address)
    failover = Failover(client, address)
    try:
        connect_and_wait(client, address, 5, failover)
        assert failover.index == 1 and client.is_connected()
    finally:
        client.disconnect()
        stop_loop(client)
    nowhere = parse_broker_url(f"mqtt://127.0.0.1:{dead},mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed, match="no node of the broker accepted") as failed:
        connect_and_wait(make_client(nowhere), nowhere, 2)
    assert str(dead) in str(failed.value)


def test_the_service_and_a_score_client_skip_a_dead_first_node(amqtt_broker, tmp_path):
    dead = f"mqtt://127.0.0.1:{free_port()}"
    live = f"mqtt://127.0.0.1:{amqtt_broker.mqtt_port}"
    settings = service_settings(amqtt_broker, tmp_path / "app").with_overrides(
        broker_url=f"{dead},{live}"
    )
    service = ScorerService(settings, password=amqtt_broker.users[amqtt_broker.service_user])
    service.start()
    try:
        assert service.wait_until_connected(15), "the service did not reach the second node"
        assert service._failover is not None and service._failover.index == 1
        with ScoreClient(
            f"{dead},{live}", "alpha", password=amqtt_broker.users["alpha"], timeout=5
        ) as scorer:
            reply = scorer.send(START)
            assert reply["ok"] and scorer.failover.index == 1
    finally:
        service.stop()


def test_settings_broker_url_keeps_a_list():
    settings = Settings(broker_url="mqtt://a:1,mqtt://b:2")
    assert parse_broker_url(settings.broker_url).nodes == (("a", 1), ("b", 2))
