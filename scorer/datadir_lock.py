"""One running broker per data dir: ``rallycast up`` and ``rallycast broker`` take
``broker.lock`` in the data dir (the scorer service takes ``scorer.lock`` itself when it
starts, scorer/service.py; the split layout's broker and scorer on one machine share a data
dir legitimately, one process each).

The lock is ``fcntl.flock`` (LOCK_EX | LOCK_NB) on a file in the data dir, held for the
process's life: the kernel drops it when the process ends, also after a crash or SIGKILL, so
there is never a stale lock to remove by hand. The file holds the holder's pid, for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

_held: list[int] = []  # open descriptors: the locks last as long as the process


class DataDirInUse(RuntimeError):
    """Another process holds the lock; ``str()`` says which and what to do."""


def lock_data_dir(data_dir: Path, role: str, command: str) -> None:
    """Take ``data_dir/<role>.lock`` for the rest of this process's life.

    Raises :class:`DataDirInUse` (``data dir D is in use by rallycast up (pid N)``) when
    another process holds it. ``command`` is what this process is, written for the next one.
    """
    path = data_dir / f"{role}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise DataDirInUse(
            f"data dir {data_dir} is in use by {holder}: stop that first, or use another"
            " --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{command} (pid {os.getpid()})\n".encode(), 0)
    _held.append(fd)
