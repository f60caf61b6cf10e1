"""Settings of every process: CLI flag first, environment variable second, default last.

One helper reads every environment variable (`env_value`) and one declares every flag that has a
variable (`add_env_flag`): the flag's default comes from the variable, a bad value in either place
exits with argparse's usage error naming the flag or the variable, and the help text names both the
variable and the default. Each layer declares its own flags with these helpers; the choice lists
live next to what they choose between (discovery backends here, router modes in the frontend,
transports in dynamo.llm.transport).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")
Environ = Mapping[str, str]

DISCOVERY_BACKENDS = ("file", "etcd")
DEFAULT_ETCD_ENDPOINT = "127.0.0.1:2379"
DEFAULT_DISCOVERY_TTL_S = 10.0


class EnvError(ValueError):
    """An environment variable holds a value its setting cannot take."""


# --- value parsers: each is an argparse `type` and parses the environment variable too ----------

def _typed(name: str, parse: Callable[[str], T]) -> Callable[[str], T]:
    parse.__name__ = name  # argparse says "invalid <name> value: ..." when it raises ValueError
    return parse


def choice(*options: str, normalize: Callable[[str], str] = str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = normalize(raw.strip())
        if value not in options:
            raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(options)}")
        return value
    return _typed("choice", parse)


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"in {lo}..{hi}" if lo is not None and hi is not None else (
                f">= {lo}" if lo is not None else f"<= {hi}")
            raise argparse.ArgumentTypeError(f"{value} must be {bounds}")
        return value
    return _typed("integer", parse)


def float_range(lo: float | None = None, *, lo_open: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if value != value or (lo is not None and (value <= lo if lo_open else value < lo)):
            raise argparse.ArgumentTypeError(f"{raw!r} must be a number {'>' if lo_open else '>='} {lo}")
        return value
    return _typed("number", parse)


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")


def comma_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- the two helpers ---------------------------------------------------------------------------

def env_value(var: str, parse: Callable[[str], T], default: T, env: Environ | None = None) -> T:
    """`var` parsed by `parse`, or `default` when unset or empty; EnvError names a bad value."""
    raw = (os.environ if env is None else env).get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise EnvError(f"environment variable {var}={raw!r}: {e}") from None


def add_env_flag(parser: argparse.ArgumentParser, *flags: str, env_var: str | None, default: Any,
                 help: str, type: Callable[[str], Any] = str, group: Any = None,
                 env: Environ | None = None, metavar: str | None = None, switch: bool = False) -> None:
    """Declare a flag whose default is `env_var` (when set), else `default`.

    `switch`: a store_true flag (the variable takes 1/0, true/false, ...). `group`: an argument
    group of `parser` to add it to. A bad variable value is a usage error (exit 2).
    """
    if env_var is not None:
        try:
            default = env_value(env_var, parse_bool if switch else type, default, env)
        except EnvError as e:
            parser.error(str(e))
    suffix = ", ".join(x for x in (f"env {env_var}" if env_var else "",
                                   f"default: {default}" if default not in (None, "", False) else "") if x)
    target = group if group is not None else parser
    text = f"{help} [{suffix}]" if suffix else help
    if switch:
        target.add_argument(*flags, action="store_true", default=default, help=text)
    else:
        target.add_argument(*flags, type=type, default=default, help=text, metavar=metavar)


# --- discovery ---------------------------------------------------------------------------------

# --- TLS: the request plane (dynamo.runtime.rpc.tls) and the etcd client -------------------------------------------------

@dataclass(frozen=True)
class TlsConfig:
    """`--tls-cert` + `--tls-key`: serve gRPC over TLS (workers), present it to servers that ask
    (clients). `--tls-ca`: verify servers with it (clients), require client certificates it
    signed (TLS servers: mutual TLS)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> TlsConfig:
        config = cls(cert=getattr(ns, "tls_cert", None), key=getattr(ns, "tls_key", None),
                     ca=getattr(ns, "tls_ca", None))
        config.validate()
        return config

    def validate(self, prefix: str = "--tls-") -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError(f"{prefix}cert and {prefix}key go together: a certificate and its private key")
        for flag, path in ((f"{prefix}cert", self.cert), (f"{prefix}key", self.key), (f"{prefix}ca", self.ca)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: no such file")

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert and self.key)


