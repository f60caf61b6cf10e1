"""Integration fixtures: a real etcd, and discovery handles on each backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dynamo.runtime.config import DiscoveryConfig
from dynamo.runtime.discovery import Discovery, open_discovery
from tests.support.etcd import WHY_NO_ETCD, EtcdServer, etcd_available

TEST_TTL_S = 3.0


def _need_etcd() -> None:
    if not etcd_available():
        pytest.skip(WHY_NO_ETCD)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the session. Tests that stop or restart etcd use `own_etcd_server`."""
    _need_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture
def own_etcd_server() -> Iterator[EtcdServer]:
    """An etcd for this test alone: free to stop, restart or wipe."""
    _need_etcd()
    with EtcdServer() as server:
        yield server


@dataclass
class DiscoveryBackend:
    """One backend under test: makes handles on it and arguments for subprocesses."""

    name: str
    discovery_dir: Path | None = None
    etcd: EtcdServer | None = None
    prefix: str = field(default_factory=lambda: f"test/{uuid.uuid4().hex[:8]}/")  # apart from other tests
    handles: list[Discovery] = field(default_factory=list)

    def make_discovery(self, ttl: float = TEST_TTL_S) -> Discovery:
        """A new, not yet started handle; closed at teardown."""
        d = open_discovery(self.config(ttl))
        self.handles.append(d)
        return d

    def config(self, ttl: float = TEST_TTL_S) -> DiscoveryConfig:
        return DiscoveryConfig(backend=self.name,
                               directory=str(self.discovery_dir) if self.discovery_dir else None,
                               etcd_endpoints=[self.etcd.endpoint] if self.etcd else [], ttl=ttl)

    def cli_args(self, ttl: float = TEST_TTL_S) -> list[str]:
        """The discovery flags selecting this backend (tests/integration/discovery_holder.py)."""
        args = ["--discovery-backend", self.name, "--discovery-ttl", str(ttl)]
        if self.discovery_dir:
            args += ["--discovery-dir", str(self.discovery_dir)]
        if self.etcd:
            args += ["--etcd-endpoints", self.etcd.endpoint]
        return args


def _backend_for(request: pytest.FixtureRequest, tmp_path: Path, etcd_fixture: str) -> DiscoveryBackend:
    if request.param == "file":
        return DiscoveryBackend("file", discovery_dir=tmp_path / "discovery")
    return DiscoveryBackend("etcd", etcd=request.getfixturevalue(etcd_fixture))


_BACKENDS = ["file", pytest.param("etcd", marks=pytest.mark.etcd)]


@pytest.fixture(params=_BACKENDS)
async def discovery_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DiscoveryBackend]:
    """Each backend in turn (etcd: the session's server); `make_discovery()` gives ttl-3 s handles."""
    backend = _backend_for(request, tmp_path, "etcd_server")
    yield backend
    for d in backend.handles:
        await d.close()


@pytest.fixture(params=_BACKENDS)
async def disruptable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DiscoveryBackend]:
    """Like `discovery_backend`, but etcd is this test's own server, so the test may restart it."""
    backend = _backend_for(request, tmp_path, "own_etcd_server")
    yield backend
    for d in backend.handles:
        await d.close()
