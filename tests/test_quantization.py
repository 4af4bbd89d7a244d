"""``quantization: int8 | int4`` and CPU ``bfloat16`` against float32 on the same inputs.

Tolerances come from the formats, not from the kernels under test. Layer by layer: an
int8 weight is within half a step (``row max / 254``) of the original, an int4 one
within half a step of its group, and a quantized layer computes the product with those
dequantized weights and its input rounded to bfloat16, to bfloat16 rounding. Model by
model: what the format costs on a given model and input is measured with a pure-PyTorch
emulation (float32 arithmetic, dequantized or bfloat16-rounded weights, inputs rounded
to bfloat16), never with the served kernels; greedy decoding may part from float32 only
at a step where float32's own top-2 margin is within twice that cost, and a
log-probability (or a probability) moves by at most twice the largest logit change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from modelwire import AsyncClient
from modelwire_server import quantize
from modelwire_server.config import ConfigError, ModelConfig, validate_model
from modelwire_server.quantize import (
    Int4Linear,
    Int8Linear,
    QuantizationError,
    check_supported,
    dequantize_int4,
    quantize_int4,
    quantize_int8,
    quantize_linears,
)
from modelwire_server.registry import resolve_dtype
from tests.conftest import RunningServer, preset_server, preset_variant
from tests.test_generate import PROMPTS
from tests.tolerances import float_atol

INT4 = quantize.int4_available()
NEW_TOKENS = 12
CPU = torch.device("cpu")


def weights(rows: int, cols: int) -> torch.Tensor:
    """Gaussian weights with a few large outliers and one all-zero row."""
    torch.manual_seed(0)
    w = torch.randn(rows, cols) * 0.05
    w[3, 5] = 1.5
    w[7] = 0.0
    return w


# ----------------------------------------------------------------- the formats, layer by layer


def test_int8_weights_round_trip_within_half_a_step() -> None:
    w = weights(96, 64)
    codes, scales = quantize_int8(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert torch.equal(scales, scales.to(torch.bfloat16).float())  # the kernel's format
    exact = w.abs().amax(dim=1) / 127
    assert (scales[exact > 0] >= exact[exact > 0]).all()
    torch.testing.assert_close(scales[exact > 0], exact[exact > 0], rtol=2**-7, atol=0)
    error = (codes.float() * scales[:, None] - w).abs()
    assert (error <= scales[:, None] / 2).all()
    assert torch.equal(codes[7], torch.zeros(64, dtype=torch.int8))


@pytest.mark.skipif(not INT4, reason="this PyTorch has no int4 CPU kernel (refusal tested below)")
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_weights_round_trip_within_half_a_step(group: int) -> None:
    w = weights(32, 256)
    codes, pairs = quantize_int4(w, group)
    assert codes.min() >= 0 and codes.max() <= 15
    grouped = w.reshape(32, 256 // group, group)
    step = (grouped.amax(-1) - grouped.amin(-1)) / 15  # [out, groups]
    served = dequantize_int4(codes, pairs.to(torch.bfloat16))  # as the kernel holds them
    error = (served - w).abs().reshape(32, 256 // group, group)
    # Half a step, plus what rounding the scale (2^-8) and offset (2^-9 of a value up to
    # 15 steps) to bfloat16 moves the grid: under a tenth of a step.
    assert (error <= step[..., None] * 0.6).all()


def emulated(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """What an int8 layer stands for: float32 arithmetic on its dequantized weight with
    its input rounded to bfloat16, the way the module's docstring says."""
    y = torch.nn.functional.linear(x.to(torch.bfloat16).float(), layer.dequantized())
    return y if layer.bias is None else y + layer.bias


def bfloat16_output_atol(expected: torch.Tensor) -> float:
    """The kernels accumulate in float32 and round the output to bfloat16 once (half an
    ulp, 2^-9 relative): twice that, of the largest value, bounds the difference."""
    return 2 * 2**-8 * expected.abs().max().item()


@pytest.mark.parametrize("shape", [(1, 64), (7, 64), (2, 5, 64)])
def test_int8_layers_compute_the_dequantized_product(shape: tuple[int, ...]) -> None:
    w = weights(96, 64)
    bias = torch.randn(96) * 0.1
    x = torch.randn(*shape)
    layer = Int8Linear(w, bias)
    with torch.inference_mode():
        got = layer(x)
        expected = emulated(layer, x)
    assert got.shape == (*shape[:-1], 96) and got.dtype == x.dtype
    torch.testing.assert_close(got, expected, atol=bfloat16_output_atol(expected), rtol=0)


