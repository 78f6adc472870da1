"""Settings (chalicelib.settings): docs/design.md defaults, and a clear error naming each bad variable."""
from __future__ import annotations

import os

import pytest

from chalicelib import settings
from chalicelib.settings import SettingsError

APP_DIR = "/var/task"


def load(**env) -> settings.Settings:
    return settings.load(env, APP_DIR)


def test_defaults_match_the_design():
    s = load()
    assert s.token_ttl == 900
    assert s.max_session_ttl == 43200
    assert s.review_interval == 60
    assert s.key_cache_ttl == 300
    assert s.csrf_enforce is True
    assert s.log_level == "INFO"
    assert s.key_secret_id is None
    assert s.key_file is None
    assert s.clusters_file is None
    assert s.cors_allowed_origins == ()
    assert s.cluster_timeout > 0
    assert s.app_dir == APP_DIR


def test_blank_values_mean_the_default():
    s = load(TOKEN_TTL="", MAX_SESSION_TTL="  ", CSRF_ENFORCE="", LOG_LEVEL="", KEY_SECRET_ID="  ", CORS_ALLOWED_ORIGINS=" ")
    assert (s.token_ttl, s.max_session_ttl, s.csrf_enforce, s.log_level) == (900, 43200, True, "INFO")
    assert s.key_secret_id is None
    assert s.cors_allowed_origins == ()


def test_values_are_read():
    s = load(
        TOKEN_TTL="0",
        MAX_SESSION_TTL="3600",
        REVIEW_INTERVAL=" 0 ",
        KEY_CACHE_TTL="30",
        KEY_SECRET_ID="arn:aws:secretsmanager:eu-west-1:123456789012:secret:dash-key",
        KEY_FILE=".keys/local.json",
        CLUSTERS_FILE="clusters.json",
        CORS_ALLOWED_ORIGINS="https://dash.example.com, http://localhost:8080",
        CSRF_ENFORCE="false",
        LOG_LEVEL="debug",
        CLUSTER_TIMEOUT="2.5",
    )
    assert s.token_ttl == 0
    assert s.max_session_ttl == 3600
    assert s.review_interval == 0
    assert s.key_cache_ttl == 30
    assert s.key_secret_id == "arn:aws:secretsmanager:eu-west-1:123456789012:secret:dash-key"
    assert s.key_file == ".keys/local.json"
    assert s.clusters_file == "clusters.json"
    assert s.cors_allowed_origins == ("https://dash.example.com", "http://localhost:8080")
    assert s.csrf_enforce is False
    assert s.log_level == "DEBUG"
    assert s.cluster_timeout == 2.5


@pytest.mark.parametrize("raw, value", [("1", True), ("true", True), ("YES", True), ("on", True),
                                        ("0", False), ("False", False), ("no", False), ("off", False)])
def test_csrf_enforce_flag_spellings(raw, value):
    assert load(CSRF_ENFORCE=raw).csrf_enforce is value


def raises_naming(variable: str, **env) -> str:
    with pytest.raises(SettingsError) as caught:
        load(**env)
    message = str(caught.value)
    assert variable in message
    return message


@pytest.mark.parametrize("name", ["TOKEN_TTL", "MAX_SESSION_TTL", "REVIEW_INTERVAL", "KEY_CACHE_TTL"])
@pytest.mark.parametrize("value", ["-1", "-900", "ten", "1.5", "15m", "0x10", "1e3"])
def test_bad_seconds_name_the_variable(name, value):
    message = raises_naming(name, **{name: value})
    assert value in message


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "t"])
def test_bad_flag_names_the_variable(value):
    raises_naming("CSRF_ENFORCE", CSRF_ENFORCE=value)


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "https://dash.example.com/",
        "https://dash.example.com/dashboard",
        "dash.example.com",
        "//dash.example.com",
        "ftp://dash.example.com",
        "https://",
        "https://dash.example.com, *",
        "https://ok.example.com,https://dash.example.com/path",
    ],
)
def test_bad_cors_origins_name_the_variable(origins):
    raises_naming("CORS_ALLOWED_ORIGINS", CORS_ALLOWED_ORIGINS=origins)


@pytest.mark.parametrize("value", ["VERBOSE", "trace", "20", "info!"])
def test_bad_log_level_names_the_variable(value):
    raises_naming("LOG_LEVEL", LOG_LEVEL=value)


@pytest.mark.parametrize("value", ["0", "-1", "61", "3600", "nan", "inf", "fast"])
def test_cluster_timeout_out_of_range_names_the_variable(value):
    raises_naming("CLUSTER_TIMEOUT", CLUSTER_TIMEOUT=value)


@pytest.mark.parametrize("value, seconds", [("0.5", 0.5), ("60", 60.0), ("5", 5.0)])
def test_cluster_timeout_in_range(value, seconds):
    assert load(CLUSTER_TIMEOUT=value).cluster_timeout == seconds


def test_the_first_bad_setting_does_not_hide_behind_a_good_one():
    raises_naming("REVIEW_INTERVAL", TOKEN_TTL="900", REVIEW_INTERVAL="-5")


def test_relative_paths_resolve_from_the_app_directory():
    s = load()
    assert settings.resolve_path(s, "clusters.json") == os.path.join(APP_DIR, "clusters.json")
    assert settings.resolve_path(s, "/etc/clusters.json") == "/etc/clusters.json"


def test_settings_are_immutable():
    with pytest.raises(Exception):
        load().token_ttl = 1
