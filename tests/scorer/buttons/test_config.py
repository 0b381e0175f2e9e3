"""The boards' configuration: clear errors that name the board, the file format, passwords,
and ``rallycast buttons`` on the command line (``--check`` and a config error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scorer.buttons import describe
from scorer.buttons.boards import load_buttons_config, parse_board, parse_boards
from scorer.config import ConfigError

REPO = Path(__file__).resolve().parents[3]


def error_of(table: dict, index: int = 0) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_board(table, index)
    return str(caught.value)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (
            {"name": "t1", "club": "alpha", "kind": "tasmotta", "topic": "x", "side": 1},
            ["board 't1'", "kind 'tasmotta'", "tasmota, esphome"],
        ),
        ({"name": "t1", "kind": "tasmota", "topic": "x", "side": 1}, ["board 't1'", "'club'"]),
        (
            {"name": "t1", "club": "Alpha!", "kind": "tasmota", "topic": "x", "side": 1},
            ["board 't1'", "club id 'Alpha!'"],
        ),
        (
            {"name": "t1", "club": "alpha", "kind": "esphome", "topic": "x", "side": 1},
            ["board 't1'", "unknown settings ['topic']", "topic_prefix"],
        ),
        ({"name": "t1", "club": "alpha", "kind": "esphome", "side": 1}, ["needs 'topic_prefix'"]),
        (
            {"name": "t1", "club": "alpha", "kind": "tasmota", "topic": "x"},
            ["board 't1'", "say which side"],
        ),
        (
            {"name": "t1", "club": "alpha", "kind": "tasmota", "topic": "x", "side": 3},
            ['side must be 1, 2, "left" or "right"'],
        ),
        (
            {
                "name": "t1",
                "club": "alpha",
                "kind": "zigbee2mqtt",
                "device": "x",
                "buttons": {"1": {"single": "point"}},
            },
            ["button '1'", "needs a side"],
        ),
        (
            {
                "name": "t1",
                "club": "alpha",
                "kind": "tasmota",
                "topic": "x",
                "side": 1,
                "gestures": {"hold": "reset"},
            },
            ["gestures.hold", "unknown action 'reset'"],
        ),
        (
            {"name": "t1", "club": "alpha", "kind": "esphome", "topic_prefix": "table1", "side": 1},
            [
                "board 't1'",
                "'table1/binary_sensor/+/state' is not under club 'alpha'",
                "'boards/alpha/table1'",
            ],
        ),
        (
            {"name": "t1", "club": "alpha", "kind": "tasmota", "topic": "a/+", "side": 1},
            ["wildcards"],
        ),
        (
            {
                "name": "t1",
                "club": "alpha",
                "kind": "tasmota",
                "topic": "x",
                "side": 1,
                "debounce_ms": -5,
            },
            ["debounce_ms"],
        ),
        (
            {"name": "bad name", "club": "alpha", "kind": "tasmota", "topic": "x", "side": 1},
            ["name 'bad name'"],
        ),
        (
            {
                "name": "t1",
                "club": "alpha",
                "kind": "raw",
                "topic": "boards/alpha/t",
                "buttons": {},
            },
            ["'payloads', not 'buttons'"],
        ),
    ],
)
def test_config_error_names_the_board_and_what_is_wrong(table: dict, words: list[str]) -> None:
    message = error_of(table)
    for word in words:
        assert word in message


def test_a_side_may_be_an_end_of_the_table() -> None:
    spec = parse_board(
        {"club": "alpha", "kind": "tasmota", "topic": "x", "buttons": {"1": "Left", "2": "right"}}
    )
    assert (spec.buttons["1"].side, spec.buttons["2"].side) == ("left", "right")
    assert "side must be" in error_of(
        {"club": "alpha", "kind": "tasmota", "topic": "x", "side": "middle"}
    )


def test_unnamed_board_is_named_by_its_position() -> None:
    message = error_of({"club": "alpha", "kind": "nope"}, index=2)
    assert message.startswith("board #3:")


def test_board_name_defaults_to_its_device_and_must_be_unique() -> None:
    spec = parse_board(
        {"club": "alpha", "kind": "zigbee2mqtt", "device": "hall/table 1", "side": 1}
    )
    assert spec.name == "hall-table-1"
    twice = {"club": "alpha", "kind": "tasmota", "topic": "t1", "side": 1}
    with pytest.raises(ConfigError, match="board 't1': two boards"):
        parse_boards([twice, dict(twice)])


CONFIG = """
broker_url = "mqtt://127.0.0.1:1883"
log_level = "DEBUG"

[buttons]
debounce_ms = 150

[buttons.logins.alpha]
password_file = "alpha.secret"

