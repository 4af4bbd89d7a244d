"""oneDNN-packed linear layers for CPU inference: the per-model ``cpu_prepack`` option.

On the CPU, a linear layer's ``addmm``/``linear`` goes to a GEMM that is slow for the
few rows a decode step (or a small batch) has: GPT-2-small's MLP weight ran at about
8 GB/s with 8 rows. oneDNN with the weight reordered once, at load, into its blocked
layout runs the same product about 4x faster, and a whole decode step about 2x. The
result is the same product summed in another order: equal to float32 rounding (about
1e-6 relative), not bit for bit, so greedy decoding can part from ``generate()`` where
two tokens' logits tie to within that. Hence an option, off unless asked for.

bfloat16 (and float16 where the CPU has avx512_fp16 or AMX-FP16) models on the CPU are
packed always (``TaskRunner.place``): there is no exact result to keep, and their
unpacked products are the slow ones: a 768 → 3072 layer at one row took 163 µs in
bfloat16 against 160 µs in float32 and 56 µs packed in bfloat16 (EPYC, avx512_bf16).

Every ``torch.nn.Linear`` and transformers ``Conv1D`` (GPT-2's, weights stored
transposed) of a CPU model is replaced by a ``PackedLinear``; anything else,
including a subclass of either that may compute differently, is left alone. The packed
weight is an opaque oneDNN tensor: pack after the model is on its device and dtype.
"""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D

# The row count oneDNN tunes the packed layout for; any count works.
BATCH_HINT = 8


def available() -> bool:
    return bool(torch.backends.mkldnn.is_available())


def packable(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs linear layers of ``dtype`` on this CPU."""
    if not available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return dtype == torch.float32


class PackedLinear(torch.nn.Module):
    """``y = x @ weight.T + bias`` with ``weight`` ([out, in]) packed for oneDNN."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        with torch.no_grad():
            dense = weight.detach().contiguous()
            self.packed = torch.ops.mkldnn._reorder_linear_weight(dense, BATCH_HINT)
            self.bias = None if bias is None else bias.detach().clone()

    @property
    def weight(self) -> torch.Tensor:
        """The packed weight: enough for model code that reads its dtype or device (T5
        does), not for arithmetic."""
        return self.packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def _weight_of(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as [out, in], bias) of a packable layer, else None."""
    if type(module) is torch.nn.Linear:
        weight, bias = module.weight, module.bias
    elif type(module) is Conv1D:
        weight, bias = module.weight.t(), module.bias
    else:
        return None
    if not packable(weight.dtype) or weight.device.type != "cpu":
        return None
    return weight, bias


def prepack_linears(model: torch.nn.Module) -> int:
    """Replace ``model``'s packable layers (float32, or 16-bit where ``packable``) with
    ``PackedLinear``s; return how many."""
    if not available():
        raise RuntimeError("cpu_prepack needs PyTorch built with oneDNN (mkldnn)")
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            found = _weight_of(child)
            if found is not None:
                setattr(parent, name, PackedLinear(*found))
                count += 1
    return count
