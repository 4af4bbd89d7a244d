"""Generation throughput and latency: the server's engine vs model.generate().

A GPT-2-small-shaped random model (12 layers, 768 wide, vocab 50257, ~124M parameters),
32-token prompts, 128 new tokens with EOS ignored. Baseline: ``model.generate``
(use_cache=True, greedy) in this process on the same model, prompts and thread count,
warmed up. Contenders run interleaved, median of ``--rounds``; raw numbers are printed
beside the ratios:

- one stream through the server vs generate on the same prompt (tokens/s);
- 8 and 16 streams sent at once (aggregate tokens/s: all tokens / first request to last
  token) vs generate on the same prompts as one static batch; the same streams with
  arrivals spread over the first second;
- time to first token of a request arriving while 15 streams decode (each has streamed
  two tokens), vs alone.

Ratios are printed twice: of the medians (the target's definition), and as the median
of each round's own ratio, which a box whose speed drifts between rounds moves less.

    python bench/generate.py [--threads 2] [--rounds 3] [--device cpu|cuda] [--cpu-prepack]

On CUDA the model runs in bfloat16 on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, medians, model_entry, serve, set_threads

PROMPT_TOKENS = 32
NEW_TOKENS = 128
VOCAB = 50257


def build_model(root: Path) -> Path:
    """GPT-2 small's shape; the tokenizer is padded to its vocabulary so every id decodes."""
    from transformers import AutoTokenizer

    from modelwire_server.preset.text import build_gpt2

    path = root / "gpt2-small-random"
    build_gpt2(path, n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=VOCAB)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens([f"<x{i}>" for i in range(len(tokenizer), VOCAB)])
    tokenizer.save_pretrained(path)
    return path


