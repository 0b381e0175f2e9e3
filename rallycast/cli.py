"""The ``rallycast`` command. Each subcommand lives in its own module, which provides
``configure(parser)`` to add its flags and ``main(args) -> int`` to run; modules are imported
only when their subcommand runs, so ``rallycast replay`` does not load the broker.

This package is the composition root: it sits above scorer/, broker/ and viewer/ (floors
scorer < broker < viewer < rallycast, tests/test_architecture.py) and only it may name all of
them. ``python -m rallycast.cli ...`` is the same command."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

CONFIG_HELP = "TOML config file (default: $RALLYCAST_CONFIG, then built-in defaults)"
DESCRIPTION = (
    "Rallycast: live table-tennis scores over MQTT. `rallycast up` runs everything on this"
    " machine (MQTT broker, scorer service, live pages); the other commands run one part or"
    " one tool."
)
EPILOG = (
    "`rallycast COMMAND -h` tells a command's flags. Settings come from a TOML file (--config"
    " FILE, before or after COMMAND, or $RALLYCAST_CONFIG), RALLYCAST_<SETTING> variables and"
    " flags; see README.md."
)

# The commented sample config shipped with the source (the systemd units use it too).
SAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "rallycast.toml"

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("rallycast.up", "run broker + scorer service + viewer on this machine"),
    "broker": ("broker.cli", "run the embedded MQTT broker"),
    "passwd": ("broker.passwd", "add, change, remove or list MQTT users (the password file)"),
    "scorer": ("scorer.service", "run the scorer service against an MQTT broker"),
    "score": ("scorer.terminal", "score a match from a terminal"),
    "buttons": ("scorer.buttons", "turn button-board messages into score commands"),
    "viewer": ("viewer.server", "serve the live pages"),
    "replay": ("scorer.replay", "replay a match log and print the snapshot"),
    "bench": ("rallycast.bench", "measure the broker (and the pages) on loopback"),
    "cluster": ("broker.cluster", "run or configure a 3-node NATS cluster (docs/scale.md)"),
    "export": ("scorer.export_command", "CSV or JSON of a club's matches or of one match"),
    "matches": ("scorer.matches_command", "list or delete matches of the record of play"),
    "soak": ("rallycast.soak", "kill -9 broker/service under load, then check no press is lost"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rallycast", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # Also after the subcommand (`rallycast up --config F`); SUPPRESS keeps a value given
        # before it.
        sub_parser.add_argument(
            "--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP
        )
        if name != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # listed, but "not available" when run
        module.configure(sub_parser)
        # Nested verbs take it too (`rallycast passwd list --config F`).
        for action in sub_parser._actions:  # argparse has no public list of subparsers
            if isinstance(action, argparse._SubParsersAction):
                for verb_parser in action.choices.values():
                    verb_parser.add_argument(
                        "--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP
                    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((word for word in argv if word in SUBCOMMANDS), None)
    args = build_parser(chosen).parse_args(argv)
    try:
        module = importlib.import_module(args._module)
    except ImportError as exc:
        print(f"rallycast {args.command}: not available ({exc})", file=sys.stderr)
        return 2
    from scorer.config import ConfigError

    try:
        return int(module.main(args) or 0)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("config file ") and message.endswith(" does not exist"):
            message += f" (a sample to copy: {SAMPLE_CONFIG})"
        print(f"rallycast {args.command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
