"""Load generators for the benchmarks, run as their own process so they get their own core.

    python -m benchmarks._loadgen grpc   --target HOST:PORT --model NAME ...
    python -m benchmarks._loadgen http   --url http://HOST:PORT --model NAME ...
    python -m benchmarks._loadgen inproc --model-dir DIR --speedup-ratio R ...

Each mode runs `--warmup` unrecorded requests, then `--requests` requests with at most
`--concurrency` in flight (each of `--max-tokens` output tokens, ignore_eos), and writes ONE JSON
object (to `--out FILE`, else as one line on stdout): per-request records (arrival, first-token and
end times relative to the measured phase, output tokens, messages or SSE chunks) plus the wall time
and this process's CPU seconds over the measured phase, so the parent can say how much of the
machine the load generator took. A request's TTFT counts from its arrival (see Arrivals).

- grpc: the worker's `dynamo.llm.v1.Worker/Generate` through a plain grpc.aio stub (one channel);
  with `--transport stream`, every request on one `GenerateStream` call instead (what the frontend
  does), demultiplexed here by stream id ("messages" then counts a request's items).
- http: OpenAI streaming chat completions over raw asyncio sockets (HTTP/1.1 keep-alive, one
  connection per concurrent slot, chunked transfer decoding, SSE split on blank lines). Only the
  final usage chunk (stream_options.include_usage) is JSON-parsed: it gives completion_tokens.
- inproc: the same MockerEngine the worker runs, driven in this process (no gRPC): the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dynamo.runtime.rpc import grpc_io

grpc_io.apply_defaults()  # before grpc is imported: dynamo's clients' gRPC I/O settings apply here too


@dataclass
class Record:
    start: float  # when the request arrived (see Arrivals), seconds since the measured phase began
    ttft: float  # seconds from its arrival to the first output token (nan if none came)
    end: float
    tokens: int  # output tokens as the server counted them
    messages: int  # gRPC messages, or SSE chunks carrying content
    # seconds from its arrival until the request's own code ran: an in-process request waits here
    # while the requests that arrived with it are submitted (the client processes: microseconds)
    queued: float = 0.0


class Arrivals:
    """When a closed-loop user's next request arrives: when the completion that frees the user
    is delivered.

    The completions one event-loop turn delivers (one engine step's outputs, one gRPC message)
    wake their users one after another, and each user's code runs to its next await before the
    next user's starts. In-process, that includes submitting the next request to the engine
    (vLLM's add_request: 0.2-0.5 ms of CPU), so a clock started by each user's own code would start
    for the later requests of such a wave only once the earlier ones were submitted: the engine's
    intake queue would be left out of the in-process TTFT, while a server's TTFT (measured from the
    client's send) includes its own. So every user woken in one turn gets the time of the turn's
    first call: for concurrency 1, simply when the previous request ended."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._turn: float | None = None

    def now(self) -> float:
        if self._turn is None:
            self._turn = self._clock()
            # runs after every callback already queued: the users this turn's completions woke
            asyncio.get_running_loop().call_soon(self._end_turn)
        return self._turn

    def _end_turn(self) -> None:
        self._turn = None


def prompt_ids(i: int, length: int, vocab: int) -> list[int]:
    """Distinct prompts (no prefix-cache sharing beyond chance), deterministic per index."""
    return [(i * 7919 + j * 104729) % (vocab - 3) + 3 for j in range(length)]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime



async def timed_stream(stream: Any, t0: float, arrived: float) -> Record:
    """Consume one stream of messages carrying `token_ids`; time its first token and its end."""
    start = time.perf_counter()
    first = float("nan")
    tokens = messages = 0
    async for msg in stream:
        n = len(msg.token_ids)
        if n and tokens == 0:
            first = time.perf_counter()
        tokens += n
        messages += 1
    return Record(arrived - t0, first - arrived, time.perf_counter() - t0, tokens, messages, start - arrived)

async def drive(one: Callable[[int, float, float], Awaitable[Record]], warmup: int, requests: int,
                concurrency: int) -> dict:
    """Run `warmup` then `requests` calls of `one(index, t0, arrived)` with `concurrency` workers
    (closed loop; `arrived`: the request's arrival time, see Arrivals)."""
    arrivals = Arrivals()

    async def phase(n: int, base: int, t0: float, out: list[Record]) -> None:
        counter = itertools.count()

        async def worker() -> None:
            while (k := next(counter)) < n:
                out.append(await one(base + k, t0, arrivals.now()))
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))

    if warmup:
        await phase(warmup, 10_000_000, time.perf_counter(), [])
    records: list[Record] = []
    print("PHASE start", flush=True)  # the parent samples the servers' CPU at these two marks
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await phase(requests, 0, t0, records)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    print("PHASE end", flush=True)
    return {"wall": wall, "cpu": cpu, "records": [asdict(r) for r in records]}


