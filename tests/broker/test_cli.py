"""``rallycast broker`` (``broker/cli.py``) as a process manager stops it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The real command, with a SIGTERM delivered while the broker starts (as systemd or a test
# stopping it at its first log line would).
TERM_DURING_START = """
import argparse, asyncio, os, signal, sys
import broker.cli as cli, broker.startup as startup

real_start = startup.start_broker_plainly

async def start(settings):
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.1)  # the signal is delivered here
    return await real_start(settings)

startup.start_broker_plainly = start  # imported by name inside serve()
parser = argparse.ArgumentParser()
cli.configure(parser)
sys.exit(cli.main(parser.parse_args(sys.argv[1:])))
"""


def test_a_sigterm_while_the_broker_starts_is_a_clean_stop_after_its_urls(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TERM_DURING_START, "--bind", "127.0.0.1", "--mqtt-port", "0",
         "--ws-port", "0", "--data-dir", str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "listening mqtt://127.0.0.1:" in done.stdout, done.stdout
    assert "listening ws://127.0.0.1:" in done.stdout, done.stdout
