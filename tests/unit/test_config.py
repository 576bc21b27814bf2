"""Broker settings: key names as users type them, and value checking."""

from __future__ import annotations

import pytest

from queuectl.proto import config
from queuectl.proto.config import ConfigError, normalize_key, parse_value


def test_defaults_match_the_contract():
    defaults = config.defaults()
    assert defaults["max_retries"] == 3
    assert defaults["base_backoff"] == 2
    assert defaults["max_backoff"] == 3600
    assert defaults["timeout_sec"] == 60


@pytest.mark.parametrize("typed, key", [
    ("max_retries", "max_retries"),
    ("max-retries", "max_retries"),
    ("MAX-RETRIES", "max_retries"),
    (" timeout-sec ", "timeout_sec"),
    ("base_backoff", "base_backoff"),
    ("base-backoff", "base_backoff"),
    ("backoff-base", "base_backoff"),
    ("backoff_base", "base_backoff"),
    ("max-backoff", "max_backoff"),
    ("output-limit", "output_limit"),
])
def test_dash_and_underscore_are_the_same_and_backoff_base_is_an_alias(typed, key):
    assert normalize_key(typed) == key


@pytest.mark.parametrize("typed", ["", "retries", "max__retries", "backoff", "maxretries",
                                   "max retries"])
def test_unknown_keys_are_rejected_with_the_known_keys(typed):
    with pytest.raises(ConfigError) as info:
        normalize_key(typed)
    assert "unknown config key" in str(info.value)
    assert "max_retries" in str(info.value)  # says what would have been valid


@pytest.mark.parametrize("key, text, expected", [
    ("max_retries", "5", 5),
    ("max_retries", " 5 ", 5),
    ("max_retries", "5.0", 5),
    ("base_backoff", "3", 3),
    ("base_backoff", "1.5", 1.5),
    ("max_backoff", "0", 0),
    ("max_backoff", "90.5", 90.5),
    ("timeout_sec", "0.25", 0.25),
    ("timeout_sec", "120", 120),
    ("output_limit", "1024", 1024),
])
def test_string_values_from_the_cli_parse_to_numbers(key, text, expected):
    value = parse_value(key, text)
    assert value == expected
    assert type(value) is type(expected)


def test_integer_settings_are_ints_even_from_a_whole_float():
    assert type(parse_value("max_retries", 4.0)) is int
    assert type(parse_value("output_limit", 2048.0)) is int


@pytest.mark.parametrize("key, value", [
    ("max_retries", 7),
    ("base_backoff", 2.5),
    ("max_backoff", 60),
    ("timeout_sec", 0.5),
    ("heartbeat_sec", 1),
    ("lease_sec", 8.0),
    ("kill_grace_sec", 0),
])
def test_numbers_from_the_python_api_pass_through(key, value):
    assert parse_value(key, value) == value


@pytest.mark.parametrize("key, value", [
    ("max_retries", "0"),
    ("max_retries", "-1"),
    ("max_retries", "2.5"),
    ("max_retries", 2.5),
    ("max_retries", "three"),
    ("max_retries", ""),
    ("max_retries", True),
    ("max_retries", None),
    ("max_retries", [3]),
    ("base_backoff", "0.5"),
    ("base_backoff", 0),
    ("base_backoff", "nan"),
    ("base_backoff", "inf"),
    ("base_backoff", float("nan")),
    ("max_backoff", "-1"),
    ("max_backoff", "-inf"),
    ("timeout_sec", "0"),
    ("timeout_sec", -5),
    ("timeout_sec", False),
    ("timeout_sec", "1e400"),
    ("output_limit", "100"),
    ("output_limit", 1024.5),
    ("heartbeat_sec", "0"),
    ("lease_sec", "0.1"),
])
def test_bad_values_are_rejected_with_the_key_in_the_message(key, value):
    with pytest.raises(ConfigError) as info:
        parse_value(key, value)
    assert key in str(info.value)


def test_every_default_is_itself_a_valid_value():
    for key, value in config.defaults().items():
        assert parse_value(key, value) == value
        assert parse_value(key, str(value)) == value
