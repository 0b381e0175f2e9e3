"""Broker fixtures: a real broker per test on 127.0.0.1, a temp data dir, and ports from
``free_ports()`` (claimed, below the ephemeral range) that it keeps across restarts.

Fixtures (all function-scoped; each yields a :class:`BrokerEndpoint`):

- ``amqtt_broker``: our embedded broker (``broker.server.start_broker``, auth + ACL +
  retained store) in a background thread with its own event loop. Starts in ~50 ms. Usable
  from sync tests (paho) and async tests alike (it does not run on the test's loop).
- ``amqtt_broker_process``: the same broker as a subprocess (``python -m broker.cli``), for
  tests that ``kill()`` it (SIGKILL) and restart it.
- ``mosquitto_broker``: a real ``mosquitto`` run from OUR ``mosquitto.conf`` + ``mosquitto.acl``
  (only ports, paths and the run-as user rewritten). Skipped locally / failed under CI when the
  binary is missing (``require_program``).
- ``nats_broker`` (tests/cluster.py): a 3-node NATS cluster; clients go to the nodes in turn.
- ``any_broker``: parametrized over ``amqtt_broker`` and ``mosquitto_broker`` (test ids
  ``[amqtt]`` / ``[mosquitto]``): write a test once, it runs on both. The broker protocol
  suite adds ``nats_broker`` (``[nats]``); ``RALLYCAST_TEST_BROKERS=amqtt,mosquitto,nats``
  adds it to every suite.
- ``any_broker_process``: parametrized over ``amqtt_broker_process`` and ``mosquitto_broker``
  (both can be killed with SIGKILL), and ``nats_broker`` as above.

Every broker has the same users (``endpoint.users``: user -> clear password, test only):
the service user ``rallycast-service`` (``endpoint.service_user``) and the club users
``alpha`` and ``beta`` (clubs ``alpha`` and ``beta``); anonymous = spectator.

``BrokerEndpoint``::

    endpoint.kind                      # "amqtt" | "mosquitto" | "nats"
    endpoint.host, .mqtt_port, .ws_port, .data_dir, .users, .service_user
    endpoint.url(user=None, transport="tcp")   # "mqtt://alpha:pw@127.0.0.1:PORT", "ws://.../mqtt"
    endpoint.settings(**overrides)     # scorer.config.Settings pointing at this broker (no creds)
    c = endpoint.client("alpha", transport="websockets")  # connected paho client, loop started,
                                       # disconnected at teardown; raises ConnectionRefusedError
    endpoint.connack("alpha", "wrong") # CONNACK reason code of one connection attempt (0 = ok)
    rec = endpoint.recorder(["clubs/alpha/game"], user=None)   # a subscriber that records
    rec.granted                        # SUBACK codes per filter (128 = refused; mosquitto
                                       # grants every subscribe and filters on delivery)
    rec.wait_for(lambda m: m.topic == ..., timeout=5) -> Received   # or AssertionError
    rec.assert_nothing(timeout=1.0)    # nothing at all arrives within the bounded wait
    endpoint.restart()                 # SYNC: graceful stop + start on the same ports/data dir
    endpoint.restart(kill=True)        # SIGKILL + start (process fixtures only)
    endpoint.kill()                    # SIGKILL, no restart (process fixtures only)
    await endpoint.arestart(...)       # the same from an async test (runs in a thread)

Clients created through ``endpoint.client``/``recorder`` are tracked and closed at teardown.
``endpoint.client(..., client_id="x", clean_session=False, on_message=cb)`` makes a persistent
session (``on_message`` is set before connecting, so queued messages are not missed).

A second or specially configured mosquitto (e.g. a bridge): in a fixture of your own,
``yield from serve_mosquitto(tmp_path / "other", broker_test_users, extra_config_text)``.

The tools behind these fixtures live in ``tests/support/`` (clients, endpoints, runners); the
subprocess launcher under them is ``rallycast/bench/launch.py``, shared with the benchmarks.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rallycast.bench.launch import REPO, SERVICE_USER, free_port
from tests.support.clients import Received, Recorder
from tests.support.endpoints import (
    CLUB_USERS,
    FAST_HASHER,
    BrokerEndpoint,
    TestUsers,
    make_test_users,
    write_argon2_users,
)
from tests.support.runners import AmqttProcess, MosquittoProcess, ThreadedAmqtt

# Names tests imported from here before tests/support/ existed (kept so they still work; new
# code imports them from tests/support or rallycast/bench/launch.py).
__all__ = [
    "FAST_HASHER",
    "REPO",
    "SERVICE_USER",
    "BrokerEndpoint",
    "Received",
    "Recorder",
    "TestUsers",
    "free_port",
    "serve_mosquitto",
]


@pytest.fixture(scope="session")
def broker_test_users(tmp_path_factory: pytest.TempPathFactory) -> TestUsers:
    # "pw" first: a token_urlsafe may start with "-", which a command line (`rallycast score
    # --password -x...`) takes for an option: 1 in 64 per password, and each xdist worker
    # draws its own.
    passwords = {user: "pw" + secrets.token_urlsafe(12) for user in (SERVICE_USER, *CLUB_USERS)}
    mosquitto_dir = None
    if shutil.which("mosquitto_passwd"):
        mosquitto_dir = tmp_path_factory.mktemp("mosquitto-users")
    return make_test_users(passwords, mosquitto_dir)


def endpoint_for(
    runner: Any, users: TestUsers, endpoint_type: type[BrokerEndpoint] = BrokerEndpoint
) -> BrokerEndpoint:
    """An ``endpoint_type`` (tests/cluster.py: ClusterEndpoint) on ``runner`` at 127.0.0.1,
    whose clients log in as ``users``."""
    return endpoint_type(
        kind=runner.kind,
        host="127.0.0.1",
        data_dir=runner.data_dir,
        users=dict(users.passwords),
        service_user=SERVICE_USER,
        _runner=runner,
    )


def _serve(runner: Any, users: TestUsers) -> Iterator[BrokerEndpoint]:
    runner.start()
    endpoint = endpoint_for(runner, users)
    try:
        yield endpoint
    finally:
        endpoint.close_clients()
        runner.stop()


@pytest.fixture
def amqtt_broker(tmp_path: Path, broker_test_users: TestUsers) -> Iterator[BrokerEndpoint]:
    data_dir = tmp_path / "broker"
    write_argon2_users(data_dir, broker_test_users)
    yield from _serve(ThreadedAmqtt(data_dir), broker_test_users)


@pytest.fixture
def amqtt_broker_process(tmp_path: Path, broker_test_users: TestUsers) -> Iterator[BrokerEndpoint]:
    data_dir = tmp_path / "broker"
    write_argon2_users(data_dir, broker_test_users)
    yield from _serve(AmqttProcess(data_dir), broker_test_users)


def mosquitto_runner(data_dir: Path, users: TestUsers, extra_config: str = "") -> MosquittoProcess:
    """A MosquittoProcess (not started) with the test users; for tests that need a second
    mosquitto or extra configuration (e.g. a bridge). Start with ``serve_mosquitto``."""
    from tests.conftest import require_program

    require_program("mosquitto")
    require_program("mosquitto_passwd")
    assert users.mosquitto_file is not None
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir / "mosquitto.passwd"
    shutil.copyfile(users.mosquitto_file, password_file)
    password_file.chmod(0o600)
    return MosquittoProcess(data_dir, password_file, extra_config)


def serve_mosquitto(
    data_dir: Path, users: TestUsers, extra_config: str = ""
) -> Iterator[BrokerEndpoint]:
    """Generator for a fixture of your own: ``yield from serve_mosquitto(dir, users, conf)``."""
    yield from _serve(mosquitto_runner(data_dir, users, extra_config), users)


@pytest.fixture
def mosquitto_broker(tmp_path: Path, broker_test_users: TestUsers) -> Iterator[BrokerEndpoint]:
    yield from serve_mosquitto(tmp_path / "broker", broker_test_users)


# The brokers `any_broker` runs on. "nats" is the 3-node NATS cluster of tests/cluster.py
# (nats_broker): the broker protocol suite (tests/broker/test_behaviour.py) always includes it;
# RALLYCAST_TEST_BROKERS=amqtt,mosquitto,nats runs every other suite on it too.
ANY_BROKERS = os.environ.get("RALLYCAST_TEST_BROKERS", "amqtt,mosquitto").split(",")
ALL_BROKERS = ["amqtt", "mosquitto", "nats"]


def broker_fixture(request: pytest.FixtureRequest) -> BrokerEndpoint:
    return request.getfixturevalue(f"{request.param}_broker")


def broker_process_fixture(request: pytest.FixtureRequest) -> BrokerEndpoint:
    name = "amqtt_broker_process" if request.param == "amqtt" else f"{request.param}_broker"
    return request.getfixturevalue(name)


any_broker = pytest.fixture(params=ANY_BROKERS, name="any_broker")(broker_fixture)
any_broker_process = pytest.fixture(params=ANY_BROKERS, name="any_broker_process")(
    broker_process_fixture
)
