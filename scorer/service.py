"""The scorer service (``rallycast scorer``): the one authority for every club's score.

It takes commands from ``clubs/<club>/game/cmd``, applies them through the rules engine in the
order they arrive, keeps each accepted command in the match store (SQLite, before anything is
published), and publishes the retained snapshot, an event and a reply. See docs/protocol.md.

paho runs the network in its own thread and calls ``on_message`` there one message at a time,
so commands are applied strictly in arrival order without further locking.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.client import BrokerAddress, make_client, resolve_address
from scorer.config import Settings, load_settings
from scorer.engine import ENDED_STATUSES, Match, Refused, check_command_id, parse_command
from scorer.store import MatchStore, StoreError, new_match_id

log = logging.getLogger("rallycast.scorer")

SECRET_FILE_NAME = "service.secret"
PASSWORD_ENV = "RALLYCAST_SERVICE_PASSWORD"
# paho's reconnect backoff (seconds): quick first retry, capped so a restarted broker is
# found again within seconds.
RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 4
# How long after connecting retained snapshots are compared with the store (stale ones fixed).
RECONCILE_SECONDS = 3.0
DELETE_COMMANDS = frozenset({"delete", "clear"})
RECENT_DELETE_IDS = 32  # per club: a resent delete must not remove the next match


def read_service_secret(data_dir: Path) -> str | None:
    path = data_dir / SECRET_FILE_NAME
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def ensure_service_secret(data_dir: Path) -> str:
    """The service's password, generated on first use into data_dir/service.secret (0600)."""
    existing = read_service_secret(data_dir)
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    path = data_dir / SECRET_FILE_NAME
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.replace(temporary, path)
    return secret


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ClubMatch:
    match_id: str
    match: Match

    @property
    def rev(self) -> int:
        return self.match.rev


