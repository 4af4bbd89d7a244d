"""Summarize, Translate and Generate on encoder-decoders, through the SDK against a real
server, with ``model.generate`` on the same inputs as the reference.

The server serves tiny-t5 (summarization), tiny-m2m100 (translation, language tokens)
and tiny-t5 again as a translation model ("t5-translate", T5 task prefixes): the two
tiny-t5 entries share one loaded model and engine.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from modelwire import AsyncClient, BadRequestError, FinishReason, GeneratedText
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import (
    RunningServer,
    client_fixture,
    one_torch_thread_fixture,
    preset_server_fixture,
    preset_variant,
    served_fixture,
)
from tests.helpers import bad_request_fields, raw_error
from tests.memory import MB, peak_growth

# Inputs on which the tiny random T5 does not just repeat one token.
TEXTS = [
    "Once upon a time there was a tiny model that wrote stories about the sea",
    "A long, long prompt that goes on and on about the weather and the sea and ships",
    "The quick brown fox jumps over the lazy dog.",
]
N = 20


one_thread = one_torch_thread_fixture()


s2s = preset_server_fixture(
    "tiny-t5", "tiny-m2m100", extra=[preset_variant("t5-translate", "translation", "tiny-t5")]
)
client = client_fixture("s2s", timeout=120)


class Reference:
    """The served model loaded again in the test, and ``generate`` on one input."""

    def __init__(self, path: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()

    def token(self, text: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(text))

    def generate(self, ids: list[int], **kwargs: Any) -> list[list[int]]:
        """Every returned sequence after the decoder start token, cut after EOS."""
        eos = self.model.generation_config.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(torch.tensor([ids]), do_sample=False, **kwargs)
        rows = [row[1:] for row in out.tolist()]
        return [row[: row.index(eos) + 1] if eos in row else row for row in rows]

    def expect(self, tokens: list[int]) -> GeneratedText:
        eos = self.model.generation_config.eos_token_id
        ends = bool(tokens) and tokens[-1] == eos
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        reason = FinishReason.EOS if ends else FinishReason.LENGTH
        return GeneratedText(text, reason, len(tokens))


t5 = served_fixture("s2s", "tiny-t5", Reference)
m2m = served_fixture("s2s", "tiny-m2m100", Reference)


def m2m_ids(m2m: Reference, text: str) -> list[int]:
    """M2M100's source encoding: ``__en__ text </s>``."""
    return [m2m.token("__en__"), *m2m.tokenizer(text)["input_ids"]]


async def test_summarize_matches_generate(client: AsyncClient, t5: Reference) -> None:
    greedy = await client.summarize(TEXTS, model="tiny-t5", temperature=0, max_new_tokens=N)
    beams = await client.summarize(TEXTS, model="tiny-t5", num_beams=3, max_new_tokens=N)
    for text, got_greedy, got_beam in zip(TEXTS, greedy, beams, strict=True):
        ids = t5.tokenizer(text)["input_ids"]  # no task_specific_params: no prefix
        [expected] = t5.generate(ids, max_new_tokens=N)
        assert got_greedy == t5.expect(expected)
        [best] = t5.generate(ids, max_new_tokens=N, num_beams=3)
        assert got_beam == t5.expect(best)
    assert len({r.text for r in greedy}) == len(TEXTS)
    assert all(len(set(r.text.split())) > 1 for r in greedy[:2]), "degenerate outputs"
    assert greedy != beams, "beam search should find something greedy did not"


async def test_translate_language_tokens_match_generate(
    client: AsyncClient, m2m: Reference
) -> None:
    greedy = await client.translate(
        TEXTS, source_language="en", target_language="fr", model="tiny-m2m100", max_new_tokens=N
    )
    beams = await client.translate(
        TEXTS,
        source_language="en",
        target_language="de",
        model="tiny-m2m100",
        num_beams=4,
        length_penalty=0.5,
        max_new_tokens=N,
    )
    for text, got_greedy, got_beam in zip(TEXTS, greedy, beams, strict=True):
        ids = m2m_ids(m2m, text)
        [expected] = m2m.generate(ids, max_new_tokens=N, forced_bos_token_id=m2m.token("__fr__"))
        assert got_greedy == m2m.expect(expected)
        assert expected[0] == m2m.token("__fr__")  # generated, counted, and not in the text
        german = m2m.token("__de__")
        [best] = m2m.generate(
            ids, max_new_tokens=N, forced_bos_token_id=german, num_beams=4, length_penalty=0.5
        )
        assert got_beam == m2m.expect(best)
    assert greedy[0].text != beams[0].text


