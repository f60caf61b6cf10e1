"""Malformed records in etcd are skipped, counted once per version however many watchers read
them (dynamo_discovery_malformed_records_total) and warned about once per key: a value that is not
an instance record and a key that is not UTF-8."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from dynamo.runtime.discovery import malformed
from dynamo.runtime.discovery.records import InstanceWatcher
from dynamo.runtime.identity import INSTANCES_ROOT
from tests.support.etcd import EtcdServer


@pytest.mark.etcd
async def test_malformed_etcd_records_are_skipped_counted_and_warned_once(
        etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    from etcd3aio import Etcd3Client

    from dynamo.runtime.config import DiscoveryConfig
    from dynamo.runtime.discovery import open_discovery

    caplog.set_level(logging.WARNING, logger="dynamo.runtime.discovery")
    prefix = f"{INSTANCES_ROOT}malformed-etcd/"
    before = malformed.total()
    reader = open_discovery(DiscoveryConfig(backend="etcd", etcd_endpoints=[etcd_server.endpoint], ttl=3))
    async with reader, Etcd3Client([etcd_server.endpoint]) as raw:
        watchers = [InstanceWatcher(reader, prefix) for _ in range(2)]  # two readers of one record: counted once
        for w in watchers:
            await w.start()
        try:
            await raw.kv.put(f"{prefix}a/b/c/junk".encode(), b'{"namespace": 1}', timeout=5)
            await raw.kv.put(prefix.encode() + b"\xff\xfe", b"x", timeout=5)  # a key that is not UTF-8
            deadline = time.monotonic() + 10
            while malformed.total() < before + 2:
                assert time.monotonic() < deadline, f"counted {malformed.total() - before}, expected 2"
                await asyncio.sleep(0.05)
            await raw.kv.put(f"{prefix}a/b/c/junk".encode(), b'{"namespace": 1}', timeout=5)  # the same again
            await raw.kv.put(f"{prefix}a/b/c/junk2".encode(), b"[]", timeout=5)  # pulls the watches along
            while malformed.total() < before + 3:
                assert time.monotonic() < deadline, f"counted {malformed.total() - before}, expected 3"
                await asyncio.sleep(0.05)
            assert malformed.total() == before + 3
            assert all(w.instances == {} for w in watchers)
            messages = [r.getMessage() for r in caplog.records]
            assert sum("a/b/c/junk:" in m for m in messages) == 1, messages
            assert sum("not UTF-8" in m for m in messages) == 1, messages
        finally:
            for w in watchers:
                await w.close()
            await raw.kv.delete(prefix.encode(), (prefix[:-1] + "0").encode(), timeout=5)
