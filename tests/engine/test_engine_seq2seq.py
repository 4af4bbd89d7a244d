"""Encoder-decoders in the continuous batch equal transformers' ``generate``: greedy alone
and with staggered joins (left-padded decoder rows), beams, a forced first token (the
M2M100 target language) and a forced last one, seeds, stop strings and logprobs."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import Bundle, Collector, distinct_ratio, make_engine, run_until_idle, submit
from seq2seq_helpers import SOURCES, reference, reference_beams

from modelwire_server.engine import (
    Delta,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    OutputOptions,
    SamplingParams,
    StoppingParams,
)
from tests.tolerances import TINY_LOGPROB_ATOL

N = 24


def greedy(n: int = N) -> dict:
    return {
        "sampling": SamplingParams(temperature=0),
        "stopping": StoppingParams(max_new_tokens=n, min_new_tokens=n),
    }


def language(bundle: Bundle, code: str) -> int:
    return int(bundle.tokenizer.convert_tokens_to_ids(f"__{code}__"))


def prompt_of(bundle: Bundle, text: str) -> list[int]:
    """M2M100 encodes ``__src__ text </s>``; the others just ``text </s>``."""
    ids = bundle.encode(text)
    return [language(bundle, "en"), *ids] if bundle.name == "m2m100" else ids


def forced(bundle: Bundle) -> dict:
    """M2M100 starts its output with the target language (French here)."""
    return {"forced_bos_token_id": language(bundle, "fr")} if bundle.name == "m2m100" else {}


def text_of(bundle: Bundle, tokens: list[int]) -> str:
    return bundle.tokenizer.decode(tokens, skip_special_tokens=True)


def test_alone_matches_generate(seq2seq: Bundle) -> None:
    engine = make_engine(seq2seq)
    prompt = prompt_of(seq2seq, SOURCES[1])
    sink = submit(engine, prompt, **greedy(), **forced(seq2seq))
    run_until_idle(engine)
    expected = reference(seq2seq, prompt, N, **forced(seq2seq))
    assert sink.tokens() == expected
    assert distinct_ratio(expected) >= 0.5, "the tiny model degenerated; the test proves little"
    finished = sink.finished()
    assert finished.reason is FinishReason.LENGTH
    assert finished.text == sink.text() == text_of(seq2seq, expected)
    assert finished.usage.generated_tokens == N
    assert finished.usage.prompt_tokens == sink.prompt_info.prompt_tokens == len(prompt)
    if seq2seq.name == "m2m100":
        assert expected[0] == language(seq2seq, "fr")  # the forced token counts as generated


def test_staggered_joins_match_generate(seq2seq: Bundle) -> None:
    """Requests join a batch whose decoder rows are longer than theirs (so they are
    left-padded), leave at different lengths, and one is cancelled midway."""
    engine = make_engine(seq2seq)
    prompts = [prompt_of(seq2seq, s) for s in SOURCES]
    lengths = [N, 10, N, 17, N, N]
    sinks: list[Collector] = []
    handles = []

    def add(i: int) -> None:
        sinks.append(Collector())
        request = GenerationRequest(prompt_ids=prompts[i], **greedy(lengths[i]), **forced(seq2seq))
        handles.append(engine.submit(request, sinks[-1]))

    add(0)
    for _ in range(3):
        engine.step()
    add(1)
    add(2)
    engine.step()
    add(3)
    for _ in range(2):
        engine.step()
    add(4)
    engine.step()
    engine.cancel(handles[4])
    add(5)
    run_until_idle(engine)

    assert engine.stats().max_decode_rows >= 4
    outputs = []
    for i, sink in enumerate(sinks):
        expected = reference(seq2seq, prompts[i], lengths[i] if i != 4 else N, **forced(seq2seq))
        if i == 4:
            assert sink.finished().reason is FinishReason.CANCELLED
            assert sink.tokens() == expected[: len(sink.tokens())]
            continue
        assert sink.tokens() == expected, f"request {i} diverged from generate()"
        assert sink.text() == text_of(seq2seq, expected)
        outputs.append(tuple(expected))
    assert len(set(outputs)) == len(outputs), "different inputs gave the same output"
    assert sum(distinct_ratio(list(o)) for o in outputs) / len(outputs) >= 0.5


@pytest.mark.parametrize(
    ("num_beams", "n", "length_penalty", "early_stopping"),
    [(4, 2, 1.0, None), (3, 3, 2.0, None), (4, 4, -1.0, True), (5, 1, 1.0, "never")],
)
def test_beams_match_generate(
    seq2seq: Bundle,
    num_beams: int,
    n: int,
    length_penalty: float,
    early_stopping: bool | str | None,
) -> None:
    prompt = prompt_of(seq2seq, SOURCES[2])
    # A token of the greedy path becomes EOS, so beams finish early and the finished set
    # is exercised, not just the length limit.
    eos = reference(seq2seq, prompt, 4, **forced(seq2seq))[2]
    config = copy.deepcopy(seq2seq.generation_config)
    config.eos_token_id = eos
    if early_stopping is not None:
        config.early_stopping = early_stopping
    engine = make_engine(seq2seq, generation_config=config)
    beam = SamplingParams(num_beams=num_beams, n=n, length_penalty=length_penalty)
    sink = submit(
        engine, prompt, sampling=beam, stopping=StoppingParams(max_new_tokens=12), **forced(seq2seq)
    )
    run_until_idle(engine)

    extra = {} if early_stopping is None else {"early_stopping": early_stopping}
    expected = reference_beams(
        seq2seq,
        prompt,
        12,
        eos_token_id=eos,
        num_beams=num_beams,
        num_return_sequences=n,
        length_penalty=length_penalty,
        **extra,
        **forced(seq2seq),
    )
    finished = sink.all_finished()
    assert [[t.id for t in f.tokens] for f in finished] == expected
    assert not [e for e in sink.events if isinstance(e, Delta)], "beams must not stream"
    for f, tokens in zip(finished, expected, strict=True):
        ends_eos = tokens[-1] == eos
        assert f.reason is (FinishReason.EOS if ends_eos else FinishReason.LENGTH)
        assert f.text == text_of(seq2seq, tokens[:-1] if ends_eos else tokens)


def test_forced_eos_is_the_last_token(bart: Bundle) -> None:
    """BART-CNN style ``forced_eos_token_id``: the last allowed token is EOS."""
    config = copy.deepcopy(bart.generation_config)
    config.forced_eos_token_id = bart.tokenizer.eos_token_id
    prompt = prompt_of(bart, SOURCES[0])
    engine = make_engine(bart, generation_config=config)
    sink = submit(engine, prompt, **greedy(8))
    run_until_idle(engine)
    expected = reference(bart, prompt, 8, forced_eos_token_id=config.forced_eos_token_id)
    assert sink.tokens() == expected and expected[-1] == config.forced_eos_token_id
    assert sink.finished().reason is FinishReason.EOS


def test_seeded_sampling_is_batch_invariant(t5: Bundle) -> None:
    sampled = {
        "sampling": SamplingParams(temperature=1.0, top_k=0, seed=99, n=2),
        "stopping": StoppingParams(max_new_tokens=N, min_new_tokens=N),
    }
    prompt = prompt_of(t5, SOURCES[3])
    engine = make_engine(t5)
    alone = submit(engine, prompt, **sampled)
    run_until_idle(engine)

    engine = make_engine(t5)
    submit(engine, prompt_of(t5, SOURCES[0]), **greedy())
    engine.step()
    crowded = submit(engine, prompt, **sampled)
    run_until_idle(engine)
    assert engine.stats().max_decode_rows == 3
    for i in range(2):
        assert crowded.tokens(i) == alone.tokens(i)
        assert crowded.finished(i).seed == 99 + i
    assert alone.tokens(0) != alone.tokens(1)


def test_stop_string_and_logprobs(t5: Bundle) -> None:
    prompt = prompt_of(t5, SOURCES[4])
    expected = reference(t5, prompt, N)
    full = text_of(t5, expected)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    engine = make_engine(t5)
    sink = submit(
        engine,
        prompt,
        sampling=SamplingParams(temperature=0),
        stopping=StoppingParams(max_new_tokens=N, min_new_tokens=N, stop=[stop]),
        options=OutputOptions(logprobs=True),
    )
    run_until_idle(engine)
    assert sink.finished().reason is FinishReason.STOP_SEQUENCE
    assert sink.text() == full[: full.index(stop)]
    tokens = [t for d in sink.deltas() for t in d.tokens]
    with torch.no_grad():
        decoder = torch.tensor([[t5.generation_config.decoder_start_token_id, *expected]])
        logits = t5.model(input_ids=torch.tensor([prompt]), decoder_input_ids=decoder).logits
    raw = torch.log_softmax(logits[0].float(), dim=-1)
    for step, token in enumerate(tokens):
        assert token.id == expected[step]
        assert token.logprob == pytest.approx(float(raw[step, token.id]), abs=TINY_LOGPROB_ATOL)


def test_encoder_and_decoder_limits(m2m100: Bundle) -> None:
    """The prompt is bounded by the encoder's positions, the output by the decoder's."""
    engine = make_engine(m2m100, max_new_tokens_cap=1000)
    with pytest.raises(InvalidRequest) as too_long:
        submit(engine, [5] * 257)
    assert too_long.value.field == "prompt"
    submit(engine, [5] * 256, stopping=StoppingParams(max_new_tokens=255))
    with pytest.raises(InvalidRequest) as too_many:
        submit(engine, [5] * 10, stopping=StoppingParams(max_new_tokens=256))
    assert too_many.value.field == "stopping.max_new_tokens"
    with pytest.raises(InvalidRequest) as bad_bos:
        submit(engine, [5], forced_bos_token_id=10**6)
    assert bad_bos.value.field == "forced_bos_token_id"


def _config_setting(name: str, plain: list[int]) -> dict:
    if name == "min_length":  # an EOS the model emits at once, held off until length 9
        return {"min_length": 9, "eos_token_id": plain[1]}
    if name == "bad_words_ids":
        return {"bad_words_ids": [[plain[0]]]}
    return {"no_repeat_ngram_size": 2}


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("name", ["min_length", "bad_words_ids", "no_repeat_ngram_size"])
def test_generation_config_constraints_match_generate(
    bart: Bundle, name: str, num_beams: int
) -> None:
    """min_length, single-token bad_words_ids and no_repeat_ngram_size from the model's
    generation_config (as summarization models ship them) apply as in generate()."""
    prompt = prompt_of(bart, SOURCES[1])
    # Beams favour short hypotheses, so an early EOS wins unless min_length holds it off.
    beam = {"num_beams": num_beams, "length_penalty": -1.0} if num_beams > 1 else {}
    [plain] = reference_beams(bart, prompt, 16, min_new_tokens=16, **beam)
    setting = _config_setting(name, plain)
    config = copy.deepcopy(bart.generation_config)
    for key, value in setting.items():
        setattr(config, key, value)
    engine = make_engine(bart, generation_config=config)
    sink = submit(
        engine, prompt, sampling=SamplingParams(**beam), stopping=StoppingParams(max_new_tokens=16)
    )
    run_until_idle(engine)
    [expected] = reference_beams(bart, prompt, 16, **beam, **setting)
    unconstrained = {k: v for k, v in setting.items() if k == "eos_token_id"}
    [free] = reference_beams(bart, prompt, 16, **beam, **unconstrained)
    assert expected != free, "the setting must change the output for the test to prove it"
    got = sink.tokens() if num_beams == 1 else [t.id for t in sink.finished().tokens]
    assert got == expected
