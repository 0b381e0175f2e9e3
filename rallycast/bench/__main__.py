"""``python -m rallycast.bench serve-stock --data-dir DIR [--bind --mqtt-port --ws-port]``:
amqtt's own Broker with OUR config (auth + ACL + retained store), the ``stock`` broker of
``rallycast bench broker --brokers stock`` (what the hardening changes, measured). It prints
``listening URL`` lines as ``rallycast broker`` does. Other words: ``rallycast bench ...``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

STOCK_FLAGS = ("bind", "mqtt_port", "ws_port", "data_dir")


async def _serve_stock(args: argparse.Namespace) -> None:
    """amqtt's own Broker with OUR config (auth + ACL + retained store): what the hardening
    changes, measured."""
    from amqtt.broker import Broker

    from broker.server import TCP_LISTENER, WS_LISTENER, broker_config, listening_port
    from scorer.config import load_settings, setting_overrides

    settings = load_settings(env={}, overrides=setting_overrides(args, *STOCK_FLAGS))
    broker = Broker(broker_config(settings))
    await broker.start()
    print(f"listening mqtt://{settings.bind}:{listening_port(broker, TCP_LISTENER)}", flush=True)
    print(f"listening ws://{settings.bind}:{listening_port(broker, WS_LISTENER)}/mqtt", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(broker.shutdown(), 5)


def serve_stock(argv: list[str]) -> int:
    from scorer.logs import setup_logging

    setup_logging("WARNING")
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    from scorer.config import add_setting_flags

    stock = argparse.ArgumentParser(prog="python -m rallycast.bench serve-stock")
    add_setting_flags(stock, *STOCK_FLAGS)
    stock.set_defaults(bind="127.0.0.1", mqtt_port=0, ws_port=0)  # loopback, any free ports
    args = stock.parse_args(argv)
    if args.data_dir is None:
        stock.error("--data-dir is required")
    asyncio.run(_serve_stock(args))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-stock"]:
        sys.exit(serve_stock(sys.argv[2:]))
    from rallycast.cli import main as rallycast

    sys.exit(rallycast(["bench", *sys.argv[1:]]))
