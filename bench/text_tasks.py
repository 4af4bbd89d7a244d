"""Zero-shot, fill-mask, NER and QA throughput: the server under concurrency vs in process.

For each task, 256 concurrent single-input calls through the SDK against a server
subprocess, compared with the in-process reference on the same model over the same
inputs, batched (batch_size 32) and one at a time: transformers' pipeline for
zero-shot-classification, fill-mask and ner; for question answering, which transformers
5 no longer has a pipeline for, the model's own forward pass (tokenize + forward, no
span search, so the reference does less work than the server). Random-weight BERT
models built like the preset (``--size small``, the default: 4 layers of 256, so that
the one-at-a-time references finish in minutes on a CPU; ``base``: BERT-base shape),
same torch thread count, everything warmed up, runs interleaved, median of
``--rounds``. Prints raw numbers and ratios.

    python bench/text_tasks.py [--requests 256] [--threads 2] [--rounds 3] [--size small]
        [--tasks zero-shot fill-mask ner qa]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _common import (
    TaskBench,
    TaskTimes,
    base_parser,
    bench_tasks,
    model_entry,
    pipeline_reference,
    report_tasks,
    serve,
    set_threads,
)

WORDS = (
    "the a team match market city river report music film plot actor story was is were "
    "great terrible slow fast new old played won lost sold bought visited opened closed "
    "yesterday today again never always really quite"
).split()
NAMES = "Maria Omar Chen Paris Berlin Lyon Siemens Nokia Airbus Monday".split()
LABELS = ["sports", "finance", "politics"]
SHAPES = {
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
    },
}
BATCH = 32


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(8, 24))
    for _ in range(2):
        words.insert(rng.randrange(len(words)), rng.choice(NAMES))
    return " ".join(words)


def masked(rng: random.Random) -> str:
    words = sentence(rng).split()
    words[rng.randrange(len(words))] = "[MASK]"
    return " ".join(words)


@dataclass
class Task:
    """One task of the benchmark: its server call and its in-process reference."""

    name: str
    config_task: str
    build: Callable[[Path, dict[str, Any]], None]
    inputs: Callable[[random.Random], Any]
    call: Callable[[Any, Any], Awaitable[Any]]  # (client, input)
    reference: Callable[[str], Callable[[list[Any], int], None]]  # path → run(inputs, batch)


def _qa_reference(path: str) -> Callable[[list[Any], int], None]:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()

    def run(inputs: list[tuple[str, str]], batch: int) -> None:
        for i in range(0, len(inputs), batch):
            chunk = inputs[i : i + batch]
            encoded = tokenizer(
                [q for q, _ in chunk],
                [c for _, c in chunk],
                padding=True,
                truncation="only_second",
                max_length=384,
                return_tensors="pt",
            )
            with torch.inference_mode():
                model(**encoded)

    return run


def _builders() -> dict[str, Callable[[Path, dict[str, Any]], None]]:
    from modelwire_server.preset import text

    long = {"max_position_embeddings": 512}
    return {
        "nli": lambda p, shape: text.build_nli(p, **shape),
        "fill-mask": lambda p, shape: text.build_fill_mask(p, **shape),
        "ner": lambda p, shape: text.build_ner(p, **shape, **long),
        "qa": lambda p, shape: text.build_qa(p, **shape, **long),
    }


def tasks() -> list[Task]:
    build = _builders()
    return [
        Task(
            "zero-shot",
            "zero-shot-classification",
            build["nli"],
            sentence,
            lambda client, text: client.classify_zero_shot(text, LABELS, model="zero-shot"),
            pipeline_reference("zero-shot-classification", candidate_labels=LABELS),
        ),
        Task(
            "fill-mask",
            "fill-mask",
            build["fill-mask"],
            masked,
            lambda client, text: client.fill_mask(text, model="fill-mask"),
            pipeline_reference("fill-mask"),
        ),
        Task(
            "ner",
            "ner",
            build["ner"],
            sentence,
            lambda client, text: client.recognize_entities(text, model="ner"),
            pipeline_reference("ner", aggregation_strategy="simple"),
        ),
        Task(
            "qa",
            "question-answering",
            build["qa"],
            lambda rng: (f"Who visited {rng.choice(NAMES)}?", sentence(rng) + ". " + sentence(rng)),
            lambda client, pair: client.answer_question(*pair, model="qa"),
            _qa_reference,
        ),
    ]


async def bench(args: argparse.Namespace) -> TaskTimes:
    from modelwire import AsyncClient

    set_threads(args.threads)
    chosen = [t for t in tasks() if t.name in args.tasks]
    rng = random.Random(0)
    inputs = {t.name: [t.inputs(rng) for _ in range(args.requests)] for t in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for t in chosen:
            t.build(root / t.name, SHAPES[args.size])
        references = {t.name: t.reference(str(root / t.name)) for t in chosen}
        entries = [
            model_entry(t.name, t.config_task, root / t.name, max_batch_size=BATCH, max_wait_ms=5)
            for t in chosen
        ]
        with serve(root / "bench.yaml", entries, args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=600)
                benches = [
                    TaskBench(t.name, partial(t.call, client), references[t.name], inputs[t.name])
                    for t in chosen
                ]
                return await bench_tasks(benches, args.rounds, BATCH, warm=(64, 64, 8))


def report(times: TaskTimes, args: argparse.Namespace) -> None:
    print(
        f"{args.requests} concurrent single-input requests per task, BERT-{args.size}-shaped "
        f"random models, {args.threads} torch threads, median of {args.rounds}"
    )
    header = f"{'task':<11}{'contender':<30}{'seconds (runs)':<30}{'inputs/s':>9}"
    print(header)

    def labels(task: str) -> tuple[str, str, str]:
        reference = "model forward" if task == "qa" else "pipeline"
        return "modelwire (concurrent)", f"{reference} batch {BATCH}", f"{reference} one at a time"

    report_tasks(times, args.requests, labels=labels, widths=(11, 30), raw_width=23)


def main() -> None:
    parser = base_parser(__doc__, 256)
    parser.add_argument("--size", choices=sorted(SHAPES), default="small")
    parser.add_argument("--tasks", nargs="+", default=["zero-shot", "fill-mask", "ner", "qa"])
    args = parser.parse_args()
    report(asyncio.run(bench(args)), args)


if __name__ == "__main__":
    main()