def add_tls_args(parser: argparse.ArgumentParser, env: Environ | None = None) -> None:
    g = parser.add_argument_group("request-plane TLS")
    add_env_flag(parser, "--tls-cert", env_var="DYN_TLS_CERT", default=None, env=env, group=g,
                 help="PEM certificate: a worker serves gRPC over TLS with it (and says so in discovery); "
                      "a client presents it to workers that require client certificates")
    add_env_flag(parser, "--tls-key", env_var="DYN_TLS_KEY", default=None, env=env, group=g,
                 help="PEM private key of --tls-cert")
    add_env_flag(parser, "--tls-ca", env_var="DYN_TLS_CA", default=None, env=env, group=g,
                 help="PEM CA: clients verify TLS workers with it (default: the system's roots); a TLS "
                      "worker then requires client certificates it signed (mutual TLS)")


@dataclass
class DiscoveryConfig:
    """Where the processes of a deployment find each other."""

    backend: str = "file"
    directory: str | None = None  # file backend; None: dynamo.runtime.discovery.default_discovery_dir()
    etcd_endpoints: list[str] = field(default_factory=lambda: [DEFAULT_ETCD_ENDPOINT])
    ttl: float = DEFAULT_DISCOVERY_TTL_S  # seconds a dead process stays registered
    etcd_tls: TlsConfig = field(default_factory=TlsConfig)  # the etcd client's CA and certificate

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> DiscoveryConfig:
        etcd_tls = TlsConfig(cert=getattr(ns, "etcd_cert", None), key=getattr(ns, "etcd_key", None),
                             ca=getattr(ns, "etcd_ca", None))
        etcd_tls.validate("--etcd-")
        return cls(backend=ns.discovery_backend, directory=ns.discovery_dir,
                   etcd_endpoints=list(ns.etcd_endpoints), ttl=ns.discovery_ttl, etcd_tls=etcd_tls)

    @classmethod
    def from_env(cls, env: Environ | None = None) -> DiscoveryConfig:
        """The configuration a process gets with no discovery flags (variables, then defaults)."""
        parser = _EnvOnlyParser(add_help=False)
        add_discovery_args(parser, env)
        return cls.from_args(parser.parse_args([]))


