"""Who may do what on the broker: the roles of the shared contract, as one table, and the amqtt
plugin that enforces them (authentication + topic checks in one lean plugin).

Roles (identical to mosquitto.acl, which expresses the same table for a real mosquitto):

Each rule on a club's game topics comes twice: for table 1 (``clubs/<id>/game...``) and for
its other tables (``clubs/<id>/tables/+/game...``, scorer/topics.py); "the game topics" below
means both.

- anonymous (no user name): spectators. Read every club's game snapshots and events
  (``clubs/+/game``, ``clubs/+/game/events``, ``clubs/+/tables/+/game``,
  ``clubs/+/tables/+/game/events``) and ``rallycast/status/#``. Publish nothing.
- a club's scorer user, named after the club id (user ``riverside`` = club ``riverside``):
  write the ``.../cmd`` of every table of its club; read their snapshots, ``.../reply`` and
  ``.../events``, and ``rallycast/status/#``; read+write its own button boards' device topics,
  ``<root>/<id>/#`` for each root of ``scorer.topics.DEVICE_ROOTS`` (``stat/<id>/#``, ...).
  Nothing of another club.
- the service user (``Settings.service_user``): read every table's ``.../cmd`` and snapshot;
  write snapshots, ``.../reply``, ``.../events``, ``rallycast/status/#``. No device
  topics: button boards are read by ``rallycast buttons``, logged in as the club's user.
- any other named user: authenticated, but no rights (on mosquitto it gets what the ACL
  file's ``pattern`` lines give every named user: see docs/broker.md).

The club level (level 1) of a ``clubs/...`` topic or a device topic must be a valid club id
(``[a-z0-9-]{1,64}``); in a subscription it may also be ``+`` where the role reads every club
(spectators, the service). ``#``, an empty level or any other text there is refused. Likewise
the table level of ``clubs/<id>/tables/<n>/...`` must be a table number 2..64 without leading
zeros (table 1 has no ``tables/1`` topic), or ``+`` in a subscription. mosquitto's ACL file
cannot check the syntax of a level, so on mosquitto only the role table holds
(docs/broker.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from broker.auth import PasswordFile, PasswordFileError
from broker.hardening import _abort, broker_of
from broker.limits import (
    DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
    DEFAULT_MAX_SUBSCRIPTIONS,
    LoginThrottle,
    is_command_topic,
)
from broker.tokens import (
    Token,
    TokenFile,
    TokenFileError,
    looks_like_token,
    token_digest,
    tokens_path,
)
from scorer.config import CLUB_ID_RE
from scorer.topics import DEVICE_ACL_PATTERNS, DEVICE_ROOTS, TABLES_LEVEL, BadTable, check_table

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
        (READ, "clubs/+/tables/+/game"),
        (READ, "clubs/+/tables/+/game/events"),
        (READ, "rallycast/status/#"),
    ),
    Role.CLUB: (
        # Every table of its own club: table 1 on clubs/<club>/game, table n on
        # clubs/<club>/tables/<n>/game (scorer/topics.py; issue 12).
        (WRITE, "clubs/%u/game/cmd"),
        (READ, "clubs/%u/game"),
        (READ, "clubs/%u/game/reply"),
        (READ, "clubs/%u/game/events"),
        (WRITE, "clubs/%u/tables/+/game/cmd"),
        (READ, "clubs/%u/tables/+/game"),
        (READ, "clubs/%u/tables/+/game/reply"),
        (READ, "clubs/%u/tables/+/game/events"),
        (READ, "rallycast/status/#"),
        # Its own button boards only: <root>/<club>/# (scorer/topics.py; issue 9).
        *((READWRITE, device) for device in DEVICE_ACL_PATTERNS),
    ),
    Role.SERVICE: (
        (READ, "clubs/+/game/cmd"),
        (READWRITE, "clubs/+/game"),
        (WRITE, "clubs/+/game/reply"),
        (WRITE, "clubs/+/game/events"),
        (READ, "clubs/+/tables/+/game/cmd"),
        (READWRITE, "clubs/+/tables/+/game"),
        (WRITE, "clubs/+/tables/+/game/reply"),
        (WRITE, "clubs/+/tables/+/game/events"),
        (WRITE, "rallycast/status/#"),
        # The liveness probe comes back to the service the way commands do (docs/protocol.md).
        (READ, "rallycast/status/scorer/probe/#"),
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


def _is_table_level(level: str) -> bool:
    """A table of the ``clubs/<id>/tables/<n>`` scheme: 2..64, written without leading zeros."""
    try:
        return check_table(level) >= 2 and level == str(int(level))
    except BadTable:
        return False


def _level_ok(
    pattern_level: str, level: str, club_position: bool, table_position: bool, is_filter: bool
) -> bool:
    if pattern_level == "+":
        if level == "+":
            return is_filter  # a '+' only covers a '+' in a subscription
        if club_position:
            return bool(CLUB_ID_RE.fullmatch(level))
        if table_position:
            return _is_table_level(level)
        return level != "#"
    if club_position and not CLUB_ID_RE.fullmatch(level):
        return False
    return level == pattern_level


# Roots whose level 1 is a club id: the protocol's topics and the button boards' device topics.
CLUB_ROOTS = frozenset(("clubs", *DEVICE_ROOTS))


def covers(pattern: str, topic: str, *, is_filter: bool) -> bool:
    """Does ``pattern`` grant ``topic`` (a topic name, or a subscription filter that must be
    a subset of the pattern)? Level 1 of ``clubs/...`` and of a device root (``stat/...``) must
    be a club id (or ``+``); level 3 of ``clubs/<id>/tables/...`` a table number 2..64 (or
    ``+``)."""
    wanted = pattern.split("/")
    asked = topic.split("/")
    clubs = wanted[0] in CLUB_ROOTS
    tables = wanted[0] == "clubs" and len(wanted) > 3 and wanted[2] == TABLES_LEVEL
    for index, pattern_level in enumerate(wanted):
        if pattern_level == "#":
            return True  # '#' also covers its parent level, as in MQTT matching
        if index >= len(asked):
            return False
        if not _level_ok(
            pattern_level, asked[index], clubs and index == 1, tables and index == 3, is_filter
        ):
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


# Guards around argon2 (~0.2 s of CPU per check): club ids are public, so anyone can try logins.
ARGON_SLOTS = 2  # argon2 checks running at once (worker threads)
ARGON_QUEUE = 8  # logins waiting for a slot; beyond that a login needing argon2 is refused
FAILED_CACHE_SIZE = 4096  # (user, password) pairs known to be wrong, most recent kept
TOKEN_POLL_S = 1.0  # how often the tokens file is checked while token sessions may be live
TOKEN_USED_EVERY_S = 600.0  # a token's "used" time is written at most this often


class RallycastAccessPlugin(BaseAuthPlugin, BaseTopicPlugin):
    """amqtt plugin: authenticates users against our PasswordFile and checks every subscribe,
    publish and delivery against RULES. A CONNECT whose last will the user may not publish is
    refused (CONNACK 5): amqtt would otherwise publish the will without any ACL check.

    Argon2 costs ~0.2 s of CPU per check, so verification runs in a worker thread (at most
    ARGON_SLOTS at a time) and a success is remembered as an HMAC of the password under a
    per-process key, valid while the user's stored hash is unchanged. Guards keep wrong
    passwords from burning the CPU without locking the real user out: a wrong (user,
    password) pair is remembered the same way and refused without argon2; every other login
    that needs argon2 takes a token from its SOURCE ADDRESS's bucket (:class:`LoginThrottle`:
    a burst of 5, then ``login_attempts_per_minute``), so a flood from one address is
    refused at once while the scorer on another address logs in; and when ARGON_QUEUE logins
    already wait for a slot, the next is refused at once (a bound on argon2 CPU whatever the
    number of addresses). The memory is bounded: FAILED_CACHE_SIZE pairs, LoginThrottle's
    table. The password file is re-read when its mtime changes, so ``rallycast passwd`` takes
    effect without a restart (and the caches start afresh).

    Device tokens (broker/tokens.py): a password that is a valid, unrevoked token of the user
    (a user still in the password file) logs in without argon2 (one SHA-256 and a dict
    look-up); a token-shaped password that is not one is refused without argon2 (it takes a
    throttle token, as a failed login does); anything else goes the password way above. Once a token
    session exists, the tokens file is checked every TOKEN_POLL_S and the connections of
    sessions whose token was removed (``rallycast passwd tokens revoke``, ``passwd add``,
    sign out) are dropped.

    Subscriptions: a session may hold at most ``max_subscriptions`` filters; a SUBSCRIBE for
    one more gets SUBACK 0x80 for it (a page needs a handful, the service 2), so no client
    can make every delivery scan thousands of its filters. The count lives on the Session
    (``rallycast_filters``); RallycastProtocolHandler removes unsubscribed filters from it.
    """

    @dataclass
    class Config:
        password_file: str | None = None
        service_user: str = "rallycast-service"
        allow_anonymous: bool = True
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
        login_attempts_per_minute: int = DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._service_user = self.config.service_user
        self._passwords = PasswordFile(Path(self.config.password_file or os.devnull))
        self._hashes: dict[str, str] = {}
        self._file_stamp: tuple[int, int] | None = None
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}
        # (user, HMAC of a wrong password) -> the hash it failed against; oldest first
        self._failed: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self.throttle = LoginThrottle(self.config.login_attempts_per_minute)
        self._argon_slots = asyncio.Semaphore(ARGON_SLOTS)
        self._argon_pending = 0  # running + waiting for a slot
        self.argon_checks = 0  # argon2 verifications run (tests, bench)
        self._tokens = TokenFile(tokens_path(self.config.password_file or "/nonexistent/passwd"))
        self._token_table: dict[str, Token] = {}  # sha256 -> record
        self._token_stamp: tuple[int, int] | None = None
        self._token_watch: asyncio.Task[None] | None = None
        self._token_used: dict[str, float] = {}  # sha256 -> when "used" was last queued
        self._token_used_pending: set[str] = set()
        self.token_disconnects = 0  # connections dropped for a revoked token (tests)
        self.password_disconnects = 0  # dropped for a changed password or removed user

    def _current_hashes(self) -> dict[str, str]:
        try:
            stat = self._passwords.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._file_stamp:
            old = self._hashes
            try:
                self._hashes = self._passwords.read() if stamp else {}
            except (OSError, PasswordFileError) as exc:
                log.error("cannot read the password file: %s (keeping the previous users)", exc)
                return self._hashes
            self._file_stamp = stamp
            self._verified.clear()
            self._failed.clear()
            # A missing file keeps the connections (and refuses new logins): an operator's
            # slip should not drop a club night; a rewritten one is what passwd does.
            changed = {user for user, hashed in old.items() if self._hashes.get(user) != hashed}
            if changed and stamp is not None:
                self._drop_user_sessions(changed, removed=old.keys() - self._hashes.keys())
        return self._hashes

    def _drop_user_sessions(self, changed: set[str], removed: set[str]) -> None:
        """Close the connections that logged in with a password that is no longer the user's
        (``rallycast passwd add`` gave a new one), and every connection of a removed user:
        a new password must lock the old one out now, not at the next reconnect."""
        broker = broker_of(self.context)
        for session, handler in list(getattr(broker, "sessions", {}).values()):
            user = session.username
            by_password = getattr(session, "rallycast_hash", None) is not None
            if handler is None or not (user in removed or (user in changed and by_password)):
                continue
            log.info(
                "closing connection of client %s (user %r): %s",
                session.client_id,
                user,
                "the user was removed" if user in removed else "the password was changed",
            )
            self.password_disconnects += 1
            _abort(handler.writer)

    def _current_tokens(self) -> dict[str, Token]:
        stamp = self._tokens.stamp()
        if stamp != self._token_stamp:
            try:
                table = self._tokens.by_digest() if stamp else {}
            except (OSError, TokenFileError) as exc:
                log.error("cannot read the tokens file: %s (keeping the previous tokens)", exc)
                return self._token_table
            revoked = self._token_table.keys() - table.keys()
            self._token_table, self._token_stamp = table, stamp
            if revoked:
                self._drop_token_sessions(revoked)
        return self._token_table

    def _drop_token_sessions(self, revoked: set[str] | frozenset[str]) -> None:
        """Close the connections that logged in with a token that is gone."""
        broker = broker_of(self.context)
        for session, handler in list(getattr(broker, "sessions", {}).values()):
            if getattr(session, "rallycast_token", None) in revoked and handler is not None:
                log.info(
                    "closing connection of client %s (user %r): its device token was revoked",
                    session.client_id,
                    session.username,
                )
                self.token_disconnects += 1
                _abort(handler.writer)

    def _token_ok(self, session: Session, user: str, password: str) -> bool:
        """Is ``password`` a valid token of ``user``? Marks the session with it."""
        if not looks_like_token(password) or user not in self._current_hashes():
            return False
        digest = token_digest(password)
        record = self._current_tokens().get(digest)
        if record is None or record.user != user:
            return False
        session.rallycast_token = digest  # type: ignore[attr-defined]
        session.rallycast_hash = None  # type: ignore[attr-defined]  # (a resumed session)
        now = asyncio.get_running_loop().time()
        if now - self._token_used.get(digest, -TOKEN_USED_EVERY_S) >= TOKEN_USED_EVERY_S:
            self._token_used[digest] = now
            self._token_used_pending.add(digest)
        self._watch_credentials()
        return True

    def _watch_credentials(self) -> None:
        """Start the watch of the password and tokens files (once a login has succeeded)."""
        if self._token_watch is None or self._token_watch.done():
            self._token_watch = asyncio.create_task(self._watch_files())

    async def _watch_files(self) -> None:
        """Revoked tokens, changed passwords and removed users take effect within
        TOKEN_POLL_S (their connections are closed); "used" times are written here."""
        while True:
            await asyncio.sleep(TOKEN_POLL_S)
            self._current_hashes()
            self._current_tokens()
            if self._token_used_pending:
                used, self._token_used_pending = self._token_used_pending, set()
                try:
                    await asyncio.to_thread(self._tokens.mark_used, used)
                except (OSError, TokenFileError) as exc:
                    log.warning("cannot note the use of device tokens: %s", exc)

    async def close(self) -> None:
        if self._token_watch is not None:
            self._token_watch.cancel()
        await super().close()

    async def authenticate(self, *, session: Session) -> bool | None:
        user = session.username
        if not user:
            if not self.config.allow_anonymous:
                return False
            session.is_anonymous = True  # amqtt then keeps no offline queue for it
            return self._will_allowed(session, None)
        session.is_anonymous = False
        password = session.password or ""
        if looks_like_token(password):
            # A token is never a password (`rallycast passwd add` refuses one): no argon2 for
            # it, but a wrong one still counts against its address, as a wrong password does.
            if self._token_ok(session, user, password):
                return self._will_allowed(session, user)
            address = getattr(session, "remote_address", None)
            self.throttle.take(address)
            log.info("refused login for user %r from %s: unknown or revoked token", user, address)
            return False
        if not await self._password_ok(user, password, getattr(session, "remote_address", None)):
            return False
        # The hash it logged in against: a new one (passwd add) closes this connection.
        session.rallycast_hash = self._current_hashes().get(user)  # type: ignore[attr-defined]
        session.rallycast_token = None  # type: ignore[attr-defined]  # (a resumed session)
        self._watch_credentials()
        return self._will_allowed(session, user)

    def _will_allowed(self, session: Session, user: str | None) -> bool:
        """amqtt publishes a will without asking the ACL: check it as a PUBLISH, here."""
        if not session.will_flag:
            return True
        topic = session.will_topic or ""
        who = repr(user) if user else "anonymous"
        if getattr(session, "will_retain", False) and is_command_topic(topic):
            log.info("refused login for %s: retained last will on command topic %r", who, topic)
            return False
        if allowed(user, role_of(user, self._service_user), "publish", topic):
            return True
        log.info("refused login for %s: last will on %r, which it may not publish", who, topic)
        return False

    async def _password_ok(self, user: str, password: str, address: str | None = None) -> bool:
        hashed = self._current_hashes().get(user)
        if hashed is None or not password:
            log.info("refused login for user %r: unknown user or no password", user)
            return False
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        known = self._verified.get(user)
        if known is not None and known[0] == hashed and hmac.compare_digest(known[1], digest):
            return True
        if self._failed.get((user, digest)) == hashed:
            self._failed.move_to_end((user, digest))
            log.debug("refused login for user %r: the same wrong password again", user)
            return False
        if not self.throttle.take(address):
            log.info("refused login for user %r from %s: too many logins from there", user, address)
            return False
        if self._argon_pending >= ARGON_SLOTS + ARGON_QUEUE:
            log.warning("refused login for user %r: too many logins being checked", user)
            return False
        self._argon_pending += 1
        try:
            async with self._argon_slots:
                self.argon_checks += 1
                ok = await asyncio.to_thread(self._passwords.verify_hash, hashed, password)
        finally:
            self._argon_pending -= 1
        if not ok:
            self._failed[(user, digest)] = hashed
            if len(self._failed) > FAILED_CACHE_SIZE:
                self._failed.popitem(last=False)
            log.info("refused login for user %r from %s: wrong password", user, address)
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
        if decision and action == Action.SUBSCRIBE:
            decision = self._count_subscription(session, topic)
        return decision

    def _count_subscription(self, session: Session, a_filter: str) -> bool:
        """Room for one more filter on this session (a filter it holds already is free)?"""
        filters: set[str] | None = getattr(session, "rallycast_filters", None)
        if filters is None:
            filters = session.rallycast_filters = set()  # type: ignore[attr-defined]
        if a_filter in filters:
            return True
        if len(filters) >= self.config.max_subscriptions:
            if not getattr(session, "rallycast_cap_logged", False):
                session.rallycast_cap_logged = True  # type: ignore[attr-defined]
                log.info(
                    "refused subscription %r of %s (user %r): it holds %d filters already"
                    " (max_subscriptions)",
                    a_filter,
                    session.client_id,
                    session.username,
                    len(filters),
                )
            return False
        filters.add(a_filter)
        return True
