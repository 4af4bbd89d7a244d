"""How much memory this process (test servers run in it, on threads) took at its peak
while a block ran: the kernel's high-water mark, reset before the block."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024


def _status_kb(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match, f"/proc/self/status has no {key}"
    return int(match.group(1))


@dataclass
class PeakGrowth:
    bytes: int = 0


@contextmanager
def peak_growth() -> Iterator[PeakGrowth]:
    """``growth.bytes``: the block's peak resident memory above where it started.

    Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so the peak
    read afterwards is this block's own."""
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_kb("VmRSS")
    # Other threads may allocate meanwhile; a peak far above means no reset happened.
    assert _status_kb("VmHWM") <= start + 64 * 1024, "VmHWM was not reset"
    growth = PeakGrowth()
    yield growth
    growth.bytes = (_status_kb("VmHWM") - start) * 1024
