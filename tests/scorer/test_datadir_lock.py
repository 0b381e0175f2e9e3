"""scorer/datadir_lock.py: one process per role on a data dir (the flock is per open file
description, so a second take in this process is refused like another process's)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from scorer.datadir_lock import DataDirInUse, lock_data_dir


def test_a_second_holder_of_one_role_is_refused_with_the_first_ones_name_and_pid(tmp_path):
    data_dir = tmp_path / "new" / "data"
    first = lock_data_dir(data_dir, "scorer", "rallycast scorer")
    try:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # made private when missing
        with pytest.raises(DataDirInUse) as refused:
            lock_data_dir(data_dir, "scorer", "rallycast up")
        assert str(refused.value) == (
            f"data dir {data_dir} is in use by rallycast scorer (pid {os.getpid()}): stop that"
            " first, or use another --data-dir"
        )
        # The split layout: the broker's role shares the data dir.
        lock_data_dir(data_dir, "broker", "rallycast broker").close()
    finally:
        first.close()
    first.close()  # idempotent
    lock_data_dir(data_dir, "scorer", "rallycast scorer").close()  # released


def test_the_lock_outlives_a_dropped_handle_and_ends_with_the_process(tmp_path):
    code = (
        "import sys; from pathlib import Path; from scorer.datadir_lock import lock_data_dir;"
        "lock_data_dir(Path(sys.argv[1]), 'broker', 'rallycast broker'); import gc; gc.collect();"
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirInUse, match=rf"rallycast broker \(pid {holder.pid}\)"):
            lock_data_dir(tmp_path, "broker", "this test")
    finally:
        holder.communicate("", timeout=10)
    lock_data_dir(tmp_path, "broker", "this test").close()
