"""What happens after a match changes its end: the record (scorer/record.py) is brought up to
date and, when the match just ended, the result is POSTed to the configured webhooks.

The scorer service calls :meth:`RecordHooks.match_changed` after the store has committed a
change that ended a match or took back its end; the call only puts the work on a queue. The
work runs in one background thread, each webhook delivery in its own thread: neither ever
blocks the service's command path, and a slow or dead URL delays nothing else.

Webhook: ``POST`` of ``{"event": "match_end", "match": {...}}`` (the match as
``GET /api/clubs/<club>/matches/<match_id>`` gives it, without the points; docs/api.md) with
``Content-Type: application/json``. A 2xx answer delivers it; anything else (an error status,
a refused connection, no answer within 10 s) is retried after 1, 2, 4, 8 and 16 s, then given
up with a warning in the log.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scorer.record import RecordWriter

log = logging.getLogger("rallycast.record")

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)
TIMEOUT = 10.0
USER_AGENT = "rallycast-webhook/1"


def post_json(url: str, body: bytes, timeout: float = TIMEOUT) -> int:
    """One POST; the HTTP status (an error status is returned, not raised). Raises OSError
    when no answer came."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/s only: config checks)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    delays: Sequence[float] = RETRY_DELAYS,
    stop: threading.Event | None = None,
    post: Callable[[str, bytes], int] = post_json,
) -> bool:
    """POST ``payload`` to ``url`` until a 2xx answer, waiting ``delays`` between tries.
    True when delivered; False after the last try (or when ``stop`` is set)."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    stop = stop or threading.Event()
    for attempt in range(len(delays) + 1):
        try:
            status = post(url, body)
            if 200 <= status < 300:
                log.info("webhook %s: delivered (try %d)", url, attempt + 1)
                return True
            problem = f"HTTP {status}"
        except OSError as exc:
            problem = str(exc) or type(exc).__name__
        if attempt == len(delays):
            break
        log.info("webhook %s: %s; trying again in %.0f s", url, problem, delays[attempt])
        if stop.wait(delays[attempt]):
            return False
    log.warning("webhook %s: not delivered after %d tries (%s)", url, len(delays) + 1, problem)
    return False


class RecordHooks:
    """Owned by the scorer service: ``start()`` after the store is open, ``stop()`` at the end."""

    def __init__(
        self,
        data_dir: Path,
        *,
        webhook_urls: Sequence[str] = (),
        retention_days: int = 0,
        delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.data_dir = data_dir
        self.webhook_urls = tuple(webhook_urls)
        self.retention_days = retention_days
        self.delays = tuple(delays)
        self._queue: queue.Queue[tuple[str, str, bool] | threading.Event | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.deliveries: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rallycast-record", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def match_changed(self, club_id: str, match_id: str, ended: bool) -> None:
        """Queue the record update (and, if ``ended``, the webhooks) for this match. Never
        blocks; never raises."""
        self._queue.put((club_id, match_id, ended))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Tests: True once every queued change has been handled."""
        done = threading.Event()
        self._queue.put(done)  # set once everything queued before it is handled
        return done.wait(timeout)

    def _run(self) -> None:
        writer: RecordWriter | None = None
        try:
            writer = RecordWriter(self.data_dir)
            writer.sync(retention_days=self.retention_days)
        except Exception:
            log.exception("the record could not be brought up to date")
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, threading.Event):
                item.set()
                continue
            club_id, match_id, ended = item
            try:
                if writer is None:
                    writer = RecordWriter(self.data_dir)
                status = writer.add(club_id, match_id, writer.reader.log(match_id))
                if self.retention_days > 0:
                    writer.expire(self.retention_days)
                row = writer.reader.match(club_id, match_id)
            except Exception:
                log.exception("club %s: match %s not added to the record", club_id, match_id)
                continue
            if ended and row is not None and status is not None:
                payload = {"event": "match_end", "match": row.as_json()}
                for url in self.webhook_urls:
                    thread = threading.Thread(
                        target=deliver,
                        args=(url, payload),
                        kwargs={"delays": self.delays, "stop": self._stop},
                        name="rallycast-webhook",
                        daemon=True,
                    )
                    thread.start()
                    self.deliveries = [t for t in self.deliveries if t.is_alive()] + [thread]
        if writer is not None:
            writer.close()
