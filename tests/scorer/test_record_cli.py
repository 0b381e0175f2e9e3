"""``rallycast export`` and ``rallycast matches`` on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rallycast.cli import main
from scorer import export
from scorer.record import RecordReader
from scorer.record_fill import fill, played_log, store_log
from scorer.store import MatchStore


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    fill(data, "alpha", 3)
    config = tmp_path / "rallycast.toml"
    config.write_text(f'data_dir = "{data}"\n[[clubs]]\nid = "alpha"\n', encoding="utf-8")
    monkeypatch.setenv("RALLYCAST_CONFIG", str(config))
    return data


def test_export_club_csv_and_json_agree(data: Path, capsysbinary) -> None:
    assert main(["export", "--club", "alpha"]) == 0
    rows = export.read_club_csv(capsysbinary.readouterr().out.decode())
    assert main(["export", "--club", "alpha", "--format", "json"]) == 0
    document = json.loads(capsysbinary.readouterr().out)
    for match in document["matches"]:
        match.pop("club")
    assert rows == document["matches"] and len(rows) == 3
    assert [r["match_id"] for r in rows] == ["fill-000002", "fill-000001", "fill-000000"]


def test_export_one_match_with_its_log_to_a_file(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert main(["export", "--club", "alpha", "--match", "fill-000001", "--format", "json",
                 "-o", str(out)]) == 0  # fmt: skip
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["log"] == RecordReader(data).log("fill-000001")
    assert document["log"][0]["cmd"] == "start"
    assert main(["export", "--club", "alpha", "--match", "nope"]) == 1


def test_export_an_unknown_club_is_a_setting_error(data: Path, capsys) -> None:
    assert main(["export", "--club", "nope"]) == 2
    assert "no club 'nope'" in capsys.readouterr().err


def test_matches_delete_removes_an_ended_match_but_not_the_current_one(data: Path, capsys) -> None:
    store_log(data, "alpha", "done", played_log("Ann", "Bob", 1, 5.0))
    store = MatchStore(data)  # a match in progress, current
    store.start_match("alpha", "live", {"cmd": "start", "game_type": "single", "player1": "A",
                                        "player2": "B", "best_of": 1, "first_server": 1,
                                        "at": 1.0})  # fmt: skip
    store.close()
    assert main(["matches", "delete", "--club", "alpha", "done"]) == 0
    assert RecordReader(data).match("alpha", "done") is None
    assert RecordReader(data).log("done") == []
    assert main(["matches", "delete", "--club", "alpha", "live"]) == 1
    assert "in progress" in capsys.readouterr().err
    assert RecordReader(data).log("live") != []
    assert main(["matches", "list", "--club", "alpha"]) == 0
    assert capsys.readouterr().out.count("\n") == 3


def test_retention_setting_deletes_old_matches_on_the_next_run(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RALLYCAST_RECORD_RETENTION_DAYS", "1")  # the filled ones are from 2023
    assert main(["matches", "sync"]) == 0
    assert RecordReader(data).matches("alpha") == ([], 0)
    assert RecordReader(data).log("fill-000000") == []


def test_record_settings_are_checked() -> None:
    from scorer.config import ConfigError, load_settings

    settings = load_settings(
        env={"RALLYCAST_WEBHOOK_URLS": "http://127.0.0.1:9/a, https://x.example/b",
             "RALLYCAST_RECORD_RETENTION_DAYS": "30"},
    )  # fmt: skip
    assert settings.webhook_urls == ("http://127.0.0.1:9/a", "https://x.example/b")
    assert settings.record_retention_days == 30
    with pytest.raises(ConfigError, match="'webhook_urls'.*not an http"):
        load_settings(env={"RALLYCAST_WEBHOOK_URLS": "ftp://x"})
    # One origins setting for the whole API and the iframe (docs/api.md): embed_origins.
    with pytest.raises(ConfigError, match="'embed_origins'.*no path"):
        load_settings(env={"RALLYCAST_EMBED_ORIGINS": "https://x.org/page"})
    with pytest.raises(ConfigError, match="record_retention_days"):
        load_settings(env={"RALLYCAST_RECORD_RETENTION_DAYS": "-1"})