def make_prompts(path: Path, count: int, seed: int = 0) -> list[str]:
    """Texts that tokenize to exactly PROMPT_TOKENS tokens (single-token words)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    words = [w for w in "the a of and to in is was it that for on with as by at".split()]
    rng = random.Random(seed)
    prompts = []
    while len(prompts) < count:
        text = "The" + "".join(" " + rng.choice(words) for _ in range(PROMPT_TOKENS - 1))
        if len(tokenizer(text)["input_ids"]) == PROMPT_TOKENS:
            prompts.append(text)
    return prompts


class Baseline:
    def __init__(self, path: Path, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = device

    def run(self, prompts: list[str]) -> float:
        """Tokens/s of one static batch."""
        encoded = self.tokenizer(prompts, return_tensors="pt").to(self.device)
        self._sync()
        started = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                **encoded,
                do_sample=False,
                use_cache=True,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        self._sync()
        elapsed = time.perf_counter() - started
        assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS
        return len(prompts) * NEW_TOKENS / elapsed

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


async def stream_one(
    client: Any, prompt: str, delay: float = 0.0, decoding: asyncio.Semaphore | None = None
) -> tuple[float, float, int]:
    """(time of first token, time of last token, tokens), as perf_counter instants.

    ``decoding`` is released once the stream has its second token (it is decoding)."""
    if delay:
        await asyncio.sleep(delay)
    first = 0.0
    tokens = 0
    async with client.generate_stream(
        prompt, model="bench", temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True
    ) as stream:
        async for chunk in stream:
            if chunk.tokens and not first:
                first = time.perf_counter()
            before, tokens = tokens, tokens + len(chunk.tokens)
            if decoding is not None and before < 2 <= tokens:
                decoding.release()
    return first, time.perf_counter(), tokens


async def server_throughput(client: Any, prompts: list[str], spread_s: float = 0.0) -> float:
    started = time.perf_counter()
    delays = [spread_s * i / len(prompts) for i in range(len(prompts))]
    results = await asyncio.gather(
        *(stream_one(client, p, d) for p, d in zip(prompts, delays, strict=True))
    )
    assert all(r[2] == NEW_TOKENS for r in results)
    return len(prompts) * NEW_TOKENS / (max(r[1] for r in results) - started)


async def ttft_under_load(client: Any, prompts: list[str]) -> tuple[float, float]:
    """TTFT of a request alone, and while 15 streams decode."""
    started = time.perf_counter()
    first, _, _ = await stream_one(client, prompts[0])
    alone = first - started
    decoding = asyncio.Semaphore(0)
    background = [
        asyncio.ensure_future(stream_one(client, p, 0.0, decoding)) for p in prompts[1:16]
    ]
    for _ in background:  # all 15 past their prefill and decoding...
        await decoding.acquire()
    await asyncio.sleep(0.2)  # ...for a moment, so the probe lands mid-step, not on a boundary
    started = time.perf_counter()
    first, _, _ = await stream_one(client, prompts[0])
    loaded = first - started
    await asyncio.gather(*background)
    return alone, loaded


async def main() -> None:
    parser = base_parser(__doc__, None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--cpu-prepack",
        action="store_true",
        help="serve with cpu_prepack (oneDNN-packed linear layers; generate() stays as is)",
    )
    args = parser.parse_args()

    from modelwire import AsyncClient

    set_threads(args.threads)
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp))
        prompts = make_prompts(path, 16)
        baseline = Baseline(path, args.device)
        dtype = "bfloat16" if args.device == "cuda" else "float32"
        entry = model_entry("bench", "text-generation", path, device=args.device, dtype=dtype,
                            max_batch_tokens=16384, cpu_prepack=args.cpu_prepack)  # fmt: skip
        with serve(Path(tmp) / "bench.yaml", [entry], args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=300)
                baseline.run(prompts[:2])  # warm-up, both sides
                await server_throughput(client, prompts[:2])
                for _ in range(args.rounds):
                    record("generate 1", baseline.run(prompts[:1]))
                    record("server 1", await server_throughput(client, prompts[:1]))
                    for n in (8, 16):
                        record(f"generate batch {n}", baseline.run(prompts[:n]))
                        record(f"server {n} at once", await server_throughput(client, prompts[:n]))
                        record(
                            f"server {n} over 1s",
                            await server_throughput(client, prompts[:n], spread_s=1.0),
                        )
                    alone, loaded = await ttft_under_load(client, prompts)
                    record("ttft alone", alone)
                    record("ttft under 15 streams", loaded)
    report(results, args)


def report(results: dict[str, list[float]], args: argparse.Namespace) -> None:
    med = medians(results)
    print(
        f"Generate, GPT-2-small-shaped random model, {args.device}, {args.threads} threads, "
        f"{PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens, median of {args.rounds}"
        + (", server with cpu_prepack" if args.cpu_prepack else "")
    )
    for name, values in results.items():
        unit = "s" if name.startswith("ttft") else "tok/s"
        runs = ", ".join(f"{v:.3f}" if unit == "s" else f"{v:.1f}" for v in values)
        print(f"  {name:<24} {med[name]:>9.3f} {unit:<6} ({runs})")
    print("ratios (target): of the medians; then the median of each round's own ratio")
    rows = [("1 stream vs generate", "server 1", "generate 1", ">= 0.95")]
    for n in (8, 16):
        base = f"generate batch {n}"
        rows.append((f"{n} at once vs static batch", f"server {n} at once", base, ">= 1.0"))
        rows.append((f"{n} over 1 s vs static batch", f"server {n} over 1s", base, ">= 0.9"))
    rows.append(("TTFT under 15 streams vs alone", "ttft under 15 streams", "ttft alone", "<= 3"))
    for label, top, bottom, target in rows:
        paired = [a / b for a, b in zip(results[top], results[bottom], strict=True)]
        print(
            f"  {label:<31} {med[top] / med[bottom]:.2f}x ({target}); "
            f"per round {statistics.median(paired):.2f}x ({', '.join(f'{r:.2f}' for r in paired)})"
        )


if __name__ == "__main__":
    asyncio.run(main())
