"""Seq2SeqState under merge, select and trim: every row's logits equal an unbatched,
uncached forward pass of that row's own encoder input and decoder history.

Checked on logits rather than generated tokens, so it holds for every decoder-position
kind (relative bias, M2M100 sinusoidal, BART learned, Marian sinusoidal), including
Marian, whose tiny random model repeats itself too much for token-parity tests.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import Bundle
from seq2seq_helpers import SOURCES

from modelwire_server.engine.adapter import PrefillInput
from modelwire_server.engine.seq2seq import Seq2SeqAdapter, Seq2SeqState
from tests.tolerances import TINY_DEPTH, TINY_REDUCTION, assert_close_as_floats


def _expected(bundle: Bundle, prompt: list[int], history: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = bundle.model(
            input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([history])
        )
    return out.logits[0, -1].float()


def _step(
    adapter: Seq2SeqAdapter,
    state: Seq2SeqState,
    bundle: Bundle,
    rows: list[tuple[list[int], list[int]]],
    step: int,
) -> None:
    """Decode one made-up token per row; compare every row with its reference."""
    tokens = [300 + 7 * step + r for r in range(len(rows))]
    for (_, history), token in zip(rows, tokens, strict=True):
        history.append(token)
    logits = adapter.decode(state, torch.tensor(tokens))
    for r, (prompt, history) in enumerate(rows):
        assert_close_as_floats(
            logits[r],
            _expected(bundle, prompt, history),
            reduction=TINY_REDUCTION,
            depth=TINY_DEPTH,
        )


@pytest.mark.parametrize("name", ["t5", "m2m100", "bart", "marian"])
def test_padded_rows_match_unbatched_forward(name: str, request: pytest.FixtureRequest) -> None:
    bundle: Bundle = request.getfixturevalue(name)
    adapter = Seq2SeqAdapter(bundle.model, "cpu")
    start = bundle.model.generation_config.decoder_start_token_id
    # The first row has the longest encoder input, so it leaves trailing dead columns.
    prompts = [bundle.encode(SOURCES[2]), bundle.encode(SOURCES[1]), bundle.encode(SOURCES[4])]
    rows = [(p, [start]) for p in prompts]

    state = adapter.prefill([PrefillInput(prompts[0])]).state
    assert isinstance(state, Seq2SeqState)
    for step in range(4):
        _step(adapter, state, bundle, rows[:1], step)

    joined = adapter.prefill([PrefillInput(prompts[1]), PrefillInput(prompts[2])])
    assert_close_as_floats(
        joined.logits[1],
        _expected(bundle, prompts[2], [start]),
        reduction=TINY_REDUCTION,
        depth=TINY_DEPTH,
    )
    state.merge(joined.state)  # the new rows are 4 decoder columns shorter: left-padded
    assert state.decoder.mask[1:, :4].sum() == 0
    for step in range(4, 7):
        _step(adapter, state, bundle, rows, step)

    state.select(torch.tensor([2, 1]))  # the oldest, longest row leaves
    rows = [rows[2], rows[1]]
    assert state.decoder.width == 4  # its 4 extra decoder columns are cut
    assert state.cross.width == state.encoder_hidden.shape[1] == max(len(p) for p in prompts[1:])
    for step in range(7, 9):
        _step(adapter, state, bundle, rows, step)
    used = sum(len(h) for _, h in rows) + sum(len(p) for p, _ in rows)
    assert state.tokens_in_use() == used
