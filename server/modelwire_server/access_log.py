"""The access log: one line per call on the ``modelwire_server.access`` logger.

Each line says who asked what and how it went: request id, RPC, model, status code,
total and queue time, tokens where the call generated any, the peer, and the trace the
call belongs to. Lines are ``key=value`` text; with ``log_format: json`` every log line
of the process is one JSON object, and an access line's fields are its keys.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from modelwire_server.calls import CallRecord

log = logging.getLogger("modelwire_server.access")


def access_fields(call: CallRecord) -> dict[str, Any]:
    """What the line says, in order; fields a call has no value for are left out."""
    fields: dict[str, Any] = {
        "request_id": call.request_id,
        "rpc": call.rpc,
        "model": call.model,
        "code": call.code,
        "total_ms": _ms(call.duration_s),
    }
    optional = {
        "queue_ms": _ms(call.queue_s),
        "ttft_ms": _ms(call.time_to_first_token_s),
        "prompt_tokens": call.prompt_tokens,
        "generated_tokens": call.generated_tokens,
        "trace_id": call.trace_id,
        "span_id": call.span_id,
        "peer": call.peer,
        "error": call.message,
    }
    fields.update((k, v) for k, v in optional.items() if v not in (None, ""))
    return fields


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def key_values(fields: dict[str, Any]) -> str:
    """``k=v`` pairs; a value with spaces, quotes or ``=`` is quoted as JSON quotes it."""
    return " ".join(f"{key}={_text(value)}" for key, value in fields.items())


def _text(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def write_access_line(call: CallRecord) -> None:
    """Log one call: INFO, or ERROR with the traceback when the server failed (INTERNAL)."""
    fields = access_fields(call)
    internal = call.code == "INTERNAL"
    log.log(
        logging.ERROR if internal else logging.INFO,
        "%s",
        key_values(fields),
        extra={"fields": fields},
        exc_info=call.error if internal else None,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, then the message or its fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str) -> None:
    """The process's log handler (stderr), in text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if log_format == "json":
        _only_log_records()


def _only_log_records() -> None:
    """Keep stderr parseable: warnings and transformers' messages become log records, and
    the progress bars model loading draws (not log lines at all) are turned off."""
    import huggingface_hub.utils
    import transformers.utils.logging as transformers_logging

    logging.captureWarnings(True)
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
