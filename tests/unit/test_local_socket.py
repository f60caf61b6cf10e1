"""Which target a client connects to (rpc/local_socket.py): a server's Unix socket only when it is
on this machine and mount namespace and the socket is there; the record's JSON stays compatible."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc import local_socket
from dynamo.runtime.rpc.client import channel_target


def _record(path: str = "", host: str = "") -> InstanceRecord:
    return InstanceRecord("ns", "comp", "ep", "abcd", "10.0.0.5", 4321, {"k": 1}, pid=7,
                          local_socket=path, host_id=host)


@pytest.fixture
def listening(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        yield path


def test_local_socket_only_when_same_machine_and_there(listening: Path, tmp_path: Path) -> None:
    here = local_socket.host_id()
    assert here, "Linux says which boot and mount namespace this is"
    assert channel_target(_record(str(listening), here)) == f"unix:{listening}"
    # another machine or container, no socket, a plain file, or a record without one: TCP
    assert channel_target(_record(str(listening), "other-boot/mnt:[1]")) == "10.0.0.5:4321"
    assert channel_target(_record(str(tmp_path / "gone.sock"), here)) == "10.0.0.5:4321"
    (tmp_path / "file").write_text("x")
    assert channel_target(_record(str(tmp_path / "file"), here)) == "10.0.0.5:4321"
    assert channel_target(_record()) == "10.0.0.5:4321"


def test_record_json_keeps_the_socket_and_reads_records_without_it() -> None:
    rec = _record("/run/x.sock", "b/m")
    back = InstanceRecord.from_json(rec.to_json())
    assert (back.local_socket, back.host_id, back.target) == ("/run/x.sock", "b/m", "10.0.0.5:4321")
    plain = _record()
    assert b"local_socket" not in plain.to_json()  # what older readers saw, unchanged
    assert InstanceRecord.from_json(plain.to_json()).local_socket == ""


def test_socket_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    a, b = local_socket.socket_path("auto"), local_socket.socket_path("auto")
    assert a is not None and b is not None and a.parent == tmp_path and a != b  # fresh per start
    assert local_socket.socket_path("off") is None and local_socket.socket_path(None) is None
    assert local_socket.socket_path("/x/y.sock") == Path("/x/y.sock")


def test_prepare_replaces_a_stale_socket_and_refuses_other_files(listening: Path, tmp_path: Path) -> None:
    local_socket.prepare(listening)  # a crashed server's socket file: removed
    assert not listening.exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="not a socket"):
        local_socket.prepare(tmp_path / "f")
    local_socket.prepare(tmp_path / "new" / "s.sock")  # its folder is made
    assert (tmp_path / "new").is_dir()


def test_auto_sweeps_the_sockets_nothing_listens_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    dead, live = tmp_path / "dynamo-grpc-1-aa.sock", tmp_path / "dynamo-grpc-2-bb.sock"
    other = tmp_path / "someone-else.sock"
    socks = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    try:
        for s, path in zip(socks, (dead, live, other)):
            s.bind(str(path))
        socks[1].listen()  # a server's: it accepts
        local_socket.socket_path("auto")
        assert not dead.exists()  # bound by a process that died before closing it: refused
        assert live.exists() and other.exists()  # a live server's; not our naming
    finally:
        for s in socks:
            s.close()
