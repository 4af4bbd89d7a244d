"""Embed batches cut into passes of similar length: the rule (``length_passes``) and
what the served model sees."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import torch

from modelwire import AsyncClient
from modelwire_server.tasks.base import length_passes
from modelwire_server.tasks.embedding import EmbedItem
from tests.test_embed import close, reference_hidden


def padded_cost(lengths: list[int], passes: list[list[int]], pass_tokens: int) -> int:
    return sum(pass_tokens + len(p) * max(lengths[i] for i in p) for p in passes)


def brute_force_cost(lengths: list[int], pass_tokens: int) -> int:
    """The least cost over every way to cut the sorted rows into consecutive runs."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = None
    for cuts in itertools.product((False, True), repeat=len(order) - 1):
        passes, current = [], [order[0]]
        for cut, i in zip(cuts, order[1:], strict=True):
            if cut:
                passes.append(current)
                current = []
            current.append(i)
        passes.append(current)
        cost = padded_cost(lengths, passes, pass_tokens)
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_two_lengths_far_apart_run_in_two_passes() -> None:
    lengths = [5, 40] * 8
    passes = length_passes(lengths, pass_tokens=48)
    assert [sorted(lengths[i] for i in p) for p in passes] == [[5] * 8, [40] * 8]


def test_equal_lengths_share_one_pass() -> None:
    assert length_passes([7] * 12, pass_tokens=0) == [list(range(12))]


def test_a_costly_pass_keeps_the_batch_whole() -> None:
    lengths = [3, 30, 9, 17]
    passes = length_passes(lengths, pass_tokens=10_000)
    assert len(passes) == 1 and sorted(passes[0]) == [0, 1, 2, 3]


def test_free_passes_cut_at_every_length() -> None:
    lengths = [4, 9, 4, 2, 9]
    assert [[lengths[i] for i in p] for p in length_passes(lengths, pass_tokens=0)] == [
        [2],
        [4, 4],
        [9, 9],
    ]


def test_empty_batch_has_no_pass() -> None:
    assert length_passes([], pass_tokens=48) == []


@pytest.mark.parametrize("seed", range(12))
def test_passes_are_a_least_cost_partition(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(3, 45) for _ in range(rng.randint(1, 11))]
    pass_tokens = rng.choice([0, 16, 48, 200])
    passes = length_passes(lengths, pass_tokens)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    # Each pass holds a run of the sorted lengths: no longer row before a shorter one.
    widths = [[lengths[i] for i in p] for p in passes]
    assert all(w == sorted(w) for w in widths)
    assert all(a[-1] <= b[0] for a, b in itertools.pairwise(widths))
    assert padded_cost(lengths, passes, pass_tokens) == brute_force_cost(lengths, pass_tokens)


def watch_widths(model: Any) -> tuple[list[tuple[int, int]], Any]:
    """(rows, width) of each forward pass of ``model`` and the hook's handle."""
    shapes: list[tuple[int, int]] = []

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        shapes.append((int(ids.shape[0]), int(ids.shape[1])))

    return shapes, model.register_forward_pre_hook(hook, with_kwargs=True)


async def test_short_and_long_inputs_of_a_batch_run_in_separate_passes(
    server, client: AsyncClient
) -> None:
    """One request of short and long texts interleaved: two passes, each as wide as its
    own texts, and every vector as the text's own unpadded forward pass gives it."""
    runner = server.runner("tiny-embed")
    short = [f"fox {i}" for i in range(6)]
    long = [" ".join(["the quick brown fox jumps"] * 3) + f" {i}" for i in range(6)]
    texts = [t for pair in zip(short, long, strict=True) for t in pair]
    shapes, handle = watch_widths(runner.model)
    try:
        got = await client.embed(texts, model="tiny-embed", pooling="mean", normalize=False)
    finally:
        handle.remove()
    assert len(shapes) == 2, shapes
    assert sorted(rows for rows, _ in shapes) == [6, 6]
    widths = sorted(width for _, width in shapes)
    assert widths[0] * 4 < widths[1], shapes
    path = runner.config.source
    for vector, hidden in zip(got, reference_hidden(path, texts), strict=True):
        assert close(vector.values, hidden.mean(dim=0))
    assert [g.token_count for g in got] == [h.shape[0] for h in reference_hidden(path, texts)]


async def test_mixed_poolings_in_one_pass_each_get_their_own(server) -> None:
    """Inputs of different requests with different pooling and normalisation, in one
    batch of equal lengths (so one pass): each gets what it asked for."""
    runner = server.runner("tiny-embed")
    text = "a small red fox"
    [hidden] = reference_hidden(runner.config.source, [text])
    items = [
        EmbedItem(text, 0, "mean", False, False),
        EmbedItem(text, 0, "cls", False, False),
        EmbedItem(text, 0, "mean", True, False),
        EmbedItem(text, 0, "none", False, False),
        EmbedItem(text, 0, "none", True, False),
    ]
    shapes, handle = watch_widths(runner.model)
    try:
        mean, cls, unit, tokens, unit_tokens = await runner.worker.run(
            lambda: runner.run_batch(items)
        )
    finally:
        handle.remove()
    assert shapes == [(5, hidden.shape[0])]
    assert close(mean.values, hidden.mean(dim=0)) and mean.token_vectors == []
    assert close(cls.values, hidden[0])
    assert close(unit.values, torch.nn.functional.normalize(hidden.mean(dim=0), dim=-1))
    assert tokens.values == [] and len(tokens.token_vectors) == hidden.shape[0]
    assert all(close(v, hidden[j]) for j, v in enumerate(tokens.token_vectors))
    units = torch.nn.functional.normalize(hidden, dim=-1)
    assert all(close(v, units[j]) for j, v in enumerate(unit_tokens.token_vectors))
    assert {r.token_count for r in (mean, cls, unit, tokens)} == {hidden.shape[0]}