async def test_translate_with_t5_task_prefix(client: AsyncClient, t5: Reference) -> None:
    [got] = await client.translate(
        TEXTS[0], source_language="en", target_language="fr", model="t5-translate", max_new_tokens=N
    )
    ids = t5.tokenizer("translate English to French: " + TEXTS[0])["input_ids"]
    [expected] = t5.generate(ids, max_new_tokens=N)
    assert got == t5.expect(expected)
    [plain] = t5.generate(t5.tokenizer(TEXTS[0])["input_ids"], max_new_tokens=N)
    assert got != t5.expect(plain), "the prefix should change the output"


async def test_generate_streams_the_decoder_output(client: AsyncClient, t5: Reference) -> None:
    chunks = []
    async with client.generate_stream(
        TEXTS[1], model="tiny-t5", temperature=0, max_new_tokens=N, ignore_eos=True, logprobs=True
    ) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    ids = t5.tokenizer(TEXTS[1])["input_ids"]
    assert chunks[0].prompt_token_count == len(ids)  # the encoder's tokens
    body = [c for c in chunks if c.prompt_token_count is None]
    assert len(body) >= 2, "tokens should stream in several messages"
    tokens = [t for c in body for t in c.tokens]
    [expected] = t5.generate(ids, max_new_tokens=N, min_new_tokens=N)
    assert [t.id for t in tokens] == expected
    assert all(t.logprob is not None and t.logprob <= 0 for t in tokens)
    assert "".join(c.text for c in body) == t5.tokenizer.decode(expected, skip_special_tokens=True)
    assert body[-1].finish_reason == FinishReason.LENGTH


async def test_summarize_and_translate_share_decode_steps(
    s2s: RunningServer, client: AsyncClient
) -> None:
    """tiny-t5 serves both tasks from one engine: with the device held until both calls
    have queued their inputs, all six decode in the same steps."""
    summarizer, translator = s2s.runner("tiny-t5"), s2s.runner("t5-translate")
    engine = summarizer.engine
    assert translator.engine is engine
    queued, gate = threading.Event(), threading.Event()
    submit = engine.submit

    def counting_submit(*args: Any, **kwargs: Any) -> Any:
        handle = submit(*args, **kwargs)
        if engine.stats().waiting == 2 * len(TEXTS):
            queued.set()
        return handle

    before = engine.stats()
    engine.submit = counting_submit
    held = asyncio.run_coroutine_threadsafe(summarizer.worker.run(gate.wait), s2s.loop)
    try:
        calls = asyncio.gather(
            client.summarize(TEXTS, model="tiny-t5", max_new_tokens=N, ignore_eos=True),
            client.translate(
                TEXTS,
                target_language="de",
                source_language="en",
                model="t5-translate",
                max_new_tokens=N,
                ignore_eos=True,
            ),
        )
        assert await asyncio.to_thread(queued.wait, 60)
    finally:
        gate.set()
        engine.submit = submit
    summaries, translations = await calls
    held.result(60)
    # Replies leave mid-step; a job queued behind that step runs once it has ended.
    await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(summarizer.worker.run(lambda: None), s2s.loop)
    )
    after = engine.stats()
    assert [r.generated_tokens for r in [*summaries, *translations]] == [N] * 6
    assert after.generated_tokens - before.generated_tokens == 6 * N
    # One step admits and prefills all six (their first token) and decodes the second;
    # N - 1 steps for all, where two engines' worth of separate batches would need more.
    assert after.steps - before.steps <= N
    assert after.last_decode_rows == 6


