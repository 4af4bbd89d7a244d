"""Host overhead of generation: a model so small that the forward pass costs next to
nothing, so that what is measured is the Python around it, as on a GPU.

On a GPU, a decode step's kernels take a few milliseconds and the host's Python (the
engine's bookkeeping, transformers' module calls, the relay of every token to its
stream) sets the pace. A tiny model does the same on the CPU. Three contenders, on the
same prompts (16 by default, of different lengths, so rows are padded), interleaved,
median of ``--rounds``:

- ``generate``: ``model.generate`` (greedy, use_cache) on the prompts as one static batch;
- ``engine``: the server's engine in this process, the requests submitted together and
  stepped until done (no gRPC, no event loop);
- ``server``: the same requests as concurrent streams through the SDK;
- ``server-proc``: the same, to a model with ``engine_process: true`` (its engine in a
  device process of its own, the server's process only relaying).

    python bench/generate_host.py [--streams 16] [--new-tokens 256] [--rounds 5] [--threads 1]
                                  [--stream-interval-ms 0]

The box's speed drifts between rounds, so ratios are taken within each round and the
median of those is printed (contenders of one round run seconds apart).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, medians, model_entry, serve, set_threads


def build_model(root: Path) -> Path:
    """The tiny preset's GPT-2 shape (2 layers, 64 wide) with room for long outputs."""
    from modelwire_server.preset.text import build_gpt2

    path = root / "gpt2-host"
    build_gpt2(path, n_positions=1024)
    return path


SETTLE_S = 0.5
WORDS = "the a of and to in is was it that for on with as by at model server stream".split()


def make_prompts(count: int) -> list[str]:
    """Texts of 12 to 28 words: prompts of different token lengths."""
    return [
        " ".join(WORDS[(r + 3 * i) % len(WORDS)] for i in range(12 + (r * 5) % 17))
        for r in range(count)
    ]


class InProcess:
    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from modelwire_server.engine.engine import GenerationEngine

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.engine = GenerationEngine(
            self.model,
            self.tokenizer,
            device="cpu",
            generation_config=self.model.generation_config,
            max_batch_tokens=1 << 20,
            max_waiting=1024,
            max_new_tokens_cap=1024,
            default_max_new_tokens=16,
        )

    def generate(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Tokens/s of one left-padded static batch."""
        torch = self.torch
        pad = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=pad,
            )
        elapsed = time.perf_counter() - started
        assert out.shape[1] == width + new_tokens
        return len(prompts) * new_tokens / elapsed

    def engine_run(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Tokens/s of the engine alone: submit all, step until idle."""
        from modelwire_server.engine.types import Delta, GenerationRequest

        counts = [0] * len(prompts)

        def sink_for(i: int) -> Any:
            def sink(event: object) -> None:
                if isinstance(event, Delta):
                    counts[i] += len(event.tokens)

            return sink

        started = time.perf_counter()
        for i, prompt in enumerate(prompts):
            request = GenerationRequest(prompt_ids=list(prompt))
            request.sampling.temperature = 0.0
            request.stopping.max_new_tokens = new_tokens
            request.stopping.ignore_eos = True
            self.engine.submit(request, sink_for(i))
        while self.engine.has_work():
            self.engine.step()
        elapsed = time.perf_counter() - started
        assert counts == [new_tokens] * len(prompts)
        return len(prompts) * new_tokens / elapsed


async def server_run(
    client: Any, prompts: list[str], new_tokens: int, model: str = "host"
) -> tuple[float, int]:
    """(tokens/s through the server, messages received)."""
    messages = 0

    async def one(prompt: str) -> int:
        nonlocal messages
        tokens = 0
        async with client.generate_stream(
            prompt, model=model, temperature=0, max_new_tokens=new_tokens, ignore_eos=True
        ) as stream:
            async for chunk in stream:
                tokens += len(chunk.tokens)
                messages += 1
        return tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - started
    assert counts == [new_tokens] * len(prompts)
    return len(prompts) * new_tokens / elapsed, messages


async def main() -> None:
    parser = base_parser(__doc__, None)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--stream-interval-ms", type=float, default=0.0)
    parser.set_defaults(rounds=5, threads=1)  # one: the tiny ops gain nothing from two
    args = parser.parse_args()

    from modelwire import AsyncClient

    set_threads(args.threads)
    results: dict[str, list[float]] = {}
    messages: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp))
        local = InProcess(path)
        texts = make_prompts(args.streams)
        ids = [list(local.tokenizer(t)["input_ids"]) for t in texts]
        entries = [
            model_entry(
                name,
                "text-generation",
                path,
                max_batch_tokens=1 << 20,
                stream_interval_ms=args.stream_interval_ms,
                engine_process=remote,
            )
            for name, remote in (("host", "false"), ("host-proc", "true"))
        ]
        with serve(Path(tmp) / "host.yaml", entries, args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=300)
                local.generate(ids[:2], 8)  # warm-up, all three
                local.engine_run(ids[:2], 8)
                await server_run(client, texts[:2], 8)
                await server_run(client, texts[:2], 8, "host-proc")
                for _ in range(args.rounds):
                    n = args.new_tokens
                    # Pauses let the other process's idle torch threads stop spinning.
                    await asyncio.sleep(SETTLE_S)
                    results.setdefault("generate", []).append(local.generate(ids, n))
                    await asyncio.sleep(SETTLE_S)
                    results.setdefault("engine", []).append(local.engine_run(ids, n))
                    await asyncio.sleep(SETTLE_S)
                    tps, sent = await server_run(client, texts, n)
                    results.setdefault("server", []).append(tps)
                    messages.append(sent)
                    await asyncio.sleep(SETTLE_S)
                    tps, sent = await server_run(client, texts, n, "host-proc")
                    results.setdefault("server-proc", []).append(tps)
    med = medians(results)
    lengths = sorted(map(len, ids))
    print(
        f"Host overhead: tiny GPT-2 (2x64), cpu, {args.threads} thread(s), {args.streams} "
        f"streams of {args.new_tokens} tokens, prompts of {lengths[0]}-{lengths[-1]} tokens, "
        f"stream_interval_ms {args.stream_interval_ms:g}, median of {args.rounds}"
    )
    for name, values in results.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<10} {med[name]:>9.0f} tok/s  ({runs})")
    total = args.streams * args.new_tokens
    print(f"  messages per round: {', '.join(map(str, messages))} for {total} tokens")
    print("ratios, median of the rounds' own (each round's runs):")
    pairs = [("engine", "generate"), ("server", "generate"), ("server", "engine")]
    pairs += [("server-proc", "generate"), ("server-proc", "engine"), ("server-proc", "server")]
    for a, b in pairs:
        ratios = [x / y for x, y in zip(results[a], results[b], strict=True)]
        runs = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  {a} vs {b:<10} {statistics.median(ratios):.2f}x  ({runs})")


if __name__ == "__main__":
    asyncio.run(main())