# --- gRPC -----------------------------------------------------------------------------------

async def run_grpc(a: argparse.Namespace) -> dict:
    import grpc

    from dynamo.llm.proto import worker_pb2 as pb
    from dynamo.llm.proto import worker_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(a.target)
    stub = pb_grpc.WorkerStub(channel)

    def request(i: int) -> Any:
        req = pb.GenerateRequest(request_id=f"bench-{i}", model=a.model,
                                 token_ids=prompt_ids(i, a.prompt_len, a.vocab))
        req.stop.max_tokens = a.max_tokens
        req.stop.ignore_eos = True
        return req

    async def one(i: int, t0: float, arrived: float) -> Record:
        return await timed_stream(stub.Generate(request(i), timeout=a.timeout), t0, arrived)

    try:
        if a.transport == "stream":
            mux = _GenerateStreamDriver(stub, pb)
            try:
                return await drive(lambda i, t0, arrived: timed_stream(mux.generate(i, request(i)), t0, arrived),
                                   a.warmup, a.requests, a.concurrency)
            finally:
                print(f"GenerateStream: {mux.items} items in {mux.messages} messages", file=sys.stderr, flush=True)
                mux.close()
        return await drive(one, a.warmup, a.requests, a.concurrency)
    finally:
        await channel.close()


class _GenerateStreamDriver:
    """Every request on one GenerateStream call; items handed to their request by stream id."""

    def __init__(self, stub: Any, pb: Any) -> None:
        self._pb = pb
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._call = stub.GenerateStream(self._requests())
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.messages = self.items = 0

    async def _requests(self) -> Any:
        """As dynamo's own client does: one message carries every request queued since the
        previous write (grpc takes the next message once the previous one is on its way)."""
        while (item := await self._out.get()) is not None:
            msg = self._pb.StreamRequest(items=[item])
            while not self._out.empty():
                if (item := self._out.get_nowait()) is None:
                    yield msg
                    return
                msg.items.append(item)
            yield msg

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                self.messages += 1
                self.items += len(resp.items)
                for item in resp.items:
                    self._queues[item.stream_id].put_nowait(item)
        except BaseException as e:
            for q in self._queues.values():
                q.put_nowait(e)
            raise

    async def generate(self, sid: int, req: Any) -> Any:
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[sid] = q
        self._out.put_nowait(self._pb.StreamRequestItem(stream_id=sid, generate=req))
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item.output
                if item.done:
                    if item.status_code:
                        raise RuntimeError(f"request {sid}: status {item.status_code}: {item.status_message}")
                    return
        finally:
            del self._queues[sid]

    def close(self) -> None:
        self._out.put_nowait(None)
        self._call.cancel()


# --- HTTP / SSE -----------------------------------------------------------------------------

