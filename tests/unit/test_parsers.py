"""Tool-call and reasoning parsers (dynamo.frontend.parsers): recorded model-like outputs, parsed
whole and streamed in every split, and compared with vLLM's own parsers where vLLM is installed."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from dynamo.frontend.parsers import (
    REASONING_PARSERS,
    TOOL_PARSERS,
    ReasoningParser,
    ToolCallDelta,
    ToolParser,
    get_reasoning_parser,
    get_tool_parser,
)
from dynamo.frontend.parsers.pythonic import MAYBE, NO, OPEN_ENDED, YES, _scan
from dynamo.frontend.parsers.tool_calls import make_tool_call_id, partial_suffix

TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("get_weather", "get_time", "search")
]

Calls = list[tuple[str, str]]

W = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
W_ARGS = '{"city": "Paris", "unit": "celsius"}'
NESTED = '{"q": "日本語 😀 \\"x\\"", "filter": {"tags": ["a", "b"], "range": [1, 2.5], "none": null}}'
NESTED_ARGS = json.dumps(json.loads(NESTED), ensure_ascii=False)

WHOLE = "<the whole output>"  # expected content: the output unchanged

# (parser, output, expected content, expected calls as (name, arguments JSON text)), by id
TOOL_CASES: dict[str, tuple[str, str, str | None, Calls]] = {
    # hermes
    "hermes-no-calls": ("hermes", "No tools needed: <tool_cal> is not a tag, nor <tool_call", WHOLE, []),
    "hermes-one": ("hermes", f"Let me check.\n<tool_call>\n{W}\n</tool_call>", "Let me check.\n", [("get_weather", W_ARGS)]),
    "hermes-several-unicode-nested": (
        "hermes",
        f'<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{{"name": "search", "arguments": {NESTED}}}\n</tool_call>'
        '\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
        None,
        [("get_weather", W_ARGS), ("search", NESTED_ARGS), ("get_time", "{}")],
    ),
    "hermes-unclosed-last": ("hermes", f"Sure.<tool_call>\n{W}\n", "Sure.", [("get_weather", W_ARGS)]),
    "hermes-text-after-dropped": ("hermes", f"<tool_call>{W}</tool_call> Done! <b>ok</b>", None, [("get_weather", W_ARGS)]),
    "hermes-malformed-json": ("hermes", f'Hi<tool_call>{W}</tool_call><tool_call>{{"name": "get_time", </tool_call>', WHOLE, []),
    "hermes-missing-arguments": ("hermes", 'x <tool_call>{"name": "get_time"}</tool_call>', WHOLE, []),
    "hermes-empty-block": ("hermes", "<tool_call></tool_call>", WHOLE, []),
    "hermes-empty-output": ("hermes", "", "", []),
    # llama3_json
    "llama-python-tag": (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        None,
        [("get_weather", '{"city": "Paris"}')],
    ),
    "llama-several-semicolon": (
        "llama3_json",
        f'\n {{"name": "get_time", "parameters": {{}}}}; {W}; {{"name": "search", "arguments": {NESTED}}}',
        None,
        [("get_time", "{}"), ("get_weather", W_ARGS), ("search", NESTED_ARGS)],
    ),
    "llama-no-calls": ("llama3_json", "The answer is 42, as {braces} say.", WHOLE, []),
    "llama-partial-tag-text": ("llama3_json", "<|python is a snake", WHOLE, []),
    "llama-tag-no-json": ("llama3_json", '<|python_tag|>print("hi")', WHOLE, []),
    "llama-missing-name": ("llama3_json", '{"city": "Paris"}', WHOLE, []),
    "llama-malformed-second": ("llama3_json", f'{W}; {{"name": "get_time", "parameters": ', WHOLE, []),
    "llama-adjacent-objects": (  # vLLM skips the `{` right after an object and fails on the next one
        "llama3_json",
        '{"name": "a", "parameters": {}}{"name": "b", "parameters": {"x": 1}}',
        WHOLE,
        [],
    ),
    "llama-text-before-call": ("llama3_json", f"Sure: {W}", WHOLE, []),  # differs from vLLM, see llama3_json.py
    # mistral
    "mistral-array": (
        "mistral",
        f'[TOOL_CALLS] [{W}, {{"name": "get_time", "arguments": {{}}}}]',
        None,
        [("get_weather", W_ARGS), ("get_time", "{}")],
    ),
    "mistral-content-before": (
        "mistral",
        f'Let me check. [TOOL_CALLS][{{"name": "search", "arguments": {NESTED}}}]',
        "Let me check. ",
        [("search", NESTED_ARGS)],
    ),
    "mistral-blank-before": ("mistral", f"  \n[TOOL_CALLS][{W}]", None, [("get_weather", W_ARGS)]),
    "mistral-bare-object-trailing": (
        "mistral",
        '[TOOL_CALLS]{"name": "get_time", "arguments": {"tz": [1, {"y": null}]}} and some more [x]',
        None,
        [("get_time", '{"tz": [1, {"y": null}]}')],
    ),
    "mistral-odd-entries": (
        "mistral",
        '[TOOL_CALLS][{"name": "a", "arguments": "{\\"x\\": 1}"}, {"name": 5}, {"arguments": null}, 3, {"other": 1}]',
        None,
        [("a", '{"x": 1}'), ("", "{}"), ("", "{}")],
    ),
    "mistral-repeated-marker": ("mistral", f"[TOOL_CALLS] [TOOL_CALLS] [{W}][TOOL_CALLS] junk", None, [("get_weather", W_ARGS)]),
    "mistral-fallback-array": ("mistral", f"[TOOL_CALLS] Here: [{W}] ok", None, [("get_weather", W_ARGS)]),
    "mistral-v11": (
        "mistral",
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time{} bye',
        "Checking.",
        [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")],
    ),
    "mistral-no-marker": ("mistral", "Just text, [TOOL not a marker", WHOLE, []),
    "mistral-malformed": ("mistral", "  [TOOL_CALLS] not json at all ", "not json at all", []),
    "mistral-malformed-after-text": ("mistral", 'Hi [TOOL_CALLS] [{"name": ', 'Hi [{"name":', []),
    "mistral-marker-only": ("mistral", "[TOOL_CALLS]", "", []),
    # pythonic
    "pythonic-two": (
        "pythonic",
        '[get_weather(city="Paris", unit=\'celsius\'), get_time()]',
        None,
        [("get_weather", W_ARGS), ("get_time", "{}")],
    ),
    "pythonic-literals": (
        "pythonic",
        '[search(q="日本語 😀", filter={"tags": ["a", "b"], "range": (1, 2.5), 3: {1, 2}}, exact=True, '
        "limit=-5, extra=None, flag=null, s=f'x', dec=+1.5)]",
        None,
        [
            (
                "search",
                '{"q": "日本語 😀", "filter": {"tags": ["a", "b"], "range": [1, 2.5], "3": [1, 2]}, "exact": true, '
                '"limit": -5, "extra": null, "flag": null, "s": "x", "dec": 1.5}',
            )
        ],
    ),
    "pythonic-dotted-after-kwargs": ("pythonic", '[f(a=1), tools.g(b="x")]', None, [("f", '{"a": 1}'), ("tools.g", '{"b": "x"}')]),
    "pythonic-no-args-list": ("pythonic", "[get_time(), get_time() ]", None, [("get_time", "{}"), ("get_time", "{}")]),
    "pythonic-text": ("pythonic", "The answer is [1, 2], see [link](http://x).", WHOLE, []),
    "pythonic-markdown-link": ("pythonic", "[link](http://example.com) is it", WHOLE, []),
    "pythonic-not-literal": ("pythonic", "[get_weather(city=Paris)]", WHOLE, []),
    "pythonic-syntax-error": ("pythonic", "[f(a=1), g(b=2]", WHOLE, []),
    "pythonic-text-after": ("pythonic", "[f(a=1)] and then some", WHOLE, []),
    "pythonic-positional": ("pythonic", "[f(1)]", WHOLE, []),
    "pythonic-leading-space": ("pythonic", " [f(a=1)]", WHOLE, []),
    "pythonic-no-comma": ("pythonic", "[f() g()]", WHOLE, []),
}
# Where vLLM's non-streaming result differs on purpose (see the module docstrings).
VLLM_DIFFERS = {"llama-text-before-call", "mistral-malformed-after-text", "mistral-v11"}


def _stream_tools(parser: ToolParser, pieces: list[str]) -> tuple[str, Calls]:
    content = ""
    calls: list[dict[str, Any]] = []
    results = [parser.feed(p) for p in pieces] + [parser.finish()]
    for text, deltas in results:
        content += text
        for d in deltas:
            if d.index == len(calls):  # a new call: its first delta names it
                assert d.id is not None and d.id.startswith("call_") and d.name is not None
                calls.append({"id": d.id, "name": d.name, "arguments": ""})
            else:
                assert d.index < len(calls) and d.id is None and d.name is None
            calls[d.index]["arguments"] += d.arguments
    assert [(c.id, c.name, c.arguments) for c in parser.tool_calls] == [
        (c["id"], c["name"], c["arguments"]) for c in calls
    ]
    return content, [(c["name"], c["arguments"]) for c in calls]


def _splittings(text: str, seed: str) -> list[list[str]]:
    """Every split in two, char by char, and random chunkings."""
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    rng = random.Random(seed)
    for _ in range(30):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 8))))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    return out


def _tool_case(case: str) -> tuple[str, str, str | None, Calls]:
    name, output, content, calls = TOOL_CASES[case]
    return name, output, output if content == WHOLE else content, calls


@pytest.mark.parametrize("case", sorted(TOOL_CASES))
def test_tool_parse(case: str) -> None:
    name, output, content, calls = _tool_case(case)
    got_content, got_calls = get_tool_parser(name, TOOLS).parse(output)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == calls
    for c in got_calls:
        json.loads(c.arguments)  # valid JSON text
    assert len({c.id for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize("case", sorted(TOOL_CASES))
def test_tool_stream_equals_parse(case: str) -> None:
    name, output, content, calls = _tool_case(case)
    for pieces in _splittings(output, case):
        got = _stream_tools(get_tool_parser(name, TOOLS), pieces)
        assert got == (content or "", calls), pieces


def test_tool_streaming_is_prompt() -> None:
    hermes = get_tool_parser("hermes", TOOLS)
    assert hermes.feed("Hello <tool") == ("Hello ", [])  # a possible tag is held back...
    assert hermes.feed("s>") == ("<tools>", [])  # ...and released once it is not one
    assert hermes.feed(f"<tool_call>{W}</tool_call>") == ("", [])
    content, deltas = hermes.finish()
    assert content == "" and [(d.index, d.name, d.arguments) for d in deltas] == [(0, "get_weather", W_ARGS)]

    llama = get_tool_parser("llama3_json", TOOLS)
    assert llama.feed(" ") == ("", [])
    assert llama.feed("Hi {") == (" Hi {", [])

    pythonic = get_tool_parser("pythonic", TOOLS)
    assert pythonic.feed("[get") == ("", [])
    assert pythonic.feed("](x)") == ("[get](x)", [])

    mistral = get_tool_parser("mistral", TOOLS)
    assert mistral.feed(" \n") == ("", [])  # a blank start is dropped when calls follow
    assert mistral.feed("Ok [TOOL_") == (" \nOk ", [])
    assert mistral.feed(f"CALLS] [{W}") == ("", [])
    content, deltas = mistral.feed("] trailing")  # the array is complete
    assert content == "" and [(d.index, d.name, d.arguments) for d in deltas] == [(0, "get_weather", W_ARGS)]
    assert mistral.finish() == ("", [])  # pre-v11 calls went out as soon as the JSON closed
    assert [c.name for c in mistral.tool_calls] == ["get_weather"]


def test_tool_call_delta_openai_shape() -> None:
    first = ToolCallDelta(index=1, id="call_x", name="f", arguments="")
    assert first.to_openai() == {"index": 1, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert ToolCallDelta(index=1, arguments='{"a"').to_openai() == {"index": 1, "function": {"arguments": '{"a"'}}


def test_registry_and_ids() -> None:
    assert TOOL_PARSERS == ("hermes", "llama3_json", "mistral", "pythonic")
    for name in TOOL_PARSERS:
        assert isinstance(get_tool_parser(name, TOOLS), ToolParser)
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral, pythonic"):
        get_tool_parser("nope", TOOLS)
    assert REASONING_PARSERS == ("deepseek_r1", "qwen3")
    with pytest.raises(ValueError, match="deepseek_r1, qwen3"):
        get_reasoning_parser("nope")
    ids = {make_tool_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("call_") and len(i) == 29 for i in ids)


def test_feed_after_finish() -> None:
    parser = get_tool_parser("hermes", TOOLS)
    parser.finish()
    assert parser.finish() == ("", [])
    with pytest.raises(RuntimeError):
        parser.feed("x")


def test_partial_suffix() -> None:
    assert partial_suffix("abc <tool_", "<tool_call>") == 6
    assert partial_suffix("abc <tool_call>", "<tool_call>") == 0  # a whole tag is not partial
    assert partial_suffix("x <", "</think>", "<think>") == 1
    assert partial_suffix("x </th", "</think>", "<think>") == 4


# -- pythonic: the one-pass scan against vLLM's pattern ---------------------------------------


def test_pythonic_scan_verdicts() -> None:
    assert _scan("") == MAYBE and _scan("[") == MAYBE and _scan("[get_w") == MAYBE
    assert _scan("[f(") == MAYBE and _scan("[f(ab") == MAYBE and _scan("[f(), ") == MAYBE
    assert _scan("[f(a=1") == OPEN_ENDED and _scan("[f(a=1)]") == YES and _scan("[f() ]x") == YES
    assert _scan("x") == NO and _scan("[_f(") == NO and _scan("[f (") == NO and _scan("[f(1") == NO
    assert _scan("[f() , g()]") == NO and _scan("[f() g(), h()]") == NO and _scan("[f(a =1)]") == NO


# -- reasoning ----------------------------------------------------------------------------------

# (parser, output, expected reasoning, expected content)
REASONING_CASES: dict[str, tuple[str, str, str | None, str | None]] = {
    "r1-no-open-tag": ("deepseek_r1", "Let me think: 2+2=4.\n</think>\n\nThe answer is **4**.", "Let me think: 2+2=4.\n", "\n\nThe answer is **4**."),
    "r1-open-tag": ("deepseek_r1", "<think>\nhmm é 😀\n</think>Answer", "\nhmm é 😀\n", "Answer"),
    "r1-blank-then-open": ("deepseek_r1", "  \n<think>abc</think>x", "abc", "x"),
    "r1-no-close": ("deepseek_r1", "<think>still thinking <b> </thi", "still thinking <b> </thi", None),
    "r1-empty": ("deepseek_r1", "", "", None),
    "r1-close-at-end": ("deepseek_r1", "abc</think>", "abc", None),
    "r1-nested-open": ("deepseek_r1", "<think>a<think>b</think>c", "a<think>b", "c"),
    "r1-twice-closed": ("deepseek_r1", "xyz</think>a</think>b", "xyz", "a</think>b"),
    "r1-text-before-open": ("deepseek_r1", "pre<think>abc", "preabc", None),  # vLLM: "abc"
    "r1-open-after-close": ("deepseek_r1", "a</think>b<think>c</think>d", "a", "b<think>c</think>d"),  # vLLM: c, d
    "qwen3-open-tag": ("qwen3", "<think>\nLet me see: 日本\n</think>\n\nIt is 4.", "\nLet me see: 日本\n", "\n\nIt is 4."),
    "qwen3-no-open-tag": ("qwen3", "abc</think>xyz", "abc", "xyz"),
    "qwen3-no-close": ("qwen3", "just <thinking> aloud </thi", "just <thinking> aloud </thi", None),
    "qwen3-empty": ("qwen3", "", None, None),
    "qwen3-empty-think": ("qwen3", "<think></think>", None, None),
    "qwen3-close-dropped-in-content": ("qwen3", "xyz</think>a</think>b", "xyz", "ab"),
    "qwen3-open-dropped-in-reasoning": ("qwen3", "<think>a<think>b</think>c", "ab", "c"),
    "qwen3-open-kept-in-content": ("qwen3", "a</think>b<think>cd", "a", "b<think>cd"),
    "qwen3-tool-call-ends-reasoning": (
        "qwen3",
        'plan <tool_call>{"name": "f"}</tool_call></think> ok',
        "plan ",
        '<tool_call>{"name": "f"}</tool_call> ok',
    ),
    "qwen3-text-before-open": ("qwen3", "pre<think>abc", "preabc", None),
}
VLLM_REASONING_DIFFERS = {"r1-text-before-open", "r1-open-after-close"}


def _stream_reasoning(parser: ReasoningParser, pieces: list[str]) -> tuple[str, str]:
    reasoning = content = ""
    for r, c in [parser.feed(p) for p in pieces] + [parser.finish()]:
        reasoning += r
        content += c
    return reasoning, content


@pytest.mark.parametrize("case", sorted(REASONING_CASES))
def test_reasoning_parse(case: str) -> None:
    name, output, reasoning, content = REASONING_CASES[case]
    assert get_reasoning_parser(name).parse(output) == (reasoning, content)


@pytest.mark.parametrize("case", sorted(REASONING_CASES))
def test_reasoning_stream_equals_parse(case: str) -> None:
    name, output, reasoning, content = REASONING_CASES[case]
    for pieces in _splittings(output, case):
        assert _stream_reasoning(get_reasoning_parser(name), pieces) == (reasoning or "", content or ""), pieces


def test_reasoning_streaming_is_prompt() -> None:
    r1 = get_reasoning_parser("deepseek_r1")
    assert r1.feed("  ") == ("", "")  # blank: dropped if <think> follows
    assert r1.feed("Hmm </th") == ("  Hmm ", "")
    assert r1.feed("ink>The") == ("", "The")
    assert r1.finish() == ("", "")
    qwen = get_reasoning_parser("qwen3")
    assert qwen.feed("<think>a <tool") == ("a ", "")
    assert qwen.feed("_call>{") == ("", "<tool_call>{")


def test_qwen3_thinking_disabled() -> None:
    output = "<think>a</think>b"
    parser = get_reasoning_parser("qwen3", {"enable_thinking": False})
    assert parser.parse(output) == (None, output)
    assert _stream_reasoning(get_reasoning_parser("qwen3", {"enable_thinking": False}), [output[:3], output[3:]]) == (
        "",
        output,
    )


def _random_soup(rng: random.Random, parts: list[str]) -> str:
    return "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))


def test_reasoning_random_streams() -> None:
    rng = random.Random(7)
    parts = ["<think>", "</think>", "<tool_call>", "<", "</", "think>", "a", " ", "\n", "é", "<th", "</think"]
    for _ in range(300):
        text = _random_soup(rng, parts)
        for name in REASONING_PARSERS:
            reasoning, content = get_reasoning_parser(name).parse(text)
            pieces = _splittings(text, text)[rng.randrange(len(text) + 2)]
            assert _stream_reasoning(get_reasoning_parser(name), pieces) == (reasoning or "", content or ""), (name, pieces)


def _mutate(rng: random.Random, text: str, noise: list[str]) -> str:
    """Maybe break a well-formed output: cut a piece out, insert noise, truncate."""
    if text and rng.random() < 0.3:
        a = rng.randrange(len(text))
        text = text[:a] + text[a + rng.randint(1, 3) :]
    if rng.random() < 0.3:
        a = rng.randrange(len(text) + 1)
        text = text[:a] + rng.choice(noise) + text[a:]
    if text and rng.random() < 0.2:
        text = text[: rng.randrange(len(text))]
    return text


_JSON_ARGS = ["{}", '{"city": "Paris"}', NESTED, "[1, 2]", '"s"', "null"]
_NOISE = ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "}", "[", "]", "(", ")", '"', ",", " ", "x"]


def _model_output(rng: random.Random, name: str) -> str:
    """A random, mostly well-formed output of the given format, then maybe broken."""
    n = rng.randint(0, 3)
    text = rng.choice(["", "", " ", "Sure. ", "\n"])
    names = ["get_weather", "get_time", "f"]
    if name == "hermes":
        for _ in range(n):
            key = rng.choice(["arguments", "arguments", "args"])
            body = f'{{"name": "{rng.choice(names)}", "{key}": {rng.choice(_JSON_ARGS)}}}'
            text += rng.choice(["", "\n"]) + f"<tool_call>\n{body}\n</tool_call>"
    elif name == "llama3_json":
        text += rng.choice(["", "<|python_tag|>"]) + "; ".join(
            f'{{"name": "{rng.choice(names)}", "{rng.choice(["parameters", "arguments"])}": {rng.choice(_JSON_ARGS)}}}'
            for _ in range(n)
        )
    elif name == "mistral":
        if rng.random() < 0.7:
            items = [f'{{"name": "{rng.choice(names)}", "arguments": {rng.choice(_JSON_ARGS)}}}' for _ in range(n)]
            text += "[TOOL_CALLS]" + rng.choice(["", " "]) + "[" + ", ".join(items) + "]"
        else:
            for _ in range(n):
                text += f"[TOOL_CALLS]{rng.choice(names)}{rng.choice(['', '[ARGS]'])}{rng.choice(_JSON_ARGS[:3])}"
    else:
        values = ["1", '"s"', "[1, (2,)]", "x", "-1", "{'k': None}", "null", "f'a'", "b'x'"]
        calls = []
        for _ in range(n):
            kwargs = [f"{rng.choice('abc')}={rng.choice(values)}" for _ in range(rng.randint(0, 2))]
            calls.append(f"{rng.choice(['f', 'get_time', 'tools.get', '_h'])}({', '.join(kwargs)})")
        text = "[" + ", ".join(calls) + "]" if rng.random() < 0.8 else text + "[" + " ".join(calls) + "]"
    return _mutate(rng, text, _NOISE)


def test_tool_random_streams() -> None:
    rng = random.Random(11)
    for _ in range(300):
        for name in TOOL_PARSERS:
            text = _model_output(rng, name)
            content, calls = get_tool_parser(name, TOOLS).parse(text)
            expected = (content or "", [(c.name, c.arguments) for c in calls])
            pieces = _splittings(text, text)[rng.randrange(len(text) + 2)]
            assert _stream_tools(get_tool_parser(name, TOOLS), pieces) == expected, (name, pieces)


# -- vLLM's own parsers on the same outputs ----------------------------------------------------


class _FakeTokenizer:
    """Enough of a tokenizer for vLLM's text-based parsers: they only look up their markers."""

    def __init__(self) -> None:
        self.vocab = {"<think>": 1, "</think>": 2, "<tool_call>": 3, "</tool_call>": 4, "<|python_tag|>": 5, "[TOOL_CALLS]": 6}

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def encode(self, *args: Any, **kwargs: Any) -> list[int]:
        return []


