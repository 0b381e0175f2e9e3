"""Child processes of ours (nats-server nodes, brokers under a benchmark or a test): one way to
stop one, used by ``broker/cluster.py`` and ``rallycast/bench/launch.py``."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL and reap (a few seconds more at
    most). Does nothing when the process has already exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
