import re
from dataclasses import fields
from pathlib import Path

import pytest

from scorer.config import Club, ConfigError, Settings, load_settings


def test_defaults_need_no_file_and_serve_a_demo_club():
    settings = load_settings(env={})
    assert settings.mqtt_port == 1883 and settings.ws_port == 9001
    assert [c.id for c in settings.clubs] == ["demo"]


def test_env_overrides_file_and_flags_override_env(tmp_path: Path):
    config = tmp_path / "rallycast.toml"
    config.write_text('mqtt_port = 1000\nhttp_port = 8080\n[[clubs]]\nid = "riverside"\n')
    env = {"RALLYCAST_MQTT_PORT": "2000"}
    settings = load_settings(config, env=env, overrides={"http_port": 0, "ws_port": None})
    assert settings.mqtt_port == 2000  # env beats the file
    assert settings.http_port == 0  # a flag beats both; None means "flag not given"
    assert settings.ws_port == 9001
    assert settings.clubs == (Club("riverside", "riverside"),)


def test_config_path_can_come_from_env(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path}/data"\n')
    settings = load_settings(env={"RALLYCAST_CONFIG": str(config)})
    assert settings.data_dir == tmp_path / "data"
    assert settings.password_file == tmp_path / "data" / "passwd"


def test_clubs_from_env_take_ids_and_names():
    settings = load_settings(env={"RALLYCAST_CLUBS": "riverside:Riverside TTC, hill"})
    assert settings.clubs == (Club("riverside", "Riverside TTC"), Club("hill", "hill"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("mqtt_port = 'x'", "mqtt_port"),
        ("mqtt_port = -1", "mqtt_port"),
        ("colour = 'red'", "unknown settings ['colour']"),
        ("[[clubs]]\nid = 'Bad Club'", "'Bad Club' is not valid"),
        ("[[clubs]]\nid = 'rallycast-service'", "reserved"),
        ("mqtt_port = ", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_with_the_setting_named(tmp_path: Path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(config, env={})


def test_missing_config_file_says_which(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_with_overrides_keeps_other_settings(tmp_path: Path):
    base = Settings(data_dir=tmp_path)
    assert base.with_overrides(mqtt_port=0).data_dir == tmp_path


def test_with_overrides_does_not_read_the_environment_again(monkeypatch):
    monkeypatch.setenv("RALLYCAST_MQTT_PORT", "2000")
    base = load_settings(overrides={"mqtt_port": 1}, env={})
    assert base.with_overrides(ws_port=0).mqtt_port == 1


def test_config_flag_works_before_and_after_the_subcommand(tmp_path: Path):
    from rallycast.cli import build_parser

    assert (
        build_parser("replay").parse_args(["--config", "a.toml", "replay", "x"]).config == "a.toml"
    )
    assert (
        build_parser("replay").parse_args(["replay", "x", "--config", "b.toml"]).config == "b.toml"
    )
    assert build_parser("replay").parse_args(["replay", "x"]).config is None


@pytest.mark.parametrize(
    "bind, host",
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "::1"), ("10.0.0.5", "10.0.0.5")],
)
def test_local_host_is_where_this_machine_reaches_a_listener(bind, host):
    assert Settings(bind=bind).local_host == host


def test_url_host_brackets_ipv6_once():
    from scorer.config import url_host

    assert url_host("::1") == "[::1]" and url_host("[::1]") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1"


# --- every setting, every kind of bad value: one line naming the setting, never a traceback ---

# Values of the wrong TOML type for each kind of setting (derived from the field's type, so a
# setting added later is covered too).
WRONG_TYPE = {
    "int": ["'x'", "'1883'", "true", "1.5", "[1]", "{a = 1}"],
    "str": ["5", "true", "1.5", "[1]", "{a = 1}"],
    "Path": ["5", "true", "[1]"],
    "bool": ["'x'", "5", "[1]"],
    "float": ["'x'", "true", "[1]"],
}
# Values of the right type that are out of range or unusable, per setting.
OUT_OF_RANGE = {
    "mqtt_port": ["-1", "65536", "70000"],
    "ws_port": ["-1", "70000"],
    "http_port": ["-1", "70000"],
    "max_connections": ["0", "-5"],
    "max_payload_bytes": ["-1", "268435456"],
    "max_queued_messages": ["0", "-1"],
    "log_level": ["'LOUD'", "''", "'INFOO'"],
    "bind": ["'not an address!'", "'a b'"],
    "broker_url": ["'http://127.0.0.1'", "'mqtt://'", "'mqtt://host:99999'", "'127.0.0.1'"],
    "public_ws_url": ["'http://example.org/mqtt'", "'example.org'"],
    "service_user": ["''", "'a b'", "'a/b'", "'a:b'"],
    "embed_origins": [
        "'https://a.org'",
        "5",
        "[5]",
        "['https://a.org/']",
        "['https://a.org/page']",
        "['a.org']",
        "['ftp://a.org']",
        "['https://a.org:0']",
        "['https://a.org:99999']",
        "['https://a b.org']",
    ],
    "data_dir": ["''", "'{file}'"],
    "clubs": [
        "'riverside'",
        "[1]",
        "[{name = 'x'}]",
        "[{id = 'Bad'}]",
        "[{id = 5}]",
        "[{id = 'a', nmae = 'b'}]",
        "[{id = 'a'}, {id = 'a'}]",
        "[{id = 'rallycast-service'}]",
        "[{id = 'a', tables = 0}]",
        "[{id = 'a', tables = 65}]",
        "[{id = 'a', tables = '2'}]",
        "[{id = 'a', tables = true}]",
        "[{id = 'a', tables = 2, table_names = ['x', 'y', 'z']}]",
        "[{id = 'a', tables = 2, table_names = 'x'}]",
        "[{id = 'a', tables = 2, table_names = [5]}]",
        "[{id = 'a', table_names = ['" + "x" * 41 + "']}]",
    ],
    "boards": ["5", "'x'", "{a = 1}"],
    "buttons": ["5", "[1]", "'x'"],
    "webhook_urls": ["'http://x'", "['ftp://x']", "[5]"],
    "record_retention_days": ["-1"],
}


def bad_values() -> list[tuple[str, str]]:
    cases = []
    for f in fields(Settings):
        cases += [(f.name, value) for value in WRONG_TYPE.get(str(f.type), [])]
        cases += [(f.name, value) for value in OUT_OF_RANGE.get(f.name, [])]
    return cases


def test_every_setting_has_bad_values_to_try():
    tried = {name for name, _ in bad_values()}
    assert tried == {f.name for f in fields(Settings)}, "add bad values for the new setting"


def write_setting(tmp_path: Path, name: str, value: str) -> Path:
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "rallycast.toml"
    value = value.replace("{file}", str(tmp_path / "a-file"))
    config.write_text(f"{name} = {value}\n")
    return config


@pytest.mark.parametrize("name, value", bad_values())
def test_a_bad_value_of_any_setting_is_one_line_naming_it(tmp_path: Path, name, value):
    config = write_setting(tmp_path, name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    message = str(caught.value)
    assert "\n" not in message
    names = {name} | ({"club"} if name == "clubs" else set())
    assert any(n in message for n in names), message


@pytest.mark.parametrize("name, value", bad_values())
def test_the_cli_refuses_any_bad_setting_with_exit_2_and_one_line(tmp_path, capsys, name, value):
    from rallycast.cli import main

    config = write_setting(tmp_path, name, value)
    data_dir = tmp_path / "data"
    # The flag would beat the file's data_dir: that case goes without it.
    flag = [] if name == "data_dir" else ["--data-dir", str(data_dir)]
    code = main(["passwd", "list", "--config", str(config), *flag])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("rallycast passwd: ") and (name in err or "club" in err), err
    assert not data_dir.exists()


@pytest.mark.parametrize(
    "variable, value",
    [
        ("RALLYCAST_MQTT_PORT", "x"),
        ("RALLYCAST_MQTT_PORT", "70000"),
        ("RALLYCAST_LOG_LEVEL", "LOUD"),
        ("RALLYCAST_MAX_CONNECTIONS", "0"),
        ("RALLYCAST_CLUBS", "Bad Club"),
        ("RALLYCAST_BOARDS", "x"),
    ],
)
def test_a_bad_environment_variable_is_named(variable, value):
    with pytest.raises(ConfigError, match=re.escape(f"(from ${variable})")):
        load_settings(env={variable: value})


def test_environment_text_is_parsed_for_numbers_and_levels():
    settings = load_settings(env={"RALLYCAST_MQTT_PORT": " 1884 ", "RALLYCAST_LOG_LEVEL": "debug"})
    assert settings.mqtt_port == 1884 and settings.log_level == "DEBUG"


def test_an_unknown_setting_suggests_the_near_name(tmp_path: Path):
    config = tmp_path / "r.toml"
    config.write_text("mqtt_prot = 1883\n")
    with pytest.raises(
        ConfigError, match=r"unknown settings \['mqtt_prot'\] \(did you mean 'mqtt_port'\?\)"
    ):
        load_settings(config, env={})


def test_duplicate_club_ids_are_refused_with_their_lines(tmp_path: Path):
    config = tmp_path / "r.toml"
    config.write_text(
        '[[clubs]]\nid = "a"\n\n[[boards]]\nid = "a"\n\n[[clubs]]\nid = "a"  # again\n'
    )
    with pytest.raises(
        ConfigError,
        match=r"club id 'a' is given twice \(\[\[clubs\]\] #1 and #2, "
        r"lines 2 and 8\)",
    ):
        load_settings(config, env={})


@pytest.mark.parametrize("other", ["ws_port", "http_port"])
def test_two_settings_sharing_a_port_say_so(tmp_path: Path, other):
    with pytest.raises(ConfigError, match=f"settings 'mqtt_port' and '{other}' are both 1883"):
        load_settings(env={}, overrides={other: 1883})


def test_port_0_may_repeat_it_means_any_free_port():
    settings = load_settings(env={}, overrides={"mqtt_port": 0, "ws_port": 0, "http_port": 0})
    assert (settings.mqtt_port, settings.ws_port, settings.http_port) == (0, 0, 0)


def test_a_club_named_like_the_service_user_is_refused():
    with pytest.raises(ConfigError, match="service_user"):
        load_settings(env={"RALLYCAST_SERVICE_USER": "demo"})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), "not UTF-8"),
        (lambda p: p.write_text("[[clubs]\n"), "not valid TOML"),
    ],
    ids=["directory", "binary", "bad-toml"],
)
def test_a_config_file_that_cannot_be_used_is_said_plainly(tmp_path: Path, make, message):
    path = tmp_path / "rallycast.toml"
    make(path)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})


