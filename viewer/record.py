"""The record pages and the club's JSON API (docs/history.md, docs/api.md).

Pages: ``/clubs/<club>/matches`` (ended matches, newest first, paged, ``?player=``),
``/clubs/<club>/matches/<match_id>`` (result, games, charts, statistics) with ``.csv`` and
``.json`` downloads, ``/clubs/<club>/matches.csv|.json`` (the club's matches),
``/clubs/<club>/players/<name>`` (matches, head-to-head, rating).

API handlers (served by viewer/api.py, with its CORS rule and error shape):
``/api/clubs/<club>/matches``, ``/api/clubs/<club>/matches/<match_id>``,
``/api/clubs/<club>/players?prefix=`` (names for the start form's autocomplete),
``/api/clubs/<club>/ladder``. ``/api/clubs/<club>/live`` is viewer/embed.py's.

Every number shown comes from the record (scorer/record.py) or from the log through the
engine (scorer/stats.py); the pages compute no score. The reads are synchronous SQLite, so
the handlers run in Starlette's thread pool.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scorer import export
from scorer.engine import Refused
from scorer.ladder import Rung, ladder
from scorer.record import PAGE_SIZE, MatchRow, RecordReader
from scorer.stats import match_stats
from viewer.api import ApiError, club_or_error
from viewer.charts import lead_chart
from viewer.i18n import STRINGS, pick_language

if TYPE_CHECKING:
    from viewer.app import Viewer

RECENT = 5  # matches in the club page's "Recent results"
API_PAGE_MAX = 100
MAX_PAGE = 100_000


def local_time(at: float | None) -> str:
    """The club machine's local time, ``2026-11-29 18:05`` (the club's clock)."""
    return "" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Record:
    """The record's routes, bound to one viewer (its settings, templates and snapshots)."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.reader = RecordReader(viewer.settings.data_dir)
        self._ladder: dict[str, tuple[tuple[int, float], list[Rung]]] = {}

    # --- shared reads ---

    def ladder(self, club_id: str) -> list[Rung]:
        """The club's ladder, computed again only when a finished match was added/removed."""
        version = self.reader.version(club_id)
        cached = self._ladder.get(club_id)
        if cached is None or cached[0] != version:
            cached = (version, ladder(self.reader.ladder_results(club_id)))
            self._ladder[club_id] = cached
        return cached[1]

    def recent(self, club_id: str) -> list[MatchRow]:
        return self.reader.matches(club_id, per_page=RECENT)[0]

    def _match_or_404(self, club_id: str, match_id: str) -> tuple[MatchRow, dict, list]:
        row = self.reader.match(club_id, match_id)
        if row is None:
            raise HTTPException(404)
        log = self.reader.log(match_id)
        try:
            stats = match_stats(match_id, log)
        except Refused:
            raise HTTPException(404) from None  # the log is gone (deleted meanwhile)
        return row, stats, log

    @staticmethod
    def _page(request: Request) -> int:
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            raise HTTPException(400) from None
        if not 1 <= page <= MAX_PAGE:
            raise HTTPException(400)
        return page

    # --- pages ---

    async def matches_page(self, request: Request) -> Response:
        club = self.viewer.club_or_404(request)
        page = self._page(request)
        player = request.query_params.get("player", "").strip() or None
        rows, total = await run_in_threadpool(
            self.reader.matches, club.id, page=page, player=player
        )
        pages = max(1, -(-total // PAGE_SIZE))
        return self.viewer.render(
            request, "matches.html", page="matches", club=club, rows=rows, total=total,
            page_no=page, pages=pages, player=player, local_time=local_time, duration=duration,
        )  # fmt: skip

    async def match_page(self, request: Request) -> Response:
        club = self.viewer.club_or_404(request)
        match_id = request.path_params["match_id"]
        row, stats, _ = await run_in_threadpool(self._match_or_404, club.id, match_id)
        words = STRINGS[pick_language(request)[0]]
        charts = [
            lead_chart(
                game,
                stats["players"],
                {
                    "title": words["chart_title"].format(n=game["game_no"]),
                    "served": words["served"],
                },
            )
            for game in stats["games"]
        ]
        return self.viewer.render(
            request, "match.html", page="match", club=club, row=row, stats=stats,
            charts=charts, local_time=local_time, duration=duration,
        )  # fmt: skip

    async def player_page(self, request: Request) -> Response:
        club = self.viewer.club_or_404(request)
        name = request.path_params["name"]
        page = self._page(request)

        def read() -> tuple[Any, ...]:
            rows, total = self.reader.matches(club.id, page=page, player=name)
            return rows, total, self.reader.head_to_head(club.id, name), self.ladder(club.id)

        rows, total, h2h, rungs = await run_in_threadpool(read)
        if total == 0:
            raise HTTPException(404)
        rung = next((r for r in rungs if r.name == name), None)
        place = rungs.index(rung) + 1 if rung else None
        return self.viewer.render(
            request, "player.html", page="player", club=club, name=name, rows=rows,
            total=total, page_no=page, pages=max(1, -(-total // PAGE_SIZE)), h2h=h2h,
            rung=rung, place=place, local_time=local_time, duration=duration,
        )  # fmt: skip

    # --- downloads ---

    async def match_download(self, request: Request) -> Response:
        club = self.viewer.club_or_404(request)
        match_id, kind = request.path_params["match_id"], request.path_params["kind"]
        row, stats, log = await run_in_threadpool(self._match_or_404, club.id, match_id)
        if kind == "csv":
            return _download(export.match_csv(stats), "text/csv", f"{match_id}.csv")
        return _download(export.match_json(row, stats, log), "application/json", f"{match_id}.json")

    async def club_download(self, request: Request) -> Response:
        club = self.viewer.club_or_404(request)
        kind = request.path_params["kind"]
        rows, _ = await run_in_threadpool(
            self.reader.matches, club.id, per_page=10**9
        )  # the whole record: a download, not a page
        if kind == "csv":
            return _download(export.club_csv(rows), "text/csv", f"{club.id}-matches.csv")
        return _download(
            export.club_json(club.id, rows), "application/json", f"{club.id}-matches.json"
        )

    # --- API (viewer/api.py routes these and adds CORS; an ApiError becomes the error JSON) ---

    async def api_matches(self, request: Request) -> Response:
        club = club_or_error(self.viewer.settings, request)
        return JSONResponse(await run_in_threadpool(self._api_matches, request, club.id))

    async def api_match(self, request: Request) -> Response:
        club = club_or_error(self.viewer.settings, request)
        match_id = request.path_params["match_id"]
        try:
            row, stats, log = await run_in_threadpool(self._match_or_404, club.id, match_id)
        except HTTPException:
            raise ApiError(404, "no_match", "there is no such ended match") from None
        return JSONResponse(export.match_document(row, stats, log))

    async def api_players(self, request: Request) -> Response:
        club = club_or_error(self.viewer.settings, request)
        prefix = request.query_params.get("prefix", "")[:64]
        names = await run_in_threadpool(self.reader.players, club.id, prefix)
        return JSONResponse({"club": club.id, "players": names})

    async def api_ladder(self, request: Request) -> Response:
        club = club_or_error(self.viewer.settings, request)
        rungs = await run_in_threadpool(self.ladder, club.id)
        return JSONResponse({"club": club.id, "ladder": [_rung(r) for r in rungs]})

    def _api_matches(self, request: Request, club_id: str) -> dict[str, Any]:
        try:
            page = int(request.query_params.get("page", "1"))
            per_page = int(request.query_params.get("per_page", str(PAGE_SIZE)))
        except ValueError:
            raise ApiError(400, "bad_request", "page and per_page are whole numbers") from None
        if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= API_PAGE_MAX:
            raise ApiError(
                400, "bad_request", f"page is 1 or more; per_page is 1 to {API_PAGE_MAX}"
            )
        player = request.query_params.get("player") or None
        rows, total = self.reader.matches(club_id, page=page, per_page=per_page, player=player)
        return {
            "club": club_id,
            "page": page,
            "per_page": per_page,
            "total": total,
            "matches": [row.as_json() for row in rows],
        }


def _rung(rung: Rung) -> dict[str, Any]:
    return {"name": rung.name, "rating": round(rung.rating), "played": rung.played,
            "won": rung.won}  # fmt: skip


def _download(text: str, media_type: str, filename: str) -> Response:
    return Response(
        text,
        media_type=f"{media_type}; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


def routes(viewer: Viewer) -> tuple[Record, list[Route]]:
    """The record's pages and downloads for ``create_app``; its API handlers are routed by
    viewer/api.py."""
    record = Record(viewer)
    viewer.record = record  # the club page's "Recent results" and ladder
    return record, [
        Route("/clubs/{club_id}/matches", record.matches_page),
        Route("/clubs/{club_id}/matches.{kind:str}", _only(record.club_download)),
        Route("/clubs/{club_id}/matches/{match_id}.{kind:str}", _only(record.match_download)),
        Route("/clubs/{club_id}/matches/{match_id}", record.match_page),
        Route("/clubs/{club_id}/players/{name:path}", record.player_page),
    ]


def _only(handler: Any) -> Any:
    async def download(request: Request) -> Response:
        if request.path_params["kind"] not in ("csv", "json"):
            raise HTTPException(404)
        return await handler(request)

    return download
