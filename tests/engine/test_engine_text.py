"""Streamed text: deltas concatenate exactly to the decoded text, multi-byte characters
included, and stop strings that span tokens cut it where they start."""

from __future__ import annotations

import random

import pytest
from engine_helpers import (
    PROMPTS,
    Bundle,
    byte_fallback_tokenizer,
    byte_level_tokenizer,
    expected_text,
    make_engine,
    reference_greedy,
    run_until_idle,
    submit,
    wordpiece_tokenizer,
)
from tokenizers import decoders

from modelwire_server.engine import FinishReason, SamplingParams, StoppingParams
from modelwire_server.engine.detokenizer import (
    IncrementalDetokenizer,
    byte_fallback_ids,
    fast_decode,
)
from modelwire_server.engine.stops import StopMatcher

MULTIBYTE = "数据 🙂 日本語 👍🏽 naïve Ω≈ç √ 🚀🚀 ok"


def _stream(tokenizer, prompt: list[int], output: list[int], skip: bool = True) -> list[str]:
    decode = fast_decode(tokenizer)
    detok = IncrementalDetokenizer(decode, prompt, skip, byte_fallback_ids(tokenizer))
    deltas = [detok.push(t) for t in output]
    deltas.append(detok.flush())
    return deltas


def _expected(tokenizer, prompt: list[int], output: list[int], skip: bool = True) -> str:
    full = tokenizer.decode(prompt + output, skip_special_tokens=skip)
    return full[len(tokenizer.decode(prompt, skip_special_tokens=skip)) :]


@pytest.mark.parametrize("make", [byte_level_tokenizer, byte_fallback_tokenizer])
@pytest.mark.parametrize("skip", [True, False])
def test_multibyte_text_streams_exactly(make, skip: bool) -> None:
    tokenizer = make()
    prompt = tokenizer("Say:")["input_ids"]
    output = tokenizer(MULTIBYTE, add_special_tokens=False)["input_ids"]
    deltas = _stream(tokenizer, prompt, output, skip)
    assert "".join(deltas) == _expected(tokenizer, prompt, output, skip)
    assert "🙂" in "".join(deltas) and "数据" in "".join(deltas)
    # Multi-byte characters spread over several tokens were held, not sent broken.
    assert "" in deltas[:-1] and not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("make", [byte_level_tokenizer, byte_fallback_tokenizer])
def test_random_tokens_stream_exactly(make) -> None:
    """Random ids make broken byte sequences, special tokens and odd spacing."""
    tokenizer = make()
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(30):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 9))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        for skip in (True, False):
            deltas = _stream(tokenizer, prompt, output, skip)
            assert "".join(deltas) == _expected(tokenizer, prompt, output, skip)


def test_wordpiece_streams_exactly() -> None:
    tokenizer = wordpiece_tokenizer()
    # Words and ## pieces; punctuation is left out because clean_up_tokenization_spaces
    # rewrites " ." across the prompt/output boundary, where "the text after the prompt"
    # has no exact meaning.
    words = [i for t, i in tokenizer.get_vocab().items() if t.strip("#").isalnum()]
    rng = random.Random(1)
    for _ in range(30):
        prompt = [rng.choice(words) for _ in range(rng.randrange(1, 8))]
        output = [rng.choice(words) for _ in range(rng.randrange(1, 25))]
        assert "".join(_stream(tokenizer, prompt, output)) == _expected(tokenizer, prompt, output)


