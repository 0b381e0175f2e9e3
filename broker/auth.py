"""The broker's user database: one ``user:argon2-hash`` line per MQTT user.

The file lives at ``Settings.password_file`` (data_dir/passwd). It is rewritten atomically
(temp file + fsync + rename) with mode 0600, so a crash never leaves half a file and no other
local user can read the hashes. Clear passwords are never stored or logged.

The format is the same ``name:hash`` layout as mosquitto's password file, but the hashes are
argon2id, which mosquitto 2.0 cannot read: a mosquitto deployment keeps its own file made with
``mosquitto_passwd`` (see docs/broker.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from scorer.files import write_private_file

# OWASP's argon2id profile (19 MiB, 2 passes, 1 lane): each check holds 19 MiB while it runs,
# so a login flood (at most ARGON_SLOTS checks at once, broker/acl.py) cannot grow the
# broker's memory by more than ~40 MB. RFC 9106's low-memory profile, argon2-cffi's default,
# takes 64 MiB per check. Hashes made before keep their own parameters until set again.
HASH_TIME_COST = 2
HASH_MEMORY_KIB = 19 * 1024
HASH_PARALLELISM = 1


def default_hasher() -> PasswordHasher:
    return PasswordHasher(
        time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB, parallelism=HASH_PARALLELISM
    )


# A user name may not contain ':' (the separator) nor whitespace or control characters.
USER_NAME_RE = re.compile(r"^[^:\s\x00-\x1f]{1,128}$")


class PasswordFileError(ValueError):
    """The password file or a user name cannot be used; the message says why."""


def check_user_name(user: str) -> str:
    if not isinstance(user, str) or not USER_NAME_RE.fullmatch(user):
        raise PasswordFileError(
            f"user name {user!r} is not valid: 1-128 characters, no ':' and no spaces"
        )
    return user


class PasswordFile:
    """Argon2 password hashes in a small text file.

    ``hasher`` is :func:`default_hasher` (OWASP's argon2id profile) unless given; tests pass
    a cheaper one. A hash records its own parameters, so any file verifies with any hasher.
    """

    def __init__(self, path: str | os.PathLike[str], hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or default_hasher()

    # -- reading -----------------------------------------------------------------------------

    def read(self) -> dict[str, str]:
        """user -> hash. A missing file is an empty database."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user or not hashed:
                raise PasswordFileError(f"{self.path}, line {number}: expected 'user:hash'")
            hashes[user] = hashed
        return hashes

    def users(self) -> list[str]:
        return sorted(self.read())

    def hash_of(self, user: str) -> str | None:
        return self.read().get(user)

    def verify(self, user: str, password: str) -> bool:
        """True when ``user`` exists and ``password`` is theirs. Costs one argon2 computation
        (~0.2 s with default parameters): callers on an event loop run it in a thread."""
        hashed = self.hash_of(user)
        return hashed is not None and self.verify_hash(hashed, password)

    def verify_hash(self, hashed: str, password: str) -> bool:
        try:
            return self.hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    # -- writing -----------------------------------------------------------------------------

    def set(self, user: str, password: str) -> None:
        """Add ``user`` or change their password."""
        check_user_name(user)
        if not password:
            raise PasswordFileError("the password must not be empty")
        hashes = self.read()
        hashes[user] = self.hasher.hash(password)
        self._write(hashes)

    def remove(self, user: str) -> bool:
        """Remove ``user``; False when there was no such user."""
        hashes = self.read()
        if hashes.pop(user, None) is None:
            return False
        self._write(hashes)
        return True

    def _write(self, hashes: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(hashes.items()))
        write_private_file(self.path, text, prefix=".passwd-")
