"""Media tasks' throughput: the server under concurrency vs transformers in process.

For each task, ``--requests`` concurrent single-input calls through the SDK against a
server subprocess, compared with the in-process transformers reference on the same
inputs, batched (batch_size 16) and one at a time:

- ``image-classification``, ``object-detection``, ``asr`` (CTC): the task's pipeline;
- ``whisper-asr``: ``pipeline("automatic-speech-recognition")`` with
  ``generate_kwargs={"num_beams": 1}`` (greedy, as the server) on 3-5 s clips;
- ``caption`` (BLIP): ``model.generate(**processor(images=...))``;
- ``image-chat`` (LLaVA, through Generate with an ``ImagePart`` in a chat message):
  ``model.generate`` on the processor's output for the chat template's text and the
  image, left-padded when batched.

The three generating tasks run on the server's generation engine; they are greedy and
make exactly ``--max-new-tokens`` tokens on both sides (the server ignores EOS, generate
gets ``min_new_tokens``), except Whisper, whose length is its own (the same on both
sides, greedy parity). The server is sent PNG bytes (it decodes them itself) and raw
float32 PCM; the references get the decoded PIL images and numpy arrays. Random-weight
models (``--size small``: ViT 224 px / 6x384, DETR with a three-stage ResNet at
320-480 px, wav2vec2 4x384; ``tiny``: the preset's; Whisper, BLIP and LLaVA are always
the preset's ``tiny-whisper``, ``tiny-blip``, ``tiny-llava``), same torch thread count,
everything warmed up, runs interleaved, median of ``--rounds``. Prints raw numbers and
ratios.

    python bench/media_tasks.py [--requests 64] [--threads 2] [--rounds 3] [--size small]
        [--max-new-tokens 16]
        [--tasks image-classification object-detection asr whisper-asr caption image-chat]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import _common as common
import numpy as np

BATCH = 16
SR = 16_000
# Classification images come in three sizes; detection images in one, since the
# detection pipeline cannot batch images of different sizes (its collate fails).
MIXED_SIZES = ((240, 320), (480, 640), (400, 400))
CHAT_PROMPTS = ("What is in the picture?", "Describe this image.", "What colour is it, mostly?")


@dataclass
class Task:
    """One task: its model, inputs, server call and in-process reference."""

    name: str
    config_task: str
    build: Callable[[Path], None] | None  # None: always the preset's model
    preset: str
    inputs: Callable[[np.random.Generator], tuple[Any, Any]]  # (server input, reference input)
    call: Callable[[Any, Any], Awaitable[Any]]  # (client, server input)
    reference: Callable[[str], common.Reference]  # model path -> run(inputs, batch)


# ------------------------------------------------------------------------------ models


def build_vit(path: Path) -> None:
    import transformers

    config = transformers.ViTConfig(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=6,
        num_attention_heads=6, intermediate_size=1536, num_labels=5,
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)


def build_detr(path: Path) -> None:
    import transformers

    backbone = transformers.ResNetConfig(
        embedding_size=32, hidden_sizes=[64, 128, 256], depths=[1, 1, 1],
        layer_type="basic", out_features=["stage3"],
    )  # fmt: skip
    config = transformers.DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, num_queries=50, d_model=128,
        encoder_layers=3, decoder_layers=3, encoder_ffn_dim=512, decoder_ffn_dim=512,
        encoder_attention_heads=8, decoder_attention_heads=8, num_labels=5,
    )  # fmt: skip
    transformers.DetrForObjectDetection(config).save_pretrained(path)
    processor = transformers.DetrImageProcessor(size={"shortest_edge": 320, "longest_edge": 480})
    processor.save_pretrained(path)


def build_ctc(path: Path) -> None:
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(vocab)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(path / "vocab.json"))
    extractor = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
        intermediate_size=1536, conv_dim=(256,) * 7, feat_extract_norm="layer",
        do_stable_layer_norm=True, pad_token_id=0,
    )  # fmt: skip
    transformers.Wav2Vec2ForCTC(config).save_pretrained(path)
    transformers.Wav2Vec2Processor(extractor, tokenizer).save_pretrained(path)


# ------------------------------------------------------------------------------ inputs


def image_input(rng: np.random.Generator, sizes: tuple[tuple[int, int], ...]) -> tuple[bytes, Any]:
    from PIL import Image

    height, width = sizes[int(rng.integers(len(sizes)))]
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), image


def audio_input(rng: np.random.Generator) -> tuple[Any, np.ndarray]:
    from modelwire import RawAudio

    samples = (0.1 * rng.standard_normal(int(rng.uniform(3, 5) * SR))).astype(np.float32)
    return RawAudio(samples, SR), samples


# -------------------------------------------------------------------------- references


def _blip_reference(new_tokens: int) -> Callable[[str], common.Reference]:
    def make(path: str) -> common.Reference:
        from transformers import AutoProcessor, BlipForConditionalGeneration

        processor = AutoProcessor.from_pretrained(path)
        model = BlipForConditionalGeneration.from_pretrained(path).eval()

        def run(images: list[Any], batch: int) -> None:
            for i in range(0, len(images), batch):
                encoded = processor(images=images[i : i + batch], return_tensors="pt")
                _generate(model, encoded, new_tokens)

        return run

    return make


def _llava_reference(new_tokens: int) -> Callable[[str], common.Reference]:
    def make(path: str) -> common.Reference:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"  # batched generation continues the right end
        model = AutoModelForImageTextToText.from_pretrained(path).eval()

        def text(prompt: str) -> str:
            turn = {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": prompt}],
            }
            return processor.apply_chat_template([turn], add_generation_prompt=True, tokenize=False)

        def run(pairs: list[tuple[Any, str]], batch: int) -> None:
            for i in range(0, len(pairs), batch):
                chunk = pairs[i : i + batch]
                encoded = processor(
                    text=[text(p) for _, p in chunk], images=[im for im, _ in chunk],
                    padding=True, return_tensors="pt",
                )  # fmt: skip
                _generate(model, encoded, new_tokens)

        return run

    return make


def _generate(model: Any, encoded: Any, new_tokens: int) -> None:
    """Greedy ``model.generate``, checked to make exactly ``new_tokens`` new tokens."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            **encoded, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
    # BLIP's output starts with its [DEC] token in place of a prompt.
    prompt = encoded["input_ids"].shape[1] if "input_ids" in encoded else 1
    assert out.shape[1] == prompt + new_tokens, (out.shape, prompt, new_tokens)