@pytest.mark.skipif(not INT4, reason="this PyTorch has no int4 CPU kernel (refusal tested below)")
def test_int4_layers_compute_the_dequantized_product() -> None:
    w = weights(48, 128)
    x = torch.randn(5, 128)
    layer = Int4Linear(w, None)
    codes, pairs = quantize_int4(w, layer.group)
    dequantized = dequantize_int4(codes, pairs.to(torch.bfloat16))
    with torch.inference_mode():
        got = layer(x)
    expected = x.to(torch.bfloat16).float() @ dequantized.T
    torch.testing.assert_close(got, expected, atol=bfloat16_output_atol(expected), rtol=0)


class ScaledLinear(torch.nn.Linear):
    """A subclass that computes differently: must be left alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_only_plain_linear_layers_are_quantized() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 32), ScaledLinear(32, 32), torch.nn.Sequential(Conv1D(48, 32))
    )
    conv_weight = model[2][0].weight.detach().t().clone()  # GPT-2's layer stores [in, out]
    assert quantize_linears(model, "int8") == (2, 0)
    assert isinstance(model[0], Int8Linear) and type(model[1]) is ScaledLinear
    conv = model[2][0]
    assert isinstance(conv, Int8Linear) and (conv.out_features, conv.in_features) == (48, 32)
    error = (conv.dequantized() - conv_weight).abs()
    assert (error <= conv.scales.float()[:, None] / 2).all()


@pytest.mark.skipif(not INT4, reason="this PyTorch has no int4 CPU kernel (refusal tested below)")
def test_int4_leaves_layers_the_kernel_cannot_take() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 50))  # 50 % 16
    assert quantize_linears(model, "int4") == (1, 1)
    assert isinstance(model[0], Int4Linear) and type(model[1]) is torch.nn.Linear


# ------------------------------------------------------------------------------- settings


def test_the_quantization_key_is_checked() -> None:
    config = ModelConfig(name="m", task="text-generation", source="x", quantization="int3")
    with pytest.raises(ConfigError, match=r"models\[0\]\.quantization 'int3' must be one of"):
        validate_model(config, "models[0]")
    mapped = ModelConfig(
        name="m", task="text-generation", source="x", quantization="int8", device_map="auto"
    )
    with pytest.raises(ConfigError, match="not with device_map"):
        validate_model(mapped, "models[0]")


def test_unsupported_quantizations_are_refused_with_a_sentence() -> None:
    check_supported("none", torch.device("cuda"))
    check_supported("int8", CPU)
    with pytest.raises(QuantizationError, match="fp8 needs a GPU"):
        check_supported("fp8", CPU)
    with pytest.raises(QuantizationError, match="runs on the CPU only"):
        check_supported("int8", torch.device("cuda"))
    if INT4:
        check_supported("int4", CPU)
    else:
        with pytest.raises(QuantizationError, match="int4 CPU kernel"):
            check_supported("int4", CPU)


@pytest.mark.parametrize("fast", [True, False])
def test_dtype_auto_on_the_cpu(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """bfloat16 only where the CPU multiplies it natively and the model was stored in 16
    bits; float32 otherwise; an explicit dtype always wins."""
    from modelwire_server import registry

    monkeypatch.setattr(registry, "cpu_has_fast_bfloat16", lambda: fast)
    want16 = torch.bfloat16 if fast else torch.float32
    assert resolve_dtype("auto", CPU, "bfloat16") == want16
    assert resolve_dtype("auto", CPU, "float16") == want16
    assert resolve_dtype("auto", CPU, "float32") == torch.float32
    assert resolve_dtype("auto", CPU, None) == torch.float32
    assert resolve_dtype("float32", CPU, "bfloat16") == torch.float32
    assert resolve_dtype("bfloat16", CPU, None) == torch.bfloat16


def test_the_stored_dtype_is_read_from_the_model_config(tmp_path) -> None:
    from modelwire_server.registry import stored_dtype

    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    assert stored_dtype(str(tmp_path)) == "bfloat16"
    (tmp_path / "config.json").write_text('{"dtype": "float16", "torch_dtype": "float32"}')
    assert stored_dtype(str(tmp_path)) == "float16"  # transformers 5 writes "dtype"
    (tmp_path / "config.json").write_text("{}")
    assert stored_dtype(str(tmp_path)) is None


# ------------------------------------------------------------------ through the server


def emulate_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """A float32 copy of ``model`` whose linear layers compute what ``mode`` costs:
    int8/int4 dequantized weights or bfloat16-rounded ones, inputs rounded to bfloat16."""
    copied = copy.deepcopy(model)

    def rounded(weight: torch.Tensor) -> torch.Tensor:
        if mode == "int8":
            codes, scales = quantize_int8(weight)
            return codes.float() * scales[:, None]
        if mode == "int4":
            group = quantize.int4_group(*weight.shape)
            if group is None:  # left in floating point by the server too
                return weight
            codes, pairs = quantize_int4(weight, group)
            return dequantize_int4(codes, pairs.to(torch.bfloat16))
        return weight.to(torch.bfloat16).float()

    class Emulated(torch.nn.Module):
        def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
            super().__init__()
            self.weight, self.bias = rounded(weight.detach()), bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x.to(torch.bfloat16).float(), self.weight, self.bias)

    with torch.no_grad():
        for parent in list(copied.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, Emulated(child.weight, child.bias))
                elif type(child) is Conv1D:
                    setattr(parent, name, Emulated(child.weight.t(), child.bias))
        if mode == "bfloat16":  # the rest of the model (embeddings, norms) in bfloat16 too
            for param in copied.parameters():
                param.copy_(param.to(torch.bfloat16).float())
    return copied


def greedy_with_margins(
    model: torch.nn.Module, emulation: torch.nn.Module, ids: torch.Tensor, steps: int
) -> tuple[list[int], list[float], float]:
    """float32 greedy tokens, float32's top-2 margin at each step, and the largest
    logit change the format makes along that sequence (the emulation, teacher-forced)."""
    tokens: list[int] = []
    margins: list[float] = []
    with torch.inference_mode():
        sequence = ids
        for _ in range(steps):
            logits = model(sequence).logits[0, -1]
            top = logits.topk(2).values
            margins.append(float(top[0] - top[1]))
            tokens.append(int(logits.argmax()))
            sequence = torch.cat([sequence, torch.tensor([[tokens[-1]]])], dim=1)
        cost = (emulation(sequence).logits - model(sequence).logits).abs().max().item()
    return tokens, margins, cost


MODES = ["int8", "bfloat16"] + (["int4"] if INT4 else [])


def mode_overrides(mode: str) -> dict[str, str]:
    return {"dtype": "bfloat16"} if mode == "bfloat16" else {"quantization": mode}


@pytest.fixture(scope="module", params=MODES)
def numerics_server(request: pytest.FixtureRequest, preset_cache) -> Iterator[RunningServer]:
    mode: str = request.param
    extra = [] if INT4 else [preset_variant("tiny-int4", "text-generation", "tiny-llama")]
    if extra:
        extra[0].quantization = "int4"
    extra.append(preset_variant("tiny-fp8", "text-generation", "tiny-gpt2", quantization="fp8"))
    names = ["tiny-gpt2", "tiny-llama", "tiny-sentiment"]
    with preset_server(names, extra=extra, **mode_overrides(mode)) as running:
        running.mode = mode  # type: ignore[attr-defined]
        yield running


async def test_get_model_reports_precision_and_quantization(
    numerics_server: RunningServer,
) -> None:
    mode = numerics_server.mode  # type: ignore[attr-defined]
    async with AsyncClient(numerics_server.target, timeout=60) as client:
        info = await client.get_model("tiny-llama")
        refused = await client.get_model("tiny-fp8")
        int4 = None if INT4 else await client.get_model("tiny-int4")
    assert info.state == "ready"
    if mode == "bfloat16":
        assert (info.dtype, info.quantization) == ("bfloat16", "none")
    else:
        assert (info.dtype, info.quantization) == ("float32", mode)
        kind = Int8Linear if mode == "int8" else Int4Linear
        layers = numerics_server.runner("tiny-llama").model.modules()
        assert any(isinstance(m, kind) for m in layers)
    assert refused.state == "failed" and "fp8 needs a GPU" in refused.failure_message
    if int4 is not None:
        assert int4.state == "failed" and "int4 CPU kernel" in int4.failure_message


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
async def test_greedy_decoding_parts_from_float32_only_where_it_is_a_near_tie(
    numerics_server: RunningServer, model: str
) -> None:
    mode = numerics_server.mode  # type: ignore[attr-defined]
    source = numerics_server.runner(model).config.source
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    emulation = emulate_model(reference, mode)
    tokenizer = AutoTokenizer.from_pretrained(source)
    async with AsyncClient(numerics_server.target, timeout=120) as client:
        for prompt in PROMPTS[:3]:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            expected, margins, cost = greedy_with_margins(reference, emulation, ids, NEW_TOKENS)
            result = await client.generate(
                prompt,
                model=model,
                temperature=0,
                max_new_tokens=NEW_TOKENS,
                ignore_eos=True,
                logprobs=True,
            )
            tokens = result.sequences[0].tokens
            got = [t.id for t in tokens]
            parted = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), None
            )
            if parted is not None:
                assert margins[parted] <= 2 * cost, (
                    f"{mode} parted from float32 at step {parted}, where float32's margin "
                    f"{margins[parted]:.3f} exceeds twice the format's cost {cost:.3f}"
                )
            # The served tokens' log-probabilities against float32's for the same tokens.
            sequence = torch.tensor([ids[0].tolist() + got])
            with torch.inference_mode():
                logits = reference(sequence).logits[0, ids.shape[1] - 1 : -1]
                cost_here = (emulation(sequence).logits - reference(sequence).logits).abs().max()
            expected_lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(got)[:, None])
            served = torch.tensor([[t.logprob] for t in tokens])
            atol = 2 * cost_here.item() + float_atol(1.0, reduction=128, depth=24)
            torch.testing.assert_close(served, expected_lp, atol=2 * atol, rtol=0)


async def test_a_classifier_keeps_its_top_labels(numerics_server: RunningServer) -> None:
    from transformers import AutoModelForSequenceClassification

    from tests.test_classify_text import TEXTS

    mode = numerics_server.mode  # type: ignore[attr-defined]
    source = numerics_server.runner("tiny-sentiment").config.source
    reference = AutoModelForSequenceClassification.from_pretrained(source).eval()
    emulation = emulate_model(reference, mode)
    tokenizer = AutoTokenizer.from_pretrained(source)
    texts = TEXTS * 2 + [f"review number {i}: it was fine, I suppose" for i in range(6)]
    async with AsyncClient(numerics_server.target, timeout=120) as client:
        results = await client.classify_text(texts, model="tiny-sentiment", top_k=100)
    labels = reference.config.id2label
    checked = 0
    for text, result in zip(texts, results, strict=True):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            logits = reference(**encoded).logits[0]
            cost = (emulation(**encoded).logits[0] - logits).abs().max().item()
        top = logits.topk(2).values
        probs = torch.softmax(logits, -1)
        got = {ls.label: ls.score for ls in result.labels}
        for i, label in labels.items():
            assert got[label] == pytest.approx(probs[i].item(), abs=2 * cost + 1e-4)
        if float(top[0] - top[1]) > 2 * cost:
            assert result.labels[0].label == labels[int(logits.argmax())]
            checked += 1
    assert checked >= len(texts) // 2, "the format's cost left too few inputs to check"


# ---------------------------------------------------------------- the real all-MiniLM-L6-v2


def minilm_reference() -> Callable[[list[str]], torch.Tensor]:
    from transformers import AutoModel

    from tests.conftest import minilm_path

    model = AutoModel.from_pretrained(minilm_path()).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def embed(texts: list[str]) -> torch.Tensor:
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    return embed


SENTENCES = [
    "A man is playing a guitar on stage.",
    "The stock market fell sharply on Tuesday.",
    "How do I reset my password?",
    "Photosynthesis turns light into chemical energy.",
    "She walked her dog along the beach at sunset.",
    "Quantum computers use qubits.",
]


@pytest.mark.parametrize(("mode", "cosine"), [("bfloat16", 0.999), ("int8", 0.99)])
async def test_minilm_embeddings_stay_close_to_float32(
    preset_cache, mode: str, cosine: float
) -> None:
    """bfloat16 keeps 8 significant bits and int8 about 7 of each weight: the real
    model's sentence vectors move by well under 1 % of their length."""
    from tests.conftest import minilm_path

    config = ModelConfig(
        name="minilm", task="feature-extraction", source=str(minilm_path()), **mode_overrides(mode)
    )
    expected = minilm_reference()(SENTENCES)
    with preset_server([], extra=[config]) as running:
        async with AsyncClient(running.target, timeout=120) as client:
            info = await client.get_model("minilm")
            results = await client.embed(SENTENCES, model="minilm", normalize=True)
    assert info.state == "ready", info.failure_message
    got = torch.tensor([r.values for r in results])
    similarity = (got * expected).sum(-1)
    assert similarity.min().item() >= cosine, similarity.tolist()
