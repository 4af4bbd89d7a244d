"""``cpu_prepack``: float32 CPU models with their linear layers packed for oneDNN give
the unpacked model's outputs to float rounding, and Generate on such a server decodes
greedily like ``generate()`` on the unpacked model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from modelwire import AsyncClient
from modelwire_server.prepack import PackedLinear, prepack_linears
from tests.conftest import RunningServer, preset_server
from tests.test_classify_text import TEXTS, reference_scores
from tests.test_generate import PROMPTS, reference_greedy
from tests.tolerances import (
    TINY_DEPTH,
    TINY_LOGPROB_ATOL,
    TINY_REDUCTION,
    TINY_SCORE_ATOL,
    assert_close_as_floats,
)

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN"
)


class ScaledLinear(torch.nn.Linear):
    """A subclass that computes differently: must be left alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 5, 48)])
def test_packed_layers_compute_the_same_product(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 96, bias=bias)
    conv = Conv1D(96, 48)  # GPT-2's layer: weight stored as [in, out]
    x = torch.randn(*shape)
    for layer, weight in ((linear, linear.weight), (conv, conv.weight.t())):
        packed = PackedLinear(weight, layer.bias)
        with torch.inference_mode():
            expected, got = layer(x), packed(x)
        assert got.shape == expected.shape
        assert_close_as_floats(got, expected, reduction=48, depth=1)


def test_only_plain_linear_layers_are_replaced() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), ScaledLinear(8, 8), torch.nn.Sequential(Conv1D(8, 8))
    )
    assert prepack_linears(model) == 2
    assert isinstance(model[0], PackedLinear)
    assert type(model[1]) is ScaledLinear
    assert isinstance(model[2][0], PackedLinear)
    # Not float32: nothing to pack.
    assert prepack_linears(torch.nn.Sequential(torch.nn.Linear(4, 4).double())) == 0


def test_a_packed_model_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 300, (3, 20))
    with torch.inference_mode():
        expected = model(ids).logits
        assert prepack_linears(model) == 2 * 4 + 1  # 4 per block, and the LM head
        got = model(ids).logits
    assert_close_as_floats(got, expected, reduction=TINY_REDUCTION, depth=TINY_DEPTH)


@pytest.fixture(scope="module")
def packed_server(preset_cache) -> Iterator[RunningServer]:
    with preset_server(["tiny-gpt2", "tiny-llama", "tiny-sentiment"], cpu_prepack=True) as running:
        yield running


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
async def test_generate_on_a_packed_model(packed_server: RunningServer, model: str) -> None:
    runner = packed_server.runner(model)
    assert any(isinstance(m, PackedLinear) for m in runner.model.modules())
    source = runner.config.source
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    async with AsyncClient(packed_server.target, timeout=120) as client:
        for prompt in PROMPTS[:3]:
            result = await client.generate(
                prompt,
                model=model,
                temperature=0,
                max_new_tokens=16,
                ignore_eos=True,
                logprobs=True,
            )
            tokens = result.sequences[0].tokens
            assert [t.id for t in tokens] == reference_greedy(source, prompt, 16)
            # The first token's log-probability, against the unpacked model's.
            encoded = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                logits = reference(**encoded).logits[0, -1]
            expected = torch.log_softmax(logits, dim=-1)[tokens[0].id].item()
            assert tokens[0].logprob == pytest.approx(expected, abs=TINY_LOGPROB_ATOL)


async def test_one_shot_tasks_on_a_packed_model(packed_server: RunningServer) -> None:
    """The option is per model, whatever its task: a packed classifier scores like the
    pipeline on the unpacked one, to float rounding."""
    runner = packed_server.runner("tiny-sentiment")
    assert any(isinstance(m, PackedLinear) for m in runner.model.modules())
    expected = reference_scores(runner.config.source, TEXTS)
    async with AsyncClient(packed_server.target, timeout=120) as client:
        results = await client.classify_text(TEXTS, model="tiny-sentiment", top_k=100)
    for result, reference in zip(results, expected, strict=True):
        got = {ls.label: ls.score for ls in result.labels}
        assert got.keys() == reference.keys()
        for label, score in reference.items():
            assert got[label] == pytest.approx(score, abs=TINY_SCORE_ATOL)
