"""`python -m dynamo.serve GRAPH.yaml`: run a graph of services as local processes.

GRAPH.yaml is our local graph (examples/*.yaml) or a Kubernetes DynamoGraphDeployment
(deploy/<backend>/*.yaml), e.g. a deploy file tried on one machine with the mocker and a small model:

    python -m dynamo.serve deploy/vllm/disagg_router.yaml --set-module '*Worker=dynamo.mocker' \
        --set-arg model=/path/to/model --set-arg Frontend:http-port=8000

Prefixes each process's log lines with its name, starts services in order and waits for each to
be ready (registered in discovery, or answering an HTTP health URL), and on Ctrl-C / SIGTERM stops
them in reverse order (each drains). If any process dies, the others are stopped and the exit code
is non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamo.runtime.discovery.file import FileDiscovery
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.identity import namespace_prefix
from dynamo.serve.graph import Graph, GraphError, Service
from dynamo.serve.readers import load_graph

log = logging.getLogger("dynamo.serve")


@dataclass
class Running:
    name: str
    service: Service
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    width = 12
    while line := await stream.readline():
        sys.stdout.write(f"{name[:width]:<{width}} | {line.decode(errors='replace')}")
        sys.stdout.flush()


async def _registered(discovery_dir: Path, namespace: str, pid: int) -> bool:
    async with FileDiscovery(discovery_dir, ttl=10) as d:
        raw = await d.get_prefix(namespace_prefix(namespace))
    for value in raw.values():
        try:
            if InstanceRecord.from_json(value).pid == pid:
                return True
        except ValueError:
            continue
    return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


async def _wait_ready(r: Running, discovery_dir: Path, namespace: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.proc.returncode is not None:
            raise RuntimeError(f"{r.name} exited with code {r.proc.returncode} before it was ready")
        if r.service.ready == "none":
            return
        if r.service.ready == "registered":
            if await _registered(discovery_dir, namespace, r.proc.pid):
                return
        else:
            url = r.service.ready_url()
            if url is not None and await asyncio.to_thread(_http_ok, url):
                return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{r.name} was not ready within {timeout:.0f} s ({r.service.ready})")


async def _stop(running: list[Running], grace: float) -> None:
    for r in reversed(running):
        if r.proc.returncode is None:
            log.info("stopping %s", r.name)
            r.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(r.proc.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("%s did not stop within %.0f s; killing it", r.name, grace)
                r.proc.kill()
                await r.proc.wait()
        await asyncio.gather(r.pump, return_exceptions=True)


async def run_graph(graph: Graph, *, discovery_dir: Path, ready_timeout: float, stop_grace: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running: list[Running] = []
    base_env = {**os.environ, **graph.env, "DYN_NAMESPACE": graph.namespace,
                "DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(discovery_dir), "PYTHONUNBUFFERED": "1"}
    for service in graph.services:
        for note in service.notes:
            log.info("%s: %s", service.name, note)
    try:
        for service in graph.ordered():
            started = []
            for i in range(service.replicas):
                name = service.name if service.replicas == 1 else f"{service.name}-{i}"
                env = {**base_env, **service.env,
                       **(service.replica_env[i] if i < len(service.replica_env) else {})}
                # Its own process group (stopped as one, engine processes included) but OUR
                # session: Linux autogroup shares CPU per session, and a session holding vLLM's
                # spin-waiting engine core starves every other session on a small machine (the
                # frontend's and the worker's gRPC threads waited up to a second for a core).
                proc = await asyncio.create_subprocess_exec(
                    *service.command(sys.executable), env=env, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, process_group=0)
                assert proc.stdout is not None
                r = Running(name, service, proc, asyncio.create_task(_pump(name, proc.stdout)))
                running.append(r)
                started.append(r)
                log.info("started %s (pid %d): %s", name, proc.pid, " ".join(service.command("python")))
            waits = [asyncio.ensure_future(_wait_ready(r, discovery_dir, graph.namespace, ready_timeout))
                     for r in started]
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({*waits, stopper}, return_when=asyncio.FIRST_COMPLETED)
            while not stop.is_set() and not all(w.done() for w in waits):
                done, _ = await asyncio.wait({*[w for w in waits if not w.done()], stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                for w in waits:
                    w.cancel()
                return 0
            for w in waits:
                w.result()  # raises if a service failed to become ready
            log.info("%s ready", service.name)
        log.info("all services ready (namespace %s, discovery %s); Ctrl-C stops them", graph.namespace,
                 discovery_dir)
        watched: set[asyncio.Future[Any]] = {asyncio.ensure_future(r.proc.wait()) for r in running}
        stopper = asyncio.ensure_future(stop.wait())
        watched.add(stopper)
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            return 0
        dead = next(r for r in running if r.proc.returncode is not None)
        log.error("%s exited with code %s; stopping the others", dead.name, dead.proc.returncode)
        return 1
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    finally:
        await _stop(running, stop_grace)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynamo.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graph", help="graph YAML (examples/agg.yaml) or a DynamoGraphDeployment (deploy/vllm/agg.yaml)")
    p.add_argument("--set-arg", action="append", default=[], metavar="[SERVICE:]FLAG=VALUE",
                   help="replace a flag's value in every service that has it (or add it to the named "
                        "services; SERVICE may be a glob), e.g. --set-arg model=/models/tiny")
    p.add_argument("--set-module", action="append", default=[], metavar="SERVICE=MODULE",
                   help="run another module with the service's args, e.g. '*Worker=dynamo.mocker'")
    p.add_argument("--discovery-dir", default=None,
                   help="file-discovery directory shared by the services (default: a fresh temporary one)")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds a service may take to be ready")
    p.add_argument("--stop-grace", type=float, default=60, help="seconds a service may take to drain and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve: %(message)s")
    try:
        graph = load_graph(args.graph)
        for override in args.set_module:
            graph.set_module(override)
        for override in args.set_arg:
            graph.set_arg(override)
    except GraphError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dynamo-serve-") as tmp:
        discovery_dir = Path(args.discovery_dir) if args.discovery_dir else Path(tmp)
        return asyncio.run(run_graph(graph, discovery_dir=discovery_dir, ready_timeout=args.ready_timeout,
                                     stop_grace=args.stop_grace))


if __name__ == "__main__":
    sys.exit(main())
