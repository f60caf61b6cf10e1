"""`python -m dynamo.sglang`'s command line: SGLang's own flags unchanged (its parser, its --config
YAML), the worker's flags, and what Dynamo sets on top (dynamo/sglang/args.py). Runs where SGLang
is installed (the sglang tier, .venv-sglang)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo.llm.model_card import Role
from dynamo.llm.worker.args import WorkerConfig, add_worker_args
from tests.support.backends import REPO

pytestmark = pytest.mark.sglang
pytest.importorskip("sglang", reason="SGLang is not installed here (scripts/setup-sglang.sh makes .venv-sglang)")

from dynamo.sglang.engine import SGLangEngine


def parse(*argv: str) -> tuple[dict, Role]:  # type: ignore[type-arg]
    parser = SGLangEngine.make_parser("test")
    SGLangEngine.add_cli_args(parser)
    add_worker_args(parser)
    ns = parser.parse_args(list(argv))
    role = WorkerConfig.from_args(ns).role
    return SGLangEngine.from_cli_args(ns, role).server_args, role


def test_dynamo_turns_on_what_a_token_worker_needs() -> None:
    args, role = parse("--model-path", "/m", "--page-size", "16", "--tp", "1", "--mem-fraction-static", "0.5")
    assert role is Role.AGGREGATED and args["disaggregation_mode"] == "null"
    assert args["page_size"] == 16 and args["tp_size"] == 1 and args["mem_fraction_static"] == 0.5
    assert args["skip_tokenizer_init"] is True and args["incremental_streaming_output"] is True
    assert args["enable_metrics"] is True
    events = json.loads(args["kv_events_config"])
    assert events["publisher"] == "zmq" and events["bind"] is True and events["endpoint"].startswith("tcp://127.0.0.1:")
    assert args["grpc_port"] != 0 or args["grpc_port"] is None  # SGLang's own default, not the worker's --grpc-port
    assert args["host"] == "127.0.0.1"  # SGLang's default where no bootstrap server runs


def test_the_worker_flags_shadow_sglangs_namesakes() -> None:
    args, role = parse("--model-path", "/m", "--disaggregation-mode", "decode", "--grpc-port", "0")
    assert role is Role.DECODE and args["disaggregation_mode"] == "decode"
    from sglang.srt.server_args import ServerArgs  # the shadowed SGLang field keeps SGLang's default
    assert args["grpc_port"] == ServerArgs(model_path="/m").grpc_port


def test_a_prefill_worker_serves_its_bootstrap_on_a_free_port_on_every_interface() -> None:
    args, role = parse("--model-path", "/m", "--is-prefill-worker")
    assert role is Role.PREFILL and args["disaggregation_mode"] == "prefill"
    assert args["disaggregation_bootstrap_port"] != 8998 and 1024 < args["disaggregation_bootstrap_port"] < 65536
    assert args["host"] == "0.0.0.0"
    given, _ = parse("--model-path", "/m", "--disaggregation-mode", "prefill",
                     "--disaggregation-bootstrap-port", "9123", "--host", "10.0.0.5")
    assert given["disaggregation_bootstrap_port"] == 9123 and given["host"] == "10.0.0.5"


def test_user_kv_events_config_is_kept() -> None:
    mine = {"publisher": "zmq", "endpoint": "tcp://*:6000", "topic": "t"}
    args, _ = parse("--model-path", "/m", "--kv-events-config", json.dumps(mine))
    assert json.loads(args["kv_events_config"]) == mine


def test_config_yaml_expands_as_sglang_does_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "agg.yaml"
    config.write_text("page-size: 32\nmax-running-requests: 7\nkv-events-config:\n  publisher: zmq\n"
                      "  endpoint: tcp://127.0.0.1:6001\n")
    args, _ = parse("--model-path", "/m", "--config", str(config), "--page-size", "64")
    assert args["page_size"] == 64 and args["max_running_requests"] == 7
    assert json.loads(args["kv_events_config"])["endpoint"] == "tcp://127.0.0.1:6001"


def test_every_setting_builds_sglangs_server_args() -> None:
    from sglang.srt.server_args import ServerArgs

    for role_flags in ([], ["--is-prefill-worker"], ["--disaggregation-mode", "decode"]):
        args, _ = parse("--model-path", "/m", *role_flags)
        ServerArgs(**args)  # TypeError on a field SGLang does not have


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamo.sglang", *argv], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_refuses_bad_flags_before_starting_anything(tmp_path: Path) -> None:
    done = run_cli("--model-path", "/m", "--no-such-flag")
    assert done.returncode == 2 and "--no-such-flag" in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = run_cli("--model-path", "/m", "--config", str(bad))
    assert done.returncode == 2 and "--config" in done.stderr
    done = run_cli("--help")
    assert done.returncode == 0
    for flag in ("--model-path", "--tp-size", "--page-size", "--mem-fraction-static", "--config",
                 "--disaggregation-transfer-backend", "--disaggregation-bootstrap-port", "--is-prefill-worker",
                 "--disaggregation-mode", "--namespace", "--prefill-timeout"):
        assert flag in done.stdout, flag


SGLANG_FILES = sorted((REPO / "engine_configs" / "sglang").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SGLANG_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_engine_config_files_load_with_sglangs_own_merger(path: Path) -> None:
    from sglang.srt.server_args import ServerArgs

    role_flags = {"agg": [], "prefill": ["--disaggregation-mode", "prefill"],
                  "decode": ["--disaggregation-mode", "decode"]}[path.stem]
    args, _ = parse("--model-path", "/models/m", "--config", str(path), *role_flags)
    ServerArgs(**args)
    assert args["page_size"] == 32 and args["context_length"] > 0 and 0 < args["mem_fraction_static"] < 1
    if path.stem != "agg":
        assert args["disaggregation_transfer_backend"] == "nixl" and args["disaggregation_mode"] == path.stem


def test_structured_output_keeps_sglangs_tokenizer_and_is_refused_without_it() -> None:
    from dynamo.llm.model_card import ModelSource
    from dynamo.llm.protocol import GenerateRequest, InvalidRequest, StructuredKind, StructuredOutput

    with_grammar, _ = parse("--model-path", "/m", "--enable-structured-output")
    assert with_grammar["skip_tokenizer_init"] is False  # SGLang's grammar backend needs its tokenizer
    plain, _ = parse("--model-path", "/m")
    engine = SGLangEngine(plain, ModelSource("m", "/m", "/m"))
    engine._vocab_size = 1024  # what start() reads from the engine
    request = GenerateRequest("r", [5, 6], structured_output=StructuredOutput(StructuredKind.REGEX, "[ab]+"))
    with pytest.raises(InvalidRequest, match="structured_output .regex. is not supported here: .*"
                                             "start it with --enable-structured-output"):
        engine._check(request)
    served = SGLangEngine(with_grammar, ModelSource("m", "/m", "/m"))
    served._vocab_size = 1024
    served._check(request)  # SGLang's grammar backend takes it from here
