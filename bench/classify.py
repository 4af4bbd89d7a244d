"""ClassifyText throughput: the server under concurrency vs in-process pipeline().

256 concurrent single-input ClassifyText calls through the SDK against a server
subprocess, compared with transformers' pipeline("sentiment-analysis") in this process
over the same inputs, batched (batch_size 32) and one at a time. Same model (a
BERT-base-shaped random model built like the preset), same torch thread count, all
warmed up, runs interleaved, median of 3. Prints raw numbers and ratios.

    python bench/classify.py [--requests 256] [--threads 2] [--rounds 3] [--cpu-prepack]
        [--dtype float32|bfloat16|float16] [--quantization none|int8|int4]

``--cpu-prepack``, ``--dtype`` and ``--quantization`` set the served model's options;
the pipeline stays as transformers makes it, in float32. Peak RSS is printed for the
server process and for this one (which holds the pipeline).
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from pathlib import Path

import _common as common

WORDS = (
    "the a movie film plot actor acting was is were great terrible boring brilliant "
    "slow fast funny sad music score scenes ending story characters director camera "
    "loved hated enjoyed watched again never always really quite truly utterly"
).split()


def build_model(root: Path) -> Path:
    from modelwire_server.preset.text import build_bert_classifier

    path = root / "bert-base-random"
    build_bert_classifier(
        path, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    )
    return path


async def run_server(target: str, inputs: list[str]) -> float:
    from modelwire import AsyncClient

    async with AsyncClient(target, timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client.classify_text(text, model="bench") for text in inputs))
        return time.perf_counter() - started


def run_pipeline(classifier: object, inputs: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    if batch_size == 1:
        for text in inputs:
            classifier(text)  # type: ignore[operator]
    else:
        classifier(inputs, batch_size=batch_size)  # type: ignore[operator]
    return time.perf_counter() - started


async def main() -> None:
    parser = common.base_parser(__doc__, 256)
    parser.add_argument("--cpu-prepack", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "int4"])
    args = parser.parse_args()

    import transformers

    common.set_threads(args.threads)
    inputs = common.sentences(WORDS, args.requests, (8, 24))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp))
        classifier = transformers.pipeline("sentiment-analysis", model=str(model), device="cpu")
        entry = common.model_entry(
            "bench",
            "sentiment-analysis",
            model,
            max_batch_size=32,
            max_wait_ms=5,
            cpu_prepack=args.cpu_prepack,
            dtype=args.dtype,
            quantization=args.quantization,
        )
        with common.serve(Path(tmp) / "bench.yaml", [entry], args.threads) as server:
            await common.wait_ready(server.target)
            # Warm-up of every contender.
            await run_server(server.target, inputs[:64])
            run_pipeline(classifier, inputs[:64], 32)
            run_pipeline(classifier, inputs[:16], 1)
            times = await common.interleave(
                args.rounds,
                {
                    "server": lambda: run_server(server.target, inputs),
                    "pipeline_b32": lambda: run_pipeline(classifier, inputs, 32),
                    "pipeline_b1": lambda: run_pipeline(classifier, inputs, 1),
                },
            )
            server_rss = common.peak_rss_mib(server.proc.pid)
    report(times, args.requests, args.threads, args.cpu_prepack)
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"server in {args.dtype}, quantization {args.quantization}; peak RSS: server "
        f"process {server_rss:.0f} MiB, this process (pipeline and client) {own_rss:.0f} MiB"
    )


def report(times: dict[str, list[float]], n: int, threads: int, prepack: bool) -> None:
    print(
        f"ClassifyText, {n} single-input requests, BERT-base-shaped random model, "
        f"{threads} torch threads, median of {len(times['server'])}"
        + (", server with cpu_prepack" if prepack else "")
    )
    print(f"{'contender':<28}{'seconds (runs)':<34}{'inputs/s':>10}")
    rows = (
        ("server", f"modelwire ({n} concurrent)"),
        ("pipeline_b32", "pipeline batch_size=32"),
        ("pipeline_b1", "pipeline one at a time"),
    )
    common.report_contenders(times, rows, n, reference="pipeline", label_width=28)


if __name__ == "__main__":
    asyncio.run(main())