[[boards]]
name = "table1"
club = "alpha"
kind = "tasmota"
topic = "table1-buttons"
[boards.buttons]
1 = 1
2 = { side = 2, double = "ignore" }

[[boards]]
name = "table2"
club = "beta"
kind = "raw"
topic = "boards/beta/table2/press"
debounce_ms = 500
[boards.payloads]
home = "1+"
away = "2+"
"""


def write_config(tmp_path: Path, text: str = CONFIG, secret: str | None = "s3cret\n") -> Path:
    path = tmp_path / "buttons.toml"
    path.write_text(text, encoding="utf-8")
    if secret is not None:
        (tmp_path / "alpha.secret").write_text(secret, encoding="utf-8")
    return path


def test_config_file_holds_settings_boards_and_logins(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load_buttons_config(path, env={"RALLYCAST_PASSWORD_BETA": "b-pass"})
    assert config.settings.broker_url == "mqtt://127.0.0.1:1883"
    assert config.settings.log_level == "DEBUG"
    assert [b.name for b in config.boards] == ["table1", "table2"]
    assert [b.debounce_ms for b in config.boards] == [150, 500]
    assert config.passwords == {"alpha": "s3cret", "beta": "b-pass"}
    assert config.clubs == ["alpha", "beta"]


def test_environment_and_flags_override_the_file_settings(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    env = {"RALLYCAST_PASSWORD_BETA": "b", "RALLYCAST_BROKER_URL": "mqtt://10.0.0.5:1883"}
    assert load_buttons_config(path, env=env).settings.broker_url == "mqtt://10.0.0.5:1883"
    flagged = load_buttons_config(path, env=env, overrides={"broker_url": "ws://h:9001/mqtt"})
    assert flagged.settings.broker_url == "ws://h:9001/mqtt"


def test_config_path_may_come_from_rallycast_config(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    env = {"RALLYCAST_CONFIG": str(path), "RALLYCAST_PASSWORD_BETA": "b"}
    assert len(load_buttons_config(None, env=env).boards) == 2


def test_missing_password_names_the_club_and_how_to_give_it(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_buttons_config(path, env={})
    assert "club 'beta'" in str(caught.value)
    assert "RALLYCAST_PASSWORD_BETA" in str(caught.value)


def test_unreadable_password_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, secret=None)
    with pytest.raises(ConfigError, match=r"password_file .*alpha\.secret cannot be read"):
        load_buttons_config(path, env={"RALLYCAST_PASSWORD_BETA": "b"})


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('broker_url = "mqtt://h"\n', "has no [[boards]]"),
        ('colour = "red"\n[[boards]]\n', "unknown settings ['colour']"),
        ("[buttons]\nspeed = 1\n[[boards]]\n", "unknown [buttons] settings ['speed']"),
        ("[[boards]\n", "not valid TOML"),
    ],
)
def test_file_level_mistakes_are_clear(tmp_path: Path, text: str, words: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_buttons_config(path, env={})
    assert words in str(caught.value)


def test_no_config_file_at_all_says_what_to_pass() -> None:
    with pytest.raises(ConfigError, match="--config FILE"):
        load_buttons_config(None, env={})


def test_describe_lists_each_boards_topics_and_mapping(tmp_path: Path) -> None:
    config = load_buttons_config(write_config(tmp_path), env={"RALLYCAST_PASSWORD_BETA": "b"})
    text = describe(config)
    assert "board table1: club alpha, table 1, tasmota, debounce 150 ms" in text
    assert "follows stat/alpha/table1-buttons/+" in text
    assert "button '2' (side 2): single = point, hold = undo" in text
    assert "button 'home' (no side): single = point 1" in text


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rallycast.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_check_prints_the_boards(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    done = run_cli(
        "buttons", "--config", str(path), "--check", env={"RALLYCAST_PASSWORD_BETA": "b"}
    )
    assert done.returncode == 0, done.stderr
    assert "follows boards/beta/table2/press" in done.stdout
    # the top-level --config works too
    done = run_cli(
        "--config", str(path), "buttons", "--check", env={"RALLYCAST_PASSWORD_BETA": "b"}
    )
    assert done.returncode == 0, done.stderr


def test_cli_config_error_exits_2_and_names_the_board(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.replace('kind = "raw"', 'kind = "rawr"'))
    done = run_cli("buttons", "--config", str(path), env={"RALLYCAST_PASSWORD_BETA": "b"})
    assert done.returncode == 2
    assert "rallycast buttons: board 'table2': kind 'rawr' is not known" in done.stderr
    assert "Traceback" not in done.stderr


def toml_examples(markdown: str) -> list[str]:
    blocks, current = [], None
    for line in markdown.splitlines():
        if current is None and line.strip() == "```toml":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_every_config_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    import tomllib

    examples = toml_examples((REPO / "docs" / "buttons.md").read_text(encoding="utf-8"))
    assert len(examples) >= 7  # the full file + one per device family
    for example in examples:
        boards = tomllib.loads(example)["boards"]
        assert parse_boards(boards)
    # The first one is a whole file, logins included.
    (tmp_path / "riverside.secret").write_text("pw\n", encoding="utf-8")
    config = load_buttons_config(write_config(tmp_path, examples[0], secret=None), env={})
    assert config.passwords == {"riverside": "pw"}


def test_a_button_without_a_side_keeps_only_the_default_actions_that_need_none() -> None:
    spec = parse_board(
        {
            "club": "alpha",
            "kind": "zigbee2mqtt",
            "device": "x",
            "buttons": {"up": {"single": "undo"}},
        }
    )
    assert {g: str(a) for g, a in spec.buttons["up"].gestures.items()} == {
        "single": "undo",
        "hold": "undo",
    }


def test_a_button_table_without_a_side_takes_the_boards_side() -> None:
    spec = parse_board(
        {
            "club": "alpha",
            "kind": "shelly1",
            "device": "x",
            "side": 2,
            "buttons": {"0": {"double": "ignore"}},
        }
    )
    assert spec.buttons["0"].side == 2
    assert str(spec.buttons["0"].gestures["single"]) == "point"


def test_cli_says_when_the_broker_cannot_be_reached(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = CONFIG.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{port}")
    path = write_config(tmp_path, text)
    done = run_cli("buttons", "--config", str(path), env={"RALLYCAST_PASSWORD_BETA": "b"})
    assert done.returncode == 1
    assert "cannot reach the broker" in done.stderr
    assert "Traceback" not in done.stderr


def test_passwords_never_show_in_the_configs_repr(tmp_path: Path) -> None:
    config = load_buttons_config(write_config(tmp_path), env={"RALLYCAST_PASSWORD_BETA": "b-pass"})
    assert "s3cret" not in repr(config) and "b-pass" not in repr(config)


def test_cli_check_never_prints_a_password_from_the_broker_url(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    done = run_cli(
        "buttons", "--config", str(path), "--check", "--url", "mqtt://beta:s3cret@127.0.0.1:1883",
        env={"RALLYCAST_PASSWORD_BETA": "b"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "127.0.0.1:1883" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


# -- a board is bound to one of its club's tables (issue 12) ---------------------------------

TABLE_BOARD = {"name": "t2", "club": "alpha", "kind": "raw", "topic": "boards/alpha/t2/press"}


def test_a_board_scores_table_1_unless_its_config_names_another() -> None:
    assert parse_board(TABLE_BOARD).table == 1
    assert parse_board({**TABLE_BOARD, "table": 2}).table == 2
    assert parse_board({**TABLE_BOARD, "table": 64}).table == 64


@pytest.mark.parametrize("value", [0, 65, -1, True, "2", 2.5, [2]])
def test_a_board_table_outside_1_to_64_is_refused_naming_the_board(value) -> None:
    words = error_of({**TABLE_BOARD, "table": value})
    assert "board 't2'" in words and "table" in words and "1-64" in words


TABLES_CONFIG = """
[[clubs]]
id = "alpha"
tables = 2

