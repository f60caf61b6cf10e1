"""The committed protobuf code matches dynamo/llm/proto/worker.proto (regenerate: see the .proto)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    proto_dir = tmp_path / "dynamo" / "llm" / "proto"
    proto_dir.mkdir(parents=True)
    shutil.copy(REPO / "dynamo/llm/proto/worker.proto", proto_dir)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", "dynamo/llm/proto/worker.proto"], cwd=tmp_path, check=True)
    for name in GENERATED:
        fresh = (proto_dir / name).read_text()
        committed = (REPO / "dynamo/llm/proto" / name).read_text()
        assert fresh == committed, f"dynamo/llm/proto/{name} is stale: regenerate it (see worker.proto)"
