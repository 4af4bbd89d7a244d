"""What model loading shows: a bar on a terminal, else a line per model; library noise
an operator cannot act on is dropped, everything else kept."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from modelwire_server import progress


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_lines() -> Iterator[Lines]:
    logger = logging.getLogger("transformers")
    lines = Lines()
    logger.addHandler(lines)
    yield lines
    logger.removeHandler(lines)
    progress.configure(bar=False)


def test_noise_is_dropped_and_other_warnings_kept(transformers_lines: Lines) -> None:
    progress.configure(bar=False)
    tokenizer_log = logging.getLogger("transformers.tokenization_utils_base")
    tokenizer_log.warning(
        "Token indices sequence length is longer than the specified maximum sequence "
        "length for this model (602 > 512). Running this sequence through the model will "
        "result in indexing errors"
    )
    logging.getLogger("transformers.image_processing_utils").warning(
        "`ViTImageProcessor` requires torchvision (not installed); falling back to "
        "`ViTImageProcessorPil` for backward compatibility."
    )
    tokenizer_log.warning("something an operator should see")
    assert transformers_lines.messages == ["something an operator should see"]


def test_a_bar_on_a_terminal_and_a_line_per_model_elsewhere(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr("sys.stderr", screen)
    progress.configure(bar=True)
    with caplog.at_level(logging.INFO, logger="modelwire_server.registry"):
        bar = progress.LoadProgress(2)
        for name in ("a", "b"):
            bar.starting(name)
            bar.done(name, "ready on cpu in 0.1s")
        bar.close()
    assert "loading models" in screen.getvalue() and "2/2" in screen.getvalue()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]

    progress.configure(bar=False)
    with caplog.at_level(logging.INFO, logger="modelwire_server.registry"):
        lines = progress.LoadProgress(2)
        lines.done("a", "ready on cpu in 0.1s")
        lines.done("b", "FAILED: no such file", failed=True)
        lines.close()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "model a: ready on cpu in 0.1s"),
        ("ERROR", "model b: FAILED: no such file"),
    ]
