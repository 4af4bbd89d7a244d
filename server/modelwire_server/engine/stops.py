"""Stop strings that may span tokens.

Text arrives in deltas; a stop string can start in one delta and end in a later one.
Only the new tail is searched (the held text plus the new delta), and the longest
suffix that could still grow into a stop string is held back until it is decided, so
no text that turns out to belong to a stop string is ever sent.
"""

from __future__ import annotations


class StopMatcher:
    """Finds the first stop string in a stream of text deltas."""

    def __init__(self, stops: list[str], include_stop: bool) -> None:
        self._stops = [s for s in stops if s]
        self._include = include_stop
        self._held = ""
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Add a delta; return the text that is now safe to send.

        After a match, ``matched`` is set, the returned text ends at the stop string
        (or just after it, if it is to be included), and later pushes return nothing.
        """
        if self.matched is not None or not text:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        hit = self._first_match(buffer)
        if hit is not None:
            start, stop = hit
            self.matched = stop
            self._held = ""
            return buffer[: start + len(stop)] if self._include else buffer[:start]
        keep = self._longest_open_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The sequence ended without a match: release what was held."""
        held, self._held = self._held, ""
        return held if self.matched is None else ""

    def _first_match(self, buffer: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        return best

    def _longest_open_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest
