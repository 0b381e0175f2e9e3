"""Who may do what on the broker: the roles of the shared contract, as one table, and the amqtt
plugin that enforces them (authentication + topic checks in one lean plugin).

Roles (identical to mosquitto.acl, which expresses the same table for a real mosquitto):

- anonymous (no user name): spectators. Read ``clubs/+/game``, ``clubs/+/game/events``,
  ``rallycast/status/#``. Publish nothing.
- a club's scorer user, named after the club id (user ``riverside`` = club ``riverside``):
  write ``clubs/<id>/game/cmd``; read ``clubs/<id>/game``, ``.../reply``, ``.../events``,
  ``rallycast/status/#``; read+write the device topics of button boards.
- the service user (``Settings.service_user``): read ``clubs/+/game/cmd``, ``clubs/+/game``
  and the device topics; write ``clubs/+/game``, ``.../reply``, ``.../events``,
  ``rallycast/status/#``.
- any other named user: authenticated, but no rights.

The club level of a ``clubs/...`` topic must be a valid club id (``[a-z0-9-]{1,64}``); in a
subscription it may also be ``+`` where the role reads every club (spectators, the service).
``#``, an empty level or any other text there is refused. mosquitto's ACL file cannot check the
syntax of a level, so on mosquitto only the role table holds (docs/broker.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from broker.auth import PasswordFile, PasswordFileError
from scorer.config import CLUB_ID_RE
from scorer.topics import DEVICE_TOPIC_FILTERS

log = logging.getLogger("rallycast.broker.acl")


class Role(StrEnum):
    ANONYMOUS = "anonymous"
    CLUB = "club"
    SERVICE = "service"
    NONE = "none"  # authenticated, but neither a club nor the service: no rights


READ, WRITE, READWRITE = "read", "write", "readwrite"

# (access, pattern). "%u" is the user's own name (= club id), as in mosquitto's ACL patterns.
RULES: dict[Role, tuple[tuple[str, str], ...]] = {
    Role.ANONYMOUS: (
        (READ, "clubs/+/game"),
        (READ, "clubs/+/game/events"),
        (READ, "rallycast/status/#"),
    ),
    Role.CLUB: (
        (WRITE, "clubs/%u/game/cmd"),
        (READ, "clubs/%u/game"),
        (READ, "clubs/%u/game/reply"),
        (READ, "clubs/%u/game/events"),
        (READ, "rallycast/status/#"),
        *((READWRITE, device) for device in DEVICE_TOPIC_FILTERS),
    ),
    Role.SERVICE: (
        (READ, "clubs/+/game/cmd"),
        (READWRITE, "clubs/+/game"),
        (WRITE, "clubs/+/game/reply"),
        (WRITE, "clubs/+/game/events"),
        (WRITE, "rallycast/status/#"),
        *((READ, device) for device in DEVICE_TOPIC_FILTERS),
    ),
    Role.NONE: (),
}


def role_of(user: str | None, service_user: str) -> Role:
    if not user:
        return Role.ANONYMOUS
    if user == service_user:
        return Role.SERVICE
    if CLUB_ID_RE.fullmatch(user):
        return Role.CLUB
    return Role.NONE


def _level_ok(pattern_level: str, level: str, club_position: bool, is_filter: bool) -> bool:
    if pattern_level == "+":
        if level == "+":
            return is_filter  # a '+' only covers a '+' in a subscription
        if club_position:
            return bool(CLUB_ID_RE.fullmatch(level))
        return level != "#"
    if club_position and not CLUB_ID_RE.fullmatch(level):
        return False
    return level == pattern_level


def covers(pattern: str, topic: str, *, is_filter: bool) -> bool:
    """Does ``pattern`` grant ``topic`` (a topic name, or a subscription filter that must be
    a subset of the pattern)? Level 1 of ``clubs/...`` must be a club id (or ``+``)."""
    wanted = pattern.split("/")
    asked = topic.split("/")
    clubs = wanted[0] == "clubs"
    for index, pattern_level in enumerate(wanted):
        if pattern_level == "#":
            return True  # '#' also covers its parent level, as in MQTT matching
        if index >= len(asked):
            return False
        if not _level_ok(pattern_level, asked[index], clubs and index == 1, is_filter):
            return False
    return len(asked) == len(wanted)


@lru_cache(maxsize=8192)
def allowed(user: str | None, role: Role, action: str, topic: str) -> bool:
    """The decision for one (user, action, topic); cached because the same few topics recur.

    action: "subscribe" (topic is a filter), "publish", or "receive" (delivery of a topic name
    to a subscriber: needs read access, as for a subscription to exactly that topic).
    """
    if not topic or len(topic) > 65535:
        return False
    need = WRITE if action == "publish" else READ
    is_filter = action == "subscribe"
    for access, pattern in RULES[role]:
        if access != READWRITE and access != need:
            continue
        if "%u" in pattern:
            pattern = pattern.replace("%u", user or "")
        if covers(pattern, topic, is_filter=is_filter):
            return True
    return False


class RallycastAccessPlugin(BaseAuthPlugin, BaseTopicPlugin):
    """amqtt plugin: authenticates users against our PasswordFile and checks every subscribe,
    publish and delivery against RULES.

    Argon2 costs ~0.2 s of CPU per check, so verification runs in a worker thread (at most two
    at a time) and a success is remembered as an HMAC of the password under a per-process key,
    valid while the user's stored hash is unchanged. The password file is re-read when its
    mtime changes, so ``rallycast passwd`` takes effect without a restart.
    """

    @dataclass
    class Config:
        password_file: str | None = None
        service_user: str = "rallycast-service"
        allow_anonymous: bool = True

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._service_user = self.config.service_user
        self._passwords = PasswordFile(Path(self.config.password_file or os.devnull))
        self._hashes: dict[str, str] = {}
        self._file_stamp: tuple[int, int] | None = None
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._argon_slots = asyncio.Semaphore(2)

    def _current_hashes(self) -> dict[str, str]:
        try:
            stat = self._passwords.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._file_stamp:
            try:
                self._hashes = self._passwords.read() if stamp else {}
            except (OSError, PasswordFileError) as exc:
                log.error("cannot read the password file: %s (keeping the previous users)", exc)
                return self._hashes
            self._file_stamp = stamp
            self._verified.clear()
        return self._hashes

    async def authenticate(self, *, session: Session) -> bool | None:
        user = session.username
        if not user:
            if not self.config.allow_anonymous:
                return False
            session.is_anonymous = True  # amqtt then keeps no offline queue for it
            return True
        session.is_anonymous = False
        password = session.password or ""
        hashed = self._current_hashes().get(user)
        if hashed is None or not password:
            log.info("refused login for user %r: unknown user or no password", user)
            return False
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        known = self._verified.get(user)
        if known is not None and known[0] == hashed and hmac.compare_digest(known[1], digest):
            return True
        async with self._argon_slots:
            ok = await asyncio.to_thread(self._passwords.verify_hash, hashed, password)
        if not ok:
            log.info("refused login for user %r: wrong password", user)
            return False
        self._verified[user] = (hashed, digest)
        return True

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or not topic or action is None:
            return False
        user = session.username or None
        decision = allowed(user, role_of(user, self._service_user), str(action), topic)
        if not decision and action != Action.RECEIVE:
            log.info("refused %s on %r for %s", action, topic, user or "anonymous")
        return decision
