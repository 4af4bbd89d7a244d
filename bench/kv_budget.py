"""KV budget: 16 long streams under a budget that preempts vs one that never does.

A GPT-2-small-shaped random model (``--shape tiny``: 4 layers x 256, for a quick run),
driven in this process by the generation engine itself (the server's relay adds the same
cost to every contender, and preemption is the engine's doing). ``--streams`` greedy
requests of ``PROMPT_TOKENS`` prompt tokens and ``--new`` new tokens each are submitted at
once to engines that differ only in ``kv_cache_memory``:

- ``reserve``: no byte budget (each admitted request reserves prompt + max_new_tokens in
  ``max_batch_tokens``, today's default);
- ``ample``: a budget of every stream at full length, so nothing is preempted;
- ``small``: room for about ``--fit`` streams at full length: the others are preempted and
  resumed by recomputation.

Rounds interleave the contenders (reserve, ample, small, then the next round); the report
prints per contender the median tokens/s, decode steps, preemptions and the most KV bytes
held after any step, with tokens/s as a ratio to ``ample``. Every contender's outputs are
checked equal to ``ample``'s (greedy: preemption must not change a token).

    python bench/kv_budget.py [--threads 1] [--rounds 2] [--streams 16] [--new 128]
        [--fit 4] [--shape gpt2|tiny] [--device cpu]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, set_threads
from generate import build_model

PROMPT_TOKENS = 32


def load(path: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def build(root: Path, shape: str) -> Path:
    if shape == "gpt2":
        return build_model(root, "gpt2")
    from modelwire_server.preset.text import build_gpt2

    path = root / "gpt2-tiny-random"
    build_gpt2(path, n_layer=4, n_embd=256, n_head=4, n_positions=1024)
    return path


def prompts(vocab: int, count: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(100, vocab - 1) for _ in range(PROMPT_TOKENS)] for _ in range(count)]


def run(model: Any, tokenizer: Any, device: str, budget: int | None, args: Any) -> dict:
    from modelwire_server.engine import (
        GenerationEngine,
        GenerationRequest,
        SamplingParams,
        StoppingParams,
    )
    from modelwire_server.engine.types import Delta

    engine = GenerationEngine(
        model,
        tokenizer,
        device=device,
        generation_config=model.generation_config,
        max_batch_tokens=args.streams * (PROMPT_TOKENS + args.new),
        max_waiting=args.streams,
        max_new_tokens_cap=args.new,
        default_max_new_tokens=args.new,
        prefix_caching=True,
        kv_cache_memory=budget,
    )
    outputs: list[list[int]] = [[] for _ in range(args.streams)]
    for i, prompt in enumerate(prompts(engine.limits.vocab_size, args.streams)):

        def sink(event: Any, out: list[int] = outputs[i]) -> None:
            if isinstance(event, Delta):
                out += [t.id for t in event.tokens]

        request = GenerationRequest(
            prompt_ids=prompt,
            sampling=SamplingParams(temperature=0),
            stopping=StoppingParams(max_new_tokens=args.new, min_new_tokens=args.new),
        )
        engine.submit(request, sink)
    most = 0
    started = time.perf_counter()
    while engine.has_work():
        engine.step()
        most = max(most, engine.stats().kv_bytes)
    elapsed = time.perf_counter() - started
    stats = engine.stats()
    assert all(len(out) == args.new for out in outputs)
    return {
        "tokens_s": args.streams * args.new / elapsed,
        "steps": stats.steps,
        "preemptions": stats.preemptions,
        "kv_most": most,
        "outputs": outputs,
    }


def main() -> None:
    parser = base_parser(__doc__, None)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--fit", type=int, default=4, help="streams the small budget holds")
    parser.add_argument("--shape", choices=["gpt2", "tiny"], default="gpt2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)

    from modelwire_server.engine.kvbudget import column_bytes
    from modelwire_server.engine.kvcache import grown_columns

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load(build(Path(tmp), args.shape), args.device)
    column = column_bytes(model)
    assert column is not None
    row = grown_columns(PROMPT_TOKENS + args.new) * column
    budgets = {"reserve": None, "ample": args.streams * row * 2, "small": args.fit * row}
    results: dict[str, list[dict]] = {name: [] for name in budgets}
    run(model, tokenizer, args.device, None, args)  # warm up allocator and kernels
    for _ in range(args.rounds):
        for name, budget in budgets.items():
            results[name].append(run(model, tokenizer, args.device, budget, args))

    reference = results["ample"][0]["outputs"]
    for name, runs in results.items():
        for result in runs:
            assert result["outputs"] == reference, f"{name}: outputs changed"
    base = statistics.median(r["tokens_s"] for r in results["ample"])
    print(
        f"{args.streams} streams x ({PROMPT_TOKENS} prompt + {args.new} new) tokens, "
        f"{args.shape} on {args.device}, {args.threads} threads, {args.rounds} rounds "
        f"(medians); one row at full length holds {row / 2**20:.2f} MiB"
    )
    print(
        f"{'contender':<9} {'budget MiB':>10} {'tok/s':>8} {'ratio':>6} {'steps':>6} "
        f"{'preempt':>7} {'max KV MiB':>10}"
    )
    for name, runs in results.items():
        budget = budgets[name]
        tokens = statistics.median(r["tokens_s"] for r in runs)
        print(
            f"{name:<9} {budget / 2**20 if budget else float('nan'):>10.2f} {tokens:>8.1f} "
            f"{tokens / base:>6.2f} {statistics.median(r['steps'] for r in runs):>6.0f} "
            f"{statistics.median(r['preemptions'] for r in runs):>7.0f} "
            f"{max(r['kv_most'] for r in runs) / 2**20:>10.2f}"
        )
    print("outputs: identical across contenders and rounds (greedy)")


if __name__ == "__main__":
    main()
