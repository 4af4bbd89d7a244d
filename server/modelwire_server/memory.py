"""Giving freed memory back to the system after bursts of large requests.

glibc keeps what a process frees in its heaps (one arena per thread that allocated,
up to 8 per core): after a burst of 60 MB messages, decoded on the event loop and
received on grpc's threads, the server held gigabytes it no longer used. Two remedies:
at most ``ARENA_MAX`` arenas (fewer heaps for freed memory to be stranded in), and
``malloc_trim`` after a large request and when a busy server goes idle, on a thread of
its own (it takes the heaps' locks; a trim of gigabytes takes milliseconds).

Elsewhere than glibc (musl, macOS) all of this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
ARENA_MAX = 4
# A request at least this large is followed by a trim once no other large one runs.
LARGE_REQUEST_BYTES = 4 * 1024 * 1024
# A server that served calls and then none for this long gets a trim.
IDLE_S = 5.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (only glibc has it)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def limit_arenas(count: int = ARENA_MAX) -> None:
    """At most ``count`` malloc arenas (as MALLOC_ARENA_MAX does); call it early, before
    the threads whose arenas it should bound exist. The variable, if set, wins."""
    import os

    if _LIBC is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(M_ARENA_MAX, count)


def trim() -> None:
    """Hand the free pages of every heap back to the system (glibc's malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Trimmer:
    """Trims after large requests and when a busy server goes idle, one trim at a time.

    The request interceptor tells it when calls start and end; it runs on the loop.
    """

    def __init__(self, *, large_bytes: int = LARGE_REQUEST_BYTES, idle_s: float = IDLE_S) -> None:
        self.large_bytes = large_bytes
        self.idle_s = idle_s
        self.enabled = _LIBC is not None
        self._large_running = 0
        self._owed = False  # a large request has ended since the last trim
        self._busy_since_trim = False
        self._last_call = time.monotonic()
        self._trimming: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    def started(self, request_bytes: int) -> bool:
        """A call with a request of ``request_bytes`` began; True if it counts as large
        (then ``ended(large=True)`` must follow)."""
        self._busy_since_trim = True
        if request_bytes < self.large_bytes or not self.enabled:
            return False
        self._large_running += 1
        return True

    def ended(self, *, large: bool) -> None:
        self._last_call = time.monotonic()
        if large:
            self._large_running -= 1
            self._owed = True
        if self._owed and self._large_running == 0:
            self._start_trim()
        if self.enabled and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self.idle_s, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        quiet = time.monotonic() - self._last_call
        if quiet < self.idle_s:  # calls went on meanwhile: look again later
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.idle_s - quiet, self._check_idle)
        elif self._busy_since_trim or self._owed:
            self._start_trim()

    def _start_trim(self) -> None:
        if self._trimming is not None and not self._trimming.done():
            return  # the running trim frees this too, or the next one will
        self._owed = self._busy_since_trim = False
        self._trimming = asyncio.get_running_loop().create_task(asyncio.to_thread(trim))

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
