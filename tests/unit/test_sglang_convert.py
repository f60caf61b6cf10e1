"""The SGLang adapter's translation (dynamo/sglang/convert.py): our requests to async_generate's
sampling_params, SGLang's streamed chunks back. Pure functions: no SGLang needed."""

from __future__ import annotations

import math

import pytest

from dynamo.llm.protocol import (
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.sglang.convert import abort_message, finish_reason_of, logprobs_of, sampling_params_for


def request(sampling: SamplingOptions | None = None, **stop: object) -> GenerateRequest:
    return GenerateRequest("r", [5, 6, 7], sampling=sampling or SamplingOptions(),
                           stop=StopConditions(**stop))  # type: ignore[arg-type]


def test_greedy_and_unbounded_by_default() -> None:
    params = sampling_params_for(request())
    assert params["temperature"] == 0.0  # our None = greedy; SGLang: < 1e-6 is greedy
    assert "max_new_tokens" in params and params["max_new_tokens"] is None  # a missing key would mean 128
    assert params["ignore_eos"] is False
    assert "stop_token_ids" not in params and "top_k" not in params and "sampling_seed" not in params


def test_sampling_options_map_to_sglang_names() -> None:
    s = SamplingOptions(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, presence_penalty=0.5,
                        frequency_penalty=0.25, repetition_penalty=1.1, seed=7)
    params = sampling_params_for(request(s, max_tokens=12, stop_token_ids=[3, 9], ignore_eos=True))
    assert params == {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": 0.5,
                      "frequency_penalty": 0.25, "repetition_penalty": 1.1, "sampling_seed": 7,
                      "max_new_tokens": 12, "stop_token_ids": [3, 9], "ignore_eos": True}
    assert "top_k" not in sampling_params_for(request(SamplingOptions(top_k=-1)))  # ours: off


def test_min_tokens_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidRequest, match="min_tokens is not supported by the SGLang worker"):
        sampling_params_for(request(max_tokens=8, min_tokens=2))


@pytest.mark.parametrize("raw, stop_ids, expected", [
    (None, [], None),
    ({"type": "length", "length": 16}, [], FinishReason.LENGTH),
    ({"type": "stop", "matched": 1}, [], FinishReason.EOS),
    ({"type": "stop", "matched": 9}, [9], FinishReason.STOP),
    ({"type": "stop", "matched": "###"}, [9], FinishReason.EOS),
    ({"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}, [], FinishReason.CANCELLED),
    ({"type": "abort", "message": "bootstrap failed", "status_code": 500}, [], FinishReason.ERROR),
    ({"type": "something-new"}, [], FinishReason.ERROR),
])
def test_finish_reasons(raw: dict | None, stop_ids: list[int], expected: FinishReason | None) -> None:  # type: ignore[type-arg]
    assert finish_reason_of(raw, stop_ids) is expected


def test_abort_message_names_the_cause() -> None:
    assert abort_message({"type": "abort", "message": "KV transfer failed"}) == "KV transfer failed"
    assert abort_message({"type": "abort", "err_type": "BadRequest"}) == "BadRequest"
    assert abort_message({"type": "abort"}) == "aborted by SGLang"


def test_logprobs_are_sliced_per_chunk_and_ranked() -> None:
    meta = {"output_token_logprobs": [(-0.5, 11, None), (-1.5, 12, None)],
            "output_top_logprobs": [[(-0.5, 11, None), (-0.9, 40, None), (-2.0, 41, None)],
                                    [(-1.2, 50, None), (-1.5, 12, None), (-3.0, 51, None)]]}
    lps = logprobs_of(meta, [11, 12], 2)
    assert [lp.token_id for lp in lps] == [11, 12]
    assert [lp.logprob for lp in lps] == [-0.5, -1.5]
    assert lps[0].top == [(11, -0.5), (40, -0.9)] and lps[1].top == [(50, -1.2), (12, -1.5)]
    missing = logprobs_of({}, [7], 1)
    assert math.isnan(missing[0].logprob) and missing[0].top == []
