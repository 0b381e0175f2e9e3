"""From presses to score commands, per board. Pure: the caller passes the time.

A ``Board`` owns one device's decoder and rules, and keeps the little state that filtering
needs: what it has seen recently. ``Board.handle(message, now)`` runs the whole pipeline for one
MQTT message and returns one ``Verdict`` per press (a command to send, or why not):

1. the decoder turns the message into presses (``BadPayload`` propagates to the caller);
2. a message with the retain flag presses nothing: it is a stored state replayed on
   (re)subscribe, not a press that just happened; its counter or state is remembered, so the
   same event published again later is not a press either;
3. repeats are dropped: an event whose device counter has not moved since the last one of
   that input (a Shelly resends its last ``input_event`` about every 30 s, whichever match is
   on), a counter seen in the last minute (copies that arrive out of order), a state
   published again without a change (ESPHome ``ON`` after ``ON``), and the second copy of a
   Zigbee2MQTT press reported on both of its topics;
4. debounce: the same gesture on the same button within ``debounce_ms`` of the last one that
   counted is one press (a double tap the device reports as "double" is a different gesture,
   so it is not affected);
5. the button's rule turns the gesture into an action, and the action into the engine's command,
   with an ``id`` unique to this press (from the device's counter and the input's
   generation, which changes when the counter goes back after a device restart), so the
   service applies a press once however often it arrives.

What a board remembers per input (last counter, generation, last state) is ``memory()``;
``restore()`` takes it back after a restart (the runner keeps it in its state dir).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any

from scorer.buttons.decoders import BadPayload, Decoder, DeviceMessage, Press

DEFAULT_DEBOUNCE_MS = 300
# A device counter seen within this many seconds marks a repeat of the same event.
SERIAL_MEMORY_SECONDS = 60.0
SERIAL_MEMORY_SIZE = 256
# Zigbee2MQTT publishes one press on two topics within milliseconds; pair copies this close.
PAIR_WINDOW_SECONDS = 1.0

VERBS = ("point", "minus", "undo", "timeout", "ignore")
# A side is 1 or 2 (player/pair 1 or 2 of the match), or "left"/"right": whoever stands at
# that end of the table now (the snapshot's left_side; the ends change between games).
Side = int | str
SIDES: tuple[Side, ...] = (1, 2, "left", "right")


def resolve_side(side: Side, left_side: int) -> int:
    if side == "left":
        return left_side
    if side == "right":
        return 3 - left_side
    return int(side)


@dataclass(frozen=True)
class Action:
    """What a gesture does. ``side`` None = the side of the button that was pressed."""

    verb: str
    side: Side | None = None

    def command(self, button_side: Side | None, left_side: int = 1) -> dict[str, Any] | None:
        """The engine command; ``left_side`` resolves "left"/"right" (1 before any match)."""
        chosen = self.side if self.side is not None else button_side
        if self.verb == "ignore":
            return None
        if self.verb == "undo":
            return {"cmd": "undo"}
        if chosen is None:  # the config check makes this unreachable; be explicit anyway
            raise ValueError(f"action {self.verb!r} needs a side")
        side = resolve_side(chosen, left_side)
        if self.verb == "point":
            return {"cmd": "point", "side": side}
        if self.verb == "minus":
            return {"cmd": "point", "side": side, "delta": -1}
        return {"cmd": "timeout", "side": side}

    @property
    def needs_side(self) -> bool:
        return self.verb in ("point", "minus", "timeout") and self.side is None

    def __str__(self) -> str:
        return self.verb if self.side is None else f"{self.verb} {self.side}"


_SHORTHAND = re.compile(r"([12])\s*([+-])")


def parse_action(text: str) -> Action:
    """``point``/``minus``/``timeout`` (for the button's side), ``undo``, ``ignore``;
    with a side: ``point 2``, ``minus 1``, ``timeout left``, or the shorthands ``1+ 1- 2+ 2-``."""
    if not isinstance(text, str):
        raise ValueError(f"an action is a text like 'point', 'undo' or '2+', not {text!r}")
    words = text.strip().lower().split()
    if len(words) == 1 and (shorthand := _SHORTHAND.fullmatch(words[0])):
        side, sign = shorthand.groups()
        return Action("point" if sign == "+" else "minus", int(side))
    if words in (["none"], ["nothing"]):
        return Action("ignore")
    if words and words[0] in VERBS:
        if len(words) == 1:
            return Action(words[0])
        if len(words) == 2 and words[0] in ("point", "minus", "timeout"):
            if words[1] in ("1", "2"):
                return Action(words[0], int(words[1]))
            if words[1] in ("left", "right"):
                return Action(words[0], words[1])
    raise ValueError(
        f"unknown action {text!r}: use point, minus, timeout (for the button's side), "
        "point 1, minus 2, point left, timeout right, 1+, 1-, 2+, 2-, undo or ignore"
    )


# Used when neither the board nor the button says otherwise.
DEFAULT_GESTURES: dict[str, Action] = {
    "single": Action("point"),
    "double": Action("minus"),
    "hold": Action("undo"),
}


@dataclass(frozen=True)
class ButtonRule:
    """A button's side (None when it only has actions with their own side) and what each of
    its gestures does; a gesture missing here is ignored."""

    side: Side | None
    gestures: dict[str, Action]


@dataclass(frozen=True)
class Verdict:
    """What became of one press: ``command`` to publish, or None and ``reason``."""

    press: Press | None
    command: dict[str, Any] | None
    reason: str
    action: Action | None = None


@dataclass(frozen=True)
class BoardSpec:
    """A validated ``[[boards]]`` entry."""

    name: str
    club: str
    kind: str
    decoder: Decoder
    buttons: dict[str, ButtonRule]
    # Rule for buttons not listed in ``buttons`` (from the board's ``side``), or None.
    other_buttons: ButtonRule | None = None
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    # The club's table whose match it scores (1..64; clubs/<club>/game is table 1).
    table: int = 1

    def rule_for(self, button: str) -> ButtonRule | None:
        return self.buttons.get(button, self.other_buttons)


@dataclass
class Board:
    spec: BoardSpec
    _serials: OrderedDict[tuple[str, str, str], float] = field(default_factory=OrderedDict)
    _unpaired: dict[str, deque[tuple[str, str, float]]] = field(default_factory=dict)
    _last_counted: dict[tuple[str, str], float] = field(default_factory=dict)
    # Per input ("<topic> <button>"): {"serial": last counter, "generation": n, "level": s}.
    _inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Bumped on every change of ``_inputs`` (the runner saves the memory when it moves).
    memory_version: int = 0
    # Which side stands at the left end now (from the club's snapshots; 1 at the start).
    left_side: int = 1
    _presses_sent: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def subscriptions(self) -> list[str]:
        return self.spec.decoder.subscriptions()

    def handle(self, message: DeviceMessage, now: float) -> list[Verdict]:
        """All verdicts for one message; ``now`` in seconds (wall clock: it goes into ids).
        Raises ``BadPayload`` for a message that cannot be read."""
        if message.retain:
            try:  # remember its counter: the same event again is no press either
                for press in self.spec.decoder.decode(message):
                    if press.serial is not None:  # (a retained ON/OFF says little: skipped)
                        self._moved(message, replace(press, level=None))
            except BadPayload:
                pass
            return [Verdict(None, None, "retained message: a stored state, not a new press")]
        presses = self.spec.decoder.decode(message)
        return [self._verdict(message, press, index, now) for index, press in enumerate(presses)]

    def memory(self) -> dict[str, dict[str, Any]]:
        """What the board remembers per input (JSON-able), for ``restore``."""
        return {key: dict(value) for key, value in self._inputs.items()}

    def restore(self, memory: Any) -> None:
        """Take back ``memory()`` from an earlier run; anything unreadable is skipped."""
        if not isinstance(memory, dict):
            return
        for key, value in memory.items():
            if isinstance(key, str) and isinstance(value, dict):
                self._inputs[key] = {
                    "serial": value.get("serial") if isinstance(value.get("serial"), str) else None,
                    "generation": value.get("generation")
                    if isinstance(value.get("generation"), int)
                    else 0,
                    "level": value.get("level") if isinstance(value.get("level"), str) else None,
                }

    def _moved(self, message: DeviceMessage, press: Press) -> str | None:
        """Record this press's counter / state for its input; the reason it is NOT a new
        press (the counter has not moved, the state has not changed), or None."""
        key = f"{message.topic} {press.button}"
        known = self._inputs.get(key)
        record = dict(known) if known else {"serial": None, "generation": 0, "level": None}
        reason = None
        if press.serial is not None:
            if known is not None and known.get("serial") == press.serial:
                reason = f"repeat of device event {press.serial} (its counter has not moved)"
            elif known is not None and _went_back(known.get("serial"), press.serial):
                record["generation"] = int(record.get("generation") or 0) + 1  # restarted
            record["serial"] = press.serial
        if press.level is not None:
            if known is not None and known.get("level") == press.level:
                reason = f"state {press.level!r} published again (no change)"
            record["level"] = press.level
        if record != known and (press.serial is not None or press.level is not None):
            self._inputs[key] = record
            self.memory_version += 1
        return reason

    def _verdict(self, message: DeviceMessage, press: Press, index: int, now: float) -> Verdict:
        not_moved = self._moved(message, press)
        if not_moved is not None:
            return Verdict(press, None, not_moved)
        if not press.gesture:
            return Verdict(press, None, f"device counter reset to {press.serial} (a restart)")
        if press.serial is not None and self._seen_serial(press, now):
            return Verdict(press, None, f"repeat of device event {press.serial}")
        if press.via and self._pairs_with_other_topic(press, now):
            return Verdict(press, None, "same press already reported on the device's other topic")
        rule = self.spec.rule_for(press.button)
        if rule is None:
            return Verdict(press, None, f"button {press.button!r} is not mapped on this board")
        action = rule.gestures.get(press.gesture)
        if action is None or action.verb == "ignore":
            return Verdict(press, None, f"gesture {press.gesture!r} does nothing on this button")
        key = (press.button, press.gesture)
        last = self._last_counted.get(key)
        if last is not None and 0 <= now - last < self.spec.debounce_ms / 1000:
            return Verdict(press, None, f"debounced (within {self.spec.debounce_ms} ms)")
        self._last_counted[key] = now
        command = action.command(rule.side, self.left_side)
        assert command is not None
        command["id"] = self._command_id(message, press, index, now)
        return Verdict(press, command, "sent", action)

    def generation(self, message: DeviceMessage, press: Press) -> int:
        known = self._inputs.get(f"{message.topic} {press.button}")
        return int(known.get("generation") or 0) if known else 0

    def _seen_serial(self, press: Press, now: float) -> bool:
        assert press.serial is not None
        for old_key, seen_at in list(self._serials.items()):  # forget old ones, oldest first
            if now - seen_at <= SERIAL_MEMORY_SECONDS and len(self._serials) < SERIAL_MEMORY_SIZE:
                break
            del self._serials[old_key]
        key = (press.button, press.gesture, press.serial)
        if key in self._serials:
            return True
        self._serials[key] = now
        return False

    def _pairs_with_other_topic(self, press: Press, now: float) -> bool:
        """True when this press is the second copy of one already seen on another topic; the
        first copy is remembered (unpaired) for ``PAIR_WINDOW_SECONDS``."""
        for via, queue in self._unpaired.items():
            while queue and now - queue[0][2] > PAIR_WINDOW_SECONDS:
                queue.popleft()
            if via == press.via:
                continue
            for entry in queue:
                if entry[:2] == (press.button, press.gesture):
                    queue.remove(entry)
                    return True
        self._unpaired.setdefault(press.via, deque(maxlen=32)).append(
            (press.button, press.gesture, now)
        )
        return False

    def _command_id(self, message: DeviceMessage, press: Press, index: int, now: float) -> str:
        # The device's own counter when it has one, with the input's generation (a counter
        # that starts again after a device restart makes new ids); otherwise the arrival time
        # in ms and this board's press count, so two identical presses stay two commands even
        # within one millisecond. The runner resends a press with its id until the reply.
        self._presses_sent += 1
        if press.serial is not None:
            when = f"{press.serial}@{self.generation(message, press)}"
        else:
            when = f"{round(now * 1000)}.{self._presses_sent}"
        digest = hashlib.sha256(
            b"\0".join(
                [
                    self.spec.name.encode(),
                    message.topic.encode(),
                    message.payload,
                    str(index).encode(),
                    when.encode(),
                ]
            )
        ).hexdigest()[:16]
        return f"btn-{self.spec.name}-{digest}"


def _went_back(before: Any, now: str) -> bool:
    """True when a device counter is lower than before (the device restarted)."""
    try:
        return float(now) < float(before)
    except (TypeError, ValueError):
        return False