async def _caption(client: Any, png: bytes, new_tokens: int) -> None:
    [result] = await client.caption_image(
        png, model="caption", temperature=0, max_new_tokens=new_tokens, ignore_eos=True
    )
    assert result.generated_tokens == new_tokens, result


async def _chat(client: Any, messages: list[Any], new_tokens: int) -> None:
    result = await client.generate(
        messages=messages, model="image-chat", temperature=0, max_new_tokens=new_tokens,
        ignore_eos=True,
    )  # fmt: skip
    assert len(result.sequences[0].tokens) == new_tokens, result


def chat_input(rng: np.random.Generator) -> tuple[Any, tuple[Any, str]]:
    from modelwire import ChatMessage, ImagePart

    png, image = image_input(rng, MIXED_SIZES)
    prompt = CHAT_PROMPTS[int(rng.integers(len(CHAT_PROMPTS)))]
    return [ChatMessage("user", [ImagePart(png), prompt])], (image, prompt)


def tasks(new_tokens: int) -> list[Task]:
    return [
        Task("image-classification", "image-classification", build_vit, "tiny-vit",
             lambda rng: image_input(rng, MIXED_SIZES),
             lambda client, x: client.classify_image(x, model="image-classification"),
             common.pipeline_reference("image-classification")),
        Task("object-detection", "object-detection", build_detr, "tiny-detr",
             lambda rng: image_input(rng, ((480, 640),)),
             lambda client, x: client.detect_objects(x, model="object-detection"),
             common.pipeline_reference("object-detection")),
        Task("asr", "automatic-speech-recognition", build_ctc, "tiny-wav2vec2-ctc", audio_input,
             lambda client, x: client.transcribe_audio(x, model="asr"),
             common.pipeline_reference("automatic-speech-recognition")),
        Task("whisper-asr", "automatic-speech-recognition", None, "tiny-whisper", audio_input,
             lambda client, x: client.transcribe_audio(x, model="whisper-asr"),
             common.pipeline_reference("automatic-speech-recognition",
                                generate_kwargs={"num_beams": 1})),
        Task("caption", "image-to-text", None, "tiny-blip",
             lambda rng: image_input(rng, MIXED_SIZES),
             partial(_caption, new_tokens=new_tokens),
             _blip_reference(new_tokens)),
        Task("image-chat", "image-text-to-text", None, "tiny-llava", chat_input,
             partial(_chat, new_tokens=new_tokens),
             _llava_reference(new_tokens)),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- running


def model_sources(chosen: list[Task], root: Path, size: str) -> dict[str, Path]:
    from modelwire_server import preset

    sources = {}
    for t in chosen:
        if size == "tiny" or t.build is None:
            sources[t.name] = preset.ensure_model(t.preset)
        else:
            t.build(root / t.name)
            sources[t.name] = root / t.name
    return sources


async def bench(args: argparse.Namespace) -> common.TaskTimes:
    from modelwire import AsyncClient

    common.set_threads(args.threads)
    chosen = [t for t in tasks(args.max_new_tokens) if t.name in args.tasks]
    rng = np.random.default_rng(0)
    pairs = {t.name: [t.inputs(rng) for _ in range(args.requests)] for t in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = model_sources(chosen, root, args.size)
        references = {t.name: t.reference(str(sources[t.name])) for t in chosen}
        entries = [
            common.model_entry(t.name, t.config_task, sources[t.name], max_batch_size=BATCH,
                        max_wait_ms=5)
            for t in chosen
        ]  # fmt: skip
        with common.serve(root / "bench.yaml", entries, args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=600)
                benches = [
                    common.TaskBench(t.name, partial(t.call, client), references[t.name],
                              sent=[s for s, _ in pairs[t.name]],
                              local=[x for _, x in pairs[t.name]])
                    for t in chosen
                ]  # fmt: skip
                return await common.bench_tasks(benches, args.rounds, BATCH, warm=(BATCH, BATCH, 4))


def report(times: common.TaskTimes, args: argparse.Namespace) -> None:
    print(
        f"{args.requests} concurrent single-input requests per task, {args.size} random "
        f"models, {args.threads} torch threads, median of {args.rounds}"
    )
    if {"caption", "image-chat"} & set(times):
        print(f"caption and image-chat: {args.max_new_tokens} new tokens each, greedy, EOS ignored")
    print(f"{'task':<22}{'contender':<26}{'seconds (runs)':<30}{'inputs/s':>9}")

    def labels(task: str) -> tuple[str, str, str]:
        reference = "generate" if task in ("caption", "image-chat") else "pipeline"
        return "modelwire (concurrent)", f"{reference} batch {BATCH}", f"{reference} one at a time"

    common.report_tasks(times, args.requests, labels=labels, widths=(22, 26), raw_width=None)


def main() -> None:
    parser = common.base_parser(__doc__, 64)
    parser.add_argument("--size", choices=["small", "tiny"], default="small")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--tasks", nargs="+", default=[t.name for t in tasks(1)])
    args = parser.parse_args()
    unknown = set(args.tasks) - {t.name for t in tasks(1)}
    if unknown:
        parser.error(f"unknown --tasks {sorted(unknown)}")
    report(asyncio.run(bench(args)), args)


if __name__ == "__main__":
    main()
