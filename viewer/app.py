"""The pages and the app: the clubs, a club's page with its live section, the phone scorer,
the TV display and the stream overlay, plus the routes of viewer/embed.py, viewer/record.py,
viewer/session.py and viewer/api.py, put together by :func:`create_app`.

The server renders page shells. Every page subscribes to the broker itself over
MQTT-over-WebSocket (mqtt.js + our ``static/live.js``) and renders the service's snapshots;
the rules stay in Python, in the scorer service. So that a page shows the score at once, the
server also follows the retained snapshots (``viewer/snapshots.py``) and puts the club's
current one into the page as a JSON data block, which live.js renders before mqtt.js has
loaded; MQTT then takes over with the usual rule (newer rev or another match wins)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from broker.limits import CONNECT_TIMEOUT
from scorer import topics
from scorer.config import Club, Settings
from scorer.ws_urls import page_ws_urls
from viewer import api, session
from viewer import record as record_pages
from viewer.assets import (
    MQTT_JS,
    MQTT_JS_NAME,
    TEMPLATES_DIR,
    StaticAsset,
    collect_assets,
    static_response,
    static_url,
)
from viewer.embed import Embed
from viewer.headers import security_headers
from viewer.i18n import LANG_COOKIE, STRINGS, browser_strings, pick_language
from viewer.overlay import OVERLAY_DEFAULTS, OVERLAY_POSITIONS, OVERLAY_SCALE, overlay_options
from viewer.snapshots import RetainedSnapshots, viewer_broker_url
from viewer.tables import (
    BadTable,
    chosen_table,
    club_tables,
    record_table_label,
    shows_table_column,
    table_topics,
)

log = logging.getLogger("rallycast.viewer")

# How long a page keeps the WebSocket it opened early (static/preconnect.js) for mqtt.js, in
# ms: half the broker's CONNECT deadline, so mqtt.js never gets a socket the broker is about
# to drop, and has the other half to write its CONNECT.
EARLY_SOCKET_MS = int(CONNECT_TIMEOUT * 1000 / 2)


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
        return static_url(self.assets, name)

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
        embed: tuple[tuple[str, int], ...] = (),
        table: int = 1,
        **context: Any,
    ) -> Response:
        """``embed``: the (club, table)s whose current snapshot goes into the page (as
        ``{"<the table's game topic>": snapshot}`` in the ``rc-snapshot`` JSON block).
        ``table``: the club's table the page follows (its ``topics`` in the config block)."""
        language, remember = pick_language(request)
        config = {
            "page": page,
            "lang": language,
            # The broker's URLs for this page (scorer/ws_urls.py); the browser uses them as
            # they are (preconnect.js).
            "wsUrls": page_ws_urls(self.settings, request.url.scheme, request.url.hostname or ""),
            "wsPort": self.settings.ws_port,
            "earlySocketMs": EARLY_SOCKET_MS,
            "statusTopic": topics.SCORER_STATUS,
            "strings": browser_strings(language),
            **(browser or {}),
        }
        words = STRINGS[language]
        tables: list[dict[str, Any]] = []
        if club is not None:
            tables = club_tables(club, words)
            config["club"] = {"id": club.id, "name": club.name}
            # The page's table: its topics, number and name; every table of the club, for
            # the club page's cards and the scorer's choice; the two filters that follow
            # every table (docs/protocol.md, "Tables").
            config["topics"] = table_topics(club, table)
            config["table"] = {"table": table, "name": tables[table - 1]["name"]}
            config["tables"] = tables
            config["gameFilters"] = topics.club_game_filters(club.id)
        response = self.templates.TemplateResponse(
            request,
            template,
            {
                "t": words,
                "lang": language,
                "page": page,
                "club": club,
                "tables": tables,
                "table": table,
                "table_label": (lambda table_id: record_table_label(club, table_id, words))
                if club is not None
                else str,
                "shows_table_column": lambda rows: shows_table_column(
                    club, (row.table for row in rows)
                ),
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

    def current_snapshots(self, wanted: tuple[tuple[str, int], ...]) -> dict[str, Any]:
        """``{game topic: snapshot}`` of the (club, table)s the viewer holds a snapshot of now;
        empty when it is not following the broker (then the page works from MQTT alone, as it
        always did)."""
        if self.snapshots is None or self.mqtt_js_missing:
            return {}
        found = {topics.game(c, t): self.snapshots.snapshot(c, t) for c, t in wanted}
        return {topic: snapshot for topic, snapshot in found.items() if snapshot is not None}

    def table_or_page(self, request: Request, club: Club) -> tuple[int | None, Response | None]:
        """``(table, None)`` for the URL's ``?table=`` (None when it gives none), or
        ``(None, the 400/404 page)`` that says what is wrong and links the club's tables."""
        try:
            return chosen_table(
                club, request.query_params, STRINGS[pick_language(request)[0]]
            ), None
        except BadTable as exc:
            page = self.render(
                request, "error.html", page="error", status_code=exc.status, title=exc.title,
                problems=exc.problems, links=exc.links,
            )  # fmt: skip
            return None, page

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
        # Each club's table topics (table 1 first): a club is "on" while any table has a match.
        clubs = [
            {
                "id": c.id,
                "name": c.name,
                "topics": [topics.game(c.id, n) for n in range(1, c.tables + 1)],
            }
            for c in self.settings.clubs
        ]
        return self.render(
            request,
            "index.html",
            page="index",
            browser={
                "clubs": clubs,
                "gamesTopic": topics.ALL_GAMES,
                "tablesTopic": topics.ALL_TABLE_GAMES,
            },
            embed=tuple((c.id, n) for c in self.settings.clubs for n in range(1, c.tables + 1)),
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
            request, "club.html", page="club", club=club, recent=recent,
            embed=tuple((club.id, n) for n in range(1, club.tables + 1)),
            ladder=ladder, local_time=record_pages.local_time, duration=record_pages.duration,
        )  # fmt: skip

    async def score_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        asked, bad = self.table_or_page(request, club)
        if bad is not None:
            return bad
        names = (
            await run_in_threadpool(self.record.reader.players, club.id, "", 200)
            if self.record is not None
            else []
        )
        # The scorer's password is typed on the page: never let another site frame it.
        # "tokens": this viewer can issue device tokens (viewer/session.py). "askedTable": the
        # URL's ?table= (else the page takes the table this device chose last, or 1).
        browser = {"tokens": session.tokens_available(self.settings), "askedTable": asked}
        return self.render(
            request, "score.html", page="score", club=club, frame_ancestors="'none'",
            player_names=names, browser=browser, table=asked or 1,
        )  # fmt: skip

    async def display_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        table, bad = self.table_or_page(request, club)
        if bad is not None:
            return bad
        table = table or 1
        return self.render(
            request, "display.html", page="display", club=club, frame_ancestors="*",
            embed=((club.id, table),), table=table,
        )  # fmt: skip

    async def overlay_page(self, request: Request) -> Response:
        club = self.club_or_404(request)
        table, bad = self.table_or_page(request, club)
        if bad is not None:
            return bad
        table = table or 1
        options, problems = overlay_options(request.query_params)
        if problems:
            return self.render(
                request, "error.html", page="error", status_code=400,
                title=STRINGS[pick_language(request)[0]]["bad_overlay"], problems=problems,
                help_url=f"/clubs/{club.id}/overlay/help",
            )  # fmt: skip
        return self.render(
            request, "overlay.html", page="overlay", club=club, frame_ancestors="*",
            browser={"overlay": options}, embed=((club.id, table),), table=table,
        )  # fmt: skip

    async def overlay_help(self, request: Request) -> Response:
        club = self.club_or_404(request)
        return self.render(
            request, "overlay_help.html", page="overlay-help", club=club,
            positions=OVERLAY_POSITIONS, defaults=OVERLAY_DEFAULTS, scale_range=OVERLAY_SCALE,
            base=f"{request.base_url}clubs/{club.id}/overlay",
        )  # fmt: skip

    async def static_file(self, request: Request) -> Response:
        return static_response(self.assets, request)

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