class HttpConnection:
    """One keep-alive HTTP/1.1 connection; `post_sse` streams one request's SSE events."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def post_sse(self, path: str, body: bytes, on_event: Callable[[bytes], None]) -> None:
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host.encode()
                          + b"\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {head.decode(errors='replace')} "
                               f"{(await reader.read(2000)).decode(errors='replace')}")
        if b"transfer-encoding: chunked" not in lower:
            raise RuntimeError(f"expected a chunked SSE response, got headers {head!r}")
        buf = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            buf += data[:-2]
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                on_event(ev)
        if b"connection: close" in lower:
            self.writer.close()
            self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_http(a: argparse.Namespace) -> dict:
    from urllib.parse import urlsplit

    import orjson
    u = urlsplit(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    pool: list[HttpConnection] = [HttpConnection(host, port) for _ in range(a.concurrency)]

    async def one(i: int, t0: float, arrived: float) -> Record:
        # one connection per concurrent slot: take any idle one
        conn = pool.pop()
        words = " ".join(f"w{(i * 31 + j) % 997}" for j in range(a.prompt_len // 2))
        body = orjson.dumps({
            "model": a.model, "messages": [{"role": "user", "content": f"request {i}: {words}"}],
            "max_tokens": a.max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}})
        start = time.perf_counter()
        state = {"first": float("nan"), "chunks": 0, "tokens": -1}

        def on_event(ev: bytes) -> None:
            if b'"content":"' in ev and b'"content":""' not in ev:
                if state["chunks"] == 0:
                    state["first"] = time.perf_counter()
                state["chunks"] += 1
            elif b'"usage":{' in ev:
                state["tokens"] = orjson.loads(ev[ev.index(b"{"):])["usage"]["completion_tokens"]
            elif ev.startswith(b"data: {\"error\"") or b'"error":{' in ev:
                raise RuntimeError(f"error event: {ev[:500]!r}")
        try:
            await conn.post_sse("/v1/chat/completions", body, on_event)
        except BaseException:
            await conn.close()
            conn = HttpConnection(host, port)
            raise
        finally:
            pool.append(conn)
        end = time.perf_counter()
        if state["tokens"] < 0:
            raise RuntimeError(f"request {i}: no usage chunk in the stream")
        return Record(arrived - t0, state["first"] - arrived, end - t0, state["tokens"], state["chunks"],
                      start - arrived)

    try:
        return await drive(one, a.warmup, a.requests, a.concurrency)
    finally:
        for c in pool:
            await c.close()


# --- in-process MockerEngine ----------------------------------------------------------------

async def run_inproc(a: argparse.Namespace) -> dict:
    from dynamo.llm.protocol import GenerateRequest, StopConditions
    from dynamo.mocker.args import MockerConfig, read_model_facts
    from dynamo.mocker.engine import MockerEngine

    facts = read_model_facts(a.model_dir)
    engine = MockerEngine(MockerConfig(vocab_size=facts.vocab_size, eos_token_ids=facts.eos_token_ids,
                                       max_model_len=facts.max_position_embeddings or 8192,
                                       speedup_ratio=a.speedup_ratio))
    await engine.start()

    async def one(i: int, t0: float, arrived: float) -> Record:
        req = GenerateRequest(request_id=f"bench-{i}", token_ids=prompt_ids(i, a.prompt_len, facts.vocab_size),
                              stop=StopConditions(max_tokens=a.max_tokens, ignore_eos=True))
        return await timed_stream(engine.generate(req), t0, arrived)

    try:
        return await drive(one, a.warmup, a.requests, a.concurrency)
    finally:
        await engine.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("grpc", "http", "inproc"))
    p.add_argument("--target", help="grpc: worker HOST:PORT, or unix:PATH (its local socket)")
    p.add_argument("--url", help="http: frontend base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default="", help="served model name")
    p.add_argument("--model-dir", help="inproc: model directory (config.json)")
    p.add_argument("--speedup-ratio", type=float, default=1000.0, help="inproc: mocker speedup")
    p.add_argument("--vocab", type=int, default=1024, help="grpc: vocabulary size for prompt ids")
    p.add_argument("--transport", choices=("unary", "stream"), default="unary",
                   help="grpc: one Generate call per request, or all on one GenerateStream")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (http: about that many words/2)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request deadline, seconds")
    p.add_argument("--out", help="write the JSON result to this file (default: stdout)")
    a = p.parse_args()
    try:
        import uvloop
        uvloop.install()  # the servers use uvloop too; a slow client would understate them
    except ImportError:
        pass
    run = {"grpc": run_grpc, "http": run_http, "inproc": run_inproc}[a.mode]
    result = json.dumps(asyncio.run(run(a)))
    if a.out:  # a file, not a pipe: large results must not depend on the pipe's buffering
        Path(a.out).write_text(result)
        print("RESULT", a.out, flush=True)
    else:
        print(result, flush=True)


if __name__ == "__main__":
    main()
