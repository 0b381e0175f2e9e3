"""A club's desk: the lifecycle of the matches on the club's tables, without the network.

One ``Desk`` per club holds the current match of each of its tables and the club's command
index, and turns one payload from a command topic into a ``Handled``: the reply, the
publications (retained snapshot, event) as plain data, and what the store said. The service
(scorer/service.py) publishes them; nothing here touches MQTT.

Laws kept here (docs/protocol.md, "Commands" and "Delivery"):
- an id is applied at most once per club, whichever of its tables it came on, across matches
  and restarts (the store's command index); a resend gets the same reply; another command
  under a used id is refused (``id_reused``); a refusal by the rules is answered again to a
  resend;
- nothing changes in memory before the store has committed: the new match is computed with
  ``Match.applied`` (the current one stays as it was) and kept only once the write is
  committed; a failed write (``store_failed``) leaves memory and store as they were;
- a refusal changes nothing; a table beyond the club's configured ``tables`` is refused
  (``no_such_table``), except an end (abandon) or a delete of a match left there, and a
  resend still gets its own earlier answer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scorer import topics
from scorer.commands import Command, Payload, PayloadRefused, Refused, decode_payload
from scorer.config import Club
from scorer.engine import ENDED_STATUSES, Match, begins_new_match
from scorer.store import (
    COMMAND_IDS_PER_CLUB,
    MatchStore,
    StoreError,
    command_id_key,
    new_match_id,
)

log = logging.getLogger("rallycast.scorer")

# Kept with each remembered reply (in memory and in the store), never published.
FINGERPRINT_KEY = "_command"

CommandId = str | int | None


@dataclass
class ClubMatch:
    """A table's current match."""

    match_id: str
    match: Match

    @property
    def rev(self) -> int:
        return self.match.rev


@dataclass(frozen=True)
class Publication:
    """One MQTT publication (QoS 1): ``payload`` is a JSON value, or ``b""`` to clear a
    retained message."""

    topic: str
    payload: dict[str, Any] | bytes
    retain: bool = False


@dataclass
class Handled:
    """What one command came to. ``reply`` (None: nothing to answer, a retained command
    already answered); ``publications`` in the order to publish them (before the reply);
    ``store_error`` a write the store refused (the reply says ``store_failed``);
    ``store_worked`` a write the store committed; ``record`` ``(match_id, ended)`` when a
    match ended or changed after its end (for the record and its webhooks)."""

    reply: dict[str, Any] | None
    publications: list[Publication] = field(default_factory=list)
    store_error: StoreError | None = None
    store_worked: bool = False
    record: tuple[str, bool] | None = None


def reply_of(command_id: CommandId, rev: int, match_id: str | None, table: int) -> dict[str, Any]:
    """An accepted command's reply (docs/protocol.md)."""
    return {
        "id": command_id,
        "ok": True,
        "error": None,
        "code": None,
        "rev": rev,
        "match_id": match_id,
        "table": table,
    }


@dataclass(frozen=True)
class _Press:
    """The command being handled: where it came from and what identifies it."""

    table: int
    id: CommandId
    fingerprint: str | None


