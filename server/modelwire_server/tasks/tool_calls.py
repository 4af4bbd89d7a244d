"""Tool calling in chat: the request's tools for the chat template, the format that
forces a call (``tool_choice`` REQUIRED or a named tool), and the calls parsed out of
the model's answer.

The call format is the Hermes one that Qwen 2.5, Hermes and many chat templates teach
their models: each call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(whitespace around the JSON allowed). An answer that is nothing but such a JSON object
(``arguments`` or Llama 3.1's ``parameters``) counts as one call too.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from modelwire_server import errors
from modelwire_server.engine.constraints import json_grammar
from modelwire_server.engine.types import ResponseFormat

ToolMode = Literal["auto", "none", "required"]
_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_ROOT = re.compile(r"^root ::=", re.MULTILINE)


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call; ``parameters`` is its arguments' JSON schema (parsed)."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: a fresh id, the tool's name, its arguments as JSON text."""

    id: str
    name: str
    arguments: str


def tool_specs(raw: Sequence[tuple[str, str, str]]) -> list[ToolSpec]:
    """(name, description, parameters JSON text) per tool, checked; errors name the tool."""
    specs: list[ToolSpec] = []
    for i, (name, description, parameters) in enumerate(raw):
        if not name:
            raise errors.InvalidArgument(f"tools[{i}].name", "must not be empty")
        if name in {s.name for s in specs}:
            raise errors.InvalidArgument(f"tools[{i}].name", f"{name!r} is given twice")
        try:
            schema = json.loads(parameters) if parameters else {"type": "object"}
        except ValueError as exc:
            raise errors.InvalidArgument(f"tools[{i}].parameters", f"is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise errors.InvalidArgument(f"tools[{i}].parameters", "must be a JSON object")
        specs.append(ToolSpec(name, description, schema))
    return specs


def template_tools(specs: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The tools as chat templates take them (OpenAI's function format)."""
    return [
        {
            "type": "function",
            "function": {"name": s.name, "description": s.description, "parameters": s.parameters},
        }
        for s in specs
    ]


def forcing_format(specs: Sequence[ToolSpec], name: str | None) -> ResponseFormat:
    """A grammar whose every text is one call of a tool (of ``name`` alone if given),
    with arguments valid under that tool's schema."""
    chosen = [s for s in specs if name is None or s.name == name]
    if not chosen:
        raise errors.InvalidArgument("tool_choice.name", f"no tool is named {name!r}")
    calls = [
        {
            "type": "object",
            "properties": {"name": {"enum": [s.name]}, "arguments": s.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for s in chosen
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    try:
        call_grammar = json_grammar(json.dumps(schema), strict=True)
    except RuntimeError as exc:
        raise errors.InvalidArgument("tools", f"a tool's parameters schema: {exc}") from None
    grammar = _ROOT.sub("tool_call_json ::=", call_grammar)
    root = 'root ::= "<tool_call>" tool_call_json "</tool_call>"\n'
    return ResponseFormat("grammar", spec=root + grammar)


def parse_calls(text: str, specs: Sequence[ToolSpec]) -> list[ToolCall]:
    """The calls of known tools in ``text``, in order; [] when it calls none."""
    names = {s.name for s in specs}
    found = [m.group(1) for m in _CALL.finditer(text)]
    if not found and text.strip().startswith("{"):
        found = [text.strip()]
    calls = []
    for blob in found:
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("name") not in names:
            continue
        arguments = data.get("arguments", data.get("parameters", {}))
        calls.append(ToolCall(f"call_{secrets.token_hex(12)}", data["name"], json.dumps(arguments)))
    return calls
