"""Image classification, object detection and CTC ASR throughput: the server under
concurrency vs transformers' pipelines in process.

For each task, ``--requests`` concurrent single-input calls through the SDK against a
server subprocess, compared with the task's pipeline in this process on the same
inputs, batched (batch_size 16) and one at a time. The server is sent PNG bytes (it
decodes them itself) and raw float32 PCM; the pipelines get the decoded PIL images and
numpy arrays. Random-weight models (``--size small``: ViT 224 px / 6x384, DETR with a
three-stage ResNet at 320-480 px, wav2vec2 4x384; ``tiny``: the preset's), same torch
thread count, everything warmed up, runs interleaved, median of ``--rounds``. Prints
raw numbers and ratios.

    python bench/media_tasks.py [--requests 64] [--threads 2] [--rounds 3] [--size small]
        [--tasks image-classification object-detection asr]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 16
SR = 16_000
# Classification images come in three sizes; detection images in one, since the
# detection pipeline cannot batch images of different sizes (its collate fails).
MIXED_SIZES = ((240, 320), (480, 640), (400, 400))


@dataclass
class Task:
    """One task: its model, inputs, server call and pipeline call."""

    name: str
    config_task: str
    pipeline_task: str
    build: Callable[[Path], None]
    preset: str
    inputs: Callable[[np.random.Generator], tuple[Any, Any]]  # (server input, pipeline input)
    call: Callable[[Any, Any], Awaitable[Any]]  # (client, server input)
    pipeline_kwargs: dict[str, Any]


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


def tasks() -> list[Task]:
    return [
        Task("image-classification", "image-classification", "image-classification",
             build_vit, "tiny-vit", lambda rng: image_input(rng, MIXED_SIZES),
             lambda client, x: client.classify_image(x, model="image-classification"), {}),
        Task("object-detection", "object-detection", "object-detection",
             build_detr, "tiny-detr", lambda rng: image_input(rng, ((480, 640),)),
             lambda client, x: client.detect_objects(x, model="object-detection"), {}),
        Task("asr", "automatic-speech-recognition", "automatic-speech-recognition",
             build_ctc, "tiny-wav2vec2-ctc", audio_input,
             lambda client, x: client.transcribe_audio(x, model="asr"), {}),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- running


def start_server(
    sources: dict[str, Path], chosen: list[Task], root: Path, threads: int
) -> tuple[subprocess.Popen[str], str]:
    entries = "".join(
        f"  - name: {t.name}\n    task: {t.config_task}\n    source: {sources[t.name]}\n"
        f"    max_batch_size: {BATCH}\n    max_wait_ms: 5\n"
        for t in chosen
    )
    config = root / "bench.yaml"
    config.write_text("models:\n" + entries)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MODELWIRE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelwire_server", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("modelwire-server listening on"):
            return proc, line.split()[-1]
    raise RuntimeError("server did not start")


async def run_server(client: Any, task: Task, items: list[Any]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(task.call(client, item) for item in items))
    return time.perf_counter() - started


def run_pipeline(pipe: Any, task: Task, items: list[Any], batch: int) -> float:
    started = time.perf_counter()
    if batch == 1:
        for item in items:
            pipe(item, **task.pipeline_kwargs)
    else:
        pipe(items, batch_size=batch, **task.pipeline_kwargs)
    return time.perf_counter() - started


def model_sources(chosen: list[Task], root: Path, size: str) -> dict[str, Path]:
    if size == "tiny":
        from modelwire_server import preset

        return {t.name: preset.ensure_model(t.preset) for t in chosen}
    for t in chosen:
        t.build(root / t.name)
    return {t.name: root / t.name for t in chosen}


async def bench(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    import torch
    import transformers

    from modelwire import AsyncClient

    torch.set_num_threads(args.threads)
    chosen = [t for t in tasks() if t.name in args.tasks]
    rng = np.random.default_rng(0)
    pairs = {t.name: [t.inputs(rng) for _ in range(args.requests)] for t in chosen}
    sent = {name: [s for s, _ in p] for name, p in pairs.items()}
    local = {name: [x for _, x in p] for name, p in pairs.items()}
    times = {t.name: {"server": [], "batched": [], "one": []} for t in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = model_sources(chosen, root, args.size)
        pipes = {
            t.name: transformers.pipeline(t.pipeline_task, model=str(sources[t.name]), device="cpu")
            for t in chosen
        }
        proc, target = start_server(sources, chosen, root, args.threads)
        try:
            async with AsyncClient(target, timeout=600) as client:
                await client.wait_until_ready(timeout=600)
                for t in chosen:  # warm-up of every contender
                    await run_server(client, t, sent[t.name][:BATCH])
                    run_pipeline(pipes[t.name], t, local[t.name][:BATCH], BATCH)
                    run_pipeline(pipes[t.name], t, local[t.name][:4], 1)
                for _ in range(args.rounds):  # interleaved, so drift hits all alike
                    for t in chosen:
                        pipe, name = pipes[t.name], t.name
                        times[name]["server"].append(await run_server(client, t, sent[name]))
                        times[name]["batched"].append(run_pipeline(pipe, t, local[name], BATCH))
                        times[name]["one"].append(run_pipeline(pipe, t, local[name], 1))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return times


def report(times: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(
        f"{args.requests} concurrent single-input requests per task, {args.size} random "
        f"models, {args.threads} torch threads, median of {args.rounds}"
    )
    print(f"{'task':<22}{'contender':<26}{'seconds (runs)':<30}{'inputs/s':>9}")
    for task, runs in times.items():
        median = {k: statistics.median(v) for k, v in runs.items()}
        for key, label in (
            ("server", "modelwire (concurrent)"),
            ("batched", f"pipeline batch {BATCH}"),
            ("one", "pipeline one at a time"),
        ):
            raw = ", ".join(f"{t:.2f}" for t in runs[key])
            rate = args.requests / median[key]
            print(f"{task:<22}{label:<26}{median[key]:<7.2f}({raw}){'':<4}{rate:>9.1f}")
        print(
            f"{'':<22}ratio vs batched {median['batched'] / median['server']:.2f}x, "
            f"vs one at a time {median['one'] / median['server']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", choices=["small", "tiny"], default="small")
    parser.add_argument(
        "--tasks", nargs="+", default=["image-classification", "object-detection", "asr"]
    )
    args = parser.parse_args()
    report(asyncio.run(bench(args)), args)


if __name__ == "__main__":
    main()