def test_embed_origins_from_the_file_and_the_environment_are_browser_origins(tmp_path: Path):
    config = tmp_path / "rallycast.toml"
    config.write_text('embed_origins = ["https://Riverside-TTC.org", "http://127.0.0.1:8080"]\n')
    settings = load_settings(config, env={})
    assert settings.embed_origins == ("https://riverside-ttc.org", "http://127.0.0.1:8080")
    env = {"RALLYCAST_EMBED_ORIGINS": "https://a.org, http://[::1]:81 *"}
    assert load_settings(env=env).embed_origins == ("https://a.org", "http://[::1]:81", "*")
    assert load_settings(env={}).embed_origins == ()


def test_the_reserved_club_id_is_the_configured_service_user():
    # Derived from service_user, not a fixed list: with another service user the default
    # name is a club id like any other, and the configured name is the one refused.
    settings = load_settings(
        env={"RALLYCAST_SERVICE_USER": "svc", "RALLYCAST_CLUBS": "rallycast-service"}
    )
    assert [club.id for club in settings.clubs] == ["rallycast-service"]
    with pytest.raises(ConfigError, match="'svc' is reserved"):
        load_settings(env={"RALLYCAST_SERVICE_USER": "svc", "RALLYCAST_CLUBS": "svc"})


def test_a_club_has_tables_with_names_or_numbers(tmp_path: Path):
    config = tmp_path / "rallycast.toml"
    config.write_text(
        '[[clubs]]\nid = "riverside"\ntables = 4\ntable_names = ["Centre court", ""]\n'
        '[[clubs]]\nid = "hill"\n'
    )
    riverside, hill = load_settings(config, env={}).clubs
    assert riverside.tables == 4 and hill.tables == 1
    names = [riverside.table_name(n) for n in range(1, 5)]
    assert names == ["Centre court", "Table 2", "Table 3", "Table 4"]
    assert hill.table_name(1) == "Table 1"
