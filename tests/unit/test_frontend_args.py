"""Frontend configuration: CLI flag > DYN_* environment variable > default."""

from __future__ import annotations

import pytest

from dynamo.frontend.args import FrontendConfig, parse_args


def test_defaults() -> None:
    assert parse_args([], env={}) == FrontendConfig()
    c = FrontendConfig()
    assert (c.http_host, c.http_port, c.namespace, c.discovery.backend, c.router_mode,
            c.migration_limit, c.api_key) == ("0.0.0.0", 8000, "dynamo", "file", "round-robin",
                                              0, None)


def test_env_then_flag_precedence() -> None:
    env = {"DYN_HTTP_PORT": "9001", "DYN_NAMESPACE": "prod", "DYN_ROUTER_MODE": "random",
           "DYN_MIGRATION_LIMIT": "3", "DYN_API_KEY": "k", "DYN_DISCOVERY_BACKEND": "etcd",
           "ETCD_ENDPOINTS": "http://e:2379", "DYN_FILE_KV": "/d"}
    c = parse_args([], env=env)
    assert (c.http_port, c.namespace, c.router_mode, c.migration_limit, c.api_key,
            c.discovery.backend, c.discovery.etcd_endpoints, c.discovery.directory) == (
        9001, "prod", "random", 3, "k", "etcd", ["http://e:2379"], "/d")
    c = parse_args(["--http-port", "9002", "--namespace", "dev", "--router-mode",
                    "least-loaded", "--migration-limit", "1", "--api-key", "flag-key"], env=env)
    assert (c.http_port, c.namespace, c.router_mode, c.migration_limit, c.api_key) == (
        9002, "dev", "least-loaded", 1, "flag-key")


@pytest.mark.parametrize("argv,env", [
    (["--router-mode", "fastest"], {}),
    ([], {"DYN_ROUTER_MODE": "fastest"}),
    ([], {"DYN_HTTP_PORT": "eighty"}),
    (["--http-port", "70000"], {}),
    (["--migration-limit", "-1"], {}),
    (["--max-inflight-per-worker", "-1"], {}),
    (["--stream-chunk-rate", "-1"], {}),
    (["--discovery-backend", "zookeeper"], {}),
    ([], {"DYN_GENERATE_TRANSPORT": "carrier-pigeon"}),
    ([], {"DYN_LOG": "chatty"}),
    ([], {"DYN_DISCOVERY_TTL": "-1"}),
])
def test_bad_values_exit_with_a_message(argv: list[str], env: dict[str, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, env=env)
    message = capsys.readouterr().err + str(info.value.code)
    assert any(w in message for w in ("fastest", "eighty", "70000", "-1", "zookeeper", "carrier-pigeon", "chatty"))
    if env:  # a bad variable is named in the message
        assert next(iter(env)) in message


def test_request_transport() -> None:
    assert parse_args([], env={}).request_transport == "stream"
    assert parse_args([], env={"DYN_GENERATE_TRANSPORT": "unary"}).request_transport == "unary"
    assert parse_args(["--request-transport", "stream"], env={"DYN_GENERATE_TRANSPORT": "unary"}
                      ).request_transport == "stream"


def test_help_names_each_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"], env={})
    text = " ".join(capsys.readouterr().out.split())
    for var in ("DYN_ROUTER_MODE", "DYN_HTTP_PORT", "DYN_NAMESPACE", "DYN_DISCOVERY_BACKEND", "ETCD_ENDPOINTS",
                "DYN_GENERATE_TRANSPORT", "DYN_LOG", "DYN_MIGRATION_LIMIT"):
        assert f"env {var}" in text, var
    assert "default: round-robin" in text and "default: 8000" in text


def test_stream_chunk_rate_paces_the_backend_and_shows_in_metrics() -> None:
    from dynamo.frontend.metrics import FrontendMetrics
    from dynamo.frontend.worker_backend import WorkerServingBackend
    from dynamo.runtime.config import DiscoveryConfig
    from dynamo.runtime.discovery import open_discovery

    assert parse_args([], env={}).stream_chunk_rate == 8000
    assert parse_args([], env={"DYN_STREAM_CHUNK_RATE": "0"}).stream_chunk_rate == 0
    assert parse_args(["--stream-chunk-rate", "500"], env={"DYN_STREAM_CHUNK_RATE": "0"}).stream_chunk_rate == 500
    discovery = open_discovery(DiscoveryConfig(backend="file", directory="/nonexistent-unused"))
    assert WorkerServingBackend(discovery, "ns", stream_chunk_rate=0).pacing is None
    backend = WorkerServingBackend(discovery, "ns", stream_chunk_rate=500)
    assert backend.pacing is not None and backend.pool.pacing is backend.pacing
    metrics = FrontendMetrics()
    metrics.pacing.source = backend.pacing
    backend.pacing.open = 50  # 50 open streams over 500 chunks/s: each every 0.1 s
    assert b"dynamo_frontend_stream_pacing_seconds 0.1" in metrics.render()
