"""Holds one discovery key until killed: the stand-in for a worker in discovery tests.

    python tests/integration/discovery_holder.py --discovery-backend file --discovery-dir D --key K
(the discovery flags are every process's: dynamo.runtime.config.add_discovery_args)
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
    from dynamo.runtime.config import DiscoveryConfig, add_discovery_args
    from dynamo.runtime.discovery import open_discovery

    p = argparse.ArgumentParser(description=__doc__)
    add_discovery_args(p, namespace=False)
    p.add_argument("--key", required=True)
    args = p.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    discovery = open_discovery(DiscoveryConfig.from_args(args))
    async with discovery:
        await discovery.put(args.key, str(os.getpid()).encode())
        print(f"READY {os.getpid()}", flush=True)
        await stop.wait()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="holder %(process)d %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main()))