class ScorerService:
    """Run with ``start()`` / ``stop()``; the MQTT work happens in paho's thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        address = resolve_address(url or settings.broker_url, user=user, password=password)
        self.address = resolve_address(
            address,
            user=address.user or settings.service_user,
            password=address.password or read_service_secret(settings.data_dir),
        )
        self.clock = clock
        self.matches: dict[str, ClubMatch] = {}
        self.connected = threading.Event()
        self._recent_deletes: dict[str, deque[str | int]] = {}
        self._reconcile_until = 0.0
        self._games_unsubscribed = False
        self._subscribe_mid: int | None = None
        self._store: MatchStore | None = None
        self._client: mqtt.Client | None = None
        self._stopping = False

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._store = MatchStore(self.settings.data_dir)
        self._recover()
        # One client id per data dir, so the broker keeps this service's session (and the
        # QoS 1 commands that arrive while it is away) from one run to the next.
        client_id = self._store.meta(
            "mqtt_client_id", lambda: f"rallycast-service-{secrets.token_hex(4)}"
        )
        client = make_client(self.address, client_id=client_id, clean_session=False)
        client.will_set(topics.SCORER_STATUS, "offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._stopping = False
        log.info("connecting to %s", self.address.url())
        client.connect_async(self.address.host, self.address.port, keepalive=30)
        client.loop_start()

    def wait_until_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        client = self._client
        if client is not None:
            self._stopping = True
            if client.is_connected():
                info = client.publish(topics.SCORER_STATUS, "offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    pass  # connection went away meanwhile: the last will says offline
            client.disconnect()
            # A command paho is handling right now still finds the client (and the store).
            client.loop_stop()
            self._client = None
        self.connected.clear()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _recover(self) -> None:
        """Rebuild each club's current match from its stored log."""
        assert self._store is not None
        for stored in self._store.current_matches():
            try:
                match = Match.from_log(stored.match_id, stored.log)
            except Exception:  # a log the engine no longer accepts must not stop the others
                log.exception(
                    "club %s: cannot rebuild match %s from the store; it is not served",
                    stored.club_id,
                    stored.match_id,
                )
                continue
            self.matches[stored.club_id] = ClubMatch(stored.match_id, match)
            log.info(
                "club %s: match %s restored at rev %d",
                stored.club_id,
                stored.match_id,
                len(stored.log),
            )

    # -- MQTT callbacks (paho's thread) -----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("the broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s (session present: %s)", self.address.url(), flags.session_present)
        # Retained snapshots of clubs/+/game are compared with the store for a few seconds:
        # a crashed instance may have left one that the store does not back.
        self._reconcile_until = time.monotonic() + RECONCILE_SECONDS
        self._games_unsubscribed = False
        self._subscribe_mid = client.subscribe([(topics.ALL_COMMANDS, 1), (topics.ALL_GAMES, 1)])[1]
        client.publish(topics.SCORER_STATUS, "online", qos=1, retain=True)
        for club_id, current in sorted(self.matches.items()):
            self._publish_snapshot(club_id, current)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        # "Connected" means commands reach us: only once the broker has granted the filters.
        if mid != self._subscribe_mid:
            return
        if any(code.is_failure for code in reason_codes):
            log.error("the broker refused the service's subscriptions: %s", reason_codes)
            return
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        if not self._stopping:
            log.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            parts = message.topic.split("/")
            club_id = topics.club_of(message.topic)
            if club_id is None:
                log.warning("ignored a message on %r: not a valid club topic", message.topic)
            elif len(parts) == 4 and parts[3] == "cmd":
                try:
                    reply = self.handle_command(club_id, message.payload)
                except Exception:  # a bug of ours: say so to the sender, keep serving
                    log.exception("club %s: error while handling a command", club_id)
                    reply = self._refuse(club_id, None, "internal error in the scorer service")
                client.publish(topics.replies(club_id), _dumps(reply), qos=1)
            elif len(parts) == 3:
                self._reconcile(club_id, message)
        except Exception:  # nothing a client sends may stop the service
            log.exception("error while handling a message on %r", message.topic)

    # -- commands ---------------------------------------------------------------------------

    def handle_command(self, club_id: str, payload: bytes) -> dict[str, Any]:
        """Apply one command from the club's command topic; publish what changed; return the
        reply ``{"id", "ok", "error", "rev"}``."""
        current = self.matches.get(club_id)
        limit = self.settings.max_payload_bytes
        if limit and len(payload) > limit:  # 0: no limit (as for the broker)
            return self._refuse(
                club_id, None, f"the command is too large ({len(payload)} bytes; limit {limit})"
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(club_id, None, "the command is not UTF-8 text")
        raw: str | dict[str, Any] = text
        command_id: str | int | None = None
        if text.lstrip().startswith("{"):
            try:
                decoded = json.loads(text)
            except ValueError as exc:
                return self._refuse(club_id, None, f"the command is not valid JSON ({exc})")
            except RecursionError:
                return self._refuse(
                    club_id, None, "the command is not valid JSON (nested too deep)"
                )
            if isinstance(decoded, dict):
                raw = decoded
                try:
                    command_id = check_command_id(decoded.get("id"))
                except Refused:  # no usable id: the reply carries none
                    command_id = None
                name = decoded.get("cmd")
                if isinstance(name, str) and name in DELETE_COMMANDS:
                    return self._delete(club_id, decoded, command_id)
        try:
            command = parse_command(raw)
        except Refused as exc:
            return self._refuse(club_id, command_id, str(exc))
        command_id = command.get("id")

        if command_id is not None and current is not None:
            accepted_at = current.match.rev_of(command_id)
            if accepted_at is not None:  # a resent command: nothing changes, same answer
                return self._reply(command_id, accepted_at)
        if command.get("cmd") == "start" and (
            current is None
            or current.match.status in ENDED_STATUSES
            or command.get("force") is True
        ):
            return self._start_new_match(club_id, command, command_id)
        if current is None:
            return self._refuse(club_id, command_id, "no match: start one first")
        try:
            outcome = current.match.apply(command, self.clock())
        except Refused as exc:
            return self._refuse(club_id, command_id, str(exc))
        if outcome.duplicate:  # (caught above already; kept in case the engine knows more)
            return self._reply(command_id, current.rev)
        try:
            self._require_store().append(current.match_id, current.rev, current.match.latest)
        except StoreError as exc:
            # Not saved = not accepted: rebuild the match without it.
            log.error("club %s: %s", club_id, exc)
            current.match = Match.from_log(current.match_id, current.match.log[:-1])
            return self._refuse(club_id, command_id, "the service could not save the command")
        self._publish_change(club_id, current, outcome.snapshot, outcome.event)
        log.debug("club %s: accepted %s -> rev %d", club_id, command.get("cmd"), current.rev)
        return self._reply(command_id, current.rev)

    def _start_new_match(
        self, club_id: str, command: dict[str, Any], command_id: str | int | None
    ) -> dict[str, Any]:
        now = self.clock()
        match_id = new_match_id(now)
        match = Match(match_id)
        previous = self.matches.get(club_id)
        try:
            outcome = match.apply(command, now)
        except Refused as exc:
            return self._refuse(club_id, command_id, str(exc))
        try:
            self._require_store().start_match(club_id, match_id, match.latest)
        except StoreError as exc:
            log.error("club %s: %s", club_id, exc)
            return self._refuse(club_id, command_id, "the service could not save the command")
        current = ClubMatch(match_id, match)
        self.matches[club_id] = current
        if previous is not None:
            log.info("club %s: match %s replaced by %s", club_id, previous.match_id, match_id)
        else:
            log.info("club %s: match %s started", club_id, match_id)
        self._publish_change(club_id, current, outcome.snapshot, outcome.event)
        return self._reply(command_id, current.rev)

    def _delete(
        self, club_id: str, command: dict[str, Any], command_id: str | int | None
    ) -> dict[str, Any]:
        extra = sorted(set(command) - {"cmd", "id"})
        if extra:
            return self._refuse(club_id, command_id, f"delete takes no other fields: {extra}")
        recent = self._recent_deletes.setdefault(club_id, deque(maxlen=RECENT_DELETE_IDS))
        current = self.matches.get(club_id)
        if command_id is not None and command_id in recent:
            return self._reply(command_id, current.rev if current else 0)
        if current is not None:
            try:
                self._require_store().clear_current(club_id)
            except StoreError as exc:
                log.error("club %s: %s", club_id, exc)
                return self._refuse(club_id, command_id, "the service could not save the command")
            del self.matches[club_id]
            client = self._require_client()
            client.publish(topics.game(club_id), b"", qos=1, retain=True)
            event = {"kind": "delete", "match_id": current.match_id, "rev": 0}
            client.publish(topics.events(club_id), _dumps(event), qos=1)
            log.info("club %s: match %s deleted", club_id, current.match_id)
        if command_id is not None:
            recent.append(command_id)
        return self._reply(command_id, 0)

    def _refuse(self, club_id: str, command_id: str | int | None, reason: str) -> dict[str, Any]:
        log.info("club %s: refused a command (id %r): %s", club_id, command_id, reason)
        current = self.matches.get(club_id)
        return {
            "id": command_id,
            "ok": False,
            "error": reason,
            "rev": current.rev if current else 0,
        }

    @staticmethod
    def _reply(command_id: str | int | None, rev: int) -> dict[str, Any]:
        return {"id": command_id, "ok": True, "error": None, "rev": rev}

    # -- publishing -------------------------------------------------------------------------

    def _publish_change(
        self,
        club_id: str,
        current: ClubMatch,
        snapshot: dict[str, Any],
        event: dict[str, Any] | None,
    ) -> None:
        client = self._require_client()
        client.publish(topics.game(club_id), _dumps(snapshot), qos=1, retain=True)
        if event is not None:
            client.publish(topics.events(club_id), _dumps(event), qos=1)

    def _publish_snapshot(self, club_id: str, current: ClubMatch) -> None:
        snapshot = current.match.snapshot()
        if snapshot is not None:
            self._require_client().publish(
                topics.game(club_id), _dumps(snapshot), qos=1, retain=True
            )

    def _reconcile(self, club_id: str, message: mqtt.MQTTMessage) -> None:
        """Correct a retained snapshot that the store does not back (left by a crash)."""
        if time.monotonic() > self._reconcile_until:
            # Done comparing: stop receiving our own snapshots back (one message late).
            if not self._games_unsubscribed:
                self._games_unsubscribed = True
                self._require_client().unsubscribe(topics.ALL_GAMES)
            return
        if not message.retain:
            return
        if not message.payload:
            return
        try:
            shown = json.loads(message.payload)
            shown_key = (shown.get("match_id"), shown.get("rev"))
        except (ValueError, AttributeError, RecursionError):
            shown_key = None
        current = self.matches.get(club_id)
        if current is None:
            log.warning("club %s: clearing a retained snapshot the store has no match for", club_id)
            self._require_client().publish(topics.game(club_id), b"", qos=1, retain=True)
        elif shown_key != (current.match_id, current.rev):
            log.warning(
                "club %s: retained snapshot %s is stale; republishing rev %d",
                club_id,
                shown_key,
                current.rev,
            )
            self._publish_snapshot(club_id, current)

    def _require_client(self) -> mqtt.Client:
        if self._client is None:
            raise RuntimeError("the service is not running")
        return self._client

    def _require_store(self) -> MatchStore:
        if self._store is None:
            raise RuntimeError("the service is not running")
        return self._store


# -- rallycast scorer -------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="broker URL (default: the broker_url setting)")
    parser.add_argument("--user", help="MQTT user (default: the service_user setting)")
    parser.add_argument(
        "--password",
        help=f"MQTT password (better: ${PASSWORD_ENV}, or data_dir/{SECRET_FILE_NAME})",
    )
    parser.add_argument("--data-dir", help="where the match store lives")


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config, overrides={"data_dir": args.data_dir, "broker_url": args.url}
    )
    setup_logging(settings)
    password = args.password or os.environ.get(PASSWORD_ENV) or None
    service = ScorerService(settings, user=args.user, password=password)
    if not service.address.password:
        log.warning(
            "no password for %s: pass --password, set $%s or write %s",
            service.address.user,
            PASSWORD_ENV,
            settings.data_dir / SECRET_FILE_NAME,
        )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    service.start()
    print(
        f"rallycast scorer: serving clubs on {service.address.url()} "
        f"(match store in {settings.data_dir})",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    service.stop()
    print("rallycast scorer: stopped", flush=True)
    return 0


__all__ = ["BrokerAddress", "ScorerService", "configure", "ensure_service_secret", "main"]