@pytest.fixture(scope="module")
def vllm_parsers() -> dict[str, Any]:
    pytest.importorskip("vllm.tool_parsers.hermes_tool_parser")
    from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser
    from vllm.reasoning.qwen3_engine_reasoning_parser import Qwen3ParserReasoningAdapter
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
    from vllm.tool_parsers.llama_tool_parser import Llama3JsonToolParser
    from vllm.tool_parsers.mistral_tool_parser import MistralToolParser
    from vllm.tool_parsers.pythonic_tool_parser import PythonicToolParser

    tok = _FakeTokenizer()
    return {
        "hermes": Hermes2ProToolParser(tok),
        "llama3_json": Llama3JsonToolParser(tok),
        "mistral": MistralToolParser(tok),
        "pythonic": PythonicToolParser(tok),
        "deepseek_r1": DeepSeekR1ReasoningParser(tok),
        "qwen3": Qwen3ParserReasoningAdapter(tok),
    }


def _vllm_tools(parsers: dict[str, Any], name: str, output: str) -> tuple[str | None, Calls]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    info = parsers[name].extract_tool_calls(output, request)
    return info.content, [(c.function.name, c.function.arguments) for c in info.tool_calls]


@pytest.mark.vllm
@pytest.mark.parametrize("case", sorted(TOOL_CASES))
def test_tool_parse_matches_vllm(vllm_parsers: dict[str, Any], case: str) -> None:
    name, output, _, _ = TOOL_CASES[case]
    content, calls = get_tool_parser(name, TOOLS).parse(output)
    ours = (content, [(c.name, c.arguments) for c in calls])
    if case in VLLM_DIFFERS:
        assert _vllm_tools(vllm_parsers, name, output) != ours
    else:
        assert _vllm_tools(vllm_parsers, name, output) == ours


