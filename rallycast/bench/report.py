"""The broker benchmark's report: one row per broker, subscriber count and phase, the
embedded/mosquitto ratios, and the machine it ran on (``rallycast bench broker``)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class PhaseResult:
    broker: str
    subscribers: int
    phase: str
    messages: int
    deliveries: int
    expected: int
    seconds: float
    cpu_us_per_delivery: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    rss_per_idle_client_kb: float
    client_cpu_us_per_delivery: float
    load_average: float
    rss_per_idle_tcp_client_kb: float = float("nan")

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0


def percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index] / 1e6


HEADER = (
    f"{'broker':<10} {'subs':>5} {'phase':<6} {'msgs':>5} {'delivered':>10} "
    f"{'deliveries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/delivery':>15} "
    f"{'RSS MB':>7} {'RSS KB per idle client: WS':>26} {'TCP':>5} {'bench CPU us/delivery':>21} "
    f"{'load':>5}"
)


def format_row(r: PhaseResult) -> str:
    delivered = f"{r.deliveries}/{r.expected}" if r.deliveries != r.expected else str(r.deliveries)
    return (
        f"{r.broker:<10} {r.subscribers:>5} {r.phase:<6} {r.messages:>5} {delivered:>10} "
        f"{r.deliveries_per_s:>12.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
        f"{r.cpu_us_per_delivery:>15.1f} {r.rss_mb:>7.1f} {r.rss_per_idle_client_kb:>26.1f} "
        f"{r.rss_per_idle_tcp_client_kb:>5.1f} "
        f"{r.client_cpu_us_per_delivery:>21.1f} {r.load_average:>5.1f}"
    )


def format_ratios(results: list[PhaseResult], kind: str = "embedded") -> list[str]:
    lines = []
    base = {(r.subscribers, r.phase): r for r in results if r.broker == "mosquitto"}
    for r in results:
        m = base.get((r.subscribers, r.phase))
        if r.broker != kind or m is None:
            continue

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2g}x" if b > 0 else "n/a"

        lines.append(
            f"ratio {kind}/mosquitto, {r.subscribers} subs, {r.phase}: "
            f"CPU per delivery {ratio(r.cpu_us_per_delivery, m.cpu_us_per_delivery)}, "
            f"p99 {ratio(r.p99_ms, m.p99_ms)}, "
            f"deliveries/s {ratio(r.deliveries_per_s, m.deliveries_per_s)}, "
            f"RSS per idle client: WebSocket "
            f"{ratio(r.rss_per_idle_client_kb, m.rss_per_idle_client_kb)}, "
            f"TCP {ratio(r.rss_per_idle_tcp_client_kb, m.rss_per_idle_tcp_client_kb)}"
        )
    return lines


def machine_description() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    mosquitto = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
            capture_output=True,
            timeout=5,
        )
        mosquitto = out.stdout.decode().splitlines()[0].replace("mosquitto version ", "")
    return (
        f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"amqtt {version('amqtt')}, websockets {version('websockets')}, mosquitto {mosquitto}"
    )
