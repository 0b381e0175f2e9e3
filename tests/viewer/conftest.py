"""Fixtures for the page tests: the real embedded broker (tests/brokers.py), the real scorer
service, the viewer under uvicorn in a thread, and headless Debian Chromium via Playwright's
sync API. Pages are observed from outside with a MutationObserver installed before any page
script runs (``RECORDER_JS``), so the tests see every change and when it happened."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rallycast.bench.pages import CHROMIUM, CHROMIUM_ARGS  # the flags the brief asks for
from scorer.client import ScoreClient
from scorer.config import Settings
from scorer.service import ScorerService
from tests.conftest import require_program
from viewer.server import bound_port, uvicorn_server

# The longest any expected change may take on a busy shared machine (load 20 on 2 cores with
# two suites side by side). 5 s was too short: a page load whose mqtt.js waited for a scorer's
# round trip took longer (loop run A2 on b30aaba). Bounds the product owes are explicit timeouts.
WAIT_MS = 15000
LIVE = "#liveGameSection"  # the live match on the club page

# Installed before the page's own scripts: records every text put into a [data-field] element
# and every change of the attributes that show or hide things, with the page's clock.
RECORDER_JS = """
(() => {
  const log = [];
  window.__rc = { log };
  new MutationObserver((records) => {
    const t = performance.now();
    for (const r of records) {
      const el = r.target;
      if (r.type === 'childList' && el.dataset && el.dataset.field) {
        const added = r.addedNodes[0];
        log.push({ kind: 'text', field: el.dataset.field, side: el.dataset.side || '',
                   scope: (el.closest('[id]') || {}).id || '', text: added ? added.data : '', t });
      } else if (r.type === 'attributes') {
        log.push({ kind: 'attr', id: el.id || '', name: r.attributeName,
                   value: el.getAttribute(r.attributeName), t });
      }
    }
  }).observe(document, { subtree: true, childList: true, attributes: true,
                         attributeFilter: ['hidden', 'data-status', 'data-state', 'data-view'] });
})();
"""


class ServerErrors(logging.Handler):
    """The ERRORs uvicorn logs from one thread: a page that answered 500, with why. uvicorn
    logs an exception only after the 500 went out, so the test that got the 500 may already
    be over: the fixture reports them when it stops the viewer."""

    def __init__(self, thread_name: str) -> None:
        super().__init__(logging.ERROR)
        self.thread_name = thread_name
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName == self.thread_name:
            self.records.append(record)

    def report(self) -> str:
        formatter = logging.Formatter("%(message)s")
        return "\n".join(formatter.format(record) for record in self.records)


@dataclass
class ViewerThread:
    """The viewer app under uvicorn, in a thread with its own event loop. ``stop`` fails the
    test if the server logged an error meanwhile (a page that answered 500)."""

    settings: Settings
    port: int = 0
    _server: Any = None
    _thread: threading.Thread | None = None
    _errors: ServerErrors | None = None

    def start(self) -> None:
        self._server = uvicorn_server(self.settings)
        name = f"viewer-{id(self)}"
        self._errors = ServerErrors(name)
        logging.getLogger("uvicorn.error").addHandler(self._errors)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive(), "the viewer did not start"
            assert time.monotonic() < deadline, "the viewer did not start within 10 s"
            time.sleep(0.01)
        self.port = bound_port(self._server)

    def stop(self) -> None:
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(5)
        assert self._errors is not None
        logging.getLogger("uvicorn.error").removeHandler(self._errors)
        if self._errors.records:
            pytest.fail(f"the viewer logged errors:\n{self._errors.report()}", pytrace=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """Broker + scorer service + viewer, as a club runs them."""

    endpoint: Any  # tests/brokers.py BrokerEndpoint
    settings: Settings
    service: ScorerService
    viewer: ViewerThread
    _scorers: list[ScoreClient] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.viewer.url + path

    def scorer(self, club: str = "alpha", table: int = 1) -> ScoreClient:
        """A Python scorer for the club's table (its MQTT user), waiting for each command's
        reply."""
        client = ScoreClient(self.endpoint.url(club), club, table=table, timeout=WAIT_MS / 1000)
        client.__enter__()
        self._scorers.append(client)
        return client

    def close(self) -> None:
        for client in self._scorers:
            client.close()


@contextmanager
def running_stack(endpoint: Any, data_dir: Path, **settings: Any) -> Iterator[Stack]:
    """Service + viewer on ``endpoint`` with the data dir and ``settings`` (setting names,
    e.g. ``embed_origins=(...)``) over the endpoint's own; stopped at the end."""
    settings = endpoint.settings(data_dir=str(data_dir), **settings)
    service = ScorerService(settings, password=endpoint.users[endpoint.service_user])
    service.start()
    viewer = ViewerThread(settings)
    try:
        assert service.wait_until_connected(WAIT_MS / 1000), "the scorer service did not connect"
        viewer.start()
        running = Stack(endpoint, settings, service, viewer)
        yield running
        running.close()
    finally:
        service.stop()
        if viewer._server is not None:
            viewer.stop()


@pytest.fixture
def stack(amqtt_broker: Any, tmp_path: Path) -> Iterator[Stack]:
    """Everything on the embedded broker, in one data dir as `rallycast up` runs it (so the
    viewer issues device tokens beside the broker's password file)."""
    with running_stack(amqtt_broker, amqtt_broker.data_dir) as running:
        yield running


