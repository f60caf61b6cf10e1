"""`--num-workers N` (alias `--api-server-count`): N frontend processes serving one HTTP port.

One frontend process is one event loop, one core at most (the GIL). With N > 1 the command becomes
a small parent that binds and listens on the port, then starts N copies of itself that inherit the
listening socket (the kernel hands each new connection to one of them). Each child is a whole
frontend: its own discovery watch, worker connections, router state (a KV router builds its own
index from the same events) and tokenizers; they share nothing but the socket and the metrics
directory. Prometheus runs in multiprocess mode over that directory, so a scrape of /metrics,
whichever child answers it, adds up every child's counters, histograms and in-flight gauges (the
KV router's index gauges are the answering child's). The parent forwards SIGTERM/SIGINT to every
child (each drains its open requests) and exits when all have; a child that dies on its own takes
the others down with it, and the parent exits 1, so a supervisor restarts the whole frontend.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("dynamo.frontend")

LISTEN_FD_ENV = "DYN_FRONTEND_LISTEN_FD"  # set by the parent: the inherited listening socket
PROCESS_INDEX_ENV = "DYN_FRONTEND_PROCESS"  # set by the parent: this child's index, 0..N-1
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BACKLOG = 4096


def process_index() -> int | None:
    """This process's index among the frontend's processes; None when it is the only one."""
    value = os.environ.get(PROCESS_INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


def is_child() -> bool:
    return LISTEN_FD_ENV in os.environ


def inherited_socket() -> socket.socket | None:
    """The listening socket the parent handed down (call once: the object owns the descriptor)."""
    fd = os.environ.get(LISTEN_FD_ENV)
    return socket.socket(fileno=int(fd)) if fd else None


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def run_processes(n: int, host: str, port: int, argv: Sequence[str]) -> int:
    """The parent: listen on (host, port), run `n` frontend processes on it until they stop."""
    try:
        sock = listening_socket(host, port)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", host, port, e)
        return 1
    port = sock.getsockname()[1]  # resolved, when --http-port 0 asked for any
    metrics_dir = tempfile.mkdtemp(prefix="dynamo-frontend-metrics-")
    env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno()), METRICS_DIR_ENV: metrics_dir}
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop_all(sig: int) -> None:
        for child in children:
            if child.returncode is None:
                try:
                    child.send_signal(sig)
                except ProcessLookupError:
                    pass

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        stop_all(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for i in range(n):
            # each its own process group (same session): a terminal's Ctrl-C reaches the parent
            # alone, which forwards it once
            children.append(subprocess.Popen([sys.executable, "-m", "dynamo.frontend", *argv],
                                             env={**env, PROCESS_INDEX_ENV: str(i)}, pass_fds=(sock.fileno(),),
                                             process_group=0))
        sock.close()  # the children hold it
        log.info("frontend: %d processes on http://%s:%d (pids %s)", n, host, port,
                 ", ".join(str(c.pid) for c in children))
        failed = False
        while any(c.returncode is None for c in children):
            pid, status = os.wait()  # a signal runs forward() and the wait resumes (PEP 475)
            child = next((c for c in children if c.pid == pid), None)
            if child is None:
                continue
            child.returncode = os.waitstatus_to_exitcode(status)
            if not stopping:
                log.error("frontend process %d (pid %d) exited with %s; stopping the others",
                          children.index(child), pid, child.returncode)
                stopping = failed = True
                stop_all(signal.SIGTERM)
            elif child.returncode != 0:
                failed = True
        return 1 if failed else 0
    finally:
        stop_all(signal.SIGKILL)
        shutil.rmtree(metrics_dir, ignore_errors=True)

