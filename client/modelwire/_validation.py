"""Argument checks that run before anything is sent.

A caller's mistake should be a ``ValueError`` naming the parameter at the call site, not
a round trip ending in INVALID_ARGUMENT. The server checks everything again: these
checks only cover what the client can know (ranges, types), never model limits.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import TypeVar

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1

_C = TypeVar("_C")


def texts(name: str, value: str | Sequence[str]) -> list[str]:
    """A non-empty list of strings; a lone string is a batch of one."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes | bytearray) or not isinstance(value, Sequence):
        raise ValueError(f"`{name}` must be a string or a sequence of strings")
    if not value:
        raise ValueError(f"`{name}` must not be empty")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"`{name}[{i}]` must be a string, got {type(item).__name__}")
    return list(value)


def optional_str(name: str, value: str | None) -> str:
    """A string argument where None means empty (the server's default)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be a string, got {type(value).__name__}")
    return value


def integer(name: str, value: int | None, *, minimum: int, maximum: int = INT32_MAX) -> None:
    """An int in [minimum, maximum], or None. Booleans are refused: True is not a count."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"`{name}` must be in [{minimum}, {maximum}], got {value}")


def number(
    name: str,
    value: float | None,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A finite real in the given interval, or None; open ends exclude the bound."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{name}` must be a number, got {type(value).__name__}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    # Written so that NaN fails every comparison and is refused.
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {value}")


def boolean(name: str, value: bool | None) -> None:
    """A bool, or None."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, got {type(value).__name__}")


def choice(name: str, value: _C | None, choices: Collection[_C]) -> None:
    """One of ``choices``, or None."""
    if value is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def _fmt(bound: float) -> str:
    if math.isinf(bound):
        return "inf" if bound > 0 else "-inf"
    return f"{bound:g}"
