"""Same-machine gRPC over a Unix domain socket.

A server may listen on a Unix socket besides its TCP port and publish the socket's path in its
instance record, with an id of the machine and mount namespace it runs in. A client that finds the
same id (so the path names the same file for both) and the socket in place connects through it:
still gRPC, without the kernel's TCP work on every message (a `dynamo.vllm` worker's CPU per
output token at c=16: 3-7 µs less of ~55, benchmarks/README.md). Anything else (another host,
another container, a socket gone) uses the TCP target.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import stat
import tempfile
from pathlib import Path

#: --grpc-local-socket values besides a path
AUTO, OFF = "auto", "off"


@functools.cache
def host_id() -> str:
    """This machine's boot and this process's mount namespace ("" where Linux does not say):
    equal ids mean a socket path names the same file for both processes."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        mounts = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return ""
    return f"{boot}/{mounts}"


def socket_path(setting: str | None) -> Path | None:
    """Where a server listens for `--grpc-local-socket SETTING`: None (off), a fresh path in the
    runtime directory (auto), or the path given."""
    if not setting or setting == OFF:
        return None
    if setting == AUTO:
        if not host_id():
            return None
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        _sweep(base)
        # unique per process start: a crashed server's stale file is never mistaken for a live one
        return base / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.sock"
    return Path(setting)


_PREFIX = "dynamo-grpc-"


def _sweep(base: Path) -> None:
    """Remove the auto sockets of servers that died without removing theirs (SIGKILL): those
    nothing listens on any more (a live server's, even one in another PID namespace, accepts)."""
    try:
        names = [p for p in base.glob(f"{_PREFIX}*.sock") if p.is_socket()]
    except OSError:
        return
    for p in names:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.2)
            try:
                s.connect(str(p))
            except ConnectionRefusedError:
                remove(p)
            except OSError:
                pass  # not ours to judge (permissions, a busy server): leave it


def prepare(path: Path) -> None:
    """Make room for a server's socket at `path`: grpc does not replace an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    elif path.exists():
        raise OSError(f"--grpc-local-socket {path}: exists and is not a socket")


def remove(path: Path) -> None:
    try:
        if path.is_socket():
            path.unlink()
    except OSError:
        pass


def reachable(path: str, peer_host_id: str) -> bool:
    """Whether this process can reach a server's socket: same machine and mount namespace, and
    the socket is there."""
    if not path or not peer_host_id or peer_host_id != host_id():
        return False
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
