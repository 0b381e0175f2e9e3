"""The live score on another website (docs/embed.md): the ``<rallycast-live>`` script, the JSON
API that gives it the first score, the iframe page for sites that cannot add scripts, the
snippet page a club copies from, and the QR code that opens the club page on a phone.

Cross-origin rules: the script and the QR code are for anyone (like the display page); the
JSON API (``viewer/api.py``, which serves ``live_api`` as ``/api/clubs/<id>/live``) answers
CORS only to ``settings.embed_origins`` (``"*"`` = any site), and the iframe page may be
framed by those origins only. Everything here is read-only and anonymous: the
same data any spectator reads from the broker."""

from __future__ import annotations

import functools
import io
import json
from typing import Any

import segno
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scorer import topics
from scorer.config import Settings
from scorer.ws_urls import ws_origin
from viewer.api import club_or_error
from viewer.assets import MQTT_JS_NAME, STATIC_DIR
from viewer.headers import security_headers
from viewer.i18n import LANGUAGES, STRINGS, pick_language
from viewer.tables import club_tables

# Words of the embed's own pages and messages (the element's buttons are in viewer/i18n.py,
# shared with the club page and the display).
EMBED_STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "unknown_club": "rallycast-live: there is no club {club}",
        "unknown_table": "rallycast-live: club {club} has no table {table}",
        "embed_title": "Put the live score on your website",
        "embed_script": "Any web page (one script and one element)",
        "embed_django": "Django template (the club page)",
        "embed_wordpress": "WordPress (a Custom HTML block)",
        "embed_iframe": "Without scripts (an iframe)",
        "embed_preview": "Live preview",
        "embed_copy": "Copy",
        "embed_copied": "Copied",
        "embed_csp": "Your site's Content-Security-Policy must allow",
        "embed_origins_note": "This server answers the score API for these sites (embed_origins):",
        "embed_origins_none": "none yet: add your site's origin to embed_origins (docs/embed.md)",
    },
    "ru": {
        "unknown_club": "rallycast-live: клуба {club} нет",
        "unknown_table": "rallycast-live: у клуба {club} нет стола {table}",
        "embed_title": "Живой счёт на сайте клуба",
        "embed_script": "Любая страница (один скрипт и один элемент)",
        "embed_django": "Шаблон Django (страница клуба)",
        "embed_wordpress": "WordPress (блок «Произвольный HTML»)",
        "embed_iframe": "Без скриптов (iframe)",
        "embed_preview": "Как это выглядит",
        "embed_copy": "Копировать",
        "embed_copied": "Скопировано",
        "embed_csp": "Content-Security-Policy сайта должна разрешать",
        "embed_origins_note": "API счёта отвечает этим сайтам (embed_origins):",
        "embed_origins_none": "пока никаким: добавьте адрес сайта в embed_origins (docs/embed.md)",
    },
}
ELEMENT_KEYS = (
    "live_on", "no_match", "game_scores", "game_no", "between_games", "won_by", "won_by_pair",
    "abandoned", "heading_friendly", "heading_match", "heading_finished", "heading_abandoned",
    "serves_one", "serves_to", "timeout_side", "game_to", "game_to_pair", "interval",
    "change_ends", "sound", "speech", "notify", "unknown_club", "best_of_n", "final_game",
    "unknown_table",
)  # fmt: skip


def element_strings() -> dict[str, dict[str, str]]:
    """{language: {key: text}} for the element, every language (the host page picks)."""
    merged = {lang: {**STRINGS[lang], **EMBED_STRINGS[lang]} for lang in LANGUAGES}
    return {lang: {key: merged[lang][key] for key in ELEMENT_KEYS} for lang in LANGUAGES}


def embed_script(settings: Settings, mqtt_js_url: str) -> bytes:
    """/embed.js: its settings line, then announce.js, scoreview.js (how a snapshot is shown,
    the same file as our pages'), then embed.js (one request)."""
    preamble = {
        "wsUrl": settings.public_ws_url,
        "wsPort": settings.ws_port,
        "mqttJs": mqtt_js_url,
        "strings": element_strings(),
    }
    parts = [
        "/* Rallycast live score for any web page: docs/embed.md */",
        f"window.RallycastEmbed = window.RallycastEmbed || {json.dumps(preamble)};",
        (STATIC_DIR / "announce.js").read_text("utf-8"),
        (STATIC_DIR / "scoreview.js").read_text("utf-8"),
        (STATIC_DIR / "embed.js").read_text("utf-8"),
    ]
    return "\n".join(parts).encode("utf-8")


def frame_ancestors(settings: Settings) -> str:
    """Who may frame the iframe page: this server and the embed origins."""
    if "*" in settings.embed_origins:
        return "*"
    return " ".join(("'self'", *settings.embed_origins))


def club_page_url(request: Request, club_id: str) -> str:
    """The club page's address as the browser that asked sees this server (proxy headers
    included: uvicorn runs with proxy_headers)."""
    return str(request.base_url).rstrip("/") + f"/clubs/{club_id}"


def qr_svg(url: str, title: str = "") -> bytes:
    """The QR code of ``url`` as SVG (segno; error correction M, the 4-module quiet zone of
    ISO/IEC 18004 so any phone camera reads it)."""
    code = segno.make(url, error="m")
    out = io.BytesIO()
    code.save(out, kind="svg", scale=8, border=4, xmldecl=False, title=title or url,
              dark="#000000", light="#ffffff")  # fmt: skip
    return out.getvalue()


