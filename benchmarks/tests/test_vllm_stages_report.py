"""benchmarks/vllm_stages.py's analysis: probe lines joined to the client's marks, stages computed."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.vllm_stages import WORKER_STAGES, quiet_p50s, read_probe, table


def test_probe_lines_join_the_client_marks_by_request_id(tmp_path: Path) -> None:
    # vLLM's internal id carries a suffix (engine output marks); ours do not. Unknown ids (warm-up
    # requests) are ignored, and a stage keeps its first mark.
    (tmp_path / "123.tsv").write_text(
        "in\tstage-9-1\t10.0010\n"
        "add0\tstage-9-1\t10.0015\n"
        "add_cpu\tstage-9-1\t0.0003\n"
        "add1\tstage-9-1\t10.0020\n"
        "engine\tstage-9-1-a1b2c3d4\t10.0070\n"
        "engine\tstage-9-1-a1b2c3d4\t10.0100\n"
        "emit\tstage-9-1\t10.0073\n"
        "add0\tstage-9-0\t9.0\n")
    marks = {"stage-9-1": {"t0": 10.0, "first": 10.0080}}
    read_probe(tmp_path, marks)
    assert marks["stage-9-1"] == {"t0": 10.0, "first": 10.0080, "in": 10.0010, "add0": 10.0015,
                                  "add_cpu": 0.0003, "add1": 10.0020, "engine": 10.0070, "emit": 10.0073}
    assert "stage-9-0" not in marks


def test_stages_add_up_to_ttft_and_engine_time_comes_out(capsys: pytest.CaptureFixture[str]) -> None:
    m = {"t0": 0.0, "in": 0.0005, "add0": 0.0008, "add1": 0.0018, "engine": 0.0068, "emit": 0.0071,
         "first": 0.0078}
    p50 = table("worker", {"r": m}, WORKER_STAGES)
    stage_sum = sum(p50[name] for name, _, _ in WORKER_STAGES)
    assert p50["TTFT"] == pytest.approx(7.8)
    assert stage_sum == pytest.approx(p50["TTFT"])
    assert p50["engine"] == pytest.approx(5.0)
    assert p50["TTFT − engine"] == pytest.approx(2.8)
    assert quiet_p50s({"r": m}) == pytest.approx((7.8, 5.0, 2.8))
    # a request missing a mark is left out, and said so
    assert table("worker", {"r": m, "s": {"t0": 0.0, "first": 0.01}}, WORKER_STAGES)["TTFT"] == pytest.approx(7.8)
    assert "1 of 2 requests with every mark" in capsys.readouterr().out
