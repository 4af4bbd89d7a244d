"""Beam search in the engine equals ``generate(num_beams=k, num_return_sequences=n)``."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import PROMPTS, Bundle, expected_text, make_engine, run_until_idle, submit

from modelwire_server.engine import (
    Delta,
    FinishReason,
    InvalidRequest,
    SamplingParams,
    StoppingParams,
)

MAX_NEW = 12


def _reference(bundle: Bundle, prompt: list[int], eos: int, **beam: object) -> list[list[int]]:
    out = bundle.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=MAX_NEW,
        eos_token_id=eos,
        pad_token_id=bundle.generation_config.pad_token_id,
        **beam,
    )
    beams = []
    for row in out[:, len(prompt) :].tolist():
        # Shorter beams are padded after their EOS; cut there.
        beams.append(row[: row.index(eos) + 1] if eos in row else row)
    return beams


@pytest.mark.parametrize(
    ("num_beams", "n", "length_penalty", "early_stopping"),
    [(4, 2, 1.0, None), (3, 3, 2.0, None), (4, 4, -1.0, True), (5, 1, 1.0, "never")],
)
def test_matches_generate(
    bundle: Bundle,
    num_beams: int,
    n: int,
    length_penalty: float,
    early_stopping: bool | str | None,
) -> None:
    prompt = bundle.encode(PROMPTS[0])
    # Make a token the greedy path actually produces the EOS, so that beams finish early
    # and the finished-hypotheses bookkeeping is exercised, not just the length limit.
    eos = _reference(bundle, prompt, eos=-1, num_beams=1)[0][1]
    config = copy.deepcopy(bundle.generation_config)
    config.eos_token_id = eos
    if early_stopping is not None:
        config.early_stopping = early_stopping
    engine = make_engine(bundle, generation_config=config)
    sink = submit(
        engine,
        prompt,
        sampling=SamplingParams(num_beams=num_beams, n=n, length_penalty=length_penalty),
        stopping=StoppingParams(max_new_tokens=MAX_NEW),
    )
    run_until_idle(engine)

    extra = {} if early_stopping is None else {"early_stopping": early_stopping}
    reference = _reference(
        bundle,
        prompt,
        eos,
        num_beams=num_beams,
        num_return_sequences=n,
        length_penalty=length_penalty,
        **extra,
    )
    finished = sink.all_finished()
    assert [f.index for f in finished] == list(range(n))
    assert [[t.id for t in f.tokens] for f in finished] == reference
    assert not [e for e in sink.events if isinstance(e, Delta)], "beams must not stream"
    for f, tokens in zip(finished, reference, strict=True):
        ends_eos = tokens[-1] == eos
        assert f.reason is (FinishReason.EOS if ends_eos else FinishReason.LENGTH)
        assert f.text == expected_text(bundle, prompt, tokens[:-1] if ends_eos else tokens)
    if length_penalty < 0:  # favours short beams: finished-by-EOS ones must be returned
        assert any(t[-1] == eos for t in reference)


def test_beams_share_the_batch_with_streams(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    beam_prompt, greedy_prompt = gpt2.encode(PROMPTS[1]), gpt2.encode(PROMPTS[2])
    greedy = submit(
        engine,
        greedy_prompt,
        sampling=SamplingParams(temperature=0),
        stopping=StoppingParams(max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW),
    )
    engine.step()
    beams = submit(
        engine,
        beam_prompt,
        sampling=SamplingParams(num_beams=3, n=2),
        stopping=StoppingParams(max_new_tokens=MAX_NEW, ignore_eos=True),
    )
    run_until_idle(engine)
    assert engine.stats().max_decode_rows == 4
    reference = _reference(gpt2, beam_prompt, eos=-1, num_beams=3, num_return_sequences=2)
    assert [[t.id for t in f.tokens] for f in beams.all_finished()] == reference
    assert len(greedy.tokens()) == MAX_NEW


def test_n_above_num_beams_is_refused(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    with pytest.raises(InvalidRequest) as info:
        submit(engine, gpt2.encode("Hi"), sampling=SamplingParams(num_beams=2, n=3))
    assert info.value.field == "sampling.n"
