"""vLLM's own engine flags, passed through untouched, and the settings a role needs.

The worker shell adds the common flags (--namespace, --endpoint, --disaggregation-mode, ...) to the
same parser; vLLM defines every other flag itself, so `python -m dynamo.vllm --help` shows vLLM's
own documentation and any flag a newer vLLM adds works without a change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import uuid

from vllm.config import KVEventsConfig, KVTransferConfig
from vllm.engine.arg_utils import AsyncEngineArgs

from dynamo.llm.model_card import ModelSource, Role
from dynamo.runtime.ports import free_port, port_is_free

log = logging.getLogger(__name__)

NIXL_PORT_ENV = "VLLM_NIXL_SIDE_CHANNEL_PORT"
NIXL_HOST_ENV = "VLLM_NIXL_SIDE_CHANNEL_HOST"
NIXL_PROGRESS_DELAY_ENV = "DYN_NIXL_PROGRESS_DELAY_US"


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every vLLM engine flag (as `vllm serve` defines it) to `parser`.

    Best with vLLM's `FlexibleArgumentParser` (it also accepts `--max_model_len` spellings and JSON
    config flags such as `--kv-transfer-config '{...}'`). Note vLLM owns `--model`, `--seed`,
    `--log-level`, `--served-model-name` and the short options `-n -r -q -tp -pp -dp -ep ...`.
    """
    return AsyncEngineArgs.add_cli_args(parser)  # type: ignore[arg-type]


def engine_args_from_namespace(ns: argparse.Namespace) -> AsyncEngineArgs:
    """vLLM's engine arguments from a namespace parsed by a parser built with `add_engine_args`."""
    return AsyncEngineArgs.from_cli_args(ns)


CONNECTORS = ("nixl", "none")


def add_connector_arg(parser: argparse.ArgumentParser) -> None:
    """`--connector`: how a worker takes KV from prefill workers (Dynamo's vLLM worker flag)."""
    parser.add_argument("--connector", choices=CONNECTORS, default="nixl",
                        help="KV connector of a worker without --disaggregation-mode: nixl (default) lets it "
                             "continue prefills of --is-prefill-worker workers when they are live (so "
                             "the plain decode + prefill pattern works), none keeps it aggregated only; "
                             "prefill and decode workers always use NIXL unless --kv-transfer-config says else")


def nixl_available() -> bool:
    try:
        import nixl  # noqa: F401
    except ImportError:
        return False
    return True


def configure_disaggregation(engine_args: AsyncEngineArgs, role: Role, connector: str = "nixl",
                             side_channel_host: str | None = None) -> AsyncEngineArgs:
    """Give a prefill or decode engine the NIXL connector it needs to hand KV blocks over.

    An explicit `--kv-transfer-config` wins. Otherwise a prefill engine produces KV (kv_producer)
    and a decode engine consumes it (kv_consumer); vLLM deprecates "kv_both" for NixlConnector.
    An aggregated engine consumes too (`connector` "nixl", where NIXL is installed): it computes
    its own prompts, and can also continue a prefill worker's. NIXL listens on a side-channel port
    that vLLM reads from VLLM_NIXL_SIDE_CHANNEL_PORT; each worker needs its own, so a free one is
    picked when the variable is unset. Its host (VLLM_NIXL_SIDE_CHANNEL_HOST, vLLM's default
    localhost) becomes `side_channel_host`, the worker's advertised address, so that a decode
    worker in another pod or on another machine reaches it. The environment is process-wide: run
    one engine with a connector per process. Returns a new AsyncEngineArgs.
    """
    if engine_args.kv_transfer_config is not None:
        return engine_args
    if role is Role.AGGREGATED and (connector == "none" or not nixl_available()):
        if connector != "none":
            log.info("NIXL is not installed: this worker serves aggregated only (prefill workers cannot hand it KV)")
        return engine_args
    from vllm.platforms import current_platform

    transfer = KVTransferConfig(
        kv_connector="NixlConnector",
        kv_role="kv_producer" if role is Role.PREFILL else "kv_consumer",
        kv_buffer_device="cpu" if current_platform.is_cpu() else current_platform.device_type,
    )
    if side_channel_host and not os.environ.get(NIXL_HOST_ENV):
        os.environ[NIXL_HOST_ENV] = side_channel_host
    port = os.environ.get(NIXL_PORT_ENV)
    if not port:
        # Read by the engine-core process, which inherits this environment when it is spawned.
        os.environ[NIXL_PORT_ENV] = str(free_port())
    elif not port_is_free(int(port)):
        # vLLM's NIXL listener would fail in a background thread and the worker never get ready.
        raise ValueError(f"{NIXL_PORT_ENV}={port} is already in use on this host (another worker's "
                         "NIXL side channel?): give each worker its own port, or unset it and the "
                         "worker picks a free one")
    if current_platform.is_cpu():
        # NIXL's progress thread spins a whole core even when idle; see dynamo.vllm.nixl_plugin.
        os.environ.setdefault(NIXL_PROGRESS_DELAY_ENV, "200")
    return dataclasses.replace(engine_args, kv_transfer_config=transfer)


def configure_kv_events(engine_args: AsyncEngineArgs) -> AsyncEngineArgs:
    """Make vLLM publish its KV-cache events on a private ZMQ endpoint the adapter subscribes to.

    An explicit `--kv-events-config` wins (even one that disables events). The default publishes on
    an ipc:// socket in the temp directory: no port to pick, nothing reachable from outside.
    Prefix caching is left as configured (vLLM's default is on; KV events need it).
    """
    if engine_args.kv_events_config is not None:
        return engine_args
    path = os.path.join(tempfile.gettempdir(), f"dynamo-vllm-kv-{uuid.uuid4().hex[:12]}.sock")
    events = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=f"ipc://{path}")
    return dataclasses.replace(engine_args, kv_events_config=events)


def remove_kv_events_socket(engine_args: AsyncEngineArgs) -> None:
    """Delete the ipc:// socket file of the engine's KV-event publisher, once the engine is down."""
    events = engine_args.kv_events_config
    if events is not None and events.endpoint.startswith("ipc://"):
        try:
            os.unlink(events.endpoint[len("ipc://"):])
        except OSError:
            pass


def prepare_engine_args(engine_args: AsyncEngineArgs, role: Role = Role.AGGREGATED,
                        connector: str = "nixl", side_channel_host: str | None = None) -> AsyncEngineArgs:
    """Everything a worker of `role` needs on top of the user's flags (a new AsyncEngineArgs)."""
    return configure_kv_events(configure_disaggregation(engine_args, role, connector, side_channel_host))


def consumes_remote_kv(engine_args: AsyncEngineArgs) -> bool:
    """Whether the engine can continue a prefill worker's request (its connector takes KV in)."""
    transfer = engine_args.kv_transfer_config
    return transfer is not None and transfer.kv_role in ("kv_consumer", "kv_both")


def model_source_of(engine_args: AsyncEngineArgs) -> ModelSource:
    """The served name (vLLM's first --served-model-name, else --model), weights and tokenizer."""
    served = engine_args.served_model_name
    name = (served[0] if isinstance(served, list) else served) or engine_args.model
    return ModelSource(served_model_name=name, model_path=engine_args.model,
                       tokenizer=engine_args.tokenizer or engine_args.model)
