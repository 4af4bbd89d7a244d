"""EOS, min_new_tokens, ignore_eos and stop token ids."""

from __future__ import annotations

from engine_helpers import PROMPTS, Bundle, expected_text, make_engine, run_until_idle, submit

from modelwire_server.engine import FinishReason, SamplingParams, StoppingParams


def _eos_loving(bundle: Bundle, **stopping: object) -> tuple[list[int], FinishReason, str]:
    """Greedy decoding with EOS boosted so that it wins whenever it is allowed."""
    eos = bundle.generation_config.eos_token_id
    engine = make_engine(bundle)
    sink = submit(
        engine,
        bundle.encode(PROMPTS[0]),
        sampling=SamplingParams(temperature=0, logit_bias={eos: 100.0}),
        stopping=StoppingParams(**{"max_new_tokens": 10, **stopping}),
    )
    run_until_idle(engine)
    return sink.tokens(), sink.finished().reason, sink.text()


def test_eos_ends_the_sequence_and_is_not_in_the_text(bundle: Bundle) -> None:
    eos = bundle.generation_config.eos_token_id
    tokens, reason, text = _eos_loving(bundle)
    assert tokens == [eos] and reason is FinishReason.EOS and text == ""


def test_min_new_tokens_holds_eos_back(bundle: Bundle) -> None:
    eos = bundle.generation_config.eos_token_id
    tokens, reason, _ = _eos_loving(bundle, min_new_tokens=5)
    assert len(tokens) == 6 and eos not in tokens[:5] and tokens[5] == eos
    assert reason is FinishReason.EOS


def test_ignore_eos_runs_to_the_limit(gpt2: Bundle) -> None:
    eos = gpt2.generation_config.eos_token_id
    tokens, reason, _ = _eos_loving(gpt2, ignore_eos=True)
    assert tokens == [eos] * 10 and reason is FinishReason.LENGTH


def test_stop_token_ids(llama: Bundle) -> None:
    prompt = llama.encode(PROMPTS[2])
    engine = make_engine(llama)
    plain = submit(engine, prompt, stopping=StoppingParams(max_new_tokens=12))
    run_until_idle(engine)
    output = plain.tokens()
    stop_id = next(t for i, t in enumerate(output) if i >= 3 and t not in output[:i])
    at = output.index(stop_id)
    for include in (False, True):
        sink = submit(
            engine,
            prompt,
            stopping=StoppingParams(
                max_new_tokens=12, stop_token_ids=[stop_id], include_stop_in_output=include
            ),
        )
        run_until_idle(engine)
        assert sink.tokens() == output[: at + 1]
        assert sink.finished().reason is FinishReason.STOP_SEQUENCE
        kept = output[: at + 1] if include else output[:at]
        assert sink.text() == sink.finished().text == expected_text(llama, prompt, kept)
