"""Generate and Tokenize with images in chat messages (tiny-llava: CLIP + Llama) through
the SDK against a real server, with model.generate on the processor's inputs as the
reference, computed here on the same images and messages."""

from __future__ import annotations

import asyncio
import io
from functools import partial
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from modelwire import AsyncClient, BadRequestError, ChatMessage, FinishReason, ImagePart
from tests.conftest import (
    RunningServer,
    cancel_after_first_token,
    client_fixture,
    encode_image,
    engine_stats_once_idle,
    one_torch_thread_fixture,
    patterned_images,
    preset_server_fixture,
    preset_variant,
    served_fixture,
    staggered_token_ids,
    stream_token_ids,
)
from tests.tolerances import TINY_DEPTH, TINY_REDUCTION, assert_close_as_floats

LLAVA = "tiny-llava"
LIMITS = {"max_image_pixels": 50 * 50, "max_inputs": 2}


one_thread = one_torch_thread_fixture()


LIMITED = preset_variant("llava-limited", "image-text-to-text", LLAVA, **LIMITS)
vlm = preset_server_fixture(LLAVA, "tiny-llama", extra=[LIMITED])
client = client_fixture("vlm", timeout=120)


IMAGES = patterned_images(noise=(40, 48), gradient=(30, 45), stripes=(36, 36), every=3)


def chat(text: str, *images: Image.Image, order: str = "images-first") -> list[ChatMessage]:
    parts: list[str | ImagePart] = [ImagePart(encode_image(i)) for i in images]
    parts = [*parts, text] if order == "images-first" else [text, *parts]
    return [ChatMessage("user", parts)]


class Reference:
    """model.generate on processor(text=apply_chat_template(...), images=...)."""

    def __init__(self, path: str) -> None:
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path).eval()

    def inputs(self, messages: list[ChatMessage]) -> Any:
        turns, images = [], []
        for m in messages:
            content = []
            for part in [m.content] if isinstance(m.content, str) else m.content:
                if isinstance(part, ImagePart):
                    images.append(Image.open(io.BytesIO(part.data)).convert("RGB"))
                    content.append({"type": "image"})
                else:
                    content.append({"type": "text", "text": part})
            turns.append({"role": m.role, "content": content})
        text = self.processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return self.processor(text=text, images=images or None, return_tensors="pt")

    def greedy(self, messages: list[ChatMessage], n: int, *, drop: int = 0) -> list[int]:
        inputs = self.inputs(messages)
        if drop:  # truncate_prompt_tokens: the prompt's first `drop` tokens go
            inputs["input_ids"] = inputs["input_ids"][:, drop:]
            inputs["attention_mask"] = inputs["attention_mask"][:, drop:]
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    def prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        return self.inputs(messages)["input_ids"][0].tolist()


reference = served_fixture("vlm", LLAVA, Reference)


def ids(result: Any) -> list[int]:
    return [t.id for t in result.sequences[0].tokens]


