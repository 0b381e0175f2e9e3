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
    from scorer.cli import build_parser

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
