"""The SGLang adapter's translation (dynamo/sglang/convert.py): our requests to async_generate's
sampling_params, SGLang's streamed chunks back. Pure functions: no SGLang needed."""

from __future__ import annotations

import json
import math
import re

import pytest

from dynamo.llm.protocol import (
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    SamplingOptions,
    StopConditions,
    StructuredKind,
    StructuredOutput,
)
from dynamo.sglang.args import serves_structured_output
from dynamo.sglang.convert import (
    abort_message,
    choice_regex,
    finish_reason_of,
    logprobs_of,
    sampling_params_for,
)


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


GRAMMAR_KEYS = ("json_schema", "regex", "ebnf", "structural_tag")


@pytest.mark.parametrize("kind, value, key, expected", [
    (StructuredKind.JSON_SCHEMA, '{"type": "object", "required": ["a"]}', "json_schema",
     '{"type": "object", "required": ["a"]}'),
    (StructuredKind.JSON_OBJECT, "", "json_schema", '{"type": "object"}'),  # as SGLang's own OpenAI server
    (StructuredKind.REGEX, "[a-c]{3}", "regex", "[a-c]{3}"),
    (StructuredKind.CHOICE, '["yes", "no"]', "regex", "(yes|no)"),
    (StructuredKind.GRAMMAR, 'root ::= "hi" | "ho"', "ebnf", 'root ::= "hi" | "ho"'),
])
def test_structured_output_maps_to_one_sglang_grammar_key(kind: StructuredKind, value: str, key: str,
                                                          expected: str) -> None:
    params = sampling_params_for(GenerateRequest("r", [5], structured_output=StructuredOutput(kind, value)))
    assert params[key] == expected
    assert [k for k in GRAMMAR_KEYS if k in params] == [key]  # SGLang refuses more than one


def test_choice_regex_escapes_and_matches_only_the_choices() -> None:
    choices = ["a.b", "(x)", "1+1", "", "yes|no", "ünï"]
    pattern = re.compile(choice_regex(choices))
    assert all(pattern.fullmatch(c) for c in choices)
    assert not any(pattern.fullmatch(s) for s in ("aXb", "x", "11", "yes", "no", "a.b(x)"))
    params = sampling_params_for(GenerateRequest("r", [5], structured_output=StructuredOutput(
        StructuredKind.CHOICE, json.dumps(choices))))
    assert params["regex"] == choice_regex(choices)


def test_logit_bias_keys_are_strings_for_sglang() -> None:
    params = sampling_params_for(request(SamplingOptions(logit_bias={7: 100.0, 12: -3.5})))
    assert params["logit_bias"] == {"7": 100.0, "12": -3.5}  # SamplingParams.logit_bias: Dict[str, float]
    assert "logit_bias" not in sampling_params_for(request())


def test_structured_output_needs_sglangs_tokenizer_and_a_grammar_backend() -> None:
    assert "--enable-structured-output" in (serves_structured_output({"skip_tokenizer_init": True}) or "")
    assert "--grammar-backend none" in (serves_structured_output({"skip_tokenizer_init": False,
                                                                  "grammar_backend": "none"}) or "")
    assert serves_structured_output({"skip_tokenizer_init": False, "grammar_backend": None}) is None
