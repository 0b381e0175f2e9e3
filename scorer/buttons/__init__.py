"""``rallycast buttons``: turn the messages of off-the-shelf MQTT buttons (Tasmota, ESPHome,
Zigbee2MQTT, Shelly Gen1/Gen2) and home-made boards into score commands for a club.

Layers, each usable alone: ``decoders`` (device message -> presses, pure), ``mapping`` (presses
-> commands with dedup and debounce, pure), ``boards`` (the TOML configuration), ``runner``
(the MQTT side). Wiring each device: docs/buttons.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from scorer.buttons.boards import ButtonsConfig, load_buttons_config, parse_board, parse_boards
from scorer.buttons.decoders import BadPayload, DeviceMessage, Press
from scorer.buttons.mapping import Action, Board, BoardSpec, Verdict, parse_action
from scorer.buttons.runner import ButtonRunner
from scorer.client import add_url_flag, join_urls, parse_broker_url

__all__ = [
    "Action",
    "BadPayload",
    "Board",
    "BoardSpec",
    "ButtonRunner",
    "ButtonsConfig",
    "DeviceMessage",
    "Press",
    "Verdict",
    "configure",
    "load_buttons_config",
    "main",
    "parse_action",
    "parse_board",
    "parse_boards",
]


def configure(parser: argparse.ArgumentParser) -> None:
    # --config (the TOML file with [[boards]]) comes from rallycast.cli, as for every subcommand.
    add_url_flag(parser)
    parser.add_argument("--log-level", help="DEBUG shows every dropped message and why")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the config, print each board's topics and mapping, and exit",
    )


def describe(config: ButtonsConfig) -> str:
    lines = [f"broker: {parse_broker_url(config.settings.broker_url).url()}"]
    for board in config.boards:
        lines.append(
            f"board {board.name}: club {board.club}, table {board.table}, {board.kind}, "
            f"debounce {board.debounce_ms} ms"
        )
        for topic_filter in board.decoder.subscriptions():
            lines.append(f"  follows {topic_filter}")
        rules = list(board.buttons.items())
        if board.other_buttons is not None:
            rules.append(("(any other)", board.other_buttons))
        for button, rule in rules:
            side = f"side {rule.side}" if rule.side is not None else "no side"
            actions = ", ".join(
                f"{gesture} = {action}"
                for gesture, action in rule.gestures.items()
                if action.verb != "ignore"
            )
            lines.append(f"  button {button!r} ({side}): {actions}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from scorer.logs import setup_logging

    config = load_buttons_config(
        getattr(args, "config", None),
        overrides={"broker_url": join_urls(args.url), "log_level": args.log_level},
    )
    setup_logging(config.settings.log_level)
    if args.check:
        print(describe(config))
        return 0

    from scorer.client import ConnectFailed

    runner = ButtonRunner(
        config.boards,
        broker=config.settings.broker_url,
        passwords=config.passwords,
        state_dir=config.settings.data_dir / "buttons",
        max_payload_bytes=config.settings.max_payload_bytes,
    )
    try:
        runner.start()
    except ConnectFailed as exc:
        print(f"rallycast buttons: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(
        f"rallycast buttons: {len(config.boards)} board(s) for club(s) "
        f"{', '.join(config.clubs)} on {parse_broker_url(config.settings.broker_url).url()}; "
        "Ctrl-C stops",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        runner.stop()
    return 0