@pytest.fixture
def any_stack(any_broker: Any, tmp_path: Path) -> Iterator[Stack]:
    """Everything on the embedded broker (one data dir, as ``stack``), then on a real
    mosquitto (the split layout: the viewer has no password file and issues no tokens)."""
    data_dir = any_broker.data_dir if any_broker.kind == "amqtt" else tmp_path / "app"
    with running_stack(any_broker, data_dir) as running:
        yield running


# Not session scope: Playwright's sync API leaves its event loop set in the main thread, and
# every later async test in that process (or xdist worker) fails with "cannot be called from
# a running event loop". A launch takes ~0.7 s.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require_program(CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageFailures:
    """Console errors, uncaught exceptions and dialogs of every page a test opened."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.allowed: list[str] = []  # substrings of errors a test provokes on purpose

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"{page.url}: {msg.text}") if msg.type == "error" else None
            ),
        )
        page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Callable[..., Any]]:
    """open_page(url, width=.., height=.., mobile=False) -> a Playwright page with the recorder.
    At the end the test fails if any page logged an error, threw, or opened a dialog."""
    failures = PageFailures()
    contexts: list[Any] = []

    def open_(
        url: str, *, width: int = 1024, height: int = 700, mobile: bool = False, **kw: Any
    ) -> Any:
        context = chromium.new_context(
            viewport={"width": width, "height": height},
            is_mobile=mobile,
            has_touch=mobile,
            device_scale_factor=2 if mobile else 1,
            **kw,
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(RECORDER_JS)
        failures.watch(page)
        page.goto(url)
        page.failures = failures
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not failures.dialogs, f"a page opened a dialog: {failures.dialogs}"
    assert not failures.unexpected(), f"page errors: {failures.unexpected()}"


def timed_texts(
    page: Any, field_name: str, side: str = "", scope: str = ""
) -> list[tuple[float, str]]:
    """Every text the page put into [data-field=field_name][data-side=side] (under the
    element ``scope``, or anywhere when it is ""), in order, with the page's clock in ms."""
    return [
        (float(t), text)
        for t, text in page.evaluate(
            """([field, side, scope]) => window.__rc.log
                 .filter((e) => e.kind === 'text' && e.field === field && e.side === side
                                && (!scope || e.scope === scope))
                 .map((e) => [e.t, e.text])""",
            [field_name, side, scope],
        )
    ]


def texts(page: Any, field_name: str, side: str = "", scope: str = "") -> list[str]:
    """The texts of :func:`timed_texts`, without their times."""
    return [text for _, text in timed_texts(page, field_name, side, scope)]


def attribute_changes(page: Any, element_id: str, name: str) -> list[dict[str, Any]]:
    return page.evaluate(
        "([id, name]) => window.__rc.log.filter((e) => e.kind === 'attr' && e.id === id && e.name === name)",
        [element_id, name],
    )


def wait_connected(page: Any) -> None:
    """Until the page's MQTT client (static/live.js, ``Rallycast.client``) is connected."""
    page.wait_for_function(
        "() => window.Rallycast && Rallycast.client && Rallycast.client.connected"
    )


def wait_subscribed(page: Any) -> None:
    """Until the page's subscriptions are in place: it has had the retained service status
    (live.js shows or hides #scorer-banner on it), which the broker sends only after the
    SUBSCRIBE that also holds the game topics (mqtt.js sends the page's SUBSCRIBEs in
    order, on one connection). ``connected`` alone comes before the SUBACK."""
    page.wait_for_function(
        "() => window.__rc.log.some((e) => e.kind === 'attr' && e.id === 'scorer-banner')"
    )


def score_on_page(page: Any, scope: str = LIVE) -> tuple[str, str]:
    """The two scores shown under ``scope`` (side 1, side 2), as text."""
    return (
        page.inner_text(f'{scope} [data-field="score"][data-side="1"]'),
        page.inner_text(f'{scope} [data-field="score"][data-side="2"]'),
    )


def accepted(scorer: Any, command: Any) -> dict[str, Any]:
    """Send ``command`` (a dict, copied first, or a shorthand) with ``scorer`` (a
    ScoreClient) and assert the service accepted it; returns the reply."""
    reply = scorer.send(dict(command) if isinstance(command, dict) else command)
    assert reply["ok"], reply
    return reply


def dedupe(values: list[str]) -> list[str]:
    """Consecutive repeats removed (a re-render with the same text writes nothing)."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


# --- hand-made snapshots (as the service user), for what a display shows ---


def contract_snapshot(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A snapshot with every key of the shared contract (docs/rules.md): ``base`` (a real
    engine snapshot) plus the keys an older engine lacks, then ``changes``; ``game_data``
    changes merge into the base's."""
    snapshot = {
        "can_undo": True,
        "can_redo": False,
        "timeout": None,
        "last_game": None,
        "ends_changed": False,
        **base,
    }
    game_data = changes.pop("game_data", None)
    snapshot.update(changes)
    if game_data:
        snapshot["game_data"] = {**base["game_data"], **game_data}
    return snapshot


def publish_snapshot(stack: Any, snapshot: dict[str, Any], club: str = "alpha") -> None:
    """Publish a retained snapshot on the club's game topic as the scorer service would."""
    import json

    service = stack.endpoint.client(stack.endpoint.service_user)
    service.publish(
        f"clubs/{club}/game", json.dumps(snapshot), qos=1, retain=True
    ).wait_for_publish(5)


def iso_ago(seconds: float) -> str:
    """An ISO-8601 UTC time ``seconds`` ago, as the engine writes them."""
    from datetime import UTC, datetime, timedelta

    at = datetime.now(UTC) - timedelta(seconds=seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
