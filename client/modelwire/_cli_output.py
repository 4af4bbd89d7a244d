"""What the ``modelwire`` command prints: readable lines by default, one JSON document with
``--json``, and errors as one line on stderr."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from modelwire._errors import APIError, BadRequestError, FieldViolation, ModelwireError
from modelwire._types import Classification, GenerationResult


class CommandError(ModelwireError):
    """A command that cannot run (e.g. its SDK method does not exist yet): exit code 1."""


@dataclass
class Report:
    """A command's result: ``data`` for ``--json``, ``lines`` for people."""

    data: Any
    lines: list[str] = field(default_factory=list)
    exit_code: int = 0


class Output:
    """Where a command writes. Streams are looked up per write so tests can swap them."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json

    @property
    def stdout(self) -> TextIO:
        return sys.stdout

    def report(self, report: Report) -> None:
        if self.as_json and report.data is not None:
            self.stdout.write(to_json(report.data) + "\n")
        else:
            self.stdout.writelines(line + "\n" for line in report.lines)
        self.stdout.flush()

    def stream(self, text: str) -> None:
        """Part of an answer as it arrives: written and flushed at once."""
        self.stdout.write(text)
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A remark for the person at the terminal, kept out of stdout's data."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def error(self, error: BaseException) -> None:
        if self.as_json:
            sys.stderr.write(to_json(error_data(error)) + "\n")
        else:
            sys.stderr.write(f"modelwire: error: {error_line(error)}\n")
        sys.stderr.flush()


def error_line(error: BaseException) -> str:
    """One line: the status, the message, any field at fault that the message does not
    already name, and the request id last."""
    if not isinstance(error, APIError):
        return _one_line(str(error))
    text = f"{error.code.name if error.code is not None else 'ERROR'}: {error.message}"
    if isinstance(error, BadRequestError):
        extra = [v for v in error.field_violations if not _names(error.message, v)]
        if extra:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in extra) + "]"
    if error.request_id:
        text += f" (request id {error.request_id})"
    return _one_line(text)


def _names(message: str, violation: FieldViolation) -> bool:
    # The server's message for one bad field is "field: description" already.
    return f"{violation.field}: {violation.description}" in message


def _one_line(text: str) -> str:
    return " ".join(text.split())  # a server message with newlines must stay one line


def error_data(error: BaseException) -> dict[str, Any]:
    data: dict[str, Any] = {"error": error_line(error), "type": type(error).__name__}
    if isinstance(error, APIError):
        data["code"] = error.code.name if error.code is not None else None
        data["message"] = error.message
        data["request_id"] = error.request_id
    if isinstance(error, BadRequestError):
        data["field_violations"] = [dataclasses.asdict(v) for v in error.field_violations]
    return data


def to_json(data: Any) -> str:
    return json.dumps(_plain(data), ensure_ascii=False)


def _plain(value: Any) -> Any:
    # asdict would drop ResultList.request_id and choke on nothing else, so recurse by hand.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def results_data(results: Sequence[Any], request_id: str | None = None) -> dict[str, Any]:
    """Every command's ``--json`` document: ``results`` (one per input, or the call's
    items) and the call's ``request_id``, always these two keys and no others."""
    if request_id is None:
        request_id = getattr(results, "request_id", None)
    return {"request_id": request_id, "results": results}


def generation_data(result: GenerationResult) -> dict[str, Any]:
    """``generate --json``: one result for the one prompt, with sequence 0's ``text``."""
    item = {"text": result.text, **_plain(result)}
    del item["request_id"]  # the call's id is at the top, as for every command
    return results_data([item], result.request_id)


def labelled(inputs: Sequence[str], blocks: Iterable[list[str]]) -> list[str]:
    """Each input's lines, under the input when there is more than one."""
    lines: list[str] = []
    for text, block in zip(inputs, blocks, strict=True):
        if len(inputs) > 1:
            lines.append(f"{text}")
            block = [f"  {line}" for line in block]
        lines.extend(block)
    return lines


def label_lines(result: Classification) -> list[str]:
    width = max((len(s.label) for s in result.labels), default=0)
    return [f"{s.label:<{width}}  {s.score:.4f}" for s in result.labels]
