"""Free TCP ports for listeners an engine binds later (NIXL's side channel, SGLang's bootstrap and
KV-event sockets), picked below the kernel's ephemeral range.

A port from bind(0) comes from the ephemeral range, which the kernel also hands to every outgoing
connection: in the seconds before the engine binds it, any client socket on the machine may take it
("Address already in use" in an engine thread, a worker that never gets ready). Below that range
only listeners that ask for the port by number can collide.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # above the well-known and most registered service ports


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind `port` on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1", attempts: int = 64) -> int:
    """A TCP port free right now on `host`, outside the ephemeral range when one is (another
    listener may still take it before it is bound)."""
    low = _ephemeral_low()
    if low > _LOWEST + 1000:
        rng = random.SystemRandom()
        for _ in range(attempts):
            port = rng.randrange(_LOWEST, low)
            if port_is_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
