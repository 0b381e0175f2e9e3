"""The button-board runner: follows the boards' device topics on the broker and publishes the
score commands their presses mean. ``rallycast buttons`` runs it; it is also usable in-process
(``start()``/``stop()``).

One MQTT connection per club, logged in as the club's scorer user (named after the club): that
user may read the device topics and publish the club's commands, and nothing of other clubs.
Sessions are clean: a press made while the runner was away is not applied minutes later when it
comes back (the scorer sees the score did not move and presses again), and the broker's stored
states replayed on subscribe arrive with the retain flag, which the boards ignore.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import paho.mqtt.client as mqtt

from scorer import topics
from scorer.buttons.decoders import BadPayload, DeviceMessage
from scorer.buttons.mapping import Board, BoardSpec, Verdict
from scorer.client import (
    BrokerAddress,
    ConnectFailed,
    connect_and_wait,
    make_client,
    resolve_address,
)
from scorer.config import Settings

log = logging.getLogger("rallycast.buttons")

# Commands whose reply we still wait for, per club (to log refusals); older ones are forgotten.
PENDING_REPLIES = 256
PAYLOAD_IN_LOG = 120
# paho's reconnect backoff cap (seconds): boards must work again soon after a broker restart.
RECONNECT_MAX_DELAY = 8

VerdictHook = Callable[[Board, DeviceMessage, Verdict], None]


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
                client_id=f"{client_id_prefix}-{club}",
                clock=clock,
                on_verdict=on_verdict,
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
    ) -> None:
        self.club = club
        self.address = address
        self.boards = [Board(spec) for spec in specs]
        self.clock = clock
        self.on_verdict = on_verdict
        self.reply_topic = topics.replies(club)
        # The club's snapshot says which side stands at the left end (for "left"/"right").
        self.game_topic = topics.game(club)
        self.command_topic = topics.commands(club)
        self._filters = list(dict.fromkeys(f for b in self.boards for f in b.subscriptions()))
        self._pending: OrderedDict[str, str] = OrderedDict()
        self._subscribing: dict[int, list[str]] = {}
        self._first_suback: queue.Queue[list[str]] = queue.Queue()
        self._stopping = threading.Event()
        # Set while the device topics are subscribed; ``subscribed_count`` counts the times
        # (one per connection), so a caller can see a reconnect has completed.
        self.ready = threading.Event()
        self.subscribed_count = 0
        self.client = make_client(address, client_id=client_id, clean_session=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_DELAY)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float) -> None:
        connect_and_wait(self.client, self.address, timeout)
        try:
            refused = self._first_suback.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise ConnectFailed(
                f"club {self.club}: the broker did not answer the subscription"
            ) from None
        if len(refused) == len(self._filters) + 2:
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
        self.client.disconnect()
        self.client.loop_stop()

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("club %s: the broker refused the login: %s", self.club, reason_code)
            return
        # A clean session starts with no subscriptions: subscribe on every (re)connect.
        wanted = [*self._filters, self.reply_topic, self.game_topic]
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

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        # Never let an exception escape: it would stop paho's network thread.
        try:
            if message.topic == self.reply_topic:
                self._on_reply(message.payload)
                return
            if message.topic == self.game_topic:
                self._on_snapshot(message.payload)
                return
            device_message = DeviceMessage(message.topic, message.payload, bool(message.retain))
            for board in self.boards:
                if any(mqtt.topic_matches_sub(f, message.topic) for f in board.subscriptions()):
                    self._handle(board, device_message)
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
        payload = json.dumps(verdict.command, separators=(",", ":"))
        info = self.client.publish(self.command_topic, payload, qos=1)
        what = f"button {verdict.press.button} {verdict.press.gesture} -> {verdict.action}"
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("board %s: %s NOT sent: %s", board.name, what, mqtt.error_string(info.rc))
            return
        # NO_CONN: paho keeps QoS 1 messages and sends them once it has reconnected.
        log.info("board %s: %s: sent %s to %s", board.name, what, payload, self.command_topic)
        self._pending[command_id] = f"board {board.name}: {what}"
        while len(self._pending) > PENDING_REPLIES:
            self._pending.popitem(last=False)

    def _on_snapshot(self, payload: bytes) -> None:
        left_side = 1  # no match (empty payload) or a snapshot without the field
        if payload:
            try:
                snapshot = json.loads(payload)
            except ValueError:
                return
            if isinstance(snapshot, dict) and snapshot.get("left_side") in (1, 2):
                left_side = snapshot["left_side"]
        for board in self.boards:
            if board.left_side != left_side:
                log.info("board %s: side %d is now at the left end", board.name, left_side)
                board.left_side = left_side

    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
        except ValueError:
            return
        if not isinstance(reply, dict):
            return
        what = self._pending.pop(str(reply.get("id")), None)
        if what is None:
            return  # another scorer's command
        if reply.get("ok"):
            log.debug("%s: accepted (rev %s)", what, reply.get("rev"))
        else:
            log.warning("%s: refused by the scorer service: %s", what, reply.get("error"))


def _short(payload: bytes) -> str:
    text = repr(payload[:PAYLOAD_IN_LOG])
    return text + ("..." if len(payload) > PAYLOAD_IN_LOG else "")
