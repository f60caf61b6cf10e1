"""A vLLM general plugin (vLLM loads it in every process it starts, engine workers included) that
makes NIXL's progress thread sleep between polls when DYN_NIXL_PROGRESS_DELAY_US is set.

Why: vLLM's NixlConnector runs NIXL's progress thread, and NIXL's Python API starts it with a
delay of 0, so it polls without pause: an idle prefill or decode worker burns a whole core. On
CPU machines (DRAM transfers, few cores) that starves the engines themselves. The thread cannot
simply be switched off: vLLM relies on it to progress UCX notifications. A delay of a few hundred
microseconds keeps transfers moving at a tiny CPU cost. dynamo.vllm sets the variable on CPU
platforms (see dynamo.vllm.args.configure_disaggregation); GPU nodes keep NIXL's default.
"""

from __future__ import annotations

import logging
from typing import Any

from dynamo.runtime.config import EnvError, env_value, int_range

log = logging.getLogger(__name__)

ENV = "DYN_NIXL_PROGRESS_DELAY_US"


class _BindingsWithDelay:
    """Stands in for NIXL's native bindings module; sets pthrDelay on every agent it creates."""

    def __init__(self, bindings: Any, delay_us: int) -> None:
        self._bindings = bindings
        self._delay_us = delay_us

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bindings, name)

    def nixlAgent(self, name: str, config: Any) -> Any:
        config.pthrDelay = self._delay_us
        return self._bindings.nixlAgent(name, config)


def register() -> None:
    try:
        delay_us = env_value(ENV, int_range(0), None)
    except EnvError as e:  # in an engine process: warn, never fail the engine for it
        log.warning("ignoring %s", e)
        return
    if delay_us is None:
        return
    try:
        import nixl._api as api  # the platform build (nixl_cu12/cu13) registers itself under this name
    except ImportError:
        return
    if isinstance(api.nixlBind, _BindingsWithDelay):
        return
    api.nixlBind = _BindingsWithDelay(api.nixlBind, delay_us)
    log.info("NIXL progress thread polls every %d µs (%s)", delay_us, ENV)
