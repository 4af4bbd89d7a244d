"""Weight-only quantization on the CPU: the per-model ``quantization`` setting.

A decode step reads every weight once, so its time is the weights' bytes over memory
bandwidth: int8 weights are a quarter of float32's bytes, grouped int4 an eighth. The
activations stay floating point; each layer's product runs in torch's own CPU kernels:

- ``int8``: one scale per output channel (symmetric, ``w ≈ q * scale`` with ``q`` in
  [-127, 127]), ``torch._weight_int8pack_mm``. Rounding moves a weight by at most half
  a step, ``max|w_row| / 254``: about 0.4 % of the row's largest weight.
- ``int4``: one scale and offset per group of 128 input channels (64 or 32 where the
  width is not a multiple of 128) per output channel (asymmetric, 16 levels),
  ``torch._weight_int4pack_mm_for_cpu``. A weight moves by at most ``(max - min) / 30``
  of its group. The kernel needs a multiple of 16 output channels: a layer that is not
  (a vocabulary of 50257) stays in floating point.

The kernels take the activations in bfloat16: torch's float32 path for them is a scalar
loop (measured on an EPYC with avx512_bf16: 958 µs against 68 µs for a 768 → 3072 layer
at one row). A float32 model so keeps its float32 everywhere else (embeddings, norms,
attention, residual sums) and rounds each quantized layer's input to bfloat16, an error
(2^-9 relative) below the weights' own.

Every ``torch.nn.Linear`` and transformers ``Conv1D`` (GPT-2's) is replaced, the LM head
included; anything else, a subclass that may compute differently included, stays as it
is. Quantize after the model is on its device and dtype.
"""

from __future__ import annotations

import functools

import torch
from transformers.pytorch_utils import Conv1D

MODES = ("none", "int8", "int4", "fp8")
# Input channels sharing one int4 scale and offset: the largest of these that divides
# the layer's width (128 is what GPTQ and AWQ checkpoints use).
INT4_GROUPS = (128, 64, 32)
# Output channels of an int4 layer must be a multiple of this (the kernel's blocking).
INT4_ROWS = 16
# The layout tiling torch's int4 kernel packs for.
_INNER_K_TILES = 2


class QuantizationError(ValueError):
    """A model that cannot be quantized as asked; the message says why."""


class Int8Linear(torch.nn.Module):
    """``y = x @ (q * scale).T + bias`` with int8 ``q`` ([out, in]) and per-row scales."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.weight_int8, scales = quantize_int8(weight)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight, for model code that reads its dtype or device (T5 does, and
        knows not to cast activations to int8), not for arithmetic."""
        return self.weight_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int4Linear(torch.nn.Module):
    """``y = x @ w.T + bias`` with ``w`` in groups of input channels, 4 bits a weight."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        group = int4_group(self.out_features, self.in_features)
        if group is None:
            raise QuantizationError(f"a {self.in_features} -> {self.out_features} layer")
        self.group = group
        codes, scales_and_zeros = quantize_int4(weight, group)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """A tensor of the layer's compute dtype and device, for model code that reads
        them (T5 does); the weight itself is packed."""
        return self.scales_and_zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_and_zeros)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4"


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [out, in], scale per output row) of a weight [out, in]. The scales
    are rounded (up) to bfloat16, the kernel's format, before the codes are chosen, so
    the served weight is within half a step of the original."""
    w = weight.detach().float()
    scales = _bfloat16_at_least(w.abs().amax(dim=1) / 127)
    codes = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return codes.contiguous(), scales


def _bfloat16_at_least(values: torch.Tensor) -> torch.Tensor:
    """``values`` rounded to bfloat16 no lower than they were (nearest of a value 2^-8
    higher), as float32; zeros become the smallest normal, a valid divisor."""
    tiny = torch.finfo(torch.bfloat16).tiny
    return (values * (1 + 2**-8)).clamp(min=tiny).to(torch.bfloat16).float()


def int4_group(out_features: int, in_features: int) -> int | None:
    """The int4 group size for a layer of this shape; None where the kernel takes none."""
    if out_features % INT4_ROWS:
        return None
    return next((g for g in INT4_GROUPS if in_features % g == 0), None)


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes 0..15 as int32 [out, in], scales and zeros [in / group, out, 2]) of a
    weight [out, in], in the layout torch's int4 kernels take: ``w = (q - 8) * scale +
    zero`` per group."""
    out_features, in_features = weight.shape
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    # In bfloat16, the kernel's format, before the codes are chosen (see quantize_int8).
    scales = _bfloat16_at_least((high - low) / 15)
    zeros = (low + 8 * scales).to(torch.bfloat16).float()
    codes = torch.round((w - zeros) / scales + 8).clamp(0, 15).to(torch.int32)
    pairs = torch.cat([scales, zeros], dim=-1).transpose(0, 1).contiguous()
    return codes.reshape(out_features, in_features), pairs


def dequantize_int4(codes: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """The weight [out, in] that ``quantize_int4``'s output stands for."""
    out_features, in_features = codes.shape
    groups = scales_and_zeros.shape[0]
    grouped = codes.float().reshape(out_features, groups, in_features // groups)
    pairs = scales_and_zeros.float().transpose(0, 1)  # [out, groups, 2]
    scales, zeros = pairs[..., :1], pairs[..., 1:]
    return ((grouped - 8) * scales + zeros).reshape(out_features, in_features)


@functools.cache
def int4_available() -> bool:
    """Whether this PyTorch's int4 CPU kernels run here (they are absent from some builds)."""
    try:
        group = INT4_GROUPS[-1]
        codes = torch.zeros(INT4_ROWS, group, dtype=torch.int32)
        packed = torch._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
        pairs = torch.ones(1, INT4_ROWS, 2, dtype=torch.bfloat16)
        x = torch.ones(1, group, dtype=torch.bfloat16)
        torch._weight_int4pack_mm_for_cpu(x, packed, group, pairs)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def check_supported(mode: str, device: torch.device) -> None:
    """Refuse, with a sentence, a quantization this server cannot run on ``device``."""
    if mode == "none":
        return
    if device.type != "cpu":
        raise QuantizationError(
            f"quantization {mode} runs on the CPU only in this server for now; serve the "
            f"model on {device} with quantization none, or on the CPU"
        )
    if mode == "fp8":
        raise QuantizationError(
            "quantization fp8 needs a GPU with float8 support; on the CPU use int8 or int4"
        )
    if mode == "int4" and not int4_available():
        raise QuantizationError(
            "quantization int4 needs torch's int4 CPU kernel "
            "(torch._weight_int4pack_mm_for_cpu), which this PyTorch build lacks; use int8"
        )


def _weight_of(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as [out, in], bias) of a quantizable layer, else None."""
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    if type(module) is Conv1D:
        return module.weight.t(), module.bias
    return None


def quantize_linears(model: torch.nn.Module, mode: str) -> tuple[int, int]:
    """Replace ``model``'s linear layers with ``mode``'s quantized ones; return (how many
    were replaced, how many were left in floating point because their shape does not
    fit the kernel: int4 needs widths that are multiples of 32 and 16)."""
    layer = {"int8": Int8Linear, "int4": Int4Linear}[mode]
    replaced = left = 0
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                found = _weight_of(child)
                if found is None:
                    continue
                weight, bias = found
                if mode == "int4" and int4_group(*weight.shape) is None:
                    left += 1
                    continue
                setattr(parent, name, layer(weight, bias))
                replaced += 1
    return replaced, left