@pytest.mark.vllm
@pytest.mark.parametrize("case", sorted(REASONING_CASES))
def test_reasoning_parse_matches_vllm(vllm_parsers: dict[str, Any], case: str) -> None:
    name, output, _, _ = REASONING_CASES[case]
    theirs = vllm_parsers[name].extract_reasoning(output, None)
    if case in VLLM_REASONING_DIFFERS:
        assert theirs != get_reasoning_parser(name).parse(output)
    else:
        assert theirs == get_reasoning_parser(name).parse(output)


@pytest.mark.vllm
def test_random_outputs_match_vllm(vllm_parsers: dict[str, Any]) -> None:
    import regex
    from vllm.tool_parsers.pythonic_tool_parser import PythonicToolParser

    rng = random.Random(3)
    # qwen3 on any tag soup; deepseek_r1 where <think> can only come first (see reasoning.py)
    soup = ["<think>", "</think>", "<tool_call>", "<", "</", "think>", "a", " ", "\n", ">", "<function=", "<th"]
    for _ in range(300):
        text = _random_soup(rng, soup)
        assert vllm_parsers["qwen3"].extract_reasoning(text, None) == get_reasoning_parser("qwen3").parse(text), text
        r1_text = rng.choice(["", " <think>", "<think>"]) + text.replace("<think>", "")
        ours = get_reasoning_parser("deepseek_r1").parse(r1_text)
        assert vllm_parsers["deepseek_r1"].extract_reasoning(r1_text, None) == ours, r1_text
    # the one-pass scan decides exactly what vLLM's pattern matches
    pattern: regex.Pattern[str] = PythonicToolParser.TOOL_CALL_REGEX
    calls = ["[", "]", "f(", "g_1(", ")", "a=", "1", ", ", ",", " ", "\n", "x", "(", "_", ".", "=", '"', "é"]
    texts = [_random_soup(rng, calls) + _random_soup(rng, calls) for _ in range(1500)]
    texts += [_model_output(rng, "pythonic") for _ in range(1500)]
    for text in texts:
        verdict = _scan(text)
        assert (verdict == YES) == (pattern.match(text) is not None), text
        if verdict == NO:  # no continuation can match
            assert pattern.match(text + "f(a=1)]") is None and pattern.match(text + ")]") is None, text


@pytest.mark.vllm
def test_random_tool_outputs_match_vllm(vllm_parsers: dict[str, Any]) -> None:
    rng = random.Random(5)
    for _ in range(400):
        for name in TOOL_PARSERS:
            text = _model_output(rng, name)
            content, calls = get_tool_parser(name, TOOLS).parse(text)
            ours = (content, [(c.name, c.arguments) for c in calls])
            theirs = _vllm_tools(vllm_parsers, name, text)
            if name == "llama3_json" and not text.lstrip().startswith(("{", "<|python_tag|>")):
                assert ours == (text, []), text  # content, whatever vLLM finds mid-text
            elif name == "mistral" and not theirs[1]:
                at = text.find("[TOOL_CALLS]")
                before = text[:at] if at >= 0 and text[:at].strip() else ""
                if not calls:  # malformed: vLLM's content, after any non-blank text before the marker
                    assert content == before + (theirs[0] or ""), text
            else:
                assert ours == theirs, text
