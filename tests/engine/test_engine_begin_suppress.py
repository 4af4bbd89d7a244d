"""begin_suppress_tokens and a request's own logits hook equal transformers' ``generate``
(SuppressTokensAtBeginLogitsProcessor; a caller's ``logits_processor``), on the
encoder-decoders: Whisper's generation_config relies on both."""

from __future__ import annotations

import copy
import itertools

import torch
from engine_helpers import Bundle, make_engine, run_until_idle, submit
from seq2seq_helpers import SOURCES, reference
from transformers import LogitsProcessor, LogitsProcessorList

from modelwire_server.engine import SamplingParams, StoppingParams

N = 16


def greedy() -> dict:
    return {
        "sampling": SamplingParams(temperature=0),
        "stopping": StoppingParams(max_new_tokens=N, min_new_tokens=N),
    }


def forced(bundle: Bundle) -> dict:
    if bundle.name != "m2m100":
        return {}
    return {"forced_bos_token_id": int(bundle.tokenizer.convert_tokens_to_ids("__fr__"))}


def prompt_of(bundle: Bundle, text: str) -> list[int]:
    ids = bundle.encode(text)
    if bundle.name == "m2m100":
        return [int(bundle.tokenizer.convert_tokens_to_ids("__en__")), *ids]
    return ids


def test_begin_suppress_tokens_ban_only_the_first_free_step(seq2seq: Bundle) -> None:
    """Banned at the first generated token, or the one after a forced BOS (M2M100)."""
    prompt = prompt_of(seq2seq, SOURCES[0])
    plain = reference(seq2seq, prompt, N, **forced(seq2seq))
    first = 1 if forced(seq2seq) else 0
    banned = [plain[first]]
    config = copy.deepcopy(seq2seq.generation_config)
    config.begin_suppress_tokens = banned
    engine = make_engine(seq2seq, generation_config=config)
    sink = submit(engine, prompt, **greedy(), **forced(seq2seq))
    run_until_idle(engine)
    expected = reference(seq2seq, prompt, N, begin_suppress_tokens=banned, **forced(seq2seq))
    assert sink.tokens() == expected
    assert expected[first] != plain[first]  # the ban changed that step...
    if first:
        assert expected[0] == plain[0]  # ...and not the forced one before it


class NoImmediateRepeat(LogitsProcessor):
    """Bans each row's last token: a processor over the ids so far."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            scores[row, ids[-1]] = float("-inf")
        return scores


def test_logits_hook_is_a_callers_logits_processor(seq2seq: Bundle) -> None:
    processor = NoImmediateRepeat()
    calls: list[int] = []

    def hook(ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        calls.append(len(ids))
        return processor(torch.tensor([ids]), scores.unsqueeze(0))[0]

    engine = make_engine(seq2seq)
    prompts = [prompt_of(seq2seq, text) for text in SOURCES[:3]]
    sinks = [submit(engine, p, **greedy(), **forced(seq2seq), logits_hook=hook) for p in prompts]
    plain = submit(engine, prompts[0], **greedy(), **forced(seq2seq))  # same batch, no hook
    run_until_idle(engine)
    changed = 0
    for sink, prompt in zip(sinks, prompts, strict=True):
        changed += sink.tokens() != reference(seq2seq, prompt, N, **forced(seq2seq))
        expected = reference(
            seq2seq,
            prompt,
            N,
            logits_processor=LogitsProcessorList([processor]),
            **forced(seq2seq),
        )
        assert sink.tokens() == expected
        assert all(a != b for a, b in itertools.pairwise(expected))
    assert plain.tokens() == reference(seq2seq, prompts[0], N, **forced(seq2seq))
    assert changed  # the tiny decoders do repeat themselves: the hook mattered
    assert len(calls) == N * len(prompts)
    assert sorted(set(calls)) == list(range(1, N + 1))  # decoder start + output so far
