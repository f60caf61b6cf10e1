"""TLS for the request plane (gRPC between frontends and workers, decode and prefill workers).

A worker started with `--tls-cert` + `--tls-key` serves gRPC over TLS only (no plaintext port, no
Unix-socket shortcut) and says so in its discovery record; with `--tls-ca` it also requires client
certificates signed by that CA (mutual TLS). A client (a frontend, a decode worker) connects to each
instance the way its record says, verifying TLS servers with its own `--tls-ca` (default: the
system's roots) and presenting its `--tls-cert` when it has one. A server certificate must name the
address the worker advertises (--advertise-host) among its subject alternative names. Settings:
dynamo.runtime.config.TlsConfig.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from dynamo.runtime.config import TlsConfig


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    key, cert = _read(config.key), _read(config.cert)
    if key is None or cert is None:
        raise ValueError("serving TLS needs --tls-cert and --tls-key")
    ca = _read(config.ca)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


# What this process's clients use for TLS instances: set once by the process's main (a frontend,
# a worker's runtime) before any channel opens; channels are per process, as their settings are.
_client = TlsConfig()


def configure_client(config: TlsConfig) -> None:
    global _client
    _client = config


def secure_channel(target: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(_client.ca), private_key=_read(_client.key),
                                               certificate_chain=_read(_client.cert))
    return grpc.aio.secure_channel(target, credentials, options=options)
