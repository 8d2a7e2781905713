"""The TOML + environment layering that agent and server configurations share."""

from __future__ import annotations

import pytest

from ingest_server.config import build_config
from ingest_server.errors import ConfigError
from wire.config_layers import env_overrides, merge
from wire.errors import ValidationError


def test_environment_values_are_toml_when_they_parse_and_nest_by_double_underscore() -> None:
    env = {"P__A__B": "512", "P__A__C": "[1, 2]", "P__FLAG": "false", "P__NAME": "not toml",
           "OTHER__A": "1"}
    assert env_overrides(env, "P__") == {"a": {"b": 512, "c": [1, 2]}, "flag": False,
                                         "name": "not toml"}


@pytest.mark.parametrize(("env", "problem"), [
    ({"P__A____B": "1"}, "P__A____B: empty key level"),
    ({"P__A": "1", "P__A__B": "2"}, "P__A__B: 'a' is not a table"),
])
def test_bad_environment_names_the_variable(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        env_overrides(env, "P__")


def test_merge_lays_tables_key_by_key_and_replaces_the_rest() -> None:
    base = {"broker": {"url": "a", "tls": True}, "workers": 1, "tiles": [1]}
    assert merge(base, {"broker": {"url": "b"}, "tiles": [2]}) == {
        "broker": {"url": "b", "tls": True}, "workers": 1, "tiles": [2]}
    assert base["broker"] == {"url": "a", "tls": True}  # inputs are not changed


def test_server_config_wraps_environment_errors_in_its_own() -> None:
    with pytest.raises(ConfigError, match="server config: environment variable CVIS_SERVER__X__"):
        build_config({}, env={"CVIS_SERVER__X__": "1"})
