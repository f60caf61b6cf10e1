"""One helper for every setting: flag first, environment variable second, default last."""

from __future__ import annotations

import argparse

import pytest

from dynamo.llm.worker.args import WorkerConfig, add_worker_args
from dynamo.runtime.config import (
    DiscoveryConfig,
    EnvError,
    add_env_flag,
    choice,
    env_value,
    int_range,
    parse_bool,
)


def parser_with(env: dict[str, str], **kw: object) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_env_flag(p, "--level", env_var="T_LEVEL", default="low", env=env, type=choice("low", "high"),
                 help="how high")
    add_env_flag(p, "--count", env_var="T_COUNT", default=1, env=env, type=int_range(0, 9), help="how many")
    add_env_flag(p, "--loud", env_var="T_LOUD", default=False, env=env, switch=True, help="shout")
    return p


def test_flag_beats_variable_beats_default() -> None:
    assert vars(parser_with({}).parse_args([])) == {"level": "low", "count": 1, "loud": False}
    env = {"T_LEVEL": "high", "T_COUNT": "7", "T_LOUD": "yes"}
    assert vars(parser_with(env).parse_args([])) == {"level": "high", "count": 7, "loud": True}
    assert vars(parser_with(env).parse_args(["--level", "low", "--count", "2"])) == {
        "level": "low", "count": 2, "loud": True}
    assert parser_with({"T_COUNT": ""}).parse_args([]).count == 1  # empty = unset


@pytest.mark.parametrize("env,argv,words", [
    ({"T_LEVEL": "mid"}, [], ["T_LEVEL", "mid", "low, high"]),
    ({"T_COUNT": "12"}, [], ["T_COUNT", "12", "0..9"]),
    ({"T_LOUD": "maybe"}, [], ["T_LOUD", "maybe", "boolean"]),
    ({}, ["--count", "x"], ["--count", "'x' is not an integer"]),
])
def test_bad_values_are_usage_errors_naming_the_setting(env: dict[str, str], argv: list[str], words: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser_with(env).parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_env_value_and_bool_spellings() -> None:
    assert env_value("X", int, 5, {}) == 5 and env_value("X", int, 5, {"X": " 6 "}) == 6
    with pytest.raises(EnvError, match="X='six'"):
        env_value("X", int, 5, {"X": "six"})
    assert [parse_bool(v) for v in ("1", "true", "YES", "on", "0", "false", "no", "Off")] == [True] * 4 + [False] * 4


def test_discovery_config_from_env() -> None:
    config = DiscoveryConfig.from_env({"DYN_DISCOVERY_BACKEND": "ETCD", "ETCD_ENDPOINTS": "a:1, b:2",
                                       "DYN_DISCOVERY_TTL": "3"})
    assert config == DiscoveryConfig(backend="etcd", directory=None, etcd_endpoints=["a:1", "b:2"], ttl=3.0)
    with pytest.raises(EnvError, match="DYN_DISCOVERY_TTL"):
        DiscoveryConfig.from_env({"DYN_DISCOVERY_TTL": "0"})


def worker_config(argv: list[str], env: dict[str, str] | None = None) -> WorkerConfig:
    p = argparse.ArgumentParser()
    add_worker_args(p, env or {})
    return WorkerConfig.from_args(p.parse_args(argv))


def test_worker_roles_and_addresses() -> None:
    c = worker_config([])
    assert (c.role.value, str(c.address), c.request_transport) == ("agg", "dyn://dynamo.backend.generate", "stream")
    c = worker_config(["--is-prefill-worker", "--namespace", "ns"])
    assert (c.role.value, str(c.address)) == ("prefill", "dyn://ns.prefill.generate")
    c = worker_config([], {"DYN_DISAGGREGATION_MODE": "decode", "DYN_PREFILL_FALLBACK_LOCAL": "1"})
    assert c.role.value == "decode" and c.prefill_fallback_local
    c = worker_config(["--endpoint", "dyn://other.comp.ep"])
    assert (c.runtime.namespace, str(c.address)) == ("other", "dyn://other.comp.ep")
    with pytest.raises(ValueError, match="conflicts"):
        worker_config(["--is-prefill-worker", "--disaggregation-mode", "decode"])
