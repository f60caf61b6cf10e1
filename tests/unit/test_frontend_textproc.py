"""Incremental detokenization, stop-string hold-back and the per-request output processor."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dynamo.frontend.backend import WorkerFailed
from dynamo.frontend.detokenize import MAX_CONTEXT_IDS, WINDOW_FROM_IDS, Detokenizer, make_detokenizer
from dynamo.frontend.postprocess import OutputProcessor
from dynamo.frontend.stop import StopStringMatcher
from dynamo.frontend.tokenizer import ModelTokenizer
from dynamo.llm.protocol import FinishReason, GenerateOutput, TokenLogprob

TEXTS = [
    "def hello(world):\n    return world + 1\n",
    "héllo ünïcode — naïve café 😀🚀 日本語のテキスト ✓",
    "  leading spaces, tabs\tand\nnew lines\r\n",
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> ModelTokenizer:
    from transformers import AutoTokenizer
    return ModelTokenizer(hf=AutoTokenizer.from_pretrained(str(model_dir)), chat_template=None)


def _detokenizers(tok: ModelTokenizer, skip: bool) -> list[Detokenizer]:
    return [Detokenizer(tok.fast, tok.hf, skip)]


def test_slow_tokenizer_is_refused_with_a_clear_error(model_dir: Path) -> None:
    class Slow:  # a transformers tokenizer without a tokenizers backend
        pass

    with pytest.raises(ValueError, match="slow .* tokenizer"):
        ModelTokenizer(hf=Slow(), chat_template=None)


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_equals_full_decode_on_random_ids(tok: ModelTokenizer, skip: bool) -> None:
    rng = random.Random(1234)
    for trial in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 80))]
        full = tok.hf.decode(ids, skip_special_tokens=skip)
        for detok in _detokenizers(tok, skip):
            out = "".join(detok.step(t) for t in ids) + detok.flush()
            assert out == full, (type(detok).__name__, trial, ids)


def test_incremental_in_random_batches_equals_full_decode(tok: ModelTokenizer) -> None:
    rng = random.Random(99)
    for trial in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 80))]
        full = tok.hf.decode(ids, skip_special_tokens=True)
        for detok in _detokenizers(tok, True):
            parts, i = [], 0
            while i < len(ids):
                n = rng.choice((1, 2, 3, WINDOW_FROM_IDS - 1, WINDOW_FROM_IDS, 30))  # both paths, in turns
                parts.append(detok.step_many(ids[i:i + n]))
                i += n
            assert "".join(parts) + detok.flush() == full, (type(detok).__name__, trial)


@pytest.mark.parametrize("text", TEXTS)
def test_real_text_round_trips_and_never_emits_broken_characters(tok: ModelTokenizer,
                                                                   text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False) * 3
    for size in (1, 3, WINDOW_FROM_IDS, 11, 29):  # a token at a time, and outputs of both paths
        for detok in _detokenizers(tok, True):
            pieces = [detok.step_many(ids[i:i + size]) for i in range(0, len(ids), size)]
            assert "".join(pieces) + detok.flush() == text * 3
            assert not any("\ufffd" in p for p in pieces)  # multi-byte characters arrive whole


def _other_tokenizers() -> dict[str, ModelTokenizer]:
    """A sentencepiece-style BPE (Metaspace: a word's leading space lives in its first token) and a
    WordPiece one ("##" continuations), trained here on stdlib sources: decoders whose output for a
    token depends on the token before it, unlike the tiny model's byte-level BPE."""
    import json as stdlib_json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(str(p) for p in Path(stdlib_json.__file__).parent.glob("*.py"))
    metaspace = Tokenizer(models.BPE(unk_token="<unk>"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace.decoder = decoders.Metaspace()
    metaspace.train(files, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"]))
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=False)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train(files, trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    return {name: ModelTokenizer(hf=PreTrainedTokenizerFast(tokenizer_object=fast, clean_up_tokenization_spaces=False),
                                 chat_template=None)
            for name, fast in (("metaspace", metaspace), ("wordpiece", wordpiece))}


def test_context_dependent_decoders_stream_the_same_text_as_a_full_decode() -> None:
    rng = random.Random(7)
    for name, other in _other_tokenizers().items():
        texts = TEXTS + ["don't stop. a, b; c! (d) -- e's \"f\" g.h"]
        cases = [other.encode(t, add_special_tokens=False) for t in texts]
        cases += [[rng.randrange(other.vocab_size) for _ in range(rng.randrange(1, 60))] for _ in range(150)]
        for ids in cases:
            full = other.hf.decode(ids, skip_special_tokens=True)
            for detok in _detokenizers(other, True):
                parts, i = [], 0
                while i < len(ids):
                    n = rng.choice((1, 1, 2, 5, 17, 40))
                    parts.append(detok.step_many(ids[i:i + n]))
                    i += n
                assert "".join(parts) + detok.flush() == full, (name, type(detok).__name__, ids)


def test_work_per_output_stays_bounded_on_a_long_stream(tok: ModelTokenizer) -> None:
    """However long the stream, a large output's decode covers a short context plus the output (and
    any ids held back for an incomplete character): no decode grows with the text so far."""
    sizes: list[int] = []

    class CountingFast:  # the one-decode path's only use of the tokenizer
        def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
            sizes.append(len(ids))
            return tok.fast.decode(ids, skip_special_tokens=skip_special_tokens)

    text = TEXTS[1] * 40
    ids = tok.encode(text, add_special_tokens=False)
    detok, rng, parts, i = Detokenizer(CountingFast(), tok.hf), random.Random(3), [], 0
    while i < len(ids):  # outputs of 20-59 ids, as under load
        n = rng.randrange(20, 60)
        if len(ids) - i < n + WINDOW_FROM_IDS:
            n = len(ids) - i
        parts.append(detok.step_many(ids[i:i + n]))
        i += n
    assert "".join(parts) + detok.flush() == text and len(ids) > 1000
    window = 24  # a short context (at most MAX_CONTEXT_IDS ids) and a few ids of an incomplete character
    assert MAX_CONTEXT_IDS + 3 <= window
    assert max(sizes) <= window + 59 + WINDOW_FROM_IDS


def test_special_tokens_are_skipped(tok: ModelTokenizer) -> None:
    eos = tok.hf.convert_tokens_to_ids("</s>")
    ids = tok.encode("abc", add_special_tokens=False) + [eos]
    detok = make_detokenizer(tok, skip_special_tokens=True)
    assert "".join(detok.step(t) for t in ids) + detok.flush() == "abc"


# --- stop strings --------------------------------------------------------------------------------

def test_stop_holds_back_a_possible_prefix_then_releases_it() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("hello S") == "hello "  # "S" might start "STOP"
    assert m.feed("T") == ""
    assert m.feed("x") == "STx"  # not a stop after all: released
    assert m.flush() == ""
    assert m.matched is None


def test_stop_match_across_pieces_truncates_before_the_stop() -> None:
    m = StopStringMatcher(["</answer>"])
    out = m.feed("the answer is 42</an") + m.feed("swer> and more")
    assert out == "the answer is 42"
    assert m.matched == "</answer>"
    assert m.feed("later text") == "" and m.flush() == ""


def test_stop_earliest_of_several() -> None:
    m = StopStringMatcher(["world", "lo w"])
    assert m.feed("hello world") == "hel"
    assert m.matched == "lo w"


def test_stop_flush_releases_held_text_at_end() -> None:
    m = StopStringMatcher(["\n\n"])
    assert m.feed("line\n") == "line"
    assert m.flush() == "\n"


@pytest.mark.parametrize("seed", range(5))
def test_stop_random_splits_never_leak_a_stop_string(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab c\n"
    for _ in range(300):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4)))
                 for _ in range(rng.randrange(1, 4))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        m = StopStringMatcher(stops)
        out, i = [], 0
        while i < len(text):
            n = rng.randrange(1, 5)
            out.append(m.feed(text[i:i + n]))
            i += n
        result = "".join(out) + m.flush()
        present = [s for s in stops if s in text]
        if not present:
            assert result == text and m.matched is None
            continue
        # cut right before one of the stop strings, and no stop string appears in what was sent
        assert m.matched in present
        assert result == text[:text.find(m.matched)], (stops, text, result)
        assert not any(s in result for s in stops)


# --- output processor ----------------------------------------------------------------------------

def _proc(tok: ModelTokenizer, stop: list[str], max_tokens: int = 100) -> OutputProcessor:
    return OutputProcessor(make_detokenizer(tok), stop, max_tokens)


def test_processor_counts_only_tokens_up_to_the_stop_string(tok: ModelTokenizer) -> None:
    ids = tok.encode("one two STOP three four", add_special_tokens=False)
    proc = _proc(tok, ["STOP"])
    lps = [TokenLogprob(t, -1.0) for t in ids]
    delta = proc.process(GenerateOutput(token_ids=ids, logprobs=lps))
    assert delta.text == "one two "
    assert delta.finish_reason == "stop"
    n_kept = next(n for n in range(1, len(ids) + 1)
                  if "STOP" in tok.hf.decode(ids[:n]))
    assert proc.completion_tokens == n_kept < len(ids)
    assert delta.logprobs is not None and len(delta.logprobs) == n_kept


def test_processor_never_exceeds_max_tokens(tok: ModelTokenizer) -> None:
    ids = tok.encode("a b c d e f g h", add_special_tokens=False)
    proc = _proc(tok, [], max_tokens=3)
    delta = proc.process(GenerateOutput(token_ids=ids))
    assert delta.finish_reason == "length"
    assert proc.completion_tokens == 3
    assert delta.text == tok.hf.decode(ids[:3])


def test_processor_maps_finish_reasons_and_errors(tok: ModelTokenizer) -> None:
    assert _proc(tok, []).process(GenerateOutput([5], finish_reason=FinishReason.EOS)
                                  ).finish_reason == "stop"
    assert _proc(tok, []).process(GenerateOutput([5], finish_reason=FinishReason.LENGTH)
                                  ).finish_reason == "length"
    with pytest.raises(WorkerFailed, match="engine exploded"):
        _proc(tok, []).process(GenerateOutput([], finish_reason=FinishReason.ERROR,
                                              error="engine exploded"))
    with pytest.raises(WorkerFailed, match="cancelled"):
        _proc(tok, []).process(GenerateOutput([], finish_reason=FinishReason.CANCELLED))


def test_a_long_prompts_ids_go_to_then_in_the_tokenizing_thread(tok: ModelTokenizer) -> None:
    """The KV router hashes a long prompt's blocks where it was tokenized (off the event loop);
    a short prompt is tokenized inline and `then` is not called (the decision hashes it)."""
    import asyncio
    import threading

    seen: list[tuple[list[int], str]] = []

    def then(ids: list[int]) -> None:
        seen.append((ids, threading.current_thread().name))

    async def main() -> tuple[list[int], list[int], list[int]]:
        long_text = "def f(x):\n    return x + 1\n" * 1000  # past the inline limit
        a = await tok.prompt_ids_for_text(long_text, then)
        b = await tok.prompt_ids_for_chat([{"role": "user", "content": long_text}], then=then)
        c = await tok.prompt_ids_for_text("short", then)
        return a, b, c

    a, b, c = asyncio.run(main())
    assert [ids for ids, _ in seen] == [a, b] and seen[0][0] is a and seen[1][0] is b and c
    assert all(name != threading.main_thread().name for _, name in seen)
