"""Trace context: which trace a call belongs to, for its access log line.

Without OpenTelemetry the server reads the caller's W3C ``traceparent`` metadata, so a
log line joins the caller's trace (its span id is then the caller's span). When
``opentelemetry-instrumentation-grpc`` is installed, its server interceptor makes a span
per call, a child of the caller's, and the log names that span instead. OpenTelemetry
is optional: nothing here needs it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import grpc

try:
    from opentelemetry import trace as otel_trace
except ImportError:  # the usual case: no OpenTelemetry
    otel_trace = None

TRACEPARENT = "traceparent"
# version-traceid-parentid-flags; later versions may append fields, version 00 may not.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?$")


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C ``traceparent``, else None."""
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def trace_of(metadata: Sequence[tuple[str, Any]] | None) -> tuple[str, str]:
    """(trace id, span id) of the current call; empty strings when it has none."""
    span = _otel_span()
    if span is not None:
        return span
    for key, value in metadata or ():
        if key == TRACEPARENT and isinstance(value, str):
            return parse_traceparent(value) or ("", "")
    return "", ""


def _otel_span() -> tuple[str, str] | None:
    if otel_trace is None:
        return None
    context = otel_trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def otel_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """OpenTelemetry's gRPC server interceptor, when it is installed."""
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError:
        return []
    return [aio_server_interceptor()]
