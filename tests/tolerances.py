"""Tolerances for floats that the same computation gives under different kernels.

Compare exactly only what is exact by construction: token ids, labels, integers,
strings. A float computed twice by differently shaped or ordered kernels (batched
against alone, oneDNN against the reference, one CPU's vector unit against another's)
differs by rounding. A sum of ``n`` terms in a format with machine epsilon ``eps``
carries a relative rounding error of about ``sqrt(n) * eps`` (the worst case is
``n * eps``; independent roundings add like a random walk), and ``depth`` such
reductions in a row add up the same way: ``sqrt(n * depth) * eps``. ``float_atol`` is
that estimate, scaled by the magnitude of the values compared and by a safety factor,
so it holds on any CPU while a real bug (a wrong mask, a misplaced row, a dropped token)
still moves the results by orders of magnitude more. (Measured: T5's padded-batch logits
of magnitude 56 differ from the unbatched ones by 2.6e-4 on a Xeon with AMX; the
estimate for its 26 reductions of 128 terms is 3.8e-4 before the safety factor.)
"""

from __future__ import annotations

import math

import torch

SAFETY = 4.0


def float_atol(
    scale: float, *, reduction: int, depth: int, dtype: torch.dtype = torch.float32
) -> float:
    """Absolute tolerance for values of magnitude up to ``scale`` that went through
    ``depth`` reductions of at most ``reduction`` terms each in ``dtype``."""
    eps = torch.finfo(dtype).eps
    return SAFETY * eps * math.sqrt(reduction * depth) * max(scale, 1.0)


def assert_close_as_floats(
    actual: torch.Tensor, expected: torch.Tensor, *, reduction: int, depth: int
) -> None:
    """``torch.testing.assert_close`` with :func:`float_atol` taken from the expected
    values' own magnitude and dtype."""
    atol = float_atol(
        expected.abs().max().item(), reduction=reduction, depth=depth, dtype=expected.dtype
    )
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# The preset's and the tests' tiny models: hidden sizes of 32-64, feed-forward layers of
# at most 128, at most 4 layers of about 6 reductions each (projections, attention
# scores, attention sum, output, two feed-forward matmuls). Their classifier heads give
# logits of magnitude below 10 (the fill-mask head's reach 9.5).
TINY_REDUCTION = 128
TINY_DEPTH = 24
TINY_LOGIT_SCALE = 10.0

# A softmax probability moves by at most twice the largest change of any logit, so the
# scores of a tiny model's classifier agree within this whatever the kernel.
TINY_SCORE_ATOL = 2 * float_atol(TINY_LOGIT_SCALE, reduction=TINY_REDUCTION, depth=TINY_DEPTH)
# A product of two such probabilities (a question-answering span's score), relative.
TINY_SCORE_RTOL = 2 * TINY_SCORE_ATOL
# A log-probability moves by at most twice the largest change of any logit, too.
TINY_LOGPROB_ATOL = TINY_SCORE_ATOL
# Unit vectors (normalized embeddings) and other values of magnitude about 1.
TINY_UNIT_ATOL = float_atol(1.0, reduction=TINY_REDUCTION, depth=TINY_DEPTH)
