"""A vLLM general plugin (loaded by vLLM in every process it starts, engine workers included) that
turns NIXL's progress thread off when DYN_NIXL_PROGRESS_THREAD=0.

Why: vLLM's NixlConnector creates its NIXL agent with the progress thread on, and that thread
polls with no delay: an idle prefill or decode worker burns a whole core. On CPU machines (DRAM
transfers, few cores) that starves the engines themselves; transfers still progress without it
because vLLM polls transfer state every engine step. The worker sets the variable on CPU platforms
(see dynamo.vllm.args.configure_disaggregation); GPU nodes keep NIXL's default.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "DYN_NIXL_PROGRESS_THREAD"


def register() -> None:
    if os.environ.get(ENV, "1") != "0":
        return
    try:
        from nixl._api import nixl_agent_config
    except ImportError:
        return
    if getattr(nixl_agent_config, "_dynamo_patched", False):
        return
    original_init = nixl_agent_config.__init__

    def init_without_progress_thread(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["enable_prog_thread"] = False
        original_init(self, *args, **kwargs)

    nixl_agent_config.__init__ = init_without_progress_thread  # type: ignore[method-assign]
    nixl_agent_config._dynamo_patched = True  # type: ignore[attr-defined]
    log.info("NIXL progress thread disabled (%s=0)", ENV)
