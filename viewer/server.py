"""The live pages: the clubs, a club's page with its live section, the phone scorer, the TV
display and the stream overlay (``rallycast viewer``; also run in-process by ``rallycast up``).

The server renders page shells. Every page subscribes to the broker itself over
MQTT-over-WebSocket (mqtt.js + our ``static/live.js``) and renders the service's snapshots;
the rules stay in Python, in the scorer service. So that a page shows the score at once, the
server also follows the retained snapshots (``viewer/snapshots.py``) and puts the club's
current one into the page as a JSON data block, which live.js renders before mqtt.js has
loaded; MQTT then takes over with the usual rule (newer rev or another match wins)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from scorer import topics
from scorer.client import join_urls, parse_broker_url
from scorer.config import (
    Club,
    Settings,
    bind_description,
    load_settings,
    local_host,
    url_host,
)
from scorer.logs import setup_logging
from viewer import api, session
from viewer import record as record_pages
from viewer.embed import Embed
from viewer.i18n import LANG_COOKIE, STRINGS, browser_strings, pick_language
from viewer.snapshots import RetainedSnapshots, viewer_broker_url

log = logging.getLogger("rallycast.viewer")

VIEWER_DIR = Path(__file__).resolve().parent
STATIC_DIR = VIEWER_DIR / "static"
TEMPLATES_DIR = VIEWER_DIR / "templates"
# mqtt.js comes from npm (viewer/package.json, installed by `./dev up` with `npm ci`).
MQTT_JS = VIEWER_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
MQTT_JS_NAME = "vendor/mqtt.min.js"

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class StaticAsset:
    path: Path
    digest: str  # first 12 hex digits of the content's sha256: the URL changes with the file


def collect_assets(
    static_dir: Path = STATIC_DIR, mqtt_js: Path = MQTT_JS
) -> dict[str, StaticAsset]:
    """Every file the pages may load, by its name under /static/<digest>/. Read once at start."""
    assets: dict[str, StaticAsset] = {}
    files = [(p.relative_to(static_dir).as_posix(), p) for p in sorted(static_dir.rglob("*"))]
    if mqtt_js.is_file():
        files.append((MQTT_JS_NAME, mqtt_js))
    for name, path in files:
        if path.is_file() and path.suffix in CONTENT_TYPES:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            assets[name] = StaticAsset(path, digest)
    return assets


# Overlay URL parameters. Colours are limited to forms that cannot carry anything but a colour.
COLOUR_RE = re.compile(r"^(#[0-9a-fA-F]{3,4}|#[0-9a-fA-F]{6}|#[0-9a-fA-F]{8}|[a-zA-Z]{3,20})$")
OVERLAY_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "top", "bottom")
OVERLAY_DEFAULTS = {"bg": "#000000b3", "fg": "white", "accent": "#ffcc00", "pos": "top-left"}
OVERLAY_SCALE = (0.25, 5.0)


def overlay_options(query: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The overlay's look from its URL, and the list of parameters that are not valid."""
    options: dict[str, Any] = dict(OVERLAY_DEFAULTS, scale=1.0)
    problems: list[str] = []
    for name in ("bg", "fg", "accent"):
        if name in query:
            if COLOUR_RE.fullmatch(query[name]):
                options[name] = query[name]
            else:
                # A browser takes a typed "#" as the start of the fragment: bg= arrives empty.
                problems.append(
                    f"{name}: a colour like #000000cc, #fff or white; in a URL write # as %23"
                    f" ({name}=%23000000cc)"
                )
    if "pos" in query:
        if query["pos"] in OVERLAY_POSITIONS:
            options["pos"] = query["pos"]
        else:
            problems.append(f"pos: one of {', '.join(OVERLAY_POSITIONS)}")
    if "scale" in query:
        try:
            scale = float(query["scale"])
            if not OVERLAY_SCALE[0] <= scale <= OVERLAY_SCALE[1]:
                raise ValueError
            options["scale"] = scale
        except ValueError:
            problems.append(f"scale: a number from {OVERLAY_SCALE[0]} to {OVERLAY_SCALE[1]}")
    return options, problems


HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+$|^[0-9A-Fa-f:.]+$")


def websocket_sources(settings: Settings, request: Request) -> str:
    """The CSP connect-src for the broker's WebSocket: the configured public URL's origin, or
    the page's own host on ws_port (what live.js computes in the browser)."""
    if settings.public_ws_url:  # one URL, or a cluster's nodes (comma-separated)
        origins = {}
        for url in public_ws_urls(settings):
            parts = urlsplit(url)
            origins[f"{parts.scheme}://{parts.netloc}"] = None
        return " ".join(origins)
    host = request.url.hostname or ""
    if not HOST_RE.fullmatch(host):
        return "ws: wss:"
    host = url_host(host)
    return f"ws://{host}:{settings.ws_port} wss://{host}:{settings.ws_port}"


def public_ws_urls(settings: Settings) -> list[str]:
    """The WebSocket URLs of ``public_ws_url`` (a cluster's nodes, comma-separated); [] when
    the pages use their own host on ws_port."""
    return [url.strip() for url in settings.public_ws_url.split(",") if url.strip()]


def security_headers(settings: Settings, request: Request, frame_ancestors: str) -> dict[str, str]:
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",  # no inline script: the page's data travels as JSON
            # mqtt.js runs its keepalive timers in a blob: worker, so a background tab's
            # timers are not throttled into a disconnect.
            "worker-src blob:",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {websocket_sources(settings, request)}",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {frame_ancestors}",
        )
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-cache",
        "Vary": "Accept-Language, Cookie",
    }


