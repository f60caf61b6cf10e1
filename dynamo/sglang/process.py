"""`sglang.Engine`'s process-wide habits, and how the worker keeps its own process in hand.

What SGLang does (0.5.23): its tokenizer manager, once it runs in the event loop, installs SIGTERM
(drain, then sys.exit from inside a task) and SIGQUIT (kill the whole process tree, this process
included) handlers on the loop; a watchdog thread SIGQUITs this process when a child dies; and
`Engine.shutdown()`, also registered with atexit, SIGKILLs every child of this process, not only its
own. The worker instead:
- starts the tokenizer manager's loop at once (`take_over`), so that SGLang's handlers are installed
  during start-up, where the worker shell installs its own SIGTERM/SIGINT after them; SIGQUIT (a
  dead SGLang child) gets ours: the engine is marked failed and the worker drains and exits;
- stops SGLang's own shutdown from running at exit, and at shutdown kills only SGLang's children
  (`shutdown_children`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_KILL_WAIT_S = 15.0


def take_over(engine: Any, on_child_death: Callable[[], None]) -> None:
    """Call from the event loop, right after `Engine()` returned."""
    atexit.unregister(engine.shutdown)
    engine.tokenizer_manager.auto_create_handle_loop()
    asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, on_child_death)


def child_pids(engine: Any) -> list[int]:
    try:
        return [int(pid) for pid in engine.get_all_child_pids()]
    except Exception:  # an engine half torn down
        return []


def children_alive(engine: Any) -> tuple[bool, str]:
    import psutil

    for pid in child_pids(engine):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False, f"SGLang subprocess {pid} has exited"
        except psutil.NoSuchProcess:
            return False, f"SGLang subprocess {pid} is gone"
    return True, ""


def shutdown_children(engine: Any) -> None:
    """Kill SGLang's subprocesses (and theirs), and reap them; nothing else of this process's."""
    import psutil

    watchdog = getattr(engine.tokenizer_manager, "_subprocess_watchdog", None)
    if watchdog is not None:
        try:
            watchdog.stop()  # it would SIGQUIT us for children we are about to kill
        except Exception:
            log.debug("SGLang's subprocess watchdog did not stop", exc_info=True)
    procs: list[Any] = []
    for pid in child_pids(engine):
        try:
            root = psutil.Process(pid)
            procs += [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=_KILL_WAIT_S)
    if alive:
        log.warning("SGLang subprocesses still alive after SIGKILL: %s", [p.pid for p in alive])