class _EnvOnlyParser(argparse.ArgumentParser):
    """Parses no command line, only the variables: a bad one raises instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise EnvError(message)


def add_namespace_arg(parser: argparse.ArgumentParser, env: Environ | None = None, group: Any = None) -> None:
    add_env_flag(parser, "--namespace", env_var="DYN_NAMESPACE", default="dynamo", env=env, group=group,
                 help="Dynamo namespace to register in / watch")


def add_discovery_args(parser: argparse.ArgumentParser, env: Environ | None = None, *,
                       namespace: bool = True) -> None:
    """The discovery flags of every process (workers, frontend, CLI)."""
    g = parser.add_argument_group("discovery")
    if namespace:
        add_namespace_arg(parser, env, g)
    add_env_flag(parser, "--discovery-backend", env_var="DYN_DISCOVERY_BACKEND", default="file", env=env,
                 group=g, type=choice(*DISCOVERY_BACKENDS, normalize=str.lower),
                 help="file: embedded, one shared directory (single machine); etcd: many machines")
    add_env_flag(parser, "--discovery-dir", env_var="DYN_FILE_KV", default=None, env=env, group=g,
                 help="directory of the file backend (default: $XDG_CACHE_HOME/dynamo/discovery)")
    add_env_flag(parser, "--etcd-endpoints", env_var="ETCD_ENDPOINTS", default=[DEFAULT_ETCD_ENDPOINT],
                 env=env, group=g, type=comma_list, metavar="HOST:PORT[,...]",
                 help="comma-separated etcd endpoints")
    add_env_flag(parser, "--discovery-ttl", env_var="DYN_DISCOVERY_TTL", default=DEFAULT_DISCOVERY_TTL_S,
                 env=env, group=g, type=float_range(0.0, lo_open=True),
                 help="seconds a dead process stays registered (lease TTL)")
    add_env_flag(parser, "--etcd-ca", env_var="DYN_ETCD_CA", default=None, env=env, group=g,
                 help="PEM CA to verify etcd with: the client speaks TLS (also for https:// endpoints)")
    add_env_flag(parser, "--etcd-cert", env_var="DYN_ETCD_CERT", default=None, env=env, group=g,
                 help="PEM client certificate for etcd's --client-cert-auth")
    add_env_flag(parser, "--etcd-key", env_var="DYN_ETCD_KEY", default=None, env=env, group=g,
                 help="PEM private key of --etcd-cert")


# --- a serving process (a worker) --------------------------------------------------------------

def add_runtime_args(parser: argparse.ArgumentParser, env: Environ | None = None) -> None:
    """Flags of a serving process (a worker): discovery plus the gRPC and system servers."""
    add_discovery_args(parser, env)
    g = parser.add_argument_group("serving")
    add_env_flag(parser, "--grpc-host", env_var="DYN_GRPC_HOST", default="0.0.0.0", env=env, group=g,
                 help="address the gRPC server binds")
    add_env_flag(parser, "--grpc-port", env_var="DYN_GRPC_PORT", default=0, env=env, group=g,
                 type=int_range(0, 65535), help="gRPC port; 0 picks a free one")
    add_env_flag(parser, "--grpc-local-socket", env_var="DYN_GRPC_LOCAL_SOCKET", default="auto", env=env,
                 group=g, help="also serve gRPC on a Unix socket, which clients on this machine use "
                               "instead of TCP: auto (a fresh path in $XDG_RUNTIME_DIR or the temp "
                               "dir), off, or a path")
    add_env_flag(parser, "--advertise-host", env_var="DYN_ADVERTISE_HOST", default=None, env=env, group=g,
                 help="host other processes reach this one at (default: POD_IP in Kubernetes, else "
                      "this host's address, else 127.0.0.1)")
    add_env_flag(parser, "--system-port", env_var="DYN_SYSTEM_PORT", default=None, env=env, group=g,
                 type=int_range(0, 65535),
                 help="HTTP port for /health, /live and /metrics; 0 picks a free one; unset: off")
    add_env_flag(parser, "--drain-timeout", env_var="DYN_DRAIN_TIMEOUT", default=30.0, env=env, group=g,
                 type=float_range(0.0), help="seconds in-flight requests may take to finish after SIGTERM")
    add_tls_args(parser, env)


@dataclass
class RuntimeConfig:
    namespace: str = "dynamo"
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 0
    grpc_local_socket: str | None = "auto"
    advertise_host: str | None = None
    system_port: int | None = None
    drain_timeout: float = 30.0
    tls: TlsConfig = field(default_factory=TlsConfig)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RuntimeConfig:
        """From a namespace parsed with `add_runtime_args` (or only `add_discovery_args`)."""
        defaults = cls()
        return cls(
            namespace=ns.namespace,
            discovery=DiscoveryConfig.from_args(ns),
            grpc_host=getattr(ns, "grpc_host", defaults.grpc_host),
            grpc_port=getattr(ns, "grpc_port", defaults.grpc_port),
            grpc_local_socket=getattr(ns, "grpc_local_socket", defaults.grpc_local_socket),
            advertise_host=getattr(ns, "advertise_host", defaults.advertise_host),
            system_port=getattr(ns, "system_port", defaults.system_port),
            drain_timeout=getattr(ns, "drain_timeout", defaults.drain_timeout),
            tls=TlsConfig.from_args(ns),
        )



# --- logging -----------------------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_LEVEL_ENV = "DYN_LOG"  # upstream Dynamo's name, for every process


def add_log_level_arg(parser: argparse.ArgumentParser, env: Environ | None = None) -> None:
    add_env_flag(parser, "--log-level", env_var=LOG_LEVEL_ENV, default="info", env=env,
                 type=choice(*LOG_LEVELS, normalize=str.lower), help="log level")


def setup_logging(level: str | None = None) -> None:
    """Log to stderr at `level` (else DYN_LOG, else info), one format for every process."""
    if level is None:
        level = env_value(LOG_LEVEL_ENV, choice(*LOG_LEVELS, normalize=str.lower), "info")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