@dataclass
class Viewer:
    settings: Settings
    assets: dict[str, StaticAsset] = field(default_factory=collect_assets)
    templates: Jinja2Templates = field(
        default_factory=lambda: Jinja2Templates(directory=str(TEMPLATES_DIR))
    )

    # The retained snapshots, followed while the app runs (its lifespan starts and stops it).
    snapshots: RetainedSnapshots | None = None
    # The record of play's routes (viewer/record.py), set by create_app.
    record: Any = None

    def __post_init__(self) -> None:
        if self.snapshots is None:
            self.snapshots = RetainedSnapshots(viewer_broker_url(self.settings))
        if MQTT_JS_NAME not in self.assets:
            log.warning("mqtt.js missing (%s): run ./dev up (npm ci in viewer/)", MQTT_JS)

    @property
    def mqtt_js_missing(self) -> bool:
        return MQTT_JS_NAME not in self.assets

    def static_url(self, name: str) -> str:
        return f"/static/{self.assets[name].digest}/{name}"

    def render(
        self,
        request: Request,
        template: str,
        *,
        page: str,
        club: Club | None = None,
        browser: dict[str, Any] | None = None,
        status_code: int = 200,
        frame_ancestors: str = "'self'",
        embed: tuple[str, ...] = (),
        **context: Any,
    ) -> Response:
        """``embed``: the clubs whose current snapshot goes into the page (as
        ``{"clubs/<id>/game": snapshot}`` in the ``rc-snapshot`` JSON block)."""
        language, remember = pick_language(request)
        config = {
            "page": page,
            "lang": language,
            "wsUrls": public_ws_urls(self.settings),
            "wsPort": self.settings.ws_port,
            "statusTopic": topics.SCORER_STATUS,
            "strings": browser_strings(language),
            **(browser or {}),
        }
        if club is not None:
            config["club"] = {"id": club.id, "name": club.name}
            config["topics"] = {
                "game": topics.game(club.id),
                "cmd": topics.commands(club.id),
                "reply": topics.replies(club.id),
            }
        response = self.templates.TemplateResponse(
            request,
            template,
            {
                "t": STRINGS[language],
                "lang": language,
                "page": page,
                "club": club,
                "config": config,
                "static_url": self.static_url,
                "mqtt_js_missing": self.mqtt_js_missing,
                "mqtt_js_name": MQTT_JS_NAME,
                "snapshots": self.current_snapshots(embed),
                "scorer_status": self.snapshots.scorer_status if self.snapshots else None,
                **context,
            },
            status_code=status_code,
            headers=security_headers(self.settings, request, frame_ancestors),
        )
        if remember:
            response.set_cookie(LANG_COOKIE, language, max_age=365 * 86400, samesite="lax")
        return response

    def current_snapshots(self, club_ids: tuple[str, ...]) -> dict[str, Any]:
        """The clubs' snapshots the viewer holds now; empty when it is not following the broker
        (then the page works from MQTT alone, as it always did)."""
        if self.snapshots is None or self.mqtt_js_missing:
            return {}
        found = {topics.game(c): self.snapshots.snapshot(c) for c in club_ids}
        return {topic: snapshot for topic, snapshot in found.items() if snapshot is not None}

    def club_or_404(self, request: Request) -> Club:
        """The club of the URL; a club id typed in another case (``/clubs/Demo``) redirects
        to the club's own spelling, anything else is a 404 page."""
        given = request.path_params["club_id"]
        club = self.settings.club(given)
        if club is None:
            same = [c for c in self.settings.clubs if c.id.lower() == given.lower()]
            if len(same) == 1:
                rest = request.url.path.split("/", 3)[3:]  # "", "clubs", id, rest
                location = f"/clubs/{same[0].id}" + (f"/{rest[0]}" if rest else "")
                if request.url.query:
                    location += f"?{request.url.query}"
                raise HTTPException(308, headers={"Location": location})
            raise HTTPException(404)
        return club

    # --- pages ---

    async def index(self, request: Request) -> Response:
        clubs = [{"id": c.id, "name": c.name} for c in self.settings.clubs]
        return self.render(
            request,
            "index.html",
            page="index",
            browser={"clubs": clubs, "gamesTopic": topics.ALL_GAMES},
            embed=tuple(c.id for c in self.settings.clubs),
        )

    async def club_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        recent, ladder = (
            await run_in_threadpool(
                lambda: (self.record.recent(club.id), self.record.ladder(club.id))
            )
            if self.record is not None
            else ([], [])
        )
        return self.render(
            request, "club.html", page="club", club=club, embed=(club.id,), recent=recent,
            ladder=ladder, local_time=record_pages.local_time, duration=record_pages.duration,
        )  # fmt: skip

    async def score_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        names = (
            await run_in_threadpool(self.record.reader.players, club.id, "", 200)
            if self.record is not None
            else []
        )
        # The scorer's password is typed on the page: never let another site frame it.
        # "tokens": this viewer can issue device tokens (viewer/session.py).
        return self.render(
            request, "score.html", page="score", club=club, frame_ancestors="'none'",
            player_names=names, browser={"tokens": session.tokens_available(self.settings)},
        )  # fmt: skip

    async def display_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        return self.render(
            request, "display.html", page="display", club=club, frame_ancestors="*",
            embed=(club.id,),
        )  # fmt: skip

    async def overlay_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        options, problems = overlay_options(request.query_params)
        if problems:
            return self.render(
                request, "error.html", page="error", status_code=400,
                title=STRINGS[pick_language(request)[0]]["bad_overlay"], problems=problems,
                help_url=f"/clubs/{club.id}/overlay/help",
            )  # fmt: skip
        return self.render(
            request, "overlay.html", page="overlay", club=club, frame_ancestors="*",
            browser={"overlay": options}, embed=(club.id,),
        )  # fmt: skip

    async def overlay_help(self, request: Request) -> Response:
        club = self.club_or_404(request)
        return self.render(
            request, "overlay_help.html", page="overlay-help", club=club,
            positions=OVERLAY_POSITIONS, defaults=OVERLAY_DEFAULTS, scale_range=OVERLAY_SCALE,
            base=f"{request.base_url}clubs/{club.id}/overlay",
        )  # fmt: skip

    async def static_file(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            raise HTTPException(404)
        # An old digest still gets today's file, but must not be cached as if it were that one.
        fresh = request.path_params["digest"] == asset.digest
        return FileResponse(
            asset.path,
            media_type=CONTENT_TYPES[asset.path.suffix],
            headers={"Cache-Control": IMMUTABLE if fresh else "no-cache"},
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 308 and exc.headers:
            return RedirectResponse(exc.headers["Location"], status_code=308)
        if request.url.path.startswith(api.PREFIX):
            return api.not_served(self.settings, request, exc)  # JSON, as every API answer
        status = getattr(exc, "status_code", 404)
        language = pick_language(request)[0]
        title = STRINGS[language]["no_club"] if status == 404 else str(status)
        return self.render(request, "error.html", page="error", status_code=status, title=title)


def create_app(settings: Settings, *, viewer: Viewer | None = None) -> Starlette:
    viewer = viewer or Viewer(settings)
    routes = [
        Route("/", viewer.index),
        # "/clubs" alone lists nothing of its own: the index lists the clubs.
        Route("/clubs", lambda _request: RedirectResponse("/", status_code=308)),
        Route("/clubs/", lambda _request: RedirectResponse("/", status_code=308)),
        Route("/clubs/{club_id}", viewer.club_page),
        Route("/clubs/{club_id}/score", viewer.score_page),
        Route("/clubs/{club_id}/display", viewer.display_page),
        Route("/clubs/{club_id}/overlay", viewer.overlay_page),
        Route("/clubs/{club_id}/overlay/help", viewer.overlay_help),
        Route("/static/{digest}/{name:path}", viewer.static_file),
    ]
    embed = Embed(viewer)
    record, record_routes = record_pages.routes(viewer)
    routes += [
        *embed.routes(),  # the live score on other sites (viewer/embed.py)
        *record_routes,  # the record of play's pages and downloads (viewer/record.py)
        *session.routes(viewer.settings),  # the scorer page's sign-in (viewer/session.py)
        # The JSON API, one route per resource (viewer/api.py, docs/api.md).
        *api.routes(viewer.settings, live=embed.live_api, record=record),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Follow the retained snapshots while serving; a broker that is not there (yet) only
        # means pages without a server-side score until it is.
        assert viewer.snapshots is not None
        await viewer.snapshots.start_and_wait()
        try:
            yield
        finally:
            await viewer.snapshots.stop_soon()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(GZipMiddleware, minimum_size=500, compresslevel=6)],
        exception_handlers={HTTPException: viewer.not_found},
    )
    app.state.viewer = viewer
    return app


# --- running it ---

STOP_WITHIN = 0.8  # seconds: `rallycast up` promises to stop within 2 s


@dataclass
class RunningViewer:
    """A viewer started by :func:`start_viewer`; ``port`` is the real one when settings say 0."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{url_host(local_host(self.host))}:{self.port}"

    async def stop(self, within: float = STOP_WITHIN) -> None:
        """Stop serving within about ``within`` seconds: uvicorn's graceful stop first, then
        its forced one (open connections dropped); the lifespan's shutdown always runs."""
        self.server.should_exit = True
        done, _ = await asyncio.wait({self.task}, timeout=within)
        if not done:
            self.server.force_exit = True
            await asyncio.wait({self.task}, timeout=0.3)
        if self.task.done() and not self.task.cancelled():
            self.task.exception()  # seen: a stop is not an error to report later


def _not_a_stop(record: logging.LogRecord) -> bool:
    """uvicorn logs the lifespan task's CancelledError (and a KeyboardInterrupt) as an ERROR
    with a traceback (as text, uvicorn/lifespan/on.py) when a stop cancels it mid-shutdown:
    that is a stop, not an error."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
        return False
    text = str(record.msg)
    return not (
        text.startswith("Traceback")
        and text.rstrip().rsplit("\n", 1)[-1].strip()
        in ("asyncio.exceptions.CancelledError", "KeyboardInterrupt")
    )


def uvicorn_server(settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # the process's logging setup stays as it is (rallycast up embeds us)
        access_log=False,
        lifespan="on",  # starts and stops the viewer's own MQTT client
        proxy_headers=True,
        timeout_graceful_shutdown=0.5,  # open connections, then forced (STOP_WITHIN)
    )
    error_log = logging.getLogger("uvicorn.error")
    if _not_a_stop not in error_log.filters:
        error_log.addFilter(_not_a_stop)
    if settings.log_level.upper() != "DEBUG":
        # "Uvicorn running on ... (Press CTRL+C to quit)" is not true inside `rallycast up`:
        # the viewer logs its own URL; uvicorn keeps its warnings and errors.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the caller owns signals
    return server


def bound_port(server: uvicorn.Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


async def _run_uvicorn(server: uvicorn.Server, where: str) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn calls sys.exit when it cannot start (e.g. the port is taken); a SystemExit
        # escaping a task would stop the whole event loop of `rallycast up`. uvicorn keeps
        # the OSError to itself: binding again tells which (port in use, no such address).
        raise _bind_error(server.config.host, server.config.port, where) from None


def _bind_error(host: str, port: int, where: str) -> OSError:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        return OSError(exc.errno, f"the viewer could not listen on {where}: {exc.strerror}")
    return OSError(f"the viewer could not listen on {where}")


async def start_viewer(settings: Settings) -> RunningViewer:
    """Start the web server in the running loop; returns once it listens."""
    server = uvicorn_server(settings)
    task = asyncio.create_task(_run_uvicorn(server, f"{settings.bind}:{settings.http_port}"))
    while not server.started:
        if task.done():
            await task  # raises the OSError
            raise OSError("the viewer stopped before it started")
        await asyncio.sleep(0.01)
    running = RunningViewer(server, task, settings.bind, bound_port(server))
    log.info(
        "pages listening on %s, port %d (%s from this machine)",
        bind_description(settings.bind),
        running.port,
        running.url,
    )
    return running


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Serve the pages until cancelled (``rallycast up`` runs this beside the broker)."""
    running = await start_viewer(settings)
    if ready is not None:
        ready.set()
    try:
        await running.task
    finally:
        if not running.task.done():
            await running.stop()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", help="address to listen on (default: settings.bind)")
    parser.add_argument("--http-port", type=int, help="HTTP port (0 = any free port)")
    parser.add_argument("--ws-port", type=int, help="the broker's WebSocket port the pages use")
    parser.add_argument(
        "--public-ws-url",
        action="append",
        help="WebSocket URL the pages use (behind a proxy); a cluster's nodes as a"
        " comma-separated list or the option once per node",
    )
    parser.add_argument(
        "--url",
        action="append",
        help="the broker whose retained snapshots give each page its first score, as a"
        " spectator (default: the broker_url setting; user and password are not used)",
    )


def browser_ws(settings: Settings) -> str:
    """Where the browsers' mqtt.js connects, in words for the start line."""
    if settings.public_ws_url:
        return settings.public_ws_url
    return f"ws://<the page's host>:{settings.ws_port}/mqtt"


def main(args: argparse.Namespace) -> int:
    overrides = {
        "broker_url": join_urls(args.url),
        "bind": args.bind,
        "http_port": args.http_port,
        "ws_port": args.ws_port,
        "public_ws_url": join_urls(args.public_ws_url),
    }
    settings = load_settings(args.config, overrides=overrides)
    setup_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        running = await start_viewer(settings)
        print(
            f"Rallycast pages on {running.url}/ (listening on {bind_description(settings.bind)},"
            f" port {running.port})",
            flush=True,
        )
        for club in settings.clubs:
            print(f"  {club.name}: {running.url}/clubs/{club.id}", flush=True)
        # As the viewer connects: a spectator, so without the URL's user and password.
        following = replace(parse_broker_url(viewer_broker_url(settings)), user=None)
        print(
            f"  first scores from {following.url()}; browsers use {browser_ws(settings)}",
            flush=True,
        )
        # Ctrl-C / SIGTERM: a quiet stop (no KeyboardInterrupt through the event loop).
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running.task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not running.task.done():
            await running.stop()
        else:
            await running.task  # it ended by itself: say why

    try:
        asyncio.run(run())
        print("rallycast viewer: stopped", flush=True)
    except KeyboardInterrupt:
        print("rallycast viewer: stopped", flush=True)
    except OSError as exc:
        from broker.startup import listen_failure

        failure = listen_failure(
            exc, settings.http_port, "--http-port", "web server", settings.bind
        )
        print(f"rallycast viewer: {failure}", file=sys.stderr)
        return 1
    return 0
