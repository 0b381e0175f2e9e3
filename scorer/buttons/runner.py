"""The button-board runner: follows the boards' device topics on the broker and publishes the
score commands their presses mean. ``rallycast buttons`` runs it; it is also usable in-process
(``start()``/``stop()``).

One MQTT connection per club, logged in as the club's scorer user (named after the club): that
user may read the device topics and publish the commands of every table of the club, and
nothing of other clubs. Each board sends to its own table (``table`` in its ``[[boards]]``
entry: table 1 on ``clubs/<club>/game/cmd``, table n on ``clubs/<club>/tables/<n>/game/cmd``)
and follows that table's replies and snapshot.

A press is done when the service's reply for its command id arrives; until then the runner
resends the same command (0.5 s, doubling to 4 s, at once after a reconnect, 30 s in all:
docs/protocol.md "End-to-end delivery"). What each board remembers of its devices (the last
counter of every input) is kept in ``state_dir`` so a restart does not press a device's
periodic resend again.
Sessions are clean: a press made while the runner was away is not applied minutes later when it
comes back (the scorer sees the score did not move and presses again), and the broker's stored
states replayed on subscribe arrive with the retain flag, which the boards ignore.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.buttons.decoders import BadPayload, DeviceMessage
from scorer.buttons.mapping import Board, BoardSpec, Verdict
from scorer.client import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    RESEND,
    BrokerAddress,
    CommandTooLarge,
    ConnectFailed,
    Failover,
    ResendPolicy,
    check_payload_size,
    connect_and_wait,
    make_client,
    resolve_address,
    stop_loop,
)
from scorer.config import Settings
from scorer.files import write_private_file
from scorer.timing import BOARDS_RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY

log = logging.getLogger("rallycast.buttons")

# Commands whose reply we still wait for (resending them), per club; older ones are dropped.
PENDING_REPLIES = 256
RESEND_TICK = 0.1  # seconds between looks at what is due for a resend
PAYLOAD_IN_LOG = 120

VerdictHook = Callable[[Board, DeviceMessage, Verdict], None]


@dataclass
class PendingPress:
    """A command sent for a press and not answered yet."""

    payload: bytes
    what: str
    topic: str  # the command topic of the board's table
    first_sent: float  # time.monotonic()
    next_send: float
    interval: float
    sends: int = 1


class ButtonRunner:
    """Runs ``boards`` against a broker. ``passwords`` maps each club to its scorer user's
    password. ``on_verdict(board, message, verdict)`` (optional) sees every verdict, in paho's
    network thread; it is for tests and status displays."""

    def __init__(
        self,
        boards: Sequence[BoardSpec],
        *,
        broker: str | Settings | BrokerAddress,
        passwords: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        client_id_prefix: str = "rallycast-buttons",
        connect_timeout: float = 10.0,
        on_verdict: VerdictHook | None = None,
        state_dir: Path | None = None,
        resend: ResendPolicy = RESEND,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        by_club: dict[str, list[BoardSpec]] = {}
        for spec in boards:
            by_club.setdefault(spec.club, []).append(spec)
        missing = sorted(set(by_club) - set(passwords))
        if missing:
            raise ValueError(f"no password for club(s) {missing}")
        self.connect_timeout = connect_timeout
        self.links = {
            club: ClubLink(
                club,
                specs,
                resolve_address(broker, user=club, password=passwords[club]),
                # A random suffix: a guessable id lets anyone take the connection over
                # (MQTT-3.1.4-2); the session is clean, so nothing needs a stable id.
                client_id=f"{client_id_prefix}-{club}-{secrets.token_hex(4)}",
                clock=clock,
                on_verdict=on_verdict,
                state_file=None if state_dir is None else state_dir / f"buttons-{club}.json",
                resend=resend,
                max_payload_bytes=max_payload_bytes,
            )
            for club, specs in by_club.items()
        }

    def start(self) -> None:
        """Connect every club's link and subscribe; raises ``ConnectFailed`` (after closing
        what was opened) when the broker cannot be reached or refuses a login."""
        started: list[ClubLink] = []
        try:
            for link in self.links.values():
                link.start(self.connect_timeout)
                started.append(link)
        except BaseException:
            for link in started:
                link.stop()
            raise

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()

    def __enter__(self) -> ButtonRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClubLink:
    """One club's connection and boards. Everything after ``start()`` runs in paho's network
    thread for this connection, so each board's state is touched by one thread only."""

    def __init__(
        self,
        club: str,
        specs: Sequence[BoardSpec],
        address: BrokerAddress,
        *,
        client_id: str,
        clock: Callable[[], float],
        on_verdict: VerdictHook | None,
        state_file: Path | None = None,
        resend: ResendPolicy = RESEND,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.club = club
        self.state_file = state_file
        self.resend = resend
        self.max_payload_bytes = max_payload_bytes
        self.address = address
        self.boards = [Board(spec) for spec in specs]
        self.clock = clock
        self.on_verdict = on_verdict
        # Each table the boards score: its replies, and its snapshot, which says which side
        # stands at the left end (for "left"/"right").
        self.tables = sorted({board.spec.table for board in self.boards})
        self.reply_topics = {topics.replies(club, table): table for table in self.tables}
        self.game_topics = {topics.game(club, table): table for table in self.tables}
        self._filters = list(dict.fromkeys(f for b in self.boards for f in b.subscriptions()))
        self._pending: OrderedDict[str, PendingPress] = OrderedDict()
        self._pending_lock = threading.Lock()  # paho's thread and the resend thread
        self._saved_versions: dict[str, int] = {}
        self._restore()
        # Presses done (their reply came) and given up, over this link's life.
        self.done = 0
        self.given_up = 0
        self._subscribing: dict[int, list[str]] = {}
        self._first_suback: queue.Queue[list[str]] = queue.Queue()
        self._stopping = threading.Event()
        # Set while the device topics are subscribed; ``subscribed_count`` counts the times
        # (one per connection), so a caller can see a reconnect has completed.
        self.ready = threading.Event()
        self.subscribed_count = 0
        self.client = make_client(address, client_id=client_id, clean_session=True)
        self.client.reconnect_delay_set(RECONNECT_MIN_DELAY, BOARDS_RECONNECT_MAX_DELAY)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        # A cluster's nodes in turn: each reconnect goes to the next one.
        self.failover = Failover(self.client, address)
        self.failover.install()

    def start(self, timeout: float) -> None:
        self._stopping.clear()
        connect_and_wait(self.client, self.address, timeout, self.failover)
        threading.Thread(
            target=self._resend_loop, name=f"rallycast-resend-{self.club}", daemon=True
        ).start()
        try:
            refused = self._first_suback.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise ConnectFailed(
                f"club {self.club}: the broker did not answer the subscription"
            ) from None
        if len(refused) == len(self._filters) + 2 * len(self.tables):
            self.stop()
            raise ConnectFailed(
                f"club {self.club}: the broker refused every topic to user {self.club!r} "
                f"({', '.join(refused)}): is it the club's scorer user?"
            )
        log.info(
            "club %s: connected to %s as %r; following %s",
            self.club,
            self.address.url(),
            self.club,
            ", ".join(self._filters),
        )

    def stop(self) -> None:
        self._stopping.set()
        self.failover.stop()
        self.client.disconnect()
        stop_loop(self.client)

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("club %s: the broker refused the login: %s", self.club, reason_code)
            return
        # A clean session starts with no subscriptions: subscribe on every (re)connect.
        wanted = [*self._filters, *self.reply_topics, *self.game_topics]
        result, mid = client.subscribe([(topic_filter, 1) for topic_filter in wanted])
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._subscribing[mid] = wanted

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.ready.clear()
        if not self._stopping.is_set():
            log.warning("club %s: lost the broker (%s); reconnecting", self.club, reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        wanted = self._subscribing.pop(mid, [])
        refused = [f for f, code in zip(wanted, reason_codes, strict=False) if code.is_failure]
        for topic_filter in refused:
            log.error(
                "club %s: the broker refused topic %r to user %r (see the ACL in docs/protocol.md)",
                self.club,
                topic_filter,
                self.club,
            )
        self.subscribed_count += 1
        self.ready.set()
        self._first_suback.put(refused)
        # Back (re)subscribed: every press still waiting for its reply is resent at once.
        with self._pending_lock:
            now = time.monotonic()
            for pending in self._pending.values():
                pending.next_send = now

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        # Never let an exception escape: it would stop paho's network thread.
        try:
            if message.topic in self.reply_topics:
                self._on_reply(message.payload)
                return
            table = self.game_topics.get(message.topic)
            if table is not None:
                self._on_snapshot(table, message.payload)
                return
            device_message = DeviceMessage(message.topic, message.payload, bool(message.retain))
            for board in self.boards:
                if any(mqtt.topic_matches_sub(f, message.topic) for f in board.subscriptions()):
                    self._handle(board, device_message)
            self._save()
        except Exception:
            log.exception("club %s: failed to handle a message on %s", self.club, message.topic)

    def _handle(self, board: Board, message: DeviceMessage) -> None:
        try:
            verdicts = board.handle(message, self.clock())
        except BadPayload as exc:
            log.warning(
                "board %s: ignored a message on %s: %s (payload %s)",
                board.name,
                message.topic,
                exc,
                _short(message.payload),
            )
            return
        for verdict in verdicts:
            if verdict.command is not None:
                self._publish(board, verdict)
            elif verdict.press is None:
                log.debug("board %s: %s on %s", board.name, verdict.reason, message.topic)
            else:
                log.info(
                    "board %s: button %s %s -> nothing: %s",
                    board.name,
                    verdict.press.button,
                    verdict.press.gesture,
                    verdict.reason,
                )
            if self.on_verdict is not None:
                self.on_verdict(board, message, verdict)

    def _publish(self, board: Board, verdict: Verdict) -> None:
        assert verdict.command is not None and verdict.press is not None
        command_id = str(verdict.command["id"])
        payload = json.dumps(verdict.command, separators=(",", ":")).encode()
        what = f"button {verdict.press.button} {verdict.press.gesture} -> {verdict.action}"
        try:
            check_payload_size(payload, self.max_payload_bytes)
        except CommandTooLarge as exc:
            log.error("board %s: %s NOT sent: %s", board.name, what, exc)
            return
        command_topic = topics.commands(self.club, board.spec.table)
        info = self.client.publish(command_topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("board %s: %s NOT sent: %s", board.name, what, mqtt.error_string(info.rc))
            return
        # NO_CONN: paho keeps QoS 1 messages and sends them once it has reconnected.
        log.info("board %s: %s: sent %s to %s", board.name, what, payload, command_topic)
        now = time.monotonic()
        with self._pending_lock:
            self._pending[command_id] = PendingPress(
                payload,
                f"board {board.name}: {what}",
                command_topic,
                first_sent=now,
                next_send=now + self.resend.first,
                interval=self.resend.first,
            )
            while len(self._pending) > PENDING_REPLIES:
                _, dropped = self._pending.popitem(last=False)
                log.error("%s: given up (too many presses waiting for a reply)", dropped.what)
                self.given_up += 1

    def pending(self) -> list[str]:
        """The ids of the presses still waiting for their reply."""
        with self._pending_lock:
            return list(self._pending)

    def _resend_loop(self) -> None:
        while not self._stopping.wait(RESEND_TICK):
            try:
                self._resend_due()
            except Exception:  # the resends must go on
                log.exception("club %s: resending failed", self.club)

    def _resend_due(self) -> None:
        now = time.monotonic()
        due: list[PendingPress] = []
        with self._pending_lock:
            for command_id, pending in list(self._pending.items()):
                if now - pending.first_sent >= self.resend.total:
                    del self._pending[command_id]
                    self.given_up += 1
                    log.error(
                        "%s: no reply from the scorer service within %g s (%d sends): given "
                        "up; is the service running? (status on %s)",
                        pending.what,
                        self.resend.total,
                        pending.sends,
                        topics.SCORER_STATUS,
                    )
                elif now >= pending.next_send and self.ready.is_set():
                    pending.sends += 1
                    pending.next_send = now + pending.interval
                    pending.interval = self.resend.next_interval(pending.interval)
                    due.append(pending)
        for pending in due:
            log.info("%s: no reply yet, resent (send %d)", pending.what, pending.sends)
            self.client.publish(pending.topic, pending.payload, qos=1)

    # --- what the boards remember, across restarts ------------------------------------------

    def _restore(self) -> None:
        if self.state_file is None:
            return
        try:
            saved = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "club %s: cannot read %s (%s): starting afresh", self.club, self.state_file, exc
            )
            return
        if not isinstance(saved, dict):
            return
        for board in self.boards:
            board.restore(saved.get(board.name))
            self._saved_versions[board.name] = board.memory_version

    def _save(self) -> None:
        if self.state_file is None:
            return
        if all(self._saved_versions.get(b.name) == b.memory_version for b in self.boards):
            return
        state = {board.name: board.memory() for board in self.boards}
        try:
            self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # On paho's thread before the press goes out: no fsync (the counters' memory only
            # saves a resend after a restart; losing its last write loses no press).
            write_private_file(self.state_file, json.dumps(state), prefix=".boards-", durable=False)
        except OSError as exc:
            log.error(
                "club %s: cannot save the boards' memory to %s: %s", self.club, self.state_file, exc
            )
            return
        for board in self.boards:
            self._saved_versions[board.name] = board.memory_version

    def _on_snapshot(self, table: int, payload: bytes) -> None:
        left_side = 1  # no match (empty payload) or a snapshot without the field
        if payload:
            try:
                snapshot = json.loads(payload)
            except ValueError:
                return
            if isinstance(snapshot, dict) and snapshot.get("left_side") in (1, 2):
                left_side = snapshot["left_side"]
        for board in self.boards:
            if board.spec.table == table and board.left_side != left_side:
                log.info("board %s: side %d is now at the left end", board.name, left_side)
                board.left_side = left_side

    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
        except ValueError:
            return
        if not isinstance(reply, dict):
            return
        with self._pending_lock:
            pending = self._pending.pop(str(reply.get("id")), None)
        if pending is None:
            return  # another scorer's command, or a second reply to a resend
        self.done += 1
        if reply.get("ok"):
            log.debug("%s: accepted (rev %s)", pending.what, reply.get("rev"))
        else:
            log.warning("%s: refused by the scorer service: %s", pending.what, reply.get("error"))


def _short(payload: bytes) -> str:
    text = repr(payload[:PAYLOAD_IN_LOG])
    return text + ("..." if len(payload) > PAYLOAD_IN_LOG else "")
