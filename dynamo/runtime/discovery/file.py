"""File discovery: the embedded default backend, one shared directory and no server.

Each key is one file in `root` (the key percent-encoded into a flat file name). A file holds a
small JSON record: the key, the value (base64), the owner and the owner's TTL. Liveness is the
file's mtime: the owning handle touches its files every ttl/3, and readers treat a file whose
mtime is older than the record's TTL as dead (and remove it). Writes are atomic (temp file +
os.replace), so readers never see half a record written by us.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from . import malformed
from .base import Discovery, DiscoveryError, WatchEvent, WatchEventType

log = logging.getLogger(__name__)

_SUFFIX = ".rec"
_TMP_PREFIX = ".tmp-"
_MAX_NAME = 240  # most filesystems allow 255 bytes per name; keep room for the suffix
_FORMAT = 1
_STALE_TEMP_S = 60.0


def key_to_name(key: str) -> str:
    """Flat, reversible file name for `key` ('/' and every other unsafe byte percent-encoded)."""
    if not key:
        raise ValueError("discovery key must not be empty")
    name = quote(key, safe="-_") + _SUFFIX
    # '.' is left alone by quote(); a leading dot would hide the file from scans.
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > _MAX_NAME:
        raise ValueError(f"discovery key too long for a file name ({len(name)} bytes encoded): {key[:80]!r}...")
    return name


def name_to_key(name: str) -> str | None:
    """Inverse of key_to_name; None for names that are not records (temp files, strangers)."""
    if name.startswith(".") or not name.endswith(_SUFFIX):
        return None
    return unquote(name[: -len(_SUFFIX)], errors="strict")


@dataclass(frozen=True)
class _Record:
    key: str
    value: bytes
    owner: str
    ttl: float


def _encode_record(rec: _Record) -> bytes:
    body = {
        "format": _FORMAT,
        "key": rec.key,
        "value": base64.b64encode(rec.value).decode("ascii"),
        "owner": rec.owner,
        "pid": os.getpid(),
        "ttl": rec.ttl,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _decode_record(data: bytes) -> _Record:
    """Parse a record; raises ValueError with the reason when the file is not one."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise ValueError(f"not a format-{_FORMAT} discovery record")
    try:
        key, owner, ttl = body["key"], body["owner"], float(body["ttl"])
        value = base64.b64decode(body["value"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ValueError(f"bad field ({exc!r})") from None
    if not isinstance(key, str) or not isinstance(owner, str) or ttl <= 0:
        raise ValueError("bad key, owner or ttl")
    return _Record(key, value, owner, ttl)


class _Scanner:
    """Reads the live records of a directory, caching parsed files and warning once per bad file."""

    def __init__(self, root: Path) -> None:
        self._root = root
        # (name, inode, size) -> record, or None for a file known to be bad. os.replace gives every
        # new version a new inode, and a heartbeat (utime) keeps it, so this identifies a version.
        self._cache: dict[tuple[str, int, int], _Record | None] = {}

    def scan(self, prefix: str) -> dict[str, bytes]:
        now = time.time()
        live: dict[str, bytes] = {}
        seen: set[tuple[str, int, int]] = set()
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return live
        for entry in entries:
            if entry.name.startswith(_TMP_PREFIX):
                self._remove_old_temp(entry, now)
                continue
            try:
                key = name_to_key(entry.name)
            except UnicodeDecodeError:
                key = None
            if key is None or not key.startswith(prefix):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            version = (entry.name, st.st_ino, st.st_size)
            seen.add(version)
            rec = self._read(entry.path, version)
            if rec is None:
                continue
            if now - st.st_mtime > rec.ttl:
                self._remove_dead(entry.path, rec)
                continue
            live[rec.key] = rec.value
        # Forget versions that are gone, so the cache stays as small as the directory.
        self._cache = {v: r for v, r in self._cache.items() if v in seen}
        return live

    def _read(self, path: str, version: tuple[str, int, int]) -> _Record | None:
        if version in self._cache:
            return self._cache[version]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("discovery: cannot read %s (%s); skipping it", path, exc)
            self._cache[version] = None
            return None
        try:
            rec = _decode_record(data)
            if key_to_name(rec.key) != version[0]:
                raise ValueError(f"record key {rec.key!r} does not match the file name")
        except ValueError as exc:
            malformed.skip("file", path, data, f"{len(data)} bytes, not a valid record: {exc}; "
                                                "delete the file if it is junk")
            rec = None
        else:
            malformed.forget("file", path)
        self._cache[version] = rec
        return rec

    @staticmethod
    def _remove_old_temp(entry: os.DirEntry[str], now: float) -> None:
        # Left by a writer that died between write and rename; a live write takes milliseconds.
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat().st_mtime > _STALE_TEMP_S:
                os.unlink(entry.path)

    def _remove_dead(self, path: str, rec: _Record) -> None:
        # Check again right before unlinking: the owner may have just touched it.
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(path).st_mtime > rec.ttl:
                os.unlink(path)
                log.info("discovery: removed expired key %s (owner %s)", rec.key, rec.owner)


class FileDiscovery(Discovery):
    """Discovery in a directory shared by every process of a deployment (one machine or NFS)."""

    backend = "file"

    def __init__(self, root: Path | str, ttl: float = 10.0) -> None:
        if ttl <= 0:
            raise ValueError(f"discovery ttl must be > 0, got {ttl}")
        self.root = Path(root).expanduser()
        self.ttl = float(ttl)
        self.heartbeat_interval = self.ttl / 3
        self.poll_interval = min(0.25, self.ttl / 10)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._keys: dict[str, bytes] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"FileDiscovery(root={str(self.root)!r}, ttl={self.ttl})"

    async def start(self) -> None:
        if self._started:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{_TMP_PREFIX}probe-{self._owner.replace(':', '-')}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DiscoveryError(
                f"discovery directory {self.root} is not usable ({exc}); "
                "point DYN_FILE_KV (or --discovery-dir) at a writable directory"
            ) from exc
        self._started = True
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"file-discovery-heartbeat {self.root}")

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryError("this discovery handle is closed")
        if not self._started:
            raise DiscoveryError("discovery handle not started: call start() (or use `async with`) first")

    async def put(self, key: str, value: bytes) -> None:
        self._check_open()
        name = key_to_name(key)
        self._keys[key] = bytes(value)
        self._write(name, _Record(key, bytes(value), self._owner, self.ttl))

    async def delete(self, key: str) -> None:
        self._check_open()
        if self._keys.pop(key, None) is not None:
            self._unlink_own(key)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        self._check_open()
        return await asyncio.to_thread(_Scanner(self.root).scan, prefix)

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        self._check_open()
        scanner = _Scanner(self.root)  # one per watcher: its cache makes each poll cheap
        known: dict[str, bytes] = {}
        failing = False
        while not self._closed:
            try:
                now = await asyncio.to_thread(scanner.scan, prefix)
                failing = False
            except OSError as exc:  # e.g. the directory's filesystem went away; keep trying
                if not failing:
                    log.warning("discovery: cannot list %s (%s); retrying", self.root, exc)
                failing = True
                now = known
            for key in [k for k in known if k not in now]:
                del known[key]
                yield WatchEvent(WatchEventType.DELETE, key)
            for key, value in now.items():
                if known.get(key) != value:
                    known[key] = value
                    yield WatchEvent(WatchEventType.PUT, key, value)
            await asyncio.sleep(self.poll_interval)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        for key in list(self._keys):
            self._unlink_own(key)
        self._keys.clear()

    # -- file operations --------------------------------------------------------------------

    def _write(self, name: str, rec: _Record) -> None:
        tmp = self.root / f"{_TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            with open(tmp, "wb") as f:
                f.write(_encode_record(rec))
            os.replace(tmp, self.root / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DiscoveryError(f"cannot write discovery key {rec.key!r} under {self.root}: {exc}") from exc

    def _owner_of(self, path: Path) -> str | None:
        try:
            return _decode_record(path.read_bytes()).owner
        except (OSError, ValueError):
            return None

    def _unlink_own(self, key: str) -> None:
        # Another handle may have replaced the key since; its file is not ours to remove.
        path = self.root / key_to_name(key)
        if self._owner_of(path) == self._owner:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                # In the loop thread on purpose: a few small files, and no race with put/delete/close.
                self._refresh_all()
            except Exception:  # never let the heartbeat die: that would expire every key
                log.exception("discovery: heartbeat under %s failed; retrying", self.root)

    def _refresh_all(self) -> None:
        for key, value in list(self._keys.items()):
            path = self.root / key_to_name(key)
            owner = self._owner_of(path)
            if owner == self._owner:
                try:
                    os.utime(path)
                    continue
                except FileNotFoundError:
                    pass  # removed since we read it: put it again below
            elif owner is not None:
                # Someone else put this key since (as in etcd, the last put wins); stop claiming it.
                log.info("discovery: key %s was replaced by %s; no longer refreshing it", key, owner)
                self._keys.pop(key, None)
                continue
            # Our file vanished (removed by hand, or by a reader after a long pause): register again.
            log.warning("discovery: key %s disappeared from %s; putting it again", key, self.root)
            self.root.mkdir(parents=True, exist_ok=True)  # the whole directory may have been wiped
            self._write(key_to_name(key), _Record(key, value, self._owner, self.ttl))
