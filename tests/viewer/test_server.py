"""The viewer's HTTP side: pages, 404s, overlay parameters, security and cache headers,
language choice, and what happens when mqtt.js was not installed."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from scorer.config import Club, Settings
from tests.support.runners import STOPS_WITHIN_S
from tests.viewer.pagekit import page_config
from viewer.app import Viewer, create_app
from viewer.assets import IMMUTABLE, collect_assets
from viewer.i18n import BROWSER_KEYS, STRINGS
from viewer.server import start_viewer

SETTINGS = Settings(clubs=(Club("alpha", "Alpha TTC"), Club("beta")), ws_port=19001)
PAGES = ["/", "/clubs/alpha", "/clubs/alpha/score", "/clubs/alpha/display", "/clubs/alpha/overlay"]


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(SETTINGS))


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_with_a_strict_content_security_policy(
    client: TestClient, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "ws://testserver:19001" in csp  # the broker's WebSocket on the page's host
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in response.text and " on" + "click=" not in response.text
    config = page_config(response.text)
    # The broker URL the server works out for the page (scorer/ws_urls.py); the browser uses it.
    assert config["wsPort"] == 19001 and config["wsUrls"] == ["ws://testserver:19001/mqtt"]


def test_the_club_page_config_names_the_club_topics(client: TestClient) -> None:
    config = page_config(client.get("/clubs/alpha").text)
    assert config["club"] == {"id": "alpha", "name": "Alpha TTC"}
    assert config["topics"] == {
        "game": "clubs/alpha/game",
        "cmd": "clubs/alpha/game/cmd",
        "reply": "clubs/alpha/game/reply",
    }
    assert config["statusTopic"] == "rallycast/status/scorer"


def test_a_public_websocket_url_is_used_by_the_pages_and_allowed_by_the_csp() -> None:
    settings = Settings(clubs=SETTINGS.clubs, public_ws_url="wss://scores.example.org/mqtt")
    response = TestClient(create_app(settings)).get("/clubs/alpha")
    assert page_config(response.text)["wsUrls"] == ["wss://scores.example.org/mqtt"]
    assert (
        "connect-src 'self' wss://scores.example.org;"
        in response.headers["content-security-policy"]
    )


@pytest.mark.parametrize(
    "path", ["/clubs/nope", "/clubs/nope/score", "/clubs/Bad!/display", "/clubs/" + "a" * 65, "/x"]
)
def test_an_unknown_or_invalid_club_is_a_404_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "No such club" in response.text
    assert "content-security-policy" in response.headers


@pytest.mark.parametrize(
    "query",
    ["bg=red;background:url(x)", "fg=%2312345", "pos=middle", "scale=0", "scale=9", "scale=abc",
     "accent=rgb(1,2,3)"],
)  # fmt: skip
def test_bad_overlay_parameters_are_refused_with_the_reason(client: TestClient, query: str) -> None:
    response = client.get(f"/clubs/alpha/overlay?{query}")
    assert response.status_code == 400
    name = query.split("=")[0]
    assert f"<li>{name}: " in response.text


@pytest.mark.parametrize("query", ["bg=", "bg=000", "fg=#fff"])
def test_a_colour_typed_with_a_hash_gets_the_percent_23_hint(
    client: TestClient, query: str
) -> None:
    # A browser sends "?bg=#000" typed in the address bar as "?bg=" (the rest is the fragment).
    response = client.get(f"/clubs/alpha/overlay?{query}")
    assert response.status_code == 400
    assert "write # as %23" in response.text


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/clubs/Alpha", "/clubs/alpha"),
        ("/clubs/ALPHA/overlay?bg=%23000", "/clubs/alpha/overlay?bg=%23000"),
        ("/clubs/Beta/score", "/clubs/beta/score"),
        ("/clubs", "/"),
        ("/clubs/", "/"),
    ],
)
def test_a_club_in_another_case_and_bare_clubs_redirect(
    client: TestClient, path: str, location: str
) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == location
    assert client.get(path).status_code == 200


def test_good_overlay_parameters_reach_the_page(client: TestClient) -> None:
    response = client.get("/clubs/alpha/overlay?bg=%23000000cc&fg=white&pos=bottom-right&scale=1.5")
    assert response.status_code == 200
    assert page_config(response.text)["overlay"] == {
        "bg": "#000000cc", "fg": "white", "accent": "#ffcc00", "pos": "bottom-right", "scale": 1.5,
    }  # fmt: skip


def test_static_files_are_compressed_and_cached_under_a_content_hash(client: TestClient) -> None:
    html = client.get("/clubs/alpha").text
    urls = re.findall(r'(?:src|href)="(/static/[0-9a-f]{12}/[^"]+)"', html)
    assert any(u.endswith("/live.js") for u in urls)
    assert any(u.endswith("/vendor/mqtt.min.js") for u in urls)
    for url in urls:
        response = client.get(url, headers={"accept-encoding": "gzip"})
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == IMMUTABLE
        if len(response.content) > 500:
            assert response.headers["content-encoding"] == "gzip", url
    live = next(u for u in urls if u.endswith("/live.js"))
    stale = re.sub(r"/static/[0-9a-f]{12}/", "/static/000000000000/", live)
    assert client.get(stale).headers["cache-control"] == "no-cache"
    assert client.get("/static/000000000000/../server.py").status_code == 404
    assert client.get("/static/000000000000/nothing.js").status_code == 404


def test_our_own_page_scripts_stay_small() -> None:
    # What travels is gzipped (GZipMiddleware): 8 KB each keeps the first score one round trip
    # away on a phone; the raw limit catches a pasted-in library.
    import gzip

    assets = collect_assets()
    for name in ("live.js", "score.js", "rallycast.css"):
        data = assets[name].path.read_bytes()
        assert len(data) < 32_000 and len(gzip.compress(data, 6)) < 8_000, name


@pytest.mark.parametrize(
    ("accept", "expected"),
    [("ru-RU,ru;q=0.9,en;q=0.8", "ru"), ("de-DE,en;q=0.5,ru;q=0.4", "en"), ("fr", "en"),
     ("en;q=0.2, ru;q=0.9", "ru"), ("", "en")],
)  # fmt: skip
def test_the_language_follows_accept_language(
    client: TestClient, accept: str, expected: str
) -> None:
    html = client.get("/clubs/alpha", headers={"accept-language": accept}).text
    assert f'<html lang="{expected}" ' in html
    assert STRINGS[expected]["score_link"] in html


def test_the_language_switch_is_remembered_in_a_cookie(client: TestClient) -> None:
    response = client.get("/clubs/alpha?lang=ru", headers={"accept-language": "en"})
    assert '<html lang="ru" ' in response.text and "Параметры оверлея" in response.text
    assert "rallycast_lang=ru" in response.headers["set-cookie"]
    again = client.get("/clubs/alpha", headers={"accept-language": "en"})  # cookie kept
    assert '<html lang="ru" ' in again.text
    assert page_config(again.text)["strings"]["reconnecting"] == STRINGS["ru"]["reconnecting"]


def test_without_mqtt_js_the_server_starts_and_the_pages_say_what_to_run(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING, logger="rallycast.viewer"):
        viewer = Viewer(SETTINGS, assets=collect_assets(mqtt_js=tmp_path / "missing.js"))
    assert "mqtt.js missing" in caplog.text and "npm ci" in caplog.text
    app = create_app(SETTINGS, viewer=viewer)
    html = TestClient(app).get("/clubs/alpha").text
    assert "run ./dev up (npm ci) — mqtt.js missing" in html
    assert "mqtt.min.js" not in html


def test_rallycast_viewer_serves_the_pages_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "rallycast.toml"
    config.write_text('[[clubs]]\nid = "riverside"\nname = "Riverside TTC"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALLYCAST_")}
    command = [sys.executable, "-m", "rallycast.cli", "--config", str(config), "viewer"]
    command += ["--bind", "127.0.0.1", "--http-port", "0", "--ws-port", "19002"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = process.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", first)
        assert found, (first, process.stderr.read() if process.poll() is not None else "")
        assert f"{found.group(1)}/clubs/riverside" in process.stdout.readline()
        with urllib.request.urlopen(found.group(1) + "/clubs/riverside", timeout=5) as response:
            html = response.read().decode()
        assert "Riverside TTC" in html and page_config(html)["wsPort"] == 19002
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(STOPS_WITHIN_S + 5) == 0
        assert time.monotonic() - started < STOPS_WITHIN_S
        out, err = process.communicate(timeout=5)
        assert "rallycast viewer: stopped" in out
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_english_and_russian_have_the_same_strings_and_the_browser_gets_its_own() -> None:
    assert set(STRINGS["en"]) == set(STRINGS["ru"])
    assert set(BROWSER_KEYS) <= set(STRINGS["en"])
    for language in ("en", "ru"):
        assert all(STRINGS[language][key].strip() for key in STRINGS[language])


async def test_a_taken_port_is_an_error_not_an_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            clubs=SETTINGS.clubs, bind="127.0.0.1", http_port=port, log_level="CRITICAL"
        )
        with pytest.raises(OSError, match="could not listen"):
            await start_viewer(settings)


async def test_start_viewer_listens_on_a_free_port_and_stops() -> None:
    settings = Settings(clubs=SETTINGS.clubs, bind="127.0.0.1", http_port=0)
    running = await start_viewer(settings)
    try:
        assert running.port > 0 and running.url == f"http://127.0.0.1:{running.port}"
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"GET /clubs/alpha HTTP/1.0\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await running.stop()
    assert running.task.done()


def refusal_codes_in_the_source() -> set[str]:
    """Every refusal code the engine and the service can put in a reply (docs/protocol.md):
    ``Refused(..., code="x")`` and the snake_case literals in each refusal call
    (``refusal(...)``, ``Refused(...)``, ``PayloadRefused(...)``) of the parser, the engine,
    the club's desk and the service."""
    repo = Path(__file__).resolve().parents[2]
    modules = ("commands.py", "engine.py", "desk.py", "service.py")
    source = "".join((repo / "scorer" / name).read_text() for name in modules)
    codes = set(re.findall(r'code="([a-z_]+)"', source))
    for found in re.finditer(r"\b(?:_refuse|refusal|Refused|PayloadRefused)\(", source):
        depth, end = 0, found.end() - 1
        for end in range(found.end() - 1, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                break
        codes |= set(re.findall(r'"([a-z]+(?:_[a-z]+)+)"', source[found.start() : end]))
    return codes - {"refused"}


def test_every_refusal_code_has_words_in_every_language() -> None:
    from viewer.i18n import REFUSALS

    codes = refusal_codes_in_the_source()
    assert {"match_over", "no_point_to_remove", "wrong_match", "store_failed"} <= codes
    for language in ("en", "ru"):
        missing = codes - set(REFUSALS[language])
        assert not missing, (language, missing)
        # Placeholders are the reply's params: the same ones in every language.
        for code, text in REFUSALS[language].items():
            assert set(re.findall(r"\{(\w+)\}", text)) == set(
                re.findall(r"\{(\w+)\}", REFUSALS["en"][code])
            ), (language, code)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_the_overlay_help_lists_every_url_option_with_its_default(
    client: TestClient, lang: str
) -> None:
    from viewer.overlay import OVERLAY_DEFAULTS, OVERLAY_POSITIONS

    response = client.get(f"/clubs/alpha/overlay/help?lang={lang}")
    assert response.status_code == 200
    html = response.text
    assert STRINGS[lang]["overlay_help"] in html
    for name in ("pos", "scale", "bg", "fg", "accent"):
        assert f"<td><code>{name}</code></td>" in html, name
    for value in OVERLAY_DEFAULTS.values():
        assert f"<code>{value}</code>" in html, value
    assert all(position in html for position in OVERLAY_POSITIONS)
    assert "http://testserver/clubs/alpha/overlay" in html
    # The club page links it, and a bad overlay URL points to it.
    assert 'href="/clubs/alpha/overlay/help"' in client.get(f"/clubs/alpha?lang={lang}").text
    bad = client.get(f"/clubs/alpha/overlay?pos=middle&lang={lang}")
    assert bad.status_code == 400 and 'href="/clubs/alpha/overlay/help"' in bad.text
    assert client.get("/clubs/nope/overlay/help").status_code == 404


def test_the_docs_and_the_readme_describe_the_overlay_options() -> None:
    repo = Path(__file__).resolve().parents[2]
    pages = (repo / "docs" / "pages.md").read_text()
    for name in ("`pos`", "`scale`", "`bg`", "`fg`", "`accent`"):
        assert name in pages, name
    assert "docs/pages.md" in (repo / "README.md").read_text()


def test_a_stop_cut_short_mid_shutdown_logs_no_traceback(monkeypatch, caplog) -> None:
    """`rallycast up` gives the stop a budget; when it runs out during the lifespan's shutdown,
    asyncio.run cancels what is left, and uvicorn logged that CancelledError as an ERROR with
    a traceback. A stop is not an error."""
    from viewer.snapshots import RetainedSnapshots

    async def slow_stop(self, within: float = 0.0) -> None:
        await asyncio.sleep(30)  # a shutdown that outlives the budget

    monkeypatch.setattr(RetainedSnapshots, "stop_soon", slow_stop)

    async def run() -> None:
        settings = Settings(clubs=SETTINGS.clubs, bind="127.0.0.1", http_port=0)
        running = await start_viewer(settings)
        started = time.monotonic()
        await running.stop(within=0.2)
        assert time.monotonic() - started < 1.0  # bounded, even with the shutdown stuck

    with caplog.at_level(logging.DEBUG, logger="uvicorn.error"):
        asyncio.run(run())  # cancels the stuck lifespan task on the way out
    errors = _uvicorn_errors(caplog)
    assert errors == [], [r.getMessage() for r in errors]


def _uvicorn_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "uvicorn.error" and r.levelno >= logging.ERROR]


