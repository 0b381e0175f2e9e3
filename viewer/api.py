"""The club's JSON API (docs/api.md): every ``/api/`` route in one table, one CORS rule.

Routes (read-only, anonymous; ``GET``, and ``OPTIONS`` for a CORS preflight):

- ``/api/clubs/<club>/live``: the club's current snapshot, the shape the ``<rallycast-live>``
  element reads (``viewer/embed.py``);
- ``/api/clubs/<club>/matches``, ``/api/clubs/<club>/matches/<match_id>``,
  ``/api/clubs/<club>/players``, ``/api/clubs/<club>/ladder``: the record of play
  (``viewer/record.py``).

Cross-origin reads: a response carries ``Access-Control-Allow-Origin`` only for an Origin in
``settings.embed_origins`` (``"*"`` = any site), the one setting that also says who may frame
the iframe page. An error is ``{"error": <English text>, "code": <snake_case>}`` with the same
CORS headers (so a listed site can read why), also for a path under ``/api/`` that no route
serves (``404 not_found``) and a method other than GET (``405 method_not_allowed``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scorer.config import Club, Settings

Handler = Callable[[Request], Awaitable[Response]]
PREFIX = "/api/"


class ApiError(Exception):
    """An API refusal: HTTP ``status``, machine-readable ``code``, English ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def allowed_origin(settings: Settings, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for a request's Origin header, or None."""
    if not origin:
        return None
    if "*" in settings.embed_origins:
        return "*"
    return origin if origin.lower() in settings.embed_origins else None


def api_headers(settings: Settings, request: Request) -> dict[str, str]:
    """Headers every API answer carries: CORS for a listed origin, ``Vary: Origin`` (the
    answer depends on it), no sniffing, and ``no-cache`` unless the route says otherwise."""
    headers = {"Vary": "Origin", "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    allowed = allowed_origin(settings, request.headers.get("origin"))
    if allowed:
        headers["Access-Control-Allow-Origin"] = allowed
    return headers


def error_response(
    settings: Settings,
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """``{"error", "code"}`` with the API's headers (and ``headers``, e.g. Allow on a 405)."""
    return JSONResponse(
        {"error": message, "code": code},
        status_code=status,
        headers={**api_headers(settings, request), **(headers or {})},
    )


def club_or_error(settings: Settings, request: Request) -> Club:
    """The club of the path's ``club_id``, else ApiError 404 ``no_club``."""
    club_id = request.path_params["club_id"]
    club = settings.club(club_id)
    if club is None:
        raise ApiError(404, "no_club", f"no club {club_id!r} on this server")
    return club


def endpoint(settings: Settings, handler: Handler) -> Handler:
    """``handler`` as an API route: answers the CORS preflight, turns ApiError into the error
    JSON, and adds the API's headers (a header the handler set, e.g. Cache-Control, stays)."""

    async def serve(request: Request) -> Response:
        if request.method == "OPTIONS":
            headers = api_headers(settings, request)
            if "Access-Control-Allow-Origin" in headers:
                headers["Access-Control-Allow-Methods"] = "GET"
                headers["Access-Control-Max-Age"] = "600"
            return Response(status_code=204, headers=headers)
        try:
            response = await handler(request)
        except ApiError as exc:
            return error_response(settings, request, exc.status, exc.code, exc.message)
        for name, value in api_headers(settings, request).items():
            response.headers.setdefault(name, value)
        return response

    return serve


def not_served(settings: Settings, request: Request, exc: Any) -> Response:
    """The answer to an HTTPException under ``/api/`` (no route for the path, or a method
    other than GET): JSON like every API error, never the HTML error page."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        code, message = "method_not_allowed", "the API is read-only: use GET"
    elif status == 404:
        code, message = "not_found", "no such resource (docs/api.md lists the routes)"
    else:
        code, message = "error", str(getattr(exc, "detail", status))
    return error_response(settings, request, status, code, message, getattr(exc, "headers", None))


def routes(settings: Settings, *, live: Handler, record: Any) -> list[Route]:
    """Every API route, one per resource (no pattern here matches another's paths).
    ``live`` is :meth:`viewer.embed.Embed.live_api`; ``record`` a :class:`viewer.record.Record`."""
    methods = ["GET", "OPTIONS"]
    table: list[tuple[str, Handler]] = [
        ("/api/clubs/{club_id}/live", live),
        ("/api/clubs/{club_id}/matches", record.api_matches),
        ("/api/clubs/{club_id}/matches/{match_id}", record.api_match),
        ("/api/clubs/{club_id}/players", record.api_players),
        ("/api/clubs/{club_id}/ladder", record.api_ladder),
    ]
    return [Route(path, endpoint(settings, handler), methods=methods) for path, handler in table]