class Desk:
    """The matches of one club's tables. ``tables``: table number -> its current match.
    ``store`` gives the match store (it raises when the service is not running)."""

    def __init__(
        self,
        club: Club,
        store: Callable[[], MatchStore],
        clock: Callable[[], float],
        *,
        max_payload_bytes: int = 0,
    ) -> None:
        self.club = club
        self.tables: dict[int, ClubMatch] = {}
        self._store = store
        self._clock = clock
        self._max_payload_bytes = max_payload_bytes
        # Command id key -> the reply it got (accepted ones are also in the store); read
        # from the store on first use.
        self._replies: OrderedDict[str, dict[str, Any]] | None = None
        # Refusals the store could not take (kept in memory only).
        self._refusals: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @property
    def club_id(self) -> str:
        return self.club.id

    # -- one command ------------------------------------------------------------------------

    def handle(self, payload: bytes, *, table: int = 1, retain: bool = False) -> Handled:
        """One payload from the command topic of ``table`` (``retain``: it came with the
        retain flag) -> what it came to. Raises only on a bug (the caller answers
        ``internal_error``)."""
        try:
            decoded = decode_payload(payload, table=table, max_bytes=self._max_payload_bytes)
        except PayloadRefused as exc:
            return self._refused(_Press(table, exc.command_id, None), exc)
        press = _Press(table, decoded.id, decoded.fingerprint)
        if press.id is not None:
            # Before the table check: a resend gets its own answer again, also when the
            # configuration has since dropped the table it was applied on.
            earlier = self._earlier_reply(press)
            if earlier is not None:  # a resent command: nothing changes, same answer
                return Handled(None if retain else earlier)
        tables = self.club.tables
        # A match left on a table the configuration no longer has can still be ended (so it
        # reaches the record) or deleted; nothing else is applied there.
        if table > tables and not (table in self.tables and _ends_or_deletes(decoded)):
            where = "table 1" if tables == 1 else f"tables 1-{tables}"
            return Handled(
                self.refusal(
                    table,
                    press.id,
                    f"club {self.club_id} has no table {table} (it has {tables}): send to "
                    f"{where}, or configure more tables",
                    "no_such_table",
                    table=table,
                    tables=tables,
                )
            )
        if retain:
            return Handled(
                self.refusal(
                    table,
                    press.id,
                    "a retained command is not applied (it would be applied again on every "
                    "restart): publish commands without the retain flag, and clear this one "
                    "with an empty retained message on the command topic",
                    "retained_command",
                )
            )
        if decoded.is_delete:
            return self._delete(press, decoded)
        try:
            command = decoded.parse()
        except Refused as exc:
            code = exc.code
            return Handled(
                self.refusal(
                    table,
                    press.id,
                    str(exc),
                    "bad_command" if code == "refused" else code,
                    **exc.params,
                )
            )
        press = _Press(table, command.id, press.fingerprint)
        current = self.tables.get(table)
        wrong = self._wrong_match(press, decoded.match, current)
        if wrong is not None:
            return wrong
        if begins_new_match(current.match if current else None, command):
            return self._start(press, command, current)
        if current is None:
            # Remembered: a resend of this id after the next match has started must not
            # score in it (the press was made for no match).
            return self._remember_refusal(
                press,
                self.refusal(table, press.id, "no match: start one first", "no_match"),
            )
        return self._apply(press, command, current)

    def _apply(self, press: _Press, command: Command, current: ClubMatch) -> Handled:
        # The new match is computed beside the current one; the table's match changes only
        # once the store has committed the command (a failure leaves memory and store as
        # they were).
        try:
            after, outcome = current.match.applied(command, self._clock())
        except Refused as exc:
            return self._refused_by_rules(press, exc)
        reply = reply_of(press.id, after.rev, current.match_id, press.table)
        try:
            self._store().append(
                current.match_id,
                after.rev,
                after.latest,
                club_id=self.club_id,
                command_id=press.id,
                reply=self._with_fingerprint(reply, press),
            )
        except StoreError as exc:
            return self._store_failed(press, exc)
        was_ended = current.match.status in ENDED_STATUSES
        current.match = after
        self._remember_reply(press, reply)
        now_ended = after.status in ENDED_STATUSES
        handled = Handled(
            reply,
            self._change(press.table, outcome.snapshot, outcome.event),
            store_worked=True,
            record=(current.match_id, not was_ended and now_ended)
            if was_ended or now_ended
            else None,
        )
        log.debug(
            "club %s table %d: accepted %s -> rev %d",
            self.club_id,
            press.table,
            command.cmd,
            current.rev,
        )
        return handled

    def _start(self, press: _Press, command: Command, previous: ClubMatch | None) -> Handled:
        now = self._clock()
        match_id = new_match_id(now)
        try:
            match, outcome = Match(match_id).applied(command, now)
        except Refused as exc:
            return self._refused_by_rules(press, exc)
        reply = reply_of(press.id, match.rev, match_id, press.table)
        try:
            self._store().start_match(
                self.club_id,
                match_id,
                match.latest,
                table=press.table,
                command_id=press.id,
                reply=self._with_fingerprint(reply, press),
            )
        except StoreError as exc:
            return self._store_failed(press, exc)
        self.tables[press.table] = ClubMatch(match_id, match)
        self._remember_reply(press, reply)
        if previous is not None:
            log.info(
                "club %s table %d: match %s replaced by %s",
                self.club_id,
                press.table,
                previous.match_id,
                match_id,
            )
        else:
            log.info("club %s table %d: match %s started", self.club_id, press.table, match_id)
        return Handled(
            reply, self._change(press.table, outcome.snapshot, outcome.event), store_worked=True
        )

    def _delete(self, press: _Press, decoded: Payload) -> Handled:
        table = press.table
        try:
            decoded.check_delete()
        except Refused as exc:
            return Handled(self.refusal(table, press.id, str(exc), exc.code, **exc.params))
        current = self.tables.get(table)
        wrong = self._wrong_match(press, decoded.match, current)
        if wrong is not None:
            return wrong
        reply = reply_of(press.id, 0, None, table)
        handled = Handled(reply)
        # Stored even with no match to delete: a resend of this id after a restart and a
        # new start must be answered, not delete the new match.
        if current is not None or press.id is not None:
            try:
                self._store().clear_current(
                    self.club_id,
                    table=table,
                    command_id=press.id,
                    reply=self._with_fingerprint(reply, press),
                )
            except StoreError as exc:
                return self._store_failed(press, exc)
            handled.store_worked = True
        if current is not None:
            del self.tables[table]
            event = {"kind": "delete", "match_id": current.match_id, "rev": 0, "table": table}
            handled.publications = [
                Publication(topics.game(self.club_id, table), b"", retain=True),
                Publication(topics.events(self.club_id, table), event),
            ]
            log.info("club %s table %d: match %s deleted", self.club_id, table, current.match_id)
        self._remember_reply(press, reply)
        return handled

    def _wrong_match(
        self, press: _Press, wanted: str | None, current: ClubMatch | None
    ) -> Handled | None:
        """The refusal of a command meant for another match than the table's (None: it is
        for this one, or for whichever is current)."""
        if wanted is None or (current is not None and current.match_id == wanted):
            return None
        return Handled(
            self.refusal(
                press.table,
                press.id,
                f"the command is for match {wanted}, but "
                + (f"match {current.match_id} is current" if current else "no match is current"),
                "wrong_match",
                match=wanted,
            )
        )

    # -- publications -----------------------------------------------------------------------

    def table_snapshot(self, table: int, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The engine's snapshot as the table's topic carries it: with ``"table": n`` and
        ``"table_name"`` (the configured name or "Table n")."""
        return {**snapshot, "table": table, "table_name": self.club.table_name(table)}

    def snapshot_publication(self, table: int) -> Publication | None:
        """The retained snapshot of the table's current match (None: no match, or not
        started)."""
        current = self.tables.get(table)
        snapshot = current.match.snapshot() if current is not None else None
        if snapshot is None:
            return None
        shown = self.table_snapshot(table, snapshot)
        return Publication(topics.game(self.club_id, table), shown, retain=True)

    def _change(
        self, table: int, snapshot: dict[str, Any], event: dict[str, Any] | None
    ) -> list[Publication]:
        shown = self.table_snapshot(table, snapshot)
        publications = [Publication(topics.game(self.club_id, table), shown, retain=True)]
        if event is not None:
            publications.append(
                Publication(topics.events(self.club_id, table), {**event, "table": table})
            )
        return publications

    # -- refusals ---------------------------------------------------------------------------

    def refusal(
        self,
        table: int,
        command_id: CommandId,
        reason: str,
        code: str = "refused",
        /,
        **params: Any,
    ) -> dict[str, Any]:
        """The refusal reply on ``table`` (``params`` go to the reply's ``params``)."""
        log.info(
            "club %s table %d: refused a command (id %r): %s",
            self.club_id,
            table,
            command_id,
            reason,
        )
        current = self.tables.get(table)
        return {
            "id": command_id,
            "ok": False,
            "error": reason,
            "code": code,
            "params": params,
            "rev": current.rev if current else 0,
            "match_id": current.match_id if current else None,
            "table": table,
        }

    def _refused(self, press: _Press, exc: Refused) -> Handled:
        return Handled(self.refusal(press.table, press.id, str(exc), exc.code, **exc.params))

    def _refused_by_rules(self, press: _Press, exc: Refused) -> Handled:
        return self._remember_refusal(
            press, self.refusal(press.table, press.id, str(exc), exc.code, **exc.params)
        )

    def _store_failed(self, press: _Press, exc: StoreError) -> Handled:
        """A write the store refused: the command is refused (store_failed, nothing
        changed); the service says stalled until a write works again."""
        log.error("club %s: %s", self.club_id, exc)
        return Handled(
            self.refusal(
                press.table, press.id, "the service could not save the command", "store_failed"
            ),
            store_error=exc,
        )

    # -- the command index: an id is applied at most once per club ---------------------------

    def _index(self) -> OrderedDict[str, dict[str, Any]]:
        if self._replies is None:
            index: OrderedDict[str, dict[str, Any]] = OrderedDict()
            for key, reply in self._store().command_replies(self.club_id):
                index[key] = reply
            self._replies = index
        return self._replies

    def _earlier_reply(self, press: _Press) -> dict[str, Any] | None:
        assert press.id is not None
        key = command_id_key(press.id)
        reply = self._index().get(key)
        if reply is None:
            reply = self._refusals.get(key)
        if reply is None:
            # Stores written before the index existed: the current match's log knows its ids.
            current = self.tables.get(press.table)
            accepted_at = current.match.rev_of(press.id) if current is not None else None
            if accepted_at is not None:
                assert current is not None
                reply = reply_of(press.id, accepted_at, current.match_id, press.table)
        if reply is None:
            return None
        reply = dict(reply)
        reply.setdefault("table", 1)  # (remembered before tables: table 1's)
        known = reply.pop(FINGERPRINT_KEY, None)
        if known is not None and press.fingerprint is not None and known != press.fingerprint:
            # Not a resend: another command under a used id (a board that numbers its
            # presses and starts again after a reboot). The old reply would say "done" for
            # a press that is not applied.
            return self.refusal(
                press.table,
                press.id,
                "this id was already used for another command: give each command a new id",
                "id_reused",
                id=press.id,
            )
        return reply

    @staticmethod
    def _with_fingerprint(reply: dict[str, Any], press: _Press) -> dict[str, Any]:
        """The reply as remembered: with the command's fingerprint, so a resend (the same
        command) gets the reply and another command under the same id does not."""
        if press.fingerprint is None:
            return reply
        return {**reply, FINGERPRINT_KEY: press.fingerprint}

    def _remember_reply(self, press: _Press, reply: dict[str, Any]) -> None:
        if press.id is None:
            return
        index = self._index()
        index[command_id_key(press.id)] = self._with_fingerprint(reply, press)
        while len(index) > COMMAND_IDS_PER_CLUB:
            index.popitem(last=False)

    def _remember_refusal(self, press: _Press, reply: dict[str, Any]) -> Handled:
        """A refusal by the rules (or no_match) is answered again to a resend of its id, so
        a -1 refused now is not applied by its resend after the next point. Kept in the
        store with the accepted ids (a resend may come after a restart); in memory only
        when the store cannot take it (the refusal stands either way)."""
        if press.id is not None:
            remembered = self._with_fingerprint(reply, press)
            try:
                self._store().remember(self.club_id, press.id, remembered)
            except StoreError as exc:
                log.warning("club %s: refusal kept in memory only: %s", self.club_id, exc)
                self._refusals[command_id_key(press.id)] = remembered
                while len(self._refusals) > COMMAND_IDS_PER_CLUB:
                    self._refusals.popitem(last=False)
            else:
                self._remember_reply(press, reply)
        return Handled(reply)


def _ends_or_deletes(decoded: Payload) -> bool:
    """Whether a decoded command deletes the table's match or ends (abandons) it."""
    if decoded.is_delete:
        return True
    try:
        return decoded.parse().cmd == "end"
    except Refused:
        return False