def varied(tokens: list[int]) -> bool:
    """Not degenerate: the tiny model's output is not one token repeated."""
    return len(set(tokens)) >= max(3, len(tokens) // 3)


def open_stream(client: AsyncClient, messages: list[ChatMessage], n: int) -> Any:
    return client.generate_stream(
        messages=messages, model=LLAVA, temperature=0, max_new_tokens=n, ignore_eos=True
    )


async def stream_ids(client: AsyncClient, messages: list[ChatMessage], n: int) -> list[int]:
    return await stream_token_ids(open_stream(client, messages, n))


async def test_greedy_stream_matches_generate_and_depends_on_the_image(
    client: AsyncClient, reference: Reference
) -> None:
    chunks = []
    messages = chat("What is in the picture?", IMAGES[0])
    async with client.generate_stream(
        messages=messages, model=LLAVA, temperature=0, max_new_tokens=16, ignore_eos=True
    ) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    expected = reference.greedy(messages, 16)
    prompt = reference.prompt_ids(messages)
    assert chunks[0].prompt_token_count == len(prompt)
    assert prompt.count(reference.model.config.image_token_id) == 16
    body = chunks[1:]
    assert len(body) >= 2, "tokens should stream in several messages"
    assert [t.id for c in body for t in c.tokens] == expected
    assert body[-1].finish_reason == FinishReason.LENGTH
    tokenizer = reference.processor.tokenizer
    full = tokenizer.decode(prompt + expected, skip_special_tokens=True)
    assert (
        "".join(c.text for c in body)
        == full[len(tokenizer.decode(prompt, skip_special_tokens=True)) :]
    )

    other = chat("What is in the picture?", IMAGES[1])
    got_other = await stream_ids(client, other, 16)
    assert got_other == reference.greedy(other, 16)
    assert got_other != expected, "the output must depend on the image"
    assert varied(expected) and varied(got_other), (expected, got_other)


async def test_two_images_in_one_message(client: AsyncClient, reference: Reference) -> None:
    messages = chat("Which one is brighter?", IMAGES[0], IMAGES[2], order="text-first")
    got = await stream_ids(client, messages, 12)
    assert got == reference.greedy(messages, 12)
    swapped = chat("Which one is brighter?", IMAGES[2], IMAGES[0], order="text-first")
    got_swapped = await stream_ids(client, swapped, 12)
    assert got_swapped == reference.greedy(swapped, 12)
    assert got_swapped != got, "the output must depend on the images' order"


async def test_text_only_chat_and_raw_prompt(client: AsyncClient, reference: Reference) -> None:
    messages = [ChatMessage("user", "Tell me about the sea")]
    assert await stream_ids(client, messages, 10) == reference.greedy(messages, 10)
    tokenizer, model = reference.processor.tokenizer, reference.model
    encoded = tokenizer("The sea is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=10, min_new_tokens=10)
    raw = await client.generate(
        "The sea is", model=LLAVA, temperature=0, max_new_tokens=10, ignore_eos=True
    )
    assert ids(raw) == out[0, encoded["input_ids"].shape[1] :].tolist()


async def test_image_and_text_requests_share_decode_steps(
    vlm: RunningServer, client: AsyncClient, reference: Reference
) -> None:
    requests = [
        (chat("Describe it.", IMAGES[0]), 30),
        ([ChatMessage("user", "Hello there, how are you?")], 26),
        (chat("And this one?", IMAGES[1]), 22),
        (chat("Both?", IMAGES[2], IMAGES[0]), 18),
        (chat("Colours?", IMAGES[2]), 14),
    ]
    expected = [reference.greedy(m, n) for m, n in requests]
    engine = vlm.runner(LLAVA).engine
    before = dict(engine.stats().decode_batch_sizes)

    # Staggered: each request arrives once the previous one streams, so it joins a
    # batch that is already decoding.
    got = await staggered_token_ids([partial(open_stream, client, m, n) for m, n in requests])
    assert got == expected
    # All at once: image and text rows share prefills too (pixel values concatenated
    # across the rows that have images, in row order).
    at_once = await asyncio.gather(*(stream_ids(client, m, n) for m, n in requests))
    assert at_once == expected
    assert len({tuple(t[:10]) for t in got}) == len(got)
    sizes = engine.stats().decode_batch_sizes
    wide = sum(n - before.get(rows, 0) for rows, n in sizes.items() if rows >= 2)
    assert wide > 0, f"no decode step ran 2 or more rows: {sizes}"


async def test_beam_search_matches_generate(client: AsyncClient, reference: Reference) -> None:
    messages = chat("What is it?", IMAGES[1])
    inputs = reference.inputs(messages)
    with torch.inference_mode():
        out = reference.model.generate(
            **inputs, num_beams=3, num_return_sequences=2, do_sample=False, max_new_tokens=10
        )
    pad = reference.processor.tokenizer.pad_token_id
    width = inputs["input_ids"].shape[1]
    expected = [[t for t in row[width:].tolist() if t != pad] for row in out]
    beams = await client.generate(
        messages=messages, model=LLAVA, num_beams=3, n=2, max_new_tokens=10
    )
    got = [[t.id for t in s.tokens] for s in sorted(beams.sequences, key=lambda s: s.index)]
    assert [g[: len(e)] for g, e in zip(got, expected, strict=True)] == expected


async def test_tokenize_returns_the_expanded_prompt(
    client: AsyncClient, reference: Reference
) -> None:
    messages = chat("Look", IMAGES[0], IMAGES[1])
    tokenized = await client.tokenize(messages=messages, model=LLAVA)
    expected = reference.prompt_ids(messages)
    assert tokenized.token_ids == expected
    image_id = reference.model.config.image_token_id
    assert expected.count(image_id) == 32
    placeholder = reference.processor.image_token
    spans = sorted({o for t, o in zip(tokenized.token_ids, tokenized.offsets, strict=True)
                    if t == image_id})  # fmt: skip
    assert len(spans) == 2 and all(tokenized.text[s:e] == placeholder for s, e in spans)
    result = await client.generate(messages=messages, model=LLAVA, max_new_tokens=1)
    assert result.prompt_token_count == len(expected)


async def test_truncation_keeps_the_images_whole(client: AsyncClient, reference: Reference) -> None:
    messages = chat("Short", IMAGES[2])
    prompt = reference.prompt_ids(messages)
    first = prompt.index(reference.model.config.image_token_id)
    assert first >= 1
    kept = await client.generate(
        messages=messages,
        model=LLAVA,
        temperature=0,
        max_new_tokens=8,
        ignore_eos=True,
        truncate_prompt_tokens=len(prompt) - first,
    )
    assert kept.prompt_token_count == len(prompt) - first
    assert ids(kept) == reference.greedy(messages, 8, drop=first)
    with pytest.raises(BadRequestError) as caught:
        await client.generate(
            messages=messages, model=LLAVA, max_new_tokens=2, truncate_prompt_tokens=8
        )
    assert caught.value.field_violations[0].field == "options.truncate_prompt_tokens"


async def field_of(call: Any) -> str:
    with pytest.raises(BadRequestError) as caught:
        await call
    return caught.value.field_violations[0].field


async def test_bad_image_requests_name_the_part(client: AsyncClient) -> None:
    text_only = chat("What is this?", IMAGES[0], order="text-first")
    assert (
        await field_of(client.generate(messages=text_only, model="tiny-llama", max_new_tokens=2))
        == "messages[0].content[1].image"
    )
    assert (
        await field_of(client.tokenize(messages=text_only, model="tiny-llama"))
        == "messages[0].content[1].image"
    )
    corrupt = [
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
        ChatMessage("user", [ImagePart(encode_image(IMAGES[0])), "and", ImagePart(b"\x89PNG not")]),
    ]
    for model in (LLAVA, "llava-limited"):
        assert (
            await field_of(client.generate(messages=corrupt, model=model, max_new_tokens=2))
            == "messages[2].content[2].image"
        )
    truncated = encode_image(IMAGES[1])[:-40]
    assert (
        await field_of(
            client.generate(
                messages=[*chat("x", IMAGES[0]), ChatMessage("user", [ImagePart(truncated)])],
                model=LLAVA,
                max_new_tokens=2,
            )
        )
        == "messages[1].content[0].image"
    )
    big = ImagePart(encode_image(Image.new("RGB", (60, 60), "white")))
    assert (
        await field_of(
            client.generate(
                messages=[ChatMessage("user", ["x", big])], model="llava-limited", max_new_tokens=2
            )
        )
        == "messages[0].content[1].image"
    )
    three = chat("x", *IMAGES)
    assert (
        await field_of(client.generate(messages=three, model="llava-limited", max_new_tokens=2))
        == "messages"
    )
    assert (
        await field_of(client.generate("see <image> here", model=LLAVA, max_new_tokens=2))
        == "prompt"
    )
    sneaky = [ChatMessage("user", ["see <image> here"])]
    assert (
        await field_of(client.generate(messages=sneaky, model=LLAVA, max_new_tokens=2))
        == "messages[0].content[0].text"
    )
    # The server is fine afterwards, and within the limits the limited model works.
    ok = await client.generate(messages=chat("x", IMAGES[0]), model="llava-limited",
                               max_new_tokens=2)  # fmt: skip
    assert len(ok.sequences[0].tokens) >= 1


async def test_cancelling_an_image_stream_frees_its_row(
    vlm: RunningServer, client: AsyncClient
) -> None:
    engine = vlm.runner(LLAVA).engine
    generated_before = engine.stats().generated_tokens
    stream = client.generate_stream(
        messages=chat("Keep going", IMAGES[0]),
        model=LLAVA,
        temperature=0,
        max_new_tokens=400,
        ignore_eos=True,
    )
    await cancel_after_first_token(stream)
    stats = await engine_stats_once_idle(engine)  # the engine drops it within a step
    assert stats.running_rows == stats.waiting == stats.reserved_tokens == 0, stats
    assert engine.stats().generated_tokens - generated_before < 100


def test_prefill_rows_with_differing_extras_match_each_alone(
    reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows whose extras do not concatenate (images of different shapes, here: every
    image row taken for its own shape) prefill apart and join as one state, in the
    callers' order; rows without images add nothing to the others' pixel values."""
    from modelwire_server.engine import adapter as adapter_module
    from modelwire_server.engine.adapter import CausalLMAdapter, PrefillInput

    adapter = CausalLMAdapter(reference.model, "cpu")
    a = reference.inputs(chat("One", IMAGES[0]))
    b = reference.inputs(chat("Two", IMAGES[1], IMAGES[2]))
    text = reference.inputs([ChatMessage("user", "Just some text, longer than the rest")])
    rows = [
        PrefillInput(text["input_ids"][0].tolist()),
        PrefillInput(a["input_ids"][0].tolist(), extras={"pixel_values": a["pixel_values"]}),
        PrefillInput(b["input_ids"][0].tolist(), extras={"pixel_values": b["pixel_values"]}),
        PrefillInput(text["input_ids"][0].tolist()[:-3]),
    ]
    alone = [adapter.prefill([row]) for row in rows]
    expected = torch.cat([out.logits for out in alone])
    assert not torch.allclose(expected[1], expected[2], atol=1e-3)
    step = torch.tensor([5, 6, 7, 8])
    expected_step = torch.cat(
        [adapter.decode(out.state, step[i : i + 1]) for i, out in enumerate(alone)]
    )
    for split in (False, True):
        if split:
            monkeypatch.setattr(adapter_module, "_extras_signature", id)
            assert len(adapter_module._extras_groups(rows)) == 2
        together = adapter.prefill(rows)
        assert_close_as_floats(
            together.logits, expected, reduction=TINY_REDUCTION, depth=TINY_DEPTH
        )
        assert together.state.rows == 4
        # One decode step from the joined state matches each row's own.
        assert_close_as_floats(
            adapter.decode(together.state, step),
            expected_step,
            reduction=TINY_REDUCTION,
            depth=TINY_DEPTH,
        )


async def test_a_chats_images_are_limited_by_their_pixels_together(client: AsyncClient) -> None:
    """llava-limited takes 2,500 pixels: each of two images fits, the two together not."""
    two = chat("x", IMAGES[0], IMAGES[1])  # 1,920 + 1,350 pixels
    assert (
        await field_of(client.generate(messages=two, model="llava-limited", max_new_tokens=2))
        == "messages"
    )
    with pytest.raises(BadRequestError, match="3270 pixels together"):
        await client.generate(messages=two, model="llava-limited", max_new_tokens=2)