[buttons.logins.alpha]
password_file = "alpha.secret"

[[boards]]
name = "court-b"
club = "alpha"
table = {table}
kind = "raw"
topic = "boards/alpha/court-b/press"
"""


def test_a_board_on_one_of_its_clubs_tables_loads_and_check_shows_the_table(
    tmp_path: Path,
) -> None:
    config = load_buttons_config(write_config(tmp_path, TABLES_CONFIG.format(table=2)), env={})
    assert [(b.name, b.table) for b in config.boards] == [("court-b", 2)]
    assert "board court-b: club alpha, table 2, raw" in describe(config)


def test_a_board_on_a_table_its_club_does_not_have_is_a_clear_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, TABLES_CONFIG.format(table=3))
    with pytest.raises(ConfigError) as caught:
        load_buttons_config(path, env={})
    words = str(caught.value)
    assert "board 'court-b'" in words and "table = 3" in words
    assert "club 'alpha' has 2 table(s)" in words and "table = 1 to 2" in words


def test_a_board_on_table_2_of_a_club_not_listed_says_to_list_the_club(tmp_path: Path) -> None:
    text = TABLES_CONFIG.format(table=2).replace('id = "alpha"', 'id = "other"')
    with pytest.raises(ConfigError) as caught:
        load_buttons_config(write_config(tmp_path, text), env={})
    words = str(caught.value)
    assert "club 'alpha' has 1 table(s)" in words
    assert "[[clubs]] id = 'alpha', tables = 2" in words
