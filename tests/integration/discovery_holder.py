"""Holds one discovery key until killed: the stand-in for a worker in discovery tests.

    python tests/integration/discovery_holder.py --backend file --discovery-dir D --key K
Puts K (value: this process's pid), prints "READY <pid>", then waits. SIGTERM/SIGINT: close()
(removes the key at once) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys


async def main() -> int:
    from dynamo.runtime.discovery import open_discovery

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", required=True, choices=["file", "etcd"])
    p.add_argument("--discovery-dir")
    p.add_argument("--etcd-endpoint", action="append")
    p.add_argument("--ttl", type=float, default=3.0)
    p.add_argument("--key", required=True)
    args = p.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    discovery = open_discovery(args.backend, discovery_dir=args.discovery_dir,
                               etcd_endpoints=args.etcd_endpoint, ttl=args.ttl)
    async with discovery:
        await discovery.put(args.key, str(os.getpid()).encode())
        print(f"READY {os.getpid()}", flush=True)
        await stop.wait()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="holder %(process)d %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main()))
