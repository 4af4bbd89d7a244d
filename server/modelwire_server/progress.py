"""What model loading shows: one progress bar on a terminal, else one line per model.

transformers and huggingface_hub draw a bar per file they write or read (two dozen
for the tiny preset) and warn about things a server operator cannot act on; those are
turned off or dropped here, so the start-up log says what happened once per model.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("modelwire_server.registry")

# Messages of libraries that say nothing an operator can act on:
# - image processors fall back from torchvision, which the server does not need, to PIL;
# - tokenizers warn about inputs longer than the model's maximum when the server
#   tokenizes a request to count it, before its own limits refuse or truncate it.
NOISE = (
    "requires torchvision (not installed); falling back to",
    "Token indices sequence length is longer than the specified maximum",
)

_bar = False


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


def configure(*, bar: bool) -> None:
    """Quiet the libraries; ``bar``: draw one progress bar while models load."""
    global _bar
    _bar = bar
    import huggingface_hub.utils
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    for handler in [*transformers_logging.get_logger().handlers, *logging.getLogger().handlers]:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())


class LoadProgress:
    """Reports models as they load: a bar on a terminal, else a log line each."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Any = None
        if _bar and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="loading models", unit="model", file=sys.stderr)

    def starting(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(name)

    def done(self, name: str, outcome: str, *, failed: bool = False) -> None:
        """A model's outcome; a failure is an ERROR line, bar or not."""
        if self._bar is not None:
            self._bar.update(1)
        if failed:
            log.error("model %s: %s", name, outcome)
        elif self._bar is not None:
            log.debug("model %s: %s", name, outcome)
        else:
            log.info("model %s: %s", name, outcome)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
