"""The etcd client over TLS: a real etcd serving https with --client-cert-auth; our discovery with
the CA and a client certificate registers, reads and watches; without the certificate, or trusting
another CA, it does not get in (a clear DiscoveryError within its connect timeout)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo.runtime.config import DiscoveryConfig, TlsConfig
from dynamo.runtime.discovery import open_discovery
from dynamo.runtime.discovery.base import DiscoveryError
from tests.integration.conftest import _need_etcd
from tests.support.etcd import EtcdServer
from tests.support.tls import Certs, make_certs

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("etcd-certs"))


@pytest.fixture(scope="module")
def tls_etcd(certs: Certs) -> Iterator[EtcdServer]:
    _need_etcd()
    with EtcdServer(tls=(certs.server_cert, certs.server_key, certs.ca)) as server:
        yield server


def _config(server: EtcdServer, tls: TlsConfig) -> DiscoveryConfig:
    return DiscoveryConfig(backend="etcd", etcd_endpoints=[server.url], ttl=5, etcd_tls=tls)


async def test_registers_and_reads_over_tls(tls_etcd: EtcdServer, certs: Certs) -> None:
    tls = TlsConfig(cert=str(certs.client_cert), key=str(certs.client_key), ca=str(certs.ca))
    discovery = open_discovery(_config(tls_etcd, tls))
    await discovery.start()
    try:
        await discovery.put("dynamo/tls-test/key", b"value")
        assert await discovery.get_prefix("dynamo/tls-test/") == {"dynamo/tls-test/key": b"value"}
    finally:
        await discovery.close()


@pytest.mark.parametrize("which", ["no client certificate", "another CA"])
async def test_without_the_right_certificates_it_does_not_get_in(tls_etcd: EtcdServer, certs: Certs,
                                                                  which: str) -> None:
    tls = (TlsConfig(ca=str(certs.ca)) if which == "no client certificate"
           else TlsConfig(cert=str(certs.client_cert), key=str(certs.client_key), ca=str(certs.other_ca)))
    discovery = open_discovery(_config(tls_etcd, tls))
    with pytest.raises(DiscoveryError):
        await discovery.start()
    await discovery.close()


def test_etcd_tls_flags_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--etcd-cert and --etcd-key go together"):
        TlsConfig(cert=str(tmp_path)).validate("--etcd-")
