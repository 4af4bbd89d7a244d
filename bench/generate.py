"""Generation throughput and latency: the server's engine vs model.generate().

A GPT-2-small-shaped random model (12 layers, 768 wide, vocab 50257, ~124M parameters),
or with ``--model llama`` a Llama-shaped one (12 layers, 768 wide, MLP 2048, 12 heads
sharing 4 KV heads, vocab 32000, untied head, ~124M parameters), 32-token prompts,
128 new tokens with EOS ignored. Baseline: ``model.generate``
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
        [--model gpt2|llama] [--dtype float32|bfloat16|float16] [--quantization none|int8|int4]
        [--streams 1,8,16] [--throughput-only]

``--dtype`` and ``--quantization`` set the served model's; the baseline stays
``generate()`` in float32 on the CPU (bfloat16 on CUDA), the issue's reference point.
``--throughput-only`` leaves out the spread arrivals and the TTFT probe (shorter runs).
Peak RSS is printed for the server process and for this one (which holds the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, medians, model_entry, peak_rss_mib, serve, set_threads

PROMPT_TOKENS = 32
NEW_TOKENS = 128
VOCAB = 50257


def build_model(root: Path, shape: str = "gpt2") -> Path:
    """GPT-2 small's shape, or a Llama of the same size; the tokenizer is padded to the
    vocabulary so every id decodes."""
    from transformers import AutoTokenizer

    from modelwire_server.preset.text import build_gpt2, build_llama

    if shape == "llama":
        path = root / "llama-124m-random"
        build_llama(
            path,
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=1024,
        )
        return path
    path = root / "gpt2-small-random"
    build_gpt2(path, n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=VOCAB)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens([f"<x{i}>" for i in range(len(tokenizer), VOCAB)])
    tokenizer.save_pretrained(path)
    return path


def make_prompts(path: Path, count: int, seed: int = 0) -> list[str]:
    """Texts that tokenize to exactly PROMPT_TOKENS tokens (special tokens included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    words = [w for w in "the a of and to in is was it that for on with as by at".split()]
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        text = "The"
        while len(tokenizer(text)["input_ids"]) < PROMPT_TOKENS:
            text += " " + rng.choice(words)
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
    parser.add_argument("--model", default="gpt2", choices=["gpt2", "llama"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "int4"])
    parser.add_argument("--streams", default="1,8,16", help="stream counts, comma-separated")
    parser.add_argument("--throughput-only", action="store_true")
    args = parser.parse_args()
    args.streams = [int(n) for n in args.streams.split(",")]

    from modelwire import AsyncClient

    set_threads(args.threads)
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp), args.model)
        prompts = make_prompts(path, max(16, *args.streams))
        baseline = Baseline(path, args.device)
        dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
        entry = model_entry("bench", "text-generation", path, device=args.device, dtype=dtype,
                            max_batch_tokens=16384, cpu_prepack=args.cpu_prepack,
                            quantization=args.quantization)  # fmt: skip
        with serve(Path(tmp) / "bench.yaml", [entry], args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=300)
                info = await client.get_model("bench")
                args.served = f"{info.dtype}, quantization {info.quantization}"
                baseline.run(prompts[:2])  # warm-up, both sides
                await server_throughput(client, prompts[:2])
                for _ in range(args.rounds):
                    for n in args.streams:
                        label = "1" if n == 1 else f"batch {n}"
                        record(f"generate {label}", baseline.run(prompts[:n]))
                        label = "1" if n == 1 else f"{n} at once"
                        record(f"server {label}", await server_throughput(client, prompts[:n]))
                        if n > 1 and not args.throughput_only:
                            record(
                                f"server {n} over 1s",
                                await server_throughput(client, prompts[:n], spread_s=1.0),
                            )
                    if not args.throughput_only:
                        alone, loaded = await ttft_under_load(client, prompts)
                        record("ttft alone", alone)
                        record("ttft under 15 streams", loaded)
            args.server_rss = peak_rss_mib(server.proc.pid)
    args.own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(results, args)


def report(results: dict[str, list[float]], args: argparse.Namespace) -> None:
    med = medians(results)
    shape = "Llama-shaped 124M" if args.model == "llama" else "GPT-2-small-shaped"
    print(
        f"Generate, {shape} random model, {args.device}, {args.threads} threads, "
        f"{PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens, median of {args.rounds}; "
        f"server in {args.served}" + (", cpu_prepack" if args.cpu_prepack else "")
    )
    print(
        f"  peak RSS: server process {args.server_rss:.0f} MiB; this process (generate() "
        f"baseline and client) {args.own_rss:.0f} MiB"
    )
    for name, values in results.items():
        unit = "s" if name.startswith("ttft") else "tok/s"
        runs = ", ".join(f"{v:.3f}" if unit == "s" else f"{v:.1f}" for v in values)
        print(f"  {name:<24} {med[name]:>9.3f} {unit:<6} ({runs})")
    print("ratios (target): of the medians; then the median of each round's own ratio")
    # The targets: float32 as served before; issue 17's for bfloat16 and quantized models.
    one, many = {"int8": (">= 3.0", ">= 1.0"), "int4": (">= 4.0", ">= 1.0")}.get(
        args.quantization,
        (">= 2.0", ">= 4.0") if args.dtype == "bfloat16" else (">= 0.95", ">= 1.0"),
    )
    rows = []
    for n in args.streams:
        if n == 1:
            rows.append(("1 stream vs generate", "server 1", "generate 1", one))
            continue
        base = f"generate batch {n}"
        rows.append((f"{n} at once vs static batch", f"server {n} at once", base, many))
        rows.append((f"{n} over 1 s vs static batch", f"server {n} over 1s", base, ">= 0.9"))
    rows.append(("TTFT under 15 streams vs alone", "ttft under 15 streams", "ttft alone", "<= 3"))
    for label, top, bottom, target in rows:
        if top not in results:
            continue
        paired = [a / b for a, b in zip(results[top], results[bottom], strict=True)]
        print(
            f"  {label:<31} {med[top] / med[bottom]:.2f}x ({target}); "
            f"per round {statistics.median(paired):.2f}x ({', '.join(f'{r:.2f}' for r in paired)})"
        )


if __name__ == "__main__":
    asyncio.run(main())
