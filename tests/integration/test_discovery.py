"""Discovery backends against the real thing: a shared directory, a real etcd, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dynamo.runtime.config import DiscoveryConfig, EnvError
from dynamo.runtime.discovery import (
    Discovery,
    DiscoveryError,
    FileDiscovery,
    WatchEvent,
    WatchEventType,
    default_discovery_dir,
    open_discovery,
)
from tests.support.etcd import EtcdServer
from tests.support.ports import free_port

if TYPE_CHECKING:
    from conftest import DiscoveryBackend

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_TTL_S = 3.0  # the `discovery_backend` fixture's handles and the holder use this TTL

PUT, DELETE = WatchEventType.PUT, WatchEventType.DELETE
HOLDER = Path(__file__).with_name("discovery_holder.py")


class Watcher:
    """Consumes a watch in a task and records (time, event), so tests wait on conditions."""

    def __init__(self, discovery: Discovery, prefix: str) -> None:
        self.events: list[tuple[float, WatchEvent]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run(discovery, prefix))

    async def _run(self, discovery: Discovery, prefix: str) -> None:
        async for event in discovery.watch_prefix(prefix):
            async with self._changed:
                self.events.append((time.monotonic(), event))
                self._changed.notify_all()

    async def wait_for(self, match: Callable[[WatchEvent], bool], timeout: float, after: int = 0) -> tuple[float, WatchEvent]:
        """First recorded event (from index `after`) that matches; fails after `timeout` s."""

        def found() -> tuple[float, WatchEvent] | None:
            if self._task.done():
                self._task.result()  # a watcher must never end: surface its error
                raise AssertionError("watch ended")
            return next(((t, e) for t, e in self.events[after:] if match(e)), None)

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(found)
        hit = found()
        assert hit is not None
        return hit

    async def wait_event(self, type_: WatchEventType, key: str, timeout: float, after: int = 0,
                         value: bytes | None = None) -> float:
        try:
            t, _ = await self.wait_for(
                lambda e: e.type == type_ and e.key == key and (value is None or e.value == value), timeout, after)
        except TimeoutError:
            raise AssertionError(f"no {type_.value} {key!r} within {timeout} s; saw {self.summary()}") from None
        return t

    def state(self) -> dict[str, bytes]:
        """The keys and values the events so far add up to."""
        state: dict[str, bytes] = {}
        for _, e in self.events:
            if e.type == PUT:
                assert e.value is not None
                state[e.key] = e.value
            else:
                state.pop(e.key, None)
        return state

    async def wait_until(self, check: Callable[[dict[str, bytes]], bool], timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: check(self.state()))
        except TimeoutError:
            raise AssertionError(f"watch state not as expected within {timeout} s; saw {self.summary()}") from None

    def summary(self) -> list[tuple[str, str]]:
        return [(e.type.value, e.key) for _, e in self.events]

    async def ended(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._task  # raises what the watch raised

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(discovery: Discovery, prefix: str):
    w = Watcher(discovery, prefix)
    try:
        yield w
    finally:
        await w.stop()


class Holder:
    """tests/integration/discovery_holder.py as a subprocess holding one key."""

    def __init__(self, backend: DiscoveryBackend, key: str) -> None:
        self.backend, self.key = backend, key
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> int:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HOLDER), *self.backend.cli_args(TEST_TTL_S), "--key", self.key,
            stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line.startswith(b"READY"), f"holder did not start (exit {self.proc.returncode}): {line!r}"
        return self.proc.pid

    def signal(self, sig: int) -> float:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return time.monotonic()

    async def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def holding(backend: DiscoveryBackend, key: str):
    holder = Holder(backend, key)
    try:
        yield holder
    finally:
        await holder.kill()


# -- basic operations ---------------------------------------------------------------------------


async def test_put_get_watch_and_close(discovery_backend: DiscoveryBackend) -> None:
    p = discovery_backend.prefix
    odd_key = f"{p}ns/.comp/ep 1/%41~x"  # '/', leading dot, space and '%' must round-trip
    writer = discovery_backend.make_discovery()
    reader = discovery_backend.make_discovery()
    await writer.start()
    await reader.start()

    await writer.put(f"{p}a", b"1")
    await writer.put(odd_key, b"\x00\xffbinary")
    await writer.put("elsewhere/x", b"not under the prefix")
    assert await reader.get_prefix(p) == {f"{p}a": b"1", odd_key: b"\x00\xffbinary"}

    async with watching(reader, p) as w:
        await w.wait_event(PUT, f"{p}a", 2, value=b"1")
        await w.wait_event(PUT, odd_key, 2)
        n = len(w.events)
        await writer.put(f"{p}b", b"2")
        await w.wait_event(PUT, f"{p}b", 2, after=n, value=b"2")
        await writer.put(f"{p}a", b"1-changed")
        await w.wait_event(PUT, f"{p}a", 2, after=n, value=b"1-changed")
        await writer.delete(odd_key)
        await w.wait_event(DELETE, odd_key, 2, after=n)
        await writer.delete("never-put")  # a no-op, not an error

        # close() removes this handle's keys at once, not after the TTL.
        n = len(w.events)
        t0 = time.monotonic()
        await writer.close()
        t_a = await w.wait_event(DELETE, f"{p}a", 2, after=n)
        t_b = await w.wait_event(DELETE, f"{p}b", 2, after=n)
        assert max(t_a, t_b) - t0 < 1.0
        assert "elsewhere/x" not in await reader.get_prefix("elsewhere/")
        assert await reader.get_prefix(p) == {}
        assert w.summary().count(("put", f"{p}b")) == 1  # no duplicate events from polling
    await writer.close()  # idempotent
    with pytest.raises(DiscoveryError):
        await writer.put(f"{p}c", b"closed")


async def test_close_ends_watches_quietly(discovery_backend: DiscoveryBackend) -> None:
    d = discovery_backend.make_discovery()
    await d.start()
    await d.put(f"{discovery_backend.prefix}a", b"1")
    w = Watcher(d, discovery_backend.prefix)
    await w.wait_event(PUT, f"{discovery_backend.prefix}a", 2)
    await d.close()
    await w.ended(2)  # ends without an error (no CancelledError leaking into the consumer)


# -- process death ------------------------------------------------------------------------------


async def test_sigkill_holder_key_expires_within_ttl(discovery_backend: DiscoveryBackend) -> None:
    key = f"{discovery_backend.prefix}holder"
    reader = discovery_backend.make_discovery()
    await reader.start()
    async with watching(reader, discovery_backend.prefix) as w, holding(discovery_backend, key) as holder:
        pid = await holder.start()
        await w.wait_event(PUT, key, 5, value=str(pid).encode())
        killed_at = holder.signal(signal.SIGKILL)
        await holder.wait()
        deleted_at = await w.wait_event(DELETE, key, TEST_TTL_S + 3)
        elapsed = deleted_at - killed_at
        assert elapsed <= TEST_TTL_S + 1, f"key outlived its killed owner by {elapsed:.2f} s (ttl {TEST_TTL_S} s)"
    assert key not in await reader.get_prefix(discovery_backend.prefix)


async def test_sigterm_holder_deregisters_at_once(discovery_backend: DiscoveryBackend) -> None:
    key = f"{discovery_backend.prefix}holder"
    reader = discovery_backend.make_discovery()
    await reader.start()
    async with watching(reader, discovery_backend.prefix) as w, holding(discovery_backend, key) as holder:
        await holder.start()
        await w.wait_event(PUT, key, 5)
        stopped_at = holder.signal(signal.SIGTERM)
        deleted_at = await w.wait_event(DELETE, key, 3)
        assert deleted_at - stopped_at < 1.0
        assert await holder.wait() == 0


# -- the store loses the key while its owner lives ----------------------------------------------


async def test_owner_puts_key_again_after_store_loses_it(disruptable_backend: DiscoveryBackend) -> None:
    """etcd restarted with an empty data dir / the discovery directory wiped: same process re-registers."""
    backend = disruptable_backend
    key = f"{backend.prefix}holder"
    reader = backend.make_discovery()
    await reader.start()
    async with watching(reader, backend.prefix) as w, holding(backend, key) as holder:
        pid = await holder.start()
        await w.wait_event(PUT, key, 5, value=str(pid).encode())
        n = len(w.events)

        if backend.etcd is not None:
            backend.etcd.restart(fresh=True)  # every lease and key is gone
        else:
            assert backend.discovery_dir is not None
            shutil.rmtree(backend.discovery_dir)
        back_at = time.monotonic()

        # The same process puts its key again, within 10 s of the store's return.
        value = str(pid).encode()
        while True:
            with contextlib.suppress(DiscoveryError):  # the reader may still be reconnecting
                if (await reader.get_prefix(backend.prefix)).get(key) == value:
                    break
            assert time.monotonic() - back_at <= 10, "the holder's key was not back within 10 s"
            await asyncio.sleep(0.1)
        assert holder.proc is not None and holder.proc.returncode is None, "the holder died instead of re-registering"

        # The watcher that lived through it ends with the key present (whether or not it re-listed
        # before the key came back, so saw a DELETE) and still delivers changes.
        await w.wait_until(lambda state: state.get(key) == value, 5)
        await reader.put(f"{backend.prefix}after", b"x")
        await w.wait_event(PUT, f"{backend.prefix}after", 5, after=n)


async def test_file_heartbeat_puts_back_a_deleted_file(tmp_path: Path) -> None:
    d = FileDiscovery(tmp_path, ttl=TEST_TTL_S)
    async with d:
        await d.put("k/one", b"1")
        (files,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
        files.unlink()
        deadline = time.monotonic() + TEST_TTL_S
        while not files.exists():
            assert time.monotonic() < deadline, "heartbeat did not put the deleted key back"
            await asyncio.sleep(0.05)
        assert await d.get_prefix("k/") == {"k/one": b"1"}
    assert list(tmp_path.iterdir()) == []  # close() removed it


# -- garbage ------------------------------------------------------------------------------------


async def test_file_garbage_records_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dynamo.runtime.discovery")
    writer = FileDiscovery(tmp_path, ttl=TEST_TTL_S)
    reader = FileDiscovery(tmp_path, ttl=TEST_TTL_S)
    async with writer, reader:
        await writer.put("p/good", b"ok")
        good_file = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
        (tmp_path / "p%2Fjunk.rec").write_bytes(b"\x00\x01 not a record \xff")
        (tmp_path / "p%2Ftruncated.rec").write_bytes(good_file.read_bytes()[:25])
        (tmp_path / "p%2Fwrongkey.rec").write_bytes(good_file.read_bytes())  # record for another key

        assert await reader.get_prefix("p/") == {"p/good": b"ok"}
        for name in ("p%2Fjunk.rec", "p%2Ftruncated.rec", "p%2Fwrongkey.rec"):
            assert any(name in r.getMessage() for r in caplog.records), f"no warning about {name}"

        async with watching(reader, "p/") as w:
            await w.wait_event(PUT, "p/good", 2)
            await writer.put("p/later", b"2")  # the watch keeps delivering after the junk
            await w.wait_event(PUT, "p/later", 2)
            await asyncio.sleep(reader.poll_interval * 4)  # several more polls over the same junk
            assert {e.key for _, e in w.events} == {"p/good", "p/later"}
        junk_warnings = [r for r in caplog.records if "p%2Fjunk.rec" in r.getMessage()]
        # once per key in the process: not every poll, nor again for the watch's own scanner
        assert len(junk_warnings) == 1, "a bad file must be reported once per key, not every poll or reader"


@pytest.mark.etcd
async def test_etcd_watch_survives_arbitrary_bytes(etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    from etcd3aio import Etcd3Client

    caplog.set_level(logging.WARNING, logger="dynamo.runtime.discovery")
    reader = open_discovery(DiscoveryConfig(backend="etcd", etcd_endpoints=[etcd_server.endpoint], ttl=TEST_TTL_S))
    async with reader, Etcd3Client([etcd_server.endpoint]) as raw, watching(reader, "garbage/") as w:
        junk = bytes(range(256))
        await raw.kv.put(b"garbage/\xff\xfe-not-utf8", b"x", timeout=5)  # a key we cannot decode
        await raw.kv.put(b"garbage/junk", junk, timeout=5)
        await w.wait_event(PUT, "garbage/junk", 5, value=junk)  # values are opaque bytes at this level
        await raw.kv.put(b"garbage/good", b"ok", timeout=5)
        await w.wait_event(PUT, "garbage/good", 5)
        assert await reader.get_prefix("garbage/") == {"garbage/junk": junk, "garbage/good": b"ok"}
        assert any("not UTF-8" in r.getMessage() for r in caplog.records)
        await raw.kv.delete(b"garbage/", b"garbage0", timeout=5)


# -- unreachable etcd ---------------------------------------------------------------------------


@pytest.mark.etcd
async def test_unreachable_etcd_fails_start_naming_the_endpoint() -> None:
    from dynamo.runtime.discovery.etcd import EtcdDiscovery

    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    d = EtcdDiscovery([f"http://{endpoint}"], ttl=TEST_TTL_S, connect_timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(DiscoveryError, match=endpoint.replace(".", r"\.")):
        await d.start()
    assert time.monotonic() - t0 < 2.0 + 1.0
    with pytest.raises(DiscoveryError, match="not started"):
        await d.put("k", b"v")
    await d.close()


# -- configuration ------------------------------------------------------------------------------


def test_open_discovery_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("DYN_DISCOVERY_BACKEND", "DYN_FILE_KV", "ETCD_ENDPOINTS", "DYN_DISCOVERY_TTL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = open_discovery()
    assert isinstance(d, FileDiscovery)
    assert d.root == tmp_path / "cache" / "dynamo" / "discovery" == default_discovery_dir()
    assert d.ttl == 10.0

    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    monkeypatch.setenv("DYN_DISCOVERY_TTL", "4.5")
    d = open_discovery()
    assert isinstance(d, FileDiscovery) and d.root == tmp_path / "kv" and d.ttl == 4.5
    d = open_discovery(DiscoveryConfig(backend="file", directory=str(tmp_path / "arg"), ttl=2))
    assert isinstance(d, FileDiscovery) and d.root == tmp_path / "arg" and d.ttl == 2

    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "etcd")
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://10.0.0.1:2379, 10.0.0.2:2379")
    e = open_discovery()
    assert e.backend == "etcd" and e.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"]  # type: ignore[attr-defined]
    monkeypatch.delenv("ETCD_ENDPOINTS")
    assert open_discovery().endpoints == ["127.0.0.1:2379"]  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="unknown discovery backend 'zk'"):
        open_discovery(DiscoveryConfig(backend="zk"))
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "zk")
    with pytest.raises(EnvError, match="DYN_DISCOVERY_BACKEND='zk'.*file, etcd"):
        open_discovery()
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "file")
    monkeypatch.setenv("DYN_DISCOVERY_TTL", "soon")
    with pytest.raises(EnvError, match="DYN_DISCOVERY_TTL"):
        open_discovery()


def test_importing_discovery_does_not_import_etcd_client() -> None:
    code = "import sys, dynamo.runtime.discovery; print(sorted(m for m in ('etcd3aio', 'grpc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