@pytest.mark.parametrize(
    ("model", "source", "target", "field"),
    [
        ("tiny-m2m100", "en", "xx", "target_language"),
        ("tiny-m2m100", "zz", "fr", "source_language"),
        ("t5-translate", "en", "tlh", "target_language"),
        ("t5-translate", None, "fr", "source_language"),
    ],
)
async def test_language_pairs_the_model_cannot_do(
    client: AsyncClient, model: str, source: str | None, target: str, field: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.translate("Hello", source_language=source, target_language=target, model=model)
    assert [v.field for v in info.value.field_violations] == [field]


async def test_a_model_s_source_language_is_the_default(
    s2s: RunningServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preset's M2M100 serves with source_language: en, so a request may leave it
    out; without that setting a language-token model needs one named."""
    [implied] = await client.translate("Hello, world", target_language="fr", model="tiny-m2m100")
    [named] = await client.translate(
        "Hello, world", source_language="en", target_language="fr", model="tiny-m2m100"
    )
    assert implied == named
    monkeypatch.setattr(s2s.runner("tiny-m2m100").config, "source_language", None)
    with pytest.raises(BadRequestError) as info:
        await client.translate("Hello", target_language="fr", model="tiny-m2m100")
    assert [v.field for v in info.value.field_violations] == ["source_language"]


async def test_refusals(s2s: RunningServer, client: AsyncClient) -> None:
    empty = await raw_error(s2s, "Summarize", pb.SummarizeRequest(model="tiny-t5"))
    assert bad_request_fields(empty) == ["inputs"]
    request = pb.TranslateRequest(model="tiny-m2m100", target_language="fr", source_language="en")
    assert bad_request_fields(await raw_error(s2s, "Translate", request)) == ["inputs"]
    blank = pb.TranslateRequest(model="tiny-m2m100", inputs=["Hi"], source_language="en")
    assert bad_request_fields(await raw_error(s2s, "Translate", blank)) == ["target_language"]
    too_long = pb.TranslateRequest(
        model="tiny-m2m100",
        inputs=["ok", "word " * 400],
        source_language="en",
        target_language="fr",
    )
    assert bad_request_fields(await raw_error(s2s, "Translate", too_long)) == ["inputs[1]"]
    several = pb.SummarizeRequest(model="tiny-t5", inputs=["Hi"])
    several.sampling.n = 2
    assert bad_request_fields(await raw_error(s2s, "Summarize", several)) == ["sampling.n"]
    wrong_task = pb.SummarizeRequest(model="tiny-m2m100", inputs=["Hi"])
    assert bad_request_fields(await raw_error(s2s, "Summarize", wrong_task)) == ["model"]


def test_sdk_checks_before_sending() -> None:
    client = AsyncClient("127.0.0.1:1")  # nothing listens: every call must fail locally
    with pytest.raises(ValueError, match="inputs"):
        asyncio.run(client.summarize([]))
    with pytest.raises(ValueError, match="`n` must be 1"):
        asyncio.run(client.summarize("Hi", n=2))
    with pytest.raises(ValueError, match="target_language"):
        asyncio.run(client.translate("Hi", target_language=""))
    with pytest.raises(TypeError, match="logprobs"):
        asyncio.run(client.summarize("Hi", logprobs=True))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="top_p"):
        asyncio.run(client.translate("Hi", target_language="fr", top_p=0))


async def test_out_of_range_length_penalty_is_refused(
    s2s: RunningServer, client: AsyncClient
) -> None:
    """Once a division by zero that failed every stream on the model (issue 15)."""
    request = pb.SummarizeRequest(model="tiny-t5", inputs=["Hello there"])
    request.sampling.num_beams = 2
    for value in (-3.4e38, 3.4e38, float("nan"), float("inf")):
        request.sampling.length_penalty = value
        error = await raw_error(s2s, "Summarize", request)
        assert error.code().name == "INVALID_ARGUMENT"
        assert bad_request_fields(error) == ["sampling.length_penalty"]
    # A strong but finite preference is served.
    summary = await client.summarize("Hello there", model="tiny-t5", num_beams=2, length_penalty=-3)
    assert summary[0].generated_tokens > 0


async def test_input_past_the_tokenizer_limit_is_refused_before_it_costs_memory(
    s2s: RunningServer, client: AsyncClient
) -> None:
    """The preset's T5 has relative positions, so nothing in the model stops a long
    input, and its attention memory grows with the square of the length (12.8 KB took
    2.5 GB): the tokenizer's model_max_length (512) is the limit."""
    text = "the quick brown fox jumps over the lazy dog " * 290  # 12.8 KB
    request = pb.SummarizeRequest(model="tiny-t5", inputs=["short", text])
    with peak_growth() as growth:
        error = await raw_error(s2s, "Summarize", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["inputs[1]"]
    assert "at most 512" in error.details()
    assert growth.bytes < 500 * MB  # about 2,500 MB when it ran
    runner = s2s.runner("tiny-t5")
    assert runner.max_input_tokens == runner.tokenizer.model_max_length == 512
    [ok] = await client.summarize("still here", model="tiny-t5", max_new_tokens=2)
    assert ok.generated_tokens > 0


async def test_a_generate_prompt_past_the_tokenizer_limit_is_refused_too(
    s2s: RunningServer, client: AsyncClient
) -> None:
    """Generate on T5 reaches the same encoder as Summarize: the same limit holds."""
    text = "the quick brown fox jumps over the lazy dog " * 290  # 12.8 KB, ~2,600 tokens
    with peak_growth() as growth, pytest.raises(BadRequestError) as refused:
        await client.generate(text, model="tiny-t5", max_new_tokens=4)
    assert [v.field for v in refused.value.field_violations] == ["prompt"]
    assert "the model's encoder takes 512" in str(refused.value)
    assert growth.bytes < 500 * MB
    result = await client.generate("still here", model="tiny-t5", max_new_tokens=2)
    assert result.sequences[0].tokens