def test_a_request_cancelled_while_serving_is_a_500_with_its_traceback_in_the_log(
    monkeypatch, caplog
) -> None:
    """A page that answered 500 says why in the log, even when its task was cancelled: only a
    stop's cancellations are kept out of it."""

    async def cancelled(self, request):
        raise asyncio.CancelledError("not a stop")

    monkeypatch.setattr(Viewer, "club_page", cancelled)

    async def run() -> int:
        settings = Settings(clubs=SETTINGS.clubs, bind="127.0.0.1", http_port=0)
        running = await start_viewer(settings)
        try:
            return await asyncio.to_thread(_status, f"{running.url}/clubs/alpha")
        finally:
            await running.stop()

    with caplog.at_level(logging.DEBUG, logger="uvicorn.error"):
        assert asyncio.run(run()) == 500
    errors = _uvicorn_errors(caplog)
    assert [r.getMessage().strip() for r in errors] == ["Exception in ASGI application"]
    assert isinstance(errors[0].exc_info[1], asyncio.CancelledError)


@pytest.mark.parametrize("within", [0.2, 2.0], ids=["stop cut short", "uvicorn's graceful stop"])
def test_a_request_cut_short_by_a_stop_ends_and_the_lifespan_still_stops(
    monkeypatch, caplog, within
) -> None:
    """A stop that runs out of time cancels the requests still running: each ends (uvicorn
    answers 500 or drops it) instead of hanging on, the lifespan's shutdown still stops the
    viewer's MQTT client, and that is a stop, said in no ERROR (uvicorn's own "Cancel 1
    running task(s), timeout graceful shutdown exceeded" included)."""
    from viewer.snapshots import RetainedSnapshots

    started = asyncio.Event()
    stopped_mqtt = []
    stop_soon = RetainedSnapshots.stop_soon

    async def slow(self, request):
        started.set()
        await asyncio.sleep(60)

    async def counted_stop_soon(self, *args, **kwargs):
        stopped_mqtt.append(self)
        await stop_soon(self, *args, **kwargs)

    monkeypatch.setattr(Viewer, "club_page", slow)
    monkeypatch.setattr(RetainedSnapshots, "stop_soon", counted_stop_soon)

    async def run() -> int | None:
        settings = Settings(clubs=SETTINGS.clubs, bind="127.0.0.1", http_port=0)
        running = await start_viewer(settings)
        # The client waits longer than the test: only the server can end the request in time.
        asking = asyncio.create_task(
            asyncio.to_thread(_status, f"{running.url}/clubs/alpha", timeout=60)
        )
        await asyncio.wait_for(started.wait(), 10)
        await running.stop(within=within)
        # stop() may return before a loaded machine got that far; the server's task goes on.
        await asyncio.wait_for(asyncio.shield(running.task), 10)
        assert len(stopped_mqtt) == 1, "the lifespan's shutdown did not run"
        return await asyncio.wait_for(asking, 10)

    with caplog.at_level(logging.DEBUG, logger="uvicorn.error"):
        assert asyncio.run(run()) in (500, None)
    assert _uvicorn_errors(caplog) == [], [r.getMessage() for r in _uvicorn_errors(caplog)]


