"""Device tokens: what a phone keeps instead of the club's password (issue 9).

The scorer page sends the club password once to the viewer (``POST /clubs/<club>/session``,
viewer/session.py), which checks it against the password file and issues a token; the page
stores only the token and logs in to the broker as ``user=<club>, password=<token>``. The
broker (broker/acl.py) accepts a valid token of that user as it accepts the password.
``rallycast passwd tokens revoke`` removes tokens; ``rallycast passwd add USER`` (a new
password) removes all of USER's; the page's "Sign out" removes its own.

A token is ``rct_`` + 43 urlsafe characters (32 random bytes). Only its SHA-256 is stored: a
salted slow hash is for guessable secrets, and 256 random bits are not guessable. The file,
``tokens`` beside the password file (data_dir/tokens), is JSON::

    {"tokens": [{"id": "3f9a0c1b2d4e", "user": "riverside", "sha256": "<64 hex>",
                 "device": "Chrome on Android", "created": "2026-11-30T00:40:00Z",
                 "used": "2026-11-30T00:41:00Z" | null}]}

Three processes may change it (the viewer issues and deletes, the CLI revokes, the broker
notes last use), so every change is a read-modify-write under an exclusive ``flock`` on
``tokens.lock``, written atomically (temp file + fsync + rename, mode 0600) like PasswordFile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from scorer.files import write_private_file

TOKEN_PREFIX = "rct_"
TOKEN_BYTES = 32
MAX_TOKENS_PER_USER = 50  # the oldest go first: a club has a handful of phones
DEVICE_MAX_CHARS = 64
_TOKEN_RE = re.compile(r"^rct_[A-Za-z0-9_-]{43}$")
_ID_RE = re.compile(r"^[0-9a-f]{12}$")


class TokenFileError(ValueError):
    """The tokens file cannot be read or written; the message says why."""


def tokens_path(password_file: str | os.PathLike[str]) -> Path:
    """Where the tokens of the users in ``password_file`` live: ``tokens`` beside it."""
    return Path(password_file).with_name("tokens")


def looks_like_token(secret: str) -> bool:
    return bool(_TOKEN_RE.fullmatch(secret))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Token:
    """One issued token, as stored (never the token itself)."""

    id: str  # the first 12 hex of the SHA-256: what `tokens list` shows and `revoke` takes
    user: str
    sha256: str
    device: str
    created: str  # ISO 8601 UTC
    used: str | None = None  # last login with it, ISO 8601 UTC (updated at most every 10 min)


def device_label(user_agent: str) -> str:
    """A short, harmless summary of a User-Agent ("Chrome on Android"), for `tokens list`."""
    ua = user_agent or ""
    browser = next(
        (name for key, name in (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
                                ("Chromium/", "Chromium"), ("Safari/", "Safari")) if key in ua),
        "browser",
    )  # fmt: skip
    system = next(
        (name for key, name in (("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"),
                                ("Windows", "Windows"), ("Mac OS", "macOS"), ("Linux", "Linux"))
         if key in ua),
        "",
    )  # fmt: skip
    label = f"{browser} on {system}" if system else browser
    return label[:DEVICE_MAX_CHARS]


class TokenFile:
    """The tokens file (see the module docstring). Methods raise TokenFileError or OSError."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # -- reading -----------------------------------------------------------------------------

    def read(self) -> list[Token]:
        """Every stored token; a missing file holds none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            rows = json.loads(text)["tokens"]
            return [Token(**row) for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenFileError(f"{self.path}: not a tokens file ({exc})") from exc

    def stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size), or None when there is no file: changes when the file does."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def by_digest(self) -> dict[str, Token]:
        return {token.sha256: token for token in self.read()}

    def find(self, token: str) -> Token | None:
        """The stored token ``token`` is, or None (unknown, revoked, or not a token)."""
        if not looks_like_token(token):
            return None
        return self.by_digest().get(token_digest(token))

    # -- changing ----------------------------------------------------------------------------

    def issue(self, user: str, device: str = "") -> tuple[str, Token]:
        """A new token for ``user``: (the token, shown once; its stored record)."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_digest(secret)
        record = Token(digest[:12], user, digest, device[:DEVICE_MAX_CHARS], _now())

        def change(tokens: list[Token]) -> list[Token]:
            mine = [t for t in tokens if t.user == user]
            drop = {t.sha256 for t in mine[: max(0, len(mine) + 1 - MAX_TOKENS_PER_USER)]}
            return [t for t in tokens if t.sha256 not in drop] + [record]

        self._change(change)
        return secret, record

    def revoke(self, user: str, token_id: str | None = None) -> list[Token]:
        """Remove ``user``'s token ``token_id`` (every token of ``user`` when None); returns
        the removed ones (empty: nothing matched)."""
        if token_id is not None and not _ID_RE.fullmatch(token_id):
            raise TokenFileError(f"{token_id!r} is not a token id (12 hex digits, as listed)")
        removed: list[Token] = []

        def change(tokens: list[Token]) -> list[Token]:
            keep = []
            for t in tokens:
                if t.user == user and (token_id is None or t.id == token_id):
                    removed.append(t)
                else:
                    keep.append(t)
            return keep

        if self.path.exists():
            self._change(change)
        return removed

    def revoke_secret(self, user: str, token: str) -> bool:
        """Remove the token ``token`` itself if it is ``user``'s (sign out)."""
        if not looks_like_token(token):
            return False
        digest = token_digest(token)
        gone: list[Token] = []

        def change(tokens: list[Token]) -> list[Token]:
            gone.extend(t for t in tokens if t.sha256 == digest and t.user == user)
            return [t for t in tokens if not (t.sha256 == digest and t.user == user)]

        if self.path.exists():
            self._change(change)
        return bool(gone)

    def mark_used(self, digests: set[str]) -> None:
        """Set ``used`` to now on these tokens (the broker, after logins with them)."""
        now = _now()

        def change(tokens: list[Token]) -> list[Token]:
            for t in tokens:
                if t.sha256 in digests:
                    t.used = now
            return tokens

        if self.path.exists():
            self._change(change)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _change(self, change: Callable[[list[Token]], list[Token]]) -> None:
        with self._locked():
            self._write(change(self.read()))

    def _write(self, tokens: list[Token]) -> None:
        text = json.dumps({"tokens": [asdict(t) for t in tokens]}, indent=1) + "\n"
        write_private_file(self.path, text, prefix=".tokens-")
