"""Commands, parsed once: a payload from a command topic -> a typed ``Command`` (or a
refusal with its code), before anything is applied. Pure: no I/O, no clock.

    payload = decode_payload(b'{"id": 7, "cmd": "point", "side": 1}', table=1, max_bytes=0)
    command = payload.parse()      # Command(cmd="point", args={"side": 1, "delta": 1}, id=7)

``decode_payload`` checks what a service must check before it looks at the command (the size,
UTF-8, JSON without NaN, valid Unicode, the ``"match"`` field) and gives the id, the wanted
match and the fingerprint (a resend has the same one); ``Payload.parse`` (``parse``,
``parse_command``) gives the normalized command: only known fields, defaults filled in, names
cleaned. Every refusal is ``Refused`` with code ``bad_command`` (``too_large`` for the size);
the commands, shorthands and codes: docs/protocol.md and docs/rules.md."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scorer.rules import BEST_OF_CHOICES

MAX_NAME_CHARS = 64
MAX_ID_CHARS = 128
MAX_COMMAND_CHARS = 4096

# Text shorthands for devices that can only send a fixed string.
SHORTHANDS: dict[str, dict[str, Any]] = {
    "1+": {"cmd": "point", "side": 1, "delta": 1},
    "1-": {"cmd": "point", "side": 1, "delta": -1},
    "2+": {"cmd": "point", "side": 2, "delta": 1},
    "2-": {"cmd": "point", "side": 2, "delta": -1},
    "undo": {"cmd": "undo"},
    "redo": {"cmd": "redo"},
}

# Characters that could reorder or hide what a display shows around a name: bidi embeddings,
# overrides and isolates, LRM/RLM (removed), and C0/C1 controls (each becomes a space).
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\u0000-\u001f\u007f-\u009f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Refused(Exception):
    """A command the rules do not allow; the match is unchanged.

    ``str(exc)`` is the reason in English, for people; ``exc.code`` a machine-readable code
    (snake_case, ``"refused"`` if none was given) and ``exc.params`` its parameters, so a page
    can say it in the reader's language. Every code and its params: docs/rules.md."""

    def __init__(self, message: str, code: str = "refused", **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


def _bad(message: str, **params: Any) -> Refused:
    """A command that is not well formed (code ``bad_command``; ``field`` names the culprit)."""
    return Refused(message, code="bad_command", **params)


DELETE_COMMANDS = frozenset({"delete", "clear"})


@dataclass(frozen=True)
class Command:
    """A parsed command: ``cmd`` (one of the engine's commands), ``args`` its normalized
    fields (no ``cmd``, no ``id``) and ``id`` (a string or an integer; None: none given).
    Treat ``args`` as read-only."""

    cmd: str
    args: dict[str, Any]
    id: str | int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The command as the match log keeps it: ``{"cmd": ..., **args, "id"?: ...}``."""
        command: dict[str, Any] = {"cmd": self.cmd, **self.args}
        if self.id is not None:
            command["id"] = self.id
        return command


def parse_command(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A command as bytes, text (JSON or a shorthand) or a dict -> the normalized command dict
    (only known fields, defaults filled in, names trimmed and cleaned). Raises Refused with
    code ``bad_command``."""
    return parse(raw).as_dict()


def parse(raw: bytes | str | dict[str, Any]) -> Command:
    """``parse_command`` as a ``Command``. Raises Refused with code ``bad_command``."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("a command must be UTF-8 text") from None
    if isinstance(raw, str):
        raw = _parse_text(raw)
    if not isinstance(raw, dict):
        raise _bad('a command must be a JSON object such as {"cmd": "point", "side": 1}')
    _refuse_surrogates(raw)
    name = raw.get("cmd")
    if not isinstance(name, str):
        raise _bad(
            'a command needs "cmd" (a string), e.g. {"cmd": "point", "side": 1}', field="cmd"
        )
    spec = _COMMANDS.get(name)
    if spec is None:
        raise _bad(
            f"unknown command {name!r}: use one of {', '.join(_COMMANDS)} (or delete / clear, "
            "which the service applies)",
            field="cmd",
        )
    allowed, normalize = spec
    unknown = sorted(str(key) for key in set(raw) - allowed - {"cmd", "id"})
    if unknown:
        raise _bad(f"unknown field(s) for {name!r}: {', '.join(unknown)}", field=unknown[0])
    args = normalize(raw)
    command_id = check_command_id(raw["id"]) if "id" in raw else None
    return Command(name, args, command_id)


def _refuse_surrogates(raw: dict[Any, Any]) -> None:
    """A lone surrogate (possible in JSON as "\\ud800") is not text: it cannot be stored,
    published or shown. Checked in every key and string value (names sit in lists)."""
    for key, value in raw.items():
        values = value if isinstance(value, list) else [value]
        for text in (key, *values):
            if isinstance(text, str) and _SURROGATE.search(text):
                raise _bad(
                    f"{str(key).encode('utf-8', 'replace').decode()!r} holds a lone surrogate "
                    "(not a character): send UTF-8 text",
                    field=str(key).encode("utf-8", "replace").decode(),
                )


def _parse_text(text: str) -> Any:
    text = text.strip()
    if len(text) > MAX_COMMAND_CHARS:
        raise _bad(f"the command is too long (over {MAX_COMMAND_CHARS} characters)")
    if _SURROGATE.search(text):
        raise _bad("the command holds a lone surrogate (not a character): send UTF-8 text")
    shorthand = SHORTHANDS.get(text.lower())
    if shorthand is not None:
        return dict(shorthand)
    if not text:
        raise _bad("empty command")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _bad(
            'not a command: send JSON such as {"cmd": "point", "side": 1}, '
            f"or one of {' '.join(SHORTHANDS)}"
        ) from None


def check_command_id(value: Any) -> str | int:
    """A command's ``"id"``: a string of 1 to MAX_ID_CHARS characters (no lone surrogates) or
    an integer (not a bool). Raises Refused (code ``bad_command``, field ``id``)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _bad('"id" must be a string or an integer', field="id")
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_ID_CHARS:
            raise _bad(f'"id" must have 1 to {MAX_ID_CHARS} characters', field="id")
        if _SURROGATE.search(value):
            raise _bad('"id" holds a lone surrogate (not a character)', field="id")
    return value


def _int_choice(
    raw: dict[str, Any], key: str, choices: tuple[int, ...], default: int | None = None
) -> int:
    if key not in raw:
        if default is None:
            raise _bad(f'"{key}" is missing', field=key)
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(
            f'"{key}" must be a whole number: one of {", ".join(map(str, choices))}', field=key
        )
    if value not in choices:
        raise _bad(f'"{key}" must be one of {", ".join(map(str, choices))}, not {value}', field=key)
    return value


def clean_name(text: str) -> str:
    """A name as displays may show it: bidi embeddings, overrides, isolates and LRM/RLM
    removed (they could reorder the text around the name), C0/C1 controls made spaces, then
    trimmed. Player names and the names in ``server``/``correct`` pass through it alike."""
    return _CONTROL.sub(" ", _BIDI.sub("", text)).strip()


def _name(value: Any, what: str, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} must be a name (a string)", field=field)
    name = clean_name(value)
    if not name:
        raise _bad(f"{what} is empty", field=field)
    if len(name) > MAX_NAME_CHARS:
        raise _bad(f"{what} is longer than {MAX_NAME_CHARS} characters", field=field)
    return name


def _pair(value: Any, what: str, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(f"{what} must be a list of two names", field=field)
    return [_name(item, f"a name in {what}", field) for item in value]


def _normalize_start(raw: dict[str, Any]) -> dict[str, Any]:
    game_type = raw.get("game_type", "single")
    if game_type not in ("single", "double"):
        raise _bad('"game_type" must be "single" or "double"', field="game_type")
    if game_type == "single":
        if "players1" in raw or "players2" in raw:
            raise _bad(
                'singles take "player1" and "player2"; "players1"/"players2" are for doubles'
            )
        names = {
            "player1": _name(raw.get("player1"), '"player1"', "player1"),
            "player2": _name(raw.get("player2"), '"player2"', "player2"),
        }
        everyone = list(names.values())
    else:
        if "player1" in raw or "player2" in raw:
            raise _bad('doubles take "players1" and "players2" (two names each)')
        names = {
            "players1": _pair(raw.get("players1"), '"players1"', "players1"),
            "players2": _pair(raw.get("players2"), '"players2"', "players2"),
        }
        everyone = names["players1"] + names["players2"]
    if len(set(everyone)) != len(everyone):
        raise _bad(
            "two players have the same name: give each player a different name", field="names"
        )
    if (
        "best_of" in raw
        and isinstance(raw["best_of"], int)
        and not isinstance(raw["best_of"], bool)
    ):
        if raw["best_of"] % 2 == 0:
            raise _bad(
                f'"best_of" must be odd (1, 3, 5 or 7), not {raw["best_of"]}', field="best_of"
            )
    command: dict[str, Any] = {"game_type": game_type, **names}
    command["best_of"] = _int_choice(raw, "best_of", BEST_OF_CHOICES, default=1)
    command["first_server"] = _int_choice(raw, "first_server", (1, 2), default=1)
    if "force" in raw:
        if not isinstance(raw["force"], bool):
            raise _bad('"force" must be true or false', field="force")
        if raw["force"]:
            command["force"] = True
    return command


def _normalize_point(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "side": _int_choice(raw, "side", (1, 2)),
        "delta": _int_choice(raw, "delta", (1, -1), default=1),
    }


def _normalize_side(raw: dict[str, Any]) -> dict[str, Any]:
    return {"side": _int_choice(raw, "side", (1, 2))}


def _normalize_nothing(raw: dict[str, Any]) -> dict[str, Any]:
    return {}


def _normalize_server(raw: dict[str, Any]) -> dict[str, Any]:
    return {"player": _name(raw.get("player"), '"player"', "player")}


def _normalize_correct(raw: dict[str, Any]) -> dict[str, Any]:
    command: dict[str, Any] = {}
    if "server" in raw:
        server = raw["server"]
        command["server"] = (
            _int_choice(raw, "server", (1, 2))
            if isinstance(server, int) and not isinstance(server, bool)
            else _name(server, '"server"', "server")
        )
    if "receiver" in raw:
        command["receiver"] = _name(raw["receiver"], '"receiver"', "receiver")
    if "left_side" in raw:
        command["left_side"] = _int_choice(raw, "left_side", (1, 2))
    if "receiver" in command and "server" not in command:
        raise _bad('"receiver" is corrected together with "server"', field="receiver")
    if "server" not in command and "left_side" not in command:
        raise _bad('"correct" needs "server" (with "receiver" in doubles) and/or "left_side"')
    return command


Normalizer = Callable[[dict[str, Any]], dict[str, Any]]

_COMMANDS: dict[str, tuple[set[str], Normalizer]] = {
    "start": (
        {
            "game_type",
            "player1",
            "player2",
            "players1",
            "players2",
            "best_of",
            "first_server",
            "force",
        },
        _normalize_start,
    ),
    "point": ({"side", "delta"}, _normalize_point),
    "undo": (set(), _normalize_nothing),
    "redo": (set(), _normalize_nothing),
    "timeout": ({"side"}, _normalize_side),
    "expedite": (set(), _normalize_nothing),
    "end": (set(), _normalize_nothing),
    "server": ({"player"}, _normalize_server),
    "correct": ({"server", "receiver", "left_side"}, _normalize_correct),
}


# --------------------------------------------------------------------------- payloads
#
# What the service receives on a command topic, decoded once.


class PayloadRefused(Refused):
    """A payload refused before it is looked up or applied; ``command_id`` is the id its
    reply carries (None when the payload has no usable id)."""

    def __init__(
        self,
        message: str,
        code: str = "bad_command",
        command_id: str | int | None = None,
        **params: Any,
    ) -> None:
        super().__init__(message, code, **params)
        self.command_id = command_id


@dataclass(frozen=True)
class Payload:
    """A command payload, decoded once: ``raw`` the JSON object (without ``"match"``) or the
    text (a shorthand, or anything that is not a JSON object: ``parse`` says what is wrong
    with it); ``id`` the command's id when it is usable; ``match`` the match it is meant for;
    ``fingerprint`` a short hash of the decoded object (None for a text), equal for a resend
    and different for another command under the same id."""

    raw: str | dict[str, Any]
    id: str | int | None = None
    match: str | None = None
    fingerprint: str | None = None

    @property
    def is_delete(self) -> bool:
        """A ``delete`` / ``clear`` (the service's own command, not the engine's)."""
        if not isinstance(self.raw, dict):
            return False
        name = self.raw.get("cmd")
        return isinstance(name, str) and name in DELETE_COMMANDS

    def parse(self) -> Command:
        """The engine's command. Raises Refused (code ``bad_command``)."""
        return parse(self.raw)

    def check_delete(self) -> None:
        """A delete takes ``cmd`` and ``id`` only. Raises Refused (code ``bad_command``)."""
        assert isinstance(self.raw, dict)
        extra = sorted(str(key) for key in set(self.raw) - {"cmd", "id"})
        if extra:
            raise _bad(f"delete takes no other fields: {extra}")
        if "id" in self.raw and self.id is None:
            raise _bad('"id" must be a string of 1 to 128 characters or an integer')


def decode_payload(payload: bytes, *, table: int = 1, max_bytes: int = 0) -> Payload:
    """One command payload from the command topic of ``table`` -> a ``Payload``. Refuses
    (``PayloadRefused``) a payload over ``max_bytes`` (code ``too_large``, params ``size``,
    ``limit``; 0: no limit), one that is not UTF-8, a JSON object that does not decode (NaN
    and Infinity are not JSON numbers) or holds a lone surrogate, and a ``"match"`` that is
    not a string of 1 to 128 characters (code ``bad_command``)."""
    if max_bytes and len(payload) > max_bytes:
        raise PayloadRefused(
            f"the command is too large ({len(payload)} bytes; limit {max_bytes})",
            "too_large",
            size=len(payload),
            limit=max_bytes,
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadRefused("the command is not UTF-8 text") from None
    if not text.lstrip().startswith("{"):
        return Payload(text)
    try:
        decoded = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise PayloadRefused("the command is not valid JSON (nested too deep)") from None
    except ValueError as exc:
        raise PayloadRefused(f"the command is not valid JSON ({exc})") from None
    bad_text = _invalid_unicode(decoded)
    if bad_text is not None:
        raise PayloadRefused(
            f"the command contains text that is not valid Unicode ({bad_text}): "
            "send UTF-8 text without lone surrogates"
        )
    if not isinstance(decoded, dict):
        return Payload(text)
    decoded = dict(decoded)
    # Table 1 keeps the fingerprints stored before tables; on another table the same command
    # under the same id is another press (id_reused), not a resend.
    fingerprint = _fingerprint(decoded if table == 1 else {"table": table, "command": decoded})
    try:
        command_id: str | int | None = check_command_id(decoded.get("id"))
    except Refused:  # no usable id: the reply carries none
        command_id = None
    wanted_match = None
    if "match" in decoded:
        wanted_match = decoded.pop("match")
        if not isinstance(wanted_match, str) or not 1 <= len(wanted_match) <= MAX_ID_CHARS:
            raise PayloadRefused(
                '"match" must be a match id (a string of 1 to 128 characters)',
                command_id=command_id,
            )
    return Payload(decoded, command_id, wanted_match, fingerprint)


def _fingerprint(command: dict[str, Any]) -> str | None:
    """A short hash of a decoded JSON command (key order and spacing do not matter): a
    resend has the same one, another command under the same id does not."""
    try:
        text = json.dumps(command, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        return None
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _invalid_unicode(value: Any, depth: int = 0) -> str | None:
    """The first text in a decoded JSON value that UTF-8 cannot encode (a lone surrogate
    from a ``\\ud800`` escape), shown escaped; None when every text is valid."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ascii(value[:40])
        return None
    if depth > 200:  # json.loads already bounds the depth; this keeps the walk bounded too
        return None
    if isinstance(value, dict):
        items: Any = [item for pair in value.items() for item in pair]
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        found = _invalid_unicode(item, depth + 1)
        if found is not None:
            return found
    return None
