"""``rallycast passwd`` as a user runs it (real processes, a real password file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.auth import PasswordFile
from tests.scorer.test_cli import rallycast


def test_list_with_no_file_says_where_it_looked(tmp_path: Path):
    result = rallycast("passwd", "list", env={"HOME": str(tmp_path)})
    assert result.returncode == 0
    assert result.stdout == ""
    expected = tmp_path / ".local" / "share" / "rallycast" / "passwd"
    assert f"no users in {expected}" in result.stderr
    assert "--data-dir" in result.stderr  # what to try next


@pytest.mark.parametrize(
    "where",
    [
        ["--config", "{config}", "passwd", "list"],
        ["passwd", "--config", "{config}", "list"],
        ["passwd", "list", "--config", "{config}"],
        ["passwd", "--data-dir", "{data}", "list"],
        ["passwd", "list", "--data-dir", "{data}"],
    ],
    ids=["config-first", "config-before-verb", "config-after-verb", "dir-before", "dir-after"],
)
def test_config_and_data_dir_work_before_and_after_the_verb(tmp_path: Path, where):
    data = tmp_path / "data"
    config = tmp_path / "rallycast.toml"
    config.write_text(f'data_dir = "{data}"\n')
    added = rallycast(
        "passwd", "add", "riverside", "--password-stdin", "--data-dir", str(data), input="pw\n"
    )
    assert added.returncode == 0, added.stderr
    words = [w.format(config=config, data=data) for w in where]
    result = rallycast(*words, env={"HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "riverside\tclub scorer\n"
    assert f"users in {data / 'passwd'}" in result.stderr
    assert PasswordFile(data / "passwd").verify("riverside", "pw")
