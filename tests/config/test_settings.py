"""Settings: one immutable object made from the options table, read by every layer."""

from __future__ import annotations

import dataclasses

import pytest

from spawning.config import Settings
from spawning.config.options import OPTIONS, defaults
from spawning.errors import ConfigError


def test_every_option_is_a_field_with_the_tables_default():
    settings = Settings()
    for opt in OPTIONS:
        value = getattr(settings, opt.name)
        expected = tuple(opt.default) if isinstance(opt.default, list) else opt.default
        assert value == expected, opt.name
    assert {f.name for f in dataclasses.fields(settings)} == {opt.name for opt in OPTIONS} | {"extra"}


def test_settings_are_immutable():
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.threads = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.extra["app"] = "x"  # type: ignore[index]


def test_from_config_keeps_what_is_not_an_option_in_extra():
    config = {**defaults(), "threads": 0, "app": "hello.application", "middleware": ["m.mw"]}
    settings = Settings.from_config(config)
    assert settings.threads == 0
    assert settings.extra == {"app": "hello.application", "middleware": ["m.mw"]}
    assert settings.to_dict() == config


def test_from_config_missing_and_none_mean_the_default():
    settings = Settings.from_config({"processes": None, "host": ""})
    assert settings.processes == Settings().processes
    assert settings.host == Settings().host       # an empty ini value: the default, not every interface


def test_from_config_coerces_strings_as_the_command_line_does():
    settings = Settings.from_config({"threads": "0", "graceful_timeout": "2", "daemonize": "yes",
                                     "max_body_size": "64K"})
    assert (settings.threads, settings.graceful_timeout, settings.daemonize) == (0, 2.0, True)
    assert settings.max_body_size == 64 * 1024
    with pytest.raises(ConfigError):
        Settings.from_config({"threads": "many"})


def test_numbers_take_the_defaults_type():
    settings = Settings.from_config({"threads": 2.0, "timeout": 3})
    assert type(settings.threads) is int and type(settings.timeout) is float
    assert settings.replace(max_requests="7").max_requests == 7


def test_replace_returns_a_copy():
    base = Settings()
    changed = base.replace(max_requests=5, bind=["127.0.0.1:0"])
    assert (base.max_requests, changed.max_requests) == (0, 5)
    assert changed.bind == ("127.0.0.1:0",)
