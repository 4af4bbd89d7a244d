"""Summarize throughput: the server's continuous batching vs in-process model.generate().

256 concurrent single-input Summarize calls through the SDK against a server subprocess,
compared with ``model.generate()`` in this process over the same inputs, batched
(batch 32, padded) and one at a time. Same model (a random T5 built like the preset,
half t5-small's width: 4+4 layers, d_model 256, 4 heads, d_ff 1024, the preset's small
vocabulary; small enough that 256 one-at-a-time generations finish on a shared CPU),
greedy, every output exactly ``--max-new-tokens`` long (EOS ignored) so all contenders
generate the same number of tokens; same torch thread count, all warmed
up, runs interleaved, median of 3. Prints raw numbers and ratios.

    python bench/seq2seq.py [--requests 256] [--threads 2] [--rounds 3] [--max-new-tokens 32]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common


def build_model(root: Path) -> Path:
    from modelwire_server.preset.text import build_t5

    path = root / "t5-mini-random"
    build_t5(path, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4)
    return path


WORDS = (
    "the city council met on tuesday to discuss the new budget for schools roads and "
    "parks after months of debate residents asked for more buses while the mayor said "
    "taxes would not rise this year and that the plan would be voted on next week"
).split()


async def run_server(target: str, inputs: list[str], max_new: int) -> float:
    from modelwire import AsyncClient

    async with AsyncClient(target, timeout=1200) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.summarize(
                    text, model="bench", temperature=0, max_new_tokens=max_new, ignore_eos=True
                )
                for text in inputs
            )
        )
        elapsed = time.perf_counter() - started
    assert all(r.generated_tokens == max_new for [r] in results)
    return elapsed


def run_generate(model: Any, tokenizer: Any, inputs: list[str], batch: int, max_new: int) -> float:
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            encoded = tokenizer(inputs[i : i + batch], padding=True, return_tensors="pt")
            out = model.generate(
                **encoded, do_sample=False, max_new_tokens=max_new, min_new_tokens=max_new
            )
            assert out.shape[1] == max_new + 1  # decoder start + the new tokens
    return time.perf_counter() - started


async def main() -> None:
    parser = common.base_parser(__doc__, 256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    common.set_threads(args.threads)
    inputs, max_new = common.sentences(WORDS, args.requests, (20, 48)), args.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
        entry = common.model_entry(
            "bench", "summarization", path, max_waiting=1024, max_batch_tokens=32768
        )
        with common.serve(Path(tmp) / "bench.yaml", [entry], args.threads) as server:
            await common.wait_ready(server.target)
            # Warm-up of every contender.
            await run_server(server.target, inputs[:64], max_new)
            run_generate(model, tokenizer, inputs[:64], 32, max_new)
            run_generate(model, tokenizer, inputs[:4], 1, max_new)
            times = await common.interleave(
                args.rounds,
                {
                    "server": lambda: run_server(server.target, inputs, max_new),
                    "generate_b32": lambda: run_generate(model, tokenizer, inputs, 32, max_new),
                    "generate_b1": lambda: run_generate(model, tokenizer, inputs, 1, max_new),
                },
            )
    report(times, args.requests, args.threads, max_new)


def report(times: dict[str, list[float]], n: int, threads: int, max_new: int) -> None:
    print(
        f"Summarize, {n} single-input requests x {max_new} new tokens, random T5 (4+4 layers, "
        f"d_model 256), greedy, {threads} torch threads, median of {len(times['server'])}"
    )
    print(f"{'contender':<30}{'seconds (runs)':<34}{'tokens/s':>10}")
    rows = (
        ("server", f"modelwire ({n} concurrent)"),
        ("generate_b32", "generate() batch 32"),
        ("generate_b1", "generate() one at a time"),
    )
    common.report_contenders(times, rows, n * max_new, reference="generate()", label_width=30)


if __name__ == "__main__":
    asyncio.run(main())
