"""Listener ports picked for engines (NIXL side channel, SGLang bootstrap): below the kernel's
ephemeral range, where no outgoing connection can take them before the engine binds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dynamo.runtime import ports


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = ports._ephemeral_low()
    for _ in range(20):
        port = ports.free_port()
        assert ports._LOWEST <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not ports.port_is_free(sock.getsockname()[1])


def test_without_room_below_the_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "range"
    fake.write_text("1024\t65535\n")
    monkeypatch.setattr(ports, "_RANGE_FILE", fake)
    assert ports._ephemeral_low() == 1024
    assert ports.port_is_free(ports.free_port())