@pytest.mark.parametrize(
    "make", [byte_level_tokenizer, byte_fallback_tokenizer, wordpiece_tokenizer]
)
@pytest.mark.parametrize("cleanup", [False, True])
def test_fast_decode_is_the_tokenizers_decode(make, cleanup: bool) -> None:
    """The detokenizer's shortcut past transformers' ``decode`` wrapper (clean-up of
    spaces included, which transformers refuses for BPE) gives what ``decode`` gives."""
    tokenizer = make()
    if make is wordpiece_tokenizer:  # leave the clean-up to transformers, not the decoder
        tokenizer.backend_tokenizer.decoder = decoders.WordPiece(cleanup=False)
    tokenizer.clean_up_tokenization_spaces = cleanup
    decode = fast_decode(tokenizer)
    assert "tokenizer" not in decode.__code__.co_names  # the shortcut, not the wrapper
    rng = random.Random(2)
    samples = [tokenizer("hello , world . it 's ok ?")["input_ids"]]
    samples += [
        [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 20))] for _ in range(40)
    ]
    for ids in samples:
        for skip in (True, False):
            assert decode(ids, skip) == tokenizer.decode(ids, skip_special_tokens=skip)
    if make is wordpiece_tokenizer and cleanup:  # the clean-up did change something
        raw = tokenizer.backend_tokenizer.decode(samples[0], skip_special_tokens=True)
        assert decode(samples[0], True) != raw


def test_engine_deltas_concatenate_to_the_text(llama: Bundle) -> None:
    """The tiny Llama emits many <0xNN> byte tokens: broken and completed characters."""
    engine = make_engine(llama)
    prompts = [llama.encode(p) for p in PROMPTS]
    sinks = [submit(engine, p, stopping=StoppingParams(max_new_tokens=40)) for p in prompts]
    run_until_idle(engine)
    held = 0
    for prompt, sink in zip(prompts, sinks, strict=True):
        text = expected_text(llama, prompt, sink.tokens())
        assert sink.text() == sink.finished().text == text
        held += sum(1 for d in sink.deltas() if d.text == "")
    assert held > 0, "no delta was ever held back; multi-byte handling went untested"


def _spanning_stop(bundle: Bundle, prompt: list[int], output: list[int]) -> tuple[str, int]:
    """A 2-character stop string made of the end of token i and the start of token i+1;
    returns it and the index of the token that completes it."""
    full = expected_text(bundle, prompt, output)
    ends = [len(expected_text(bundle, prompt, output[: k + 1])) for k in range(len(output))]
    for i in range(2, len(output) - 1):
        start, cut, end = ends[i - 1], ends[i], ends[i + 1]
        stop = full[cut - 1 : cut + 1]
        if start < cut < end and full.find(stop) == cut - 1 and "\ufffd" not in full[cut - 1 : end]:
            return stop, i + 1
    raise LookupError("no token boundary with a usable spanning stop string")


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(gpt2: Bundle, include: bool) -> None:
    prompt = gpt2.encode(PROMPTS[1])
    output = reference_greedy(gpt2, prompt, 24)
    stop, last = _spanning_stop(gpt2, prompt, output)
    assert last < 20
    full = expected_text(gpt2, prompt, output)
    engine = make_engine(gpt2)
    sink = submit(
        engine,
        prompt,
        sampling=SamplingParams(temperature=0),
        stopping=StoppingParams(
            max_new_tokens=24,
            min_new_tokens=24,
            stop=["zzz-never", stop],
            include_stop_in_output=include,
        ),
    )
    run_until_idle(engine)
    at = full.find(stop)
    assert sink.finished().reason is FinishReason.STOP_SEQUENCE
    assert sink.text() == sink.finished().text == full[: at + (len(stop) if include else 0)]
    assert sink.tokens() == output[: last + 1]


def test_stop_matcher_holds_only_what_could_start_a_stop() -> None:
    matcher = StopMatcher(["STOP", "halt"], include_stop=False)
    assert matcher.push("abc ST") == "abc "
    assert matcher.push("O") == ""
    assert matcher.push("P and more") == ""
    assert matcher.matched == "STOP"
    assert matcher.push("later") == ""

    matcher = StopMatcher(["STOP"], include_stop=True)
    assert matcher.push("xxS") == "xx"
    assert matcher.push("Tyy") == "STyy"
    assert matcher.push("ST") == ""
    assert matcher.push("OPzz") == "STOP"
    assert matcher.flush() == ""

    matcher = StopMatcher(["ab", "b"], include_stop=False)
    assert matcher.push("xab") == "x"  # the earliest match wins
    matcher = StopMatcher(["END"], include_stop=False)
    assert matcher.push("E") == ""
    assert matcher.flush() == "E"
