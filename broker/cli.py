"""``rallycast broker``: run the embedded MQTT broker until Ctrl-C or SIGTERM.

Prints one line per listener, ``listening mqtt://HOST:PORT (...)`` / ``listening
ws://HOST:PORT/mqtt (...)``: the URL this machine reaches it by, with the real port also when
a port is 0 (any free port), then in brackets the interfaces it is bound to. ``python -m broker.cli ...`` is the
same command (the test fixtures and the benchmark run it that way).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys

from scorer.config import (
    Settings,
    add_setting_flags,
    bind_description,
    default_data_dir,
    load_settings,
    setting_overrides,
)
from scorer.datadir_lock import DataDirInUse, lock_data_dir
from scorer.logs import setup_logging

BROKER_FLAGS = ("bind", "mqtt_port", "ws_port", "data_dir")


def configure(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(
        parser, *BROKER_FLAGS, help={"data_dir": "password file and retained store directory"}
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None), overrides=setting_overrides(args, *BROKER_FLAGS)
    )


def add_user_hint(settings: Settings) -> str:
    """The command that adds a user to THIS broker's password file (``--data-dir`` named when
    it is not the default one, which a bare ``rallycast passwd`` writes to)."""
    command = "rallycast passwd add USER"
    if settings.data_dir.expanduser().resolve() != default_data_dir().resolve():
        command += f" --data-dir {shlex.quote(str(settings.data_dir))}"
    return command


async def serve(settings: Settings) -> None:
    from broker.startup import StartFailed, start_broker_plainly

    # One broker per data dir: two would share broker.db (the split layout's scorer on the
    # same machine takes scorer.lock, not this one).
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_data_dir(settings.data_dir, "broker", "rallycast broker")
    except DataDirInUse as exc:
        raise StartFailed(str(exc)) from None
    # Before the start, as `rallycast up`, the scorer and the viewer do: a SIGTERM while the
    # broker starts is then a clean stop after the lines below (it killed the process before
    # they were printed: a test that stopped it at its "listening on" log line lost them).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    running = await start_broker_plainly(settings)
    # `listening URL` first (tests and the benchmark read the URL), then where it binds.
    where = f"from this machine; bound to {bind_description(settings.bind)}"
    print(f"listening {running.mqtt_url} ({where}, port {running.mqtt_port})", flush=True)
    print(f"listening {running.ws_url} ({where}, port {running.ws_port})", flush=True)
    if not settings.password_file.exists():
        print(
            f"note: no users yet ({settings.password_file}); add one with"
            f" `{add_user_hint(settings)}`",
            file=sys.stderr,
        )
    try:
        await stop.wait()
    finally:
        await running.stop()  # bounded: RunningBroker.stop gives up after 2 s


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    setup_logging(settings.log_level)
    from broker.startup import StartFailed

    try:
        asyncio.run(serve(settings))
    except StartFailed as exc:  # e.g. the port is taken
        print(f"rallycast broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rallycast broker: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # `python -m broker.cli ...`: this command without the `rallycast` root package (a floor
    # never imports the floors above it, tests/test_architecture.py).
    from scorer.config import ConfigError

    parser = argparse.ArgumentParser(prog="rallycast broker")
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    configure(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except ConfigError as exc:
        print(f"rallycast broker: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
