"""CaptionImage through the SDK against a real server, with ``model.generate`` on the
same images (and prompts) as the reference, computed here.

Two captioners: tiny-blip (a text decoder cross-attending to the image, which
continues a prompt) and tiny-vit-gpt2 (a vision-encoder-decoder, whose decoder start
and prompt are a forced prefix). A caption's text includes its prompt, as the
image-to-text pipeline's does; ``generated_tokens`` counts the tokens after it.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    VisionEncoderDecoderModel,
)

from modelwire import AsyncClient, FinishReason, GeneratedText
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import (
    IMAGE_LIMITS,
    RunningServer,
    assert_image_limits_refused,
    client_fixture,
    encode_image,
    one_torch_thread_fixture,
    preset_server_fixture,
    preset_variant,
    served_fixture,
)
from tests.helpers import bad_request_fields, raw_error

N = 10
PROMPT = "a picture of"


one_thread = one_torch_thread_fixture()


LIMITED = preset_variant("blip-limited", "image-to-text", "tiny-blip", **IMAGE_LIMITS)
captioners = preset_server_fixture("tiny-blip", "tiny-vit-gpt2", extra=[LIMITED])
client = client_fixture("captioners", timeout=120)


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    gradient = np.linspace(0, 255, 40 * 70 * 3).reshape(40, 70, 3).astype(np.uint8)
    return [*noise, Image.fromarray(gradient), Image.new("RGB", (1, 1), "red")]


class Blip:
    """tiny-blip loaded again in the test; ``generate`` as its model card calls it."""

    def __init__(self, path: str) -> None:
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = BlipForConditionalGeneration.from_pretrained(path).eval()
        self.eos = self.model.config.text_config.sep_token_id

    def caption(self, image: Image.Image, prompt: str | None = None, **kwargs: Any) -> list[int]:
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=N, do_sample=False, **kwargs)
        return out[0].tolist()

    def expect(self, ids: list[int], prompt: str | None = None) -> GeneratedText:
        # generate() returns [DEC] + prompt + caption tokens.
        start = len(self.processor.tokenizer(prompt)["input_ids"]) - 1 if prompt else 1
        generated = ids[start:]
        ends = bool(generated) and generated[-1] == self.eos
        text = self.processor.decode(ids, skip_special_tokens=True)
        return GeneratedText(
            text, FinishReason.EOS if ends else FinishReason.LENGTH, len(generated)
        )


class VitGpt2:
    """tiny-vit-gpt2 loaded again in the test."""

    def __init__(self, path: str) -> None:
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = VisionEncoderDecoderModel.from_pretrained(path).eval()
        self.eos = self.model.generation_config.eos_token_id

    def start(self, prompt: str | None) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        return [self.model.generation_config.decoder_start_token_id, *ids]

    def caption(self, image: Image.Image, prompt: str | None = None, **kwargs: Any) -> list[int]:
        pixels = self.image_processor(images=image, return_tensors="pt").pixel_values
        if prompt:
            kwargs["decoder_input_ids"] = torch.tensor([self.start(prompt)])
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=pixels, max_new_tokens=N, do_sample=False, **kwargs
            )
        return out[0].tolist()

    def expect(self, ids: list[int], prompt: str | None = None) -> GeneratedText:
        generated = ids[len(self.start(prompt)) :]
        ends = bool(generated) and generated[-1] == self.eos
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return GeneratedText(
            text, FinishReason.EOS if ends else FinishReason.LENGTH, len(generated)
        )


blip = served_fixture("captioners", "tiny-blip", Blip)
vitgpt2 = served_fixture("captioners", "tiny-vit-gpt2", VitGpt2)


# ---------------------------------------------------------------------- parity


async def test_blip_greedy_captions_match_generate(client: AsyncClient, blip: Blip) -> None:
    images = sample_images()
    plain = await client.caption_image(images, model="tiny-blip", max_new_tokens=N)
    prompted = await client.caption_image(
        images, model="tiny-blip", prompt=PROMPT, max_new_tokens=N, temperature=0
    )
    for image, got, got_prompted in zip(images, plain, prompted, strict=True):
        assert got == blip.expect(blip.caption(image))
        assert got_prompted == blip.expect(blip.caption(image, PROMPT), PROMPT)
        assert got_prompted.text.startswith(PROMPT)
    assert len({r.text for r in plain}) >= 4, "captions should vary with the image"
    assert any(r.generated_tokens > 3 for r in prompted), "the prompt should be continued"


async def test_vit_gpt2_greedy_captions_match_generate(
    client: AsyncClient, vitgpt2: VitGpt2
) -> None:
    images = sample_images()
    plain = await client.caption_image(images, model="tiny-vit-gpt2", max_new_tokens=N)
    for image, got in zip(images, plain, strict=True):
        assert got == vitgpt2.expect(vitgpt2.caption(image))
    assert len({r.text for r in plain}) >= 4, "captions should vary with the image"
    # A prompt is a forced decoder prefix: the caption starts with it and continues it.
    prompted = await client.caption_image(
        images[:2], model="tiny-vit-gpt2", prompt=PROMPT, max_new_tokens=N
    )
    for image, got in zip(images[:2], prompted, strict=True):
        assert got == vitgpt2.expect(vitgpt2.caption(image, PROMPT), PROMPT)
        assert got.text.startswith(PROMPT) and got.generated_tokens > 0


@pytest.mark.parametrize("name", ["tiny-blip", "tiny-vit-gpt2"])
async def test_beam_search_matches_generate(
    client: AsyncClient, blip: Blip, vitgpt2: VitGpt2, name: str
) -> None:
    reference: Any = blip if name == "tiny-blip" else vitgpt2
    images = sample_images()[:4]
    beams = await client.caption_image(images, model=name, num_beams=3, max_new_tokens=N)
    greedy = await client.caption_image(images, model=name, max_new_tokens=N)
    for image, got in zip(images, beams, strict=True):
        assert got == reference.expect(reference.caption(image, num_beams=3))
    assert beams != greedy, "beam search should find something greedy did not"


async def test_seeded_sampling_is_reproducible(client: AsyncClient) -> None:
    images = sample_images()[:3]
    for name in ("tiny-blip", "tiny-vit-gpt2"):
        kwargs = {"model": name, "temperature": 1.5, "top_k": 0, "max_new_tokens": N}
        first = await client.caption_image(images, seed=7, **kwargs)
        again = await client.caption_image(images, seed=7, **kwargs)
        other = await client.caption_image(images, seed=8, **kwargs)
        assert first == again
        assert first != other, "another seed should sample other captions"


@pytest.mark.parametrize("name", ["tiny-blip", "tiny-vit-gpt2"])
async def test_concurrent_calls_decode_in_the_same_steps(
    captioners: RunningServer, client: AsyncClient, blip: Blip, vitgpt2: VitGpt2, name: str
) -> None:
    """With the device held until three calls (prompts of different lengths, and none)
    have queued their images, they all decode together, each still equal to generate:
    rows of different lengths share a left-padded cache, each at its own positions."""
    reference: Any = blip if name == "tiny-blip" else vitgpt2
    runner = captioners.runner(name)
    engine = runner.engine
    images = sample_images()[:4]
    prompts = [None, PROMPT, "two dogs"]
    total = len(images) * len(prompts)
    queued, gate = threading.Event(), threading.Event()
    submit = engine.submit

    def counting_submit(*args: Any, **kwargs: Any) -> Any:
        handle = submit(*args, **kwargs)
        if engine.stats().waiting == total:
            queued.set()
        return handle

    engine.submit = counting_submit
    held = asyncio.run_coroutine_threadsafe(runner.worker.run(gate.wait), captioners.loop)
    try:
        calls = asyncio.gather(
            *(client.caption_image(images, model=name, prompt=p, max_new_tokens=N) for p in prompts)
        )
        assert await asyncio.to_thread(queued.wait, 60)
    finally:
        gate.set()
        engine.submit = submit
    results = await calls
    held.result(60)
    assert engine.stats().max_decode_rows >= total
    for p, got in zip(prompts, results, strict=True):
        assert list(got) == [reference.expect(reference.caption(i, p), p) for i in images]


async def test_model_code_runs_on_the_worker_thread(
    captioners: RunningServer, client: AsyncClient
) -> None:
    seen: set[str] = set()
    hooks = [
        captioners.runner(name)
        .model.get_decoder()
        .register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))
        for name in ("tiny-vit-gpt2",)
    ]
    blip_model = captioners.runner("tiny-blip").model
    hooks += [
        module.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))
        for module in (blip_model.vision_model, blip_model.text_decoder)
    ]
    try:
        await client.caption_image(encode_image(sample_images()[0]), max_new_tokens=2)
        await client.caption_image(sample_images()[0], model="tiny-vit-gpt2", max_new_tokens=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and all(name.startswith("modelwire-worker") for name in seen), seen


# ------------------------------------------------------------------ bad input


def image_bytes(kind: str) -> bytes:
    png = encode_image(sample_images()[0])
    return {"png": png, "cut": png[: len(png) // 2], "empty": b"", "junk": b"not an image"}[kind]


@pytest.mark.parametrize(
    ("images", "extra", "field", "says"),
    [
        (["empty", "png"], {}, "images[0]", "is empty"),
        (["png", "junk"], {}, "images[1]", "not a decodable image"),
        (["png", "png", "cut"], {}, "images[2]", "could not be decoded"),
        ([], {}, "images", "at least one"),
        (["png"], {"sampling": common_pb2.SamplingParameters(n=2)}, "sampling.n", "one caption"),
        (["png"], {"prompt": "word " * 80}, "prompt", "context is 64 tokens"),
        (["png"], {"prompt": "x" * 100_001}, "prompt", "the limit is 100000"),
        (
            ["png"],
            {"stopping": common_pb2.StoppingParameters(max_new_tokens=1000)},
            "stopping.max_new_tokens",
            "exceeds the context",
        ),
    ],
)
@pytest.mark.parametrize("model", ["tiny-blip", "tiny-vit-gpt2"])
async def test_bad_requests_are_invalid_argument_naming_the_field(
    captioners: RunningServer,
    client: AsyncClient,
    model: str,
    images: list[str],
    extra: dict,
    field: str,
    says: str,
) -> None:
    # Through the raw stub: the SDK refuses some of these before sending.
    request = pb.CaptionImageRequest(
        model=model, images=[common_pb2.Image(data=image_bytes(kind)) for kind in images], **extra
    )
    error = await raw_error(captioners, "CaptionImage", request)
    assert error.code().name == "INVALID_ARGUMENT", error.details()
    assert bad_request_fields(error) == [field]
    assert says in error.details()
    (still,) = await client.caption_image(image_bytes("png"), model=model, max_new_tokens=2)
    assert still.generated_tokens == 2 or still.finish_reason == FinishReason.EOS


async def test_limits_refuse_oversize_input_saying_the_limit(client: AsyncClient) -> None:
    small = Image.new("RGB", (50, 50), "blue")
    (fits,) = await client.caption_image(small, model="blip-limited", max_new_tokens=3)
    assert fits.generated_tokens > 0
    await assert_image_limits_refused(partial(client.caption_image, model="blip-limited"))


async def test_a_model_of_another_task_is_refused(captioners: RunningServer) -> None:
    request = pb.ClassifyImageRequest(
        model="tiny-blip", images=[common_pb2.Image(data=image_bytes("png"))]
    )
    error = await raw_error(captioners, "ClassifyImage", request)
    assert error.code().name == "INVALID_ARGUMENT"


# ------------------------------------------------- other vision-encoder-decoder decoders


def test_trocr_style_decoder_matches_generate(vitgpt2: VitGpt2) -> None:
    """A TrOCR decoder takes no position_ids (its embed_positions table reads the cache
    length): rows with decoder starts of different lengths, left-padded into one batch,
    still decode at their own positions. Engine-level, on a tiny random TrOCR built here."""
    import transformers

    from modelwire_server.engine.engine import GenerationEngine
    from modelwire_server.engine.types import Finished, SamplingParams, StoppingParams
    from modelwire_server.engine.types import GenerationRequest as Request
    from modelwire_server.engine.vision_seq2seq import VisionSeq2SeqAdapter

    tokenizer, eos = vitgpt2.tokenizer, vitgpt2.eos
    encoder = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, initializer_range=0.2)  # fmt: skip
    decoder = transformers.TrOCRConfig(vocab_size=len(tokenizer), d_model=64, decoder_layers=2,
                                       decoder_attention_heads=2, decoder_ffn_dim=64,
                                       max_position_embeddings=64, init_std=0.2,
                                       bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                                       decoder_start_token_id=eos)  # fmt: skip
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    torch.manual_seed(0)
    model = transformers.VisionEncoderDecoderModel(config=config).eval()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=eos, eos_token_id=eos, pad_token_id=eos
    )
    adapter = VisionSeq2SeqAdapter(model, "cpu")
    assert not adapter.explicit_positions  # the embed_positions path, not position_ids
    engine = GenerationEngine(model, tokenizer, device="cpu",
                              generation_config=model.generation_config,
                              max_batch_tokens=100_000, max_waiting=100, max_new_tokens_cap=100,
                              default_max_new_tokens=N, adapter=adapter)  # fmt: skip
    prompts = ["the", None, "a long prompt here", "x"]
    for beams in (1, 3):
        requests, expected = [], []
        for image, prompt in zip(sample_images()[:4], prompts, strict=True):
            pixels = vitgpt2.image_processor(images=image, return_tensors="pt").pixel_values
            start = vitgpt2.start(prompt) if prompt else None
            kwargs = {"decoder_input_ids": torch.tensor([start])} if start else {}
            with torch.inference_mode():
                out = model.generate(pixel_values=pixels, max_new_tokens=N, do_sample=False,
                                     num_beams=beams, **kwargs)[0].tolist()  # fmt: skip
            expected.append(tokenizer.decode(out[len(start or [eos]) :]))
            requests.append(Request(prompt_ids=[], sampling=SamplingParams(num_beams=beams),
                                    stopping=StoppingParams(max_new_tokens=N),
                                    extras={"pixel_values": pixels},
                                    decoder_prompt_ids=start))  # fmt: skip
        events: list[list[Any]] = [[] for _ in requests]
        for request, sink in zip(requests, events, strict=True):
            engine.submit(request, sink.append)
        while engine.has_work():
            engine.step()
        texts = [next(e.text for e in sink if isinstance(e, Finished)) for sink in events]
        assert texts == [t.removesuffix(tokenizer.eos_token) for t in expected]
        assert len(set(texts)) == len(texts)
