"""One process per role on a data dir: ``rallycast up`` and ``rallycast broker`` take
``broker.lock``, the scorer service (alone or inside ``up``) takes ``scorer.lock``. The split
layout's broker and scorer on one machine share a data dir legitimately, one process each.
Two brokers would share ``broker.db``; two services would share one MQTT client id (each
throwing the other off the broker) and one store (each appending from its own stale copy).

The lock is ``fcntl.flock`` (LOCK_EX | LOCK_NB) on ``<data_dir>/<role>.lock``, held until
:meth:`DataDirLock.close` or the end of the process: the kernel drops it when the process ends,
also after a crash or SIGKILL, so there is never a stale lock to remove by hand. The file holds
the holder's name and pid, for the next one's message.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path


class DataDirInUse(RuntimeError):
    """Another process holds the lock; ``str()`` says which and what to do."""


@dataclass
class DataDirLock:
    """A held ``<data_dir>/<role>.lock``. Dropping this object does not release it (the
    descriptor stays open): a process that holds it for its whole life may ignore it."""

    path: Path
    fd: int | None

    def close(self) -> None:
        """Release the lock (closing the descriptor drops the flock); idempotent."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_data_dir(data_dir: Path, role: str, command: str) -> DataDirLock:
    """Take ``data_dir/<role>.lock`` (``role``: "broker" or "scorer"), making ``data_dir``
    (mode 0700) when missing. ``command`` names this process for the next one's message.

    Raises :class:`DataDirInUse` (``data dir D is in use by rallycast up (pid N): stop that
    first, or use another --data-dir``) when another process holds it; OSError when the
    directory or the file cannot be made or opened.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / f"{role}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise DataDirInUse(
            f"data dir {data_dir} is in use by {holder}: stop that first, or use another --data-dir"
        ) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{command} (pid {os.getpid()})\n".encode(), 0)
    return DataDirLock(path, fd)
