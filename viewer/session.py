"""The scorer page's sign-in: the club password, sent once, for a device token (issue 9).

Routes (JSON; same-origin only):

- ``POST /clubs/<club>/session`` with ``{"password": str}``: checks the password of the
  club's scorer user (the user named after the club) against the broker's password file
  (argon2, in a thread) and answers ``201 {"token": "rct_...", "id": "<12 hex>"}``. The page
  keeps the token, never the password, and logs in to the broker with ``user=<club>,
  password=<token>`` (broker/acl.py accepts it; broker/tokens.py stores only its SHA-256).
- ``DELETE /clubs/<club>/session`` with ``Authorization: Bearer <token>``: sign out; the token
  is removed (``204``, also when it was unknown: the result is the same).

Refusals are ``{"error": <English text>, "code": <snake_case>}``: ``403 cross_origin`` (the
``Origin`` header is missing or not this host: no other site may make a browser try
passwords here or sign a phone out), ``415 not_json``, ``400 bad_request``, ``404 no_club``,
``401 wrong_password``, ``429 too_many_attempts`` (``Retry-After``; the broker's per-address
throttle, :class:`broker.limits.LoginThrottle`, counted per source address, every POST takes a
token), ``503 busy`` (SLOTS argon2 checks already run), ``503 store_failed`` (the files cannot be
read or written: the log says why), ``404 tokens_off``: this viewer does
not see the broker's password file (the split layout against mosquitto, where the broker
cannot check a token either); the page then signs in with the password and keeps it in memory
only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.auth import PasswordFile, PasswordFileError
from broker.limits import LoginThrottle, address_key
from broker.tokens import TokenFile, TokenFileError, device_label, tokens_path
from scorer.config import Settings

log = logging.getLogger("rallycast.viewer.session")

MAX_BODY_BYTES = 4096
MAX_PASSWORD_CHARS = 1024
SLOTS = 2  # argon2 checks at once (each ~0.2 s of CPU and 19 MiB)


def _refuse(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": message, "code": code},
        status_code=status,
        headers={"Cache-Control": "no-store", **headers},
    )


def same_origin(request: Request) -> bool:
    """Is the request's ``Origin`` this host (the ``Host`` the browser asked for)? Compared on
    host[:port] only, so a TLS proxy in front (https outside, http here) still matches."""
    origin = request.headers.get("origin", "")
    host = request.headers.get("host", "")
    if not origin or not host or origin == "null":
        return False
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and rest.lower() == host.lower()


class Sessions:
    """The two handlers, with their throttle and their argon2 slots."""

    def __init__(
        self, settings: Settings, throttle: LoginThrottle | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.passwords = PasswordFile(settings.password_file)
        self.tokens = TokenFile(tokens_path(settings.password_file))
        self.throttle = throttle or LoginThrottle(settings.login_attempts_per_minute)
        self._slots = asyncio.Semaphore(SLOTS)
        self._waiting = 0

    def routes(self) -> list[Route]:
        return [Route("/clubs/{club_id}/session", self.handle, methods=["POST", "DELETE"])]

    async def handle(self, request: Request) -> Response:
        if not same_origin(request):
            return _refuse(403, "cross_origin", "only the scorer page of this site may sign in")
        club = self.settings.club(request.path_params["club_id"])
        if club is None:
            return _refuse(404, "no_club", "no such club")
        if not tokens_available(self.settings):
            return _refuse(
                404, "tokens_off",
                "this viewer does not see the broker's password file: sign in with the password",
            )  # fmt: skip
        if request.method == "DELETE":
            return await self.sign_out(request, club.id)
        return await self.sign_in(request, club.id)

    async def sign_in(self, request: Request, user: str) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _refuse(415, "not_json", 'send JSON: {"password": "..."}')
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _refuse(400, "bad_request", "the request is too large")
        try:
            password = json.loads(body)["password"]
        except (ValueError, KeyError, TypeError):
            password = None
        if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_CHARS:
            return _refuse(400, "bad_request", 'send JSON: {"password": "..."}')
        address = request.client.host if request.client else None
        if not self.throttle.take(address):
            return _refuse(
                429, "too_many_attempts",
                f"too many sign-ins from {address_key(address)}: wait a minute",
                **{"Retry-After": "60"},
            )  # fmt: skip
        if self._waiting >= SLOTS * 4:
            return _refuse(503, "busy", "too many sign-ins being checked: try again", **{
                "Retry-After": "5"})  # fmt: skip
        self._waiting += 1
        try:
            async with self._slots:
                ok = await asyncio.to_thread(self.passwords.verify, user, password)
            if not ok:
                return _refuse(401, "wrong_password", "wrong password")
            device = device_label(request.headers.get("user-agent", ""))
            token, record = await asyncio.to_thread(self.tokens.issue, user, device)
        except (OSError, PasswordFileError, TokenFileError) as exc:
            log.error("cannot sign in %r: %s", user, exc)
            return _refuse(
                503, "store_failed",
                "the viewer cannot read the password file or write the tokens file: see its log",
            )  # fmt: skip
        finally:
            self._waiting -= 1
        return JSONResponse(
            {"token": token, "id": record.id},
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    async def sign_out(self, request: Request, user: str) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _refuse(400, "bad_request", "send Authorization: Bearer <token>")
        try:
            if await asyncio.to_thread(self.tokens.find, token.strip()) is not None:
                await asyncio.to_thread(self.tokens.revoke_secret, user, token.strip())
        except (OSError, TokenFileError) as exc:
            log.error("cannot sign out a device of %r: %s", user, exc)
            return _refuse(
                503, "store_failed", "the viewer cannot write the tokens file: see its log"
            )
        return Response(status_code=204, headers={"Cache-Control": "no-store"})


def tokens_available(settings: Settings) -> bool:
    """Can this viewer issue device tokens? Only beside the broker's password file."""
    return Path(settings.password_file).is_file()


def routes(settings: Settings) -> list[Route]:
    """The session routes, for create_app."""
    return Sessions(settings).routes()