def _status(url: str, timeout: float = 5) -> int | None:
    """The HTTP status of a GET, or None when the server dropped the connection."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


@pytest.mark.parametrize(
    ("last_line", "kept"),
    [
        ("asyncio.exceptions.CancelledError", False),
        ("KeyboardInterrupt", False),
        ("ValueError: a real fault", True),
        ("RuntimeError: CancelledError in a message", True),
    ],
)
def test_only_a_stop_is_kept_out_of_uvicorns_error_log(last_line: str, kept: bool) -> None:
    from viewer.server import _not_a_stop

    text = f'Traceback (most recent call last):\n  File "x.py", line 1, in f\n{last_line}\n'
    record = logging.LogRecord("uvicorn.error", logging.ERROR, "on.py", 1, text, None, None)
    assert _not_a_stop(record) is kept


def test_a_list_of_public_websocket_urls_goes_to_the_pages_and_each_origin_to_the_csp() -> None:
    nodes = [
        "wss://n1.example.org/mqtt",
        "wss://n2.example.org:8443/mqtt",
        "ws://10.0.0.3:9001/mqtt",
    ]
    settings = Settings(clubs=SETTINGS.clubs, public_ws_url=",".join(nodes))
    response = TestClient(create_app(settings)).get("/clubs/alpha")
    assert page_config(response.text)["wsUrls"] == nodes
    csp = response.headers["content-security-policy"]
    assert (
        "connect-src 'self' wss://n1.example.org wss://n2.example.org:8443 ws://10.0.0.3:9001;"
        in csp
    )
