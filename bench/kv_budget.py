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
  resumed by recomputation;
- ``reserve-fit``: no byte budget, ``max_batch_tokens`` reserving ``--fit`` streams' worst
  case: the same memory as ``small`` held the old way (no preemption, fewer rows).

Rounds interleave the contenders (reserve, ample, small, then the next round); the report
prints per contender the median tokens/s, decode steps, preemptions and the most KV bytes
held after any step, with tokens/s as a ratio to ``ample``, and how many streams' greedy
outputs equal ``ample``'s; where one differs, the top-2 logit gap at its first different
token (a random GPT-2-small has near-ties that a different batch shape flips, with or
without preemption: the engine's tests check exact parity on models without them).

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


def run(
    model: Any, tokenizer: Any, device: str, budget: int | None, args: Any, streams: int = 0
) -> dict:
    """One contender's run; ``streams``: reserve room for that many in ``max_batch_tokens``
    (0: for all)."""
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
        max_batch_tokens=(streams or args.streams) * (PROMPT_TOKENS + args.new),
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
    budgets = {
        "reserve": None,
        "ample": args.streams * row * 2,
        "small": args.fit * row,
        "reserve-fit": None,
    }
    results: dict[str, list[dict]] = {name: [] for name in budgets}
    run(model, tokenizer, args.device, None, args)  # warm up allocator and kernels
    for _ in range(args.rounds):
        for name, budget in budgets.items():
            fit = args.fit if name == "reserve-fit" else 0
            results[name].append(run(model, tokenizer, args.device, budget, args, fit))

    reference = results["ample"][0]["outputs"]
    vocab = int(model.config.vocab_size)
    same = {
        name: min(_same(r["outputs"], reference) for r in runs) for name, runs in results.items()
    }
    inputs = prompts(vocab, args.streams)
    gaps = [
        _gap(model, args.device, prompt, mine, theirs)
        for runs in results.values()
        for r in runs
        for prompt, mine, theirs in zip(inputs, r["outputs"], reference, strict=True)
        if mine != theirs
    ]
    base = statistics.median(r["tokens_s"] for r in results["ample"])
    print(
        f"{args.streams} streams x ({PROMPT_TOKENS} prompt + {args.new} new) tokens, "
        f"{args.shape} on {args.device}, {args.threads} threads, {args.rounds} rounds "
        f"(medians); one row at full length holds {row / 2**20:.2f} MiB"
    )
    print(
        f"{'contender':<11} {'budget MiB':>10} {'tok/s':>8} {'ratio':>6} {'steps':>6} "
        f"{'preempt':>7} {'max KV MiB':>10}"
    )
    for name, runs in results.items():
        budget = budgets[name]
        tokens = statistics.median(r["tokens_s"] for r in runs)
        print(
            f"{name:<11} {budget / 2**20 if budget else float('nan'):>10.2f} {tokens:>8.1f} "
            f"{tokens / base:>6.2f} {statistics.median(r['steps'] for r in runs):>6.0f} "
            f"{statistics.median(r['preemptions'] for r in runs):>7.0f} "
            f"{max(r['kv_most'] for r in runs) / 2**20:>10.2f}"
        )
    print(
        "streams whose output equals ample's (fewest over rounds): "
        + ", ".join(f"{name} {count}/{args.streams}" for name, count in same.items())
    )
    if gaps:
        print(
            f"where one differs, its first different token's top-2 logit gap (a full forward "
            f"pass of the reference's tokens): max {max(gaps):.4f} over {len(gaps)} streams "
            "(a near-tie that batch shape decides, not a lost or repeated token)"
        )


def _same(outputs: list[list[int]], reference: list[list[int]]) -> int:
    return sum(mine == theirs for mine, theirs in zip(outputs, reference, strict=True))


def _gap(model: Any, device: str, prompt: list[int], mine: list[int], theirs: list[int]) -> float:
    """The top-2 logit gap where ``mine`` first leaves ``theirs``, recomputed whole."""
    import torch

    k = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + theirs[:k]], device=device)).logits[0, -1]
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


if __name__ == "__main__":
    main()
