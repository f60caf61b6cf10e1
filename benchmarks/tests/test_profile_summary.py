"""benchmarks/_profile's summary: sample shares, and with a Cost the same shares as CPU microseconds per
request and per output token."""

from __future__ import annotations

from pathlib import Path

from benchmarks._profile import Cost, summarise


def _row(text: str, func: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.rstrip().endswith(func))


def test_shares_become_cpu_per_request_and_per_token(tmp_path: Path) -> None:
    collapsed = tmp_path / "stacks.txt"
    collapsed.write_text(
        "process 1;thread 2;main (app.py:1);handle (dynamo/app.py:9);write (io.py:3) 30\n"
        "process 1;thread 2;main (app.py:1);handle (dynamo/app.py:9) 10\n"
        "process 1;thread 2;main (app.py:1);decode (detok.py:4) 60\n")
    # 2 CPU s for 1000 requests of 100 tokens: 2000 us a request, 20 us a token in all
    text = summarise(collapsed, cost=Cost(cpu_s=2.0, requests=1000, tokens=100_000))
    assert text.startswith("100 samples")
    self_rows = text.split("incl")[0]
    assert _row(self_rows, "decode (detok.py)")[:3] == ["60.0%", "1200.0", "12.00"]
    assert _row(self_rows, "write (io.py)")[:3] == ["30.0%", "600.0", "6.00"]
    incl_rows = text.split("function (inclusive")[1]
    assert _row(incl_rows, "handle (dynamo/app.py)")[:3] == ["40.0%", "800.0", "8.00"]


def test_without_a_cost_only_shares_are_printed(tmp_path: Path) -> None:
    collapsed = tmp_path / "stacks.txt"
    collapsed.write_text("process 1;thread 2;main (app.py:1) 4\n")
    text = summarise(collapsed)
    assert "us/req" not in text
    assert _row(text, "main (app.py)") == ["100.0%", "main", "(app.py)"]