@functools.lru_cache(maxsize=64)
def qr_inline(url: str, element_id: str, css_class: str, label: str) -> Markup:
    """The QR code of ``url`` as an inline <svg> for a page (not an <img>: a page's images
    are what a hostile name would try to create; the tests look for any). segno escapes the
    title; the id and class are ours."""
    code = segno.make(url, error="m")
    out = io.BytesIO()
    code.save(out, kind="svg", scale=1, border=4, xmldecl=False, omitsize=True, title=label,
              svgid=element_id, svgclass=css_class, dark="#000000", light="#ffffff")  # fmt: skip
    return Markup(out.getvalue().decode("utf-8"))


class Embed:
    """The routes; ``viewer`` is the running :class:`viewer.app.Viewer`."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.settings: Settings = viewer.settings
        mqtt_js = "" if viewer.mqtt_js_missing else viewer.static_url(MQTT_JS_NAME)
        self.script = embed_script(self.settings, mqtt_js)
        # {{ club_qr(request, club.id, "id", "class", "label") }} in the club page and the TV.
        viewer.templates.env.globals["club_qr"] = lambda request, club_id, *args: qr_inline(
            club_page_url(request, club_id), *args
        )

    def routes(self) -> list[Route]:
        return [
            Route("/embed.js", self.script_file),
            Route("/clubs/{club_id}/embed", self.frame_page),
            Route("/clubs/{club_id}/embed/snippet", self.snippet_page),
            Route("/clubs/{club_id}/qr.svg", self.qr),
        ]

    async def script_file(self, request: Request) -> Response:
        return Response(
            self.script,
            media_type="text/javascript; charset=utf-8",
            headers={
                # A stable URL for the snippet: short caching, so a new version arrives soon.
                "Cache-Control": "public, max-age=300",
                "Access-Control-Allow-Origin": "*",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def live_api(self, request: Request) -> Response:
        """``{"club": {"id", "name"}, "known": bool, "tables": [{"table": n, "name": str,
        "topic": str, "snapshot": <the retained snapshot> | null}, ...], "topic", "snapshot"}``:
        every table of the club in order (``name``: its configured name or "Table <n>");
        ``topic`` and ``snapshot`` at the top are table 1's, as before tables. ``known`` is
        false while the viewer is not following the broker (then null means "ask MQTT", not
        "no match"). Served as ``/api/clubs/<id>/live`` by viewer/api.py (CORS, errors: 404
        ``no_club``)."""
        club = club_or_error(self.settings, request)
        snapshots = self.viewer.snapshots
        known = snapshots is not None and snapshots.ready
        tables = [
            {
                "table": n,
                "name": club.table_name(n),
                "topic": topics.game(club.id, n),
                "snapshot": snapshots.snapshot(club.id, n) if known else None,
            }
            for n in range(1, club.tables + 1)
        ]
        body = {
            "club": {"id": club.id, "name": club.name},
            "topic": tables[0]["topic"],
            "known": known,
            "snapshot": tables[0]["snapshot"],
            "tables": tables,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def page(self, request: Request, template: str, frame: str, **context: Any) -> Response:
        club = self.viewer.club_or_404(request)
        language = pick_language(request)[0]
        return self.viewer.templates.TemplateResponse(
            request,
            template,
            {
                "t": {**STRINGS[language], **EMBED_STRINGS[language]},
                "lang": language,
                "club": club,
                "static_url": self.viewer.static_url,
                **context,
            },
            headers=security_headers(self.settings, request, frame),
        )

    async def frame_page(self, request: Request) -> Response:
        """The iframe page; ``?table=n`` shows the club's table n (400/404 page otherwise)."""
        club = self.viewer.club_or_404(request)
        table, bad = self.viewer.table_or_page(request, club)
        if bad is not None:
            return bad
        return self.page(
            request, "embed_frame.html", frame_ancestors(self.settings), table=table or 1
        )

    async def snippet_page(self, request: Request) -> Response:
        """The snippets for one table: ``?table=n`` (default 1; 400/404 page otherwise); a
        club with several tables gets a link to each table's snippets."""
        base = str(request.base_url).rstrip("/")
        club = self.viewer.club_or_404(request)
        table, bad = self.viewer.table_or_page(request, club)
        if bad is not None:
            return bad
        language = pick_language(request)[0]
        ws = ws_origin(self.settings, request.url.hostname or "")
        return self.page(
            request,
            "embed_snippet.html",
            "'self'",
            base=base,
            snippet_lang=language,
            ws_source=ws,
            origins=self.settings.embed_origins,
            club_url=club_page_url(request, club.id),
            table=table or 1,
            tables=club_tables(club, STRINGS[language]) if club.tables > 1 else [],
        )

    async def qr(self, request: Request) -> Response:
        club = self.viewer.club_or_404(request)
        url = club_page_url(request, club.id)
        return Response(
            qr_svg(url, f"{club.name}: {url}"),
            media_type="image/svg+xml",
            headers={
                "Content-Security-Policy": "default-src 'none'",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
                "Vary": "Host",
            },
        )
