"""Malformed discovery records: skipped, warned about once per key, and counted.

Every reader of discovery data in a process (the file backend's scanner, etcd's key decoding,
every InstanceWatcher, model-card parsing) reports what it skips here. A record is counted once
per version (its key and content), however many watchers or polls see it, and warned about once
per key until that key holds a good record again. `COLLECTOR` exposes the count as
`dynamo_discovery_malformed_records_total`; the registries that serve /metrics (the runtime's, the
frontend's) register it, so the runtime never needs to know about the frontend.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_MAX_KEYS = 10_000  # bound the memory a flood of junk keys can take (past it: counted, not deduplicated)

_lock = threading.Lock()  # readers run on event loops and in to_thread scans alike
_seen: dict[tuple[str, str], bytes] = {}  # (kind, key) -> digest of the malformed version counted last
_counts: dict[str, int] = {}  # kind -> records skipped


def skip(kind: str, key: str, content: bytes, reason: str) -> None:
    """A record of `kind` (file, record, model_card, key) at `key` does not parse: count this version
    of it once and warn once per key."""
    digest = hashlib.blake2b(content, digest_size=16).digest()
    with _lock:
        last = _seen.get((kind, key))
        if last == digest:
            return  # the same version seen again (another poll, another watcher)
        if len(_seen) < _MAX_KEYS or last is not None:
            _seen[(kind, key)] = digest
        _counts[kind] = _counts.get(kind, 0) + 1
    if last is None:
        log.warning("discovery: skipping malformed %s at %s: %s", _KIND_NAMES.get(kind, kind), key, reason)


def forget(kind: str, key: str) -> None:
    """`key` holds a good record again, or is gone: a later malformed version warns again."""
    if (kind, key) in _seen:  # cheap unlocked test: the common case is a key never malformed
        with _lock:
            _seen.pop((kind, key), None)


def total() -> int:
    with _lock:
        return sum(_counts.values())


_KIND_NAMES = {"file": "discovery file", "record": "instance record", "model_card": "model card",
               "key": "etcd key"}


class MalformedRecordsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("dynamo_discovery_malformed_records",
                                     "Discovery records skipped because they do not parse, by kind (file, record, "
                                     "model_card, key); each version of a record counts once", labels=["kind"])
        with _lock:
            counts = dict(_counts)
        for kind, n in sorted(counts.items()):
            family.add_metric([kind], n)
        yield family


COLLECTOR = MalformedRecordsCollector()
