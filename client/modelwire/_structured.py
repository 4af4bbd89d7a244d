"""Structured output on the SDK side: ``response_format=`` values to protobuf, and the
parser that turns a finished sequence's text into a value.

A response format is a JSON schema (a ``dict``, or ``JsonSchema`` with a name), a
pydantic model class (its ``model_json_schema()``; pydantic is never imported here: a
class is recognised by that method), ``JsonObject()`` (any JSON), ``Regex``, ``Choice``
or ``Grammar``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelwire.v1 import generate_pb2


@dataclass(frozen=True)
class JsonObject:
    """Any valid JSON value (compact: no whitespace between tokens)."""


@dataclass(frozen=True)
class JsonSchema:
    """JSON valid under ``schema`` (a dict, or its JSON text).

    ``strict`` (default True) allows only the properties the schema names; False allows
    the others that JSON Schema itself allows (``additionalProperties`` unset)."""

    schema: Mapping[str, Any] | str
    name: str | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class Regex:
    """Text that ``pattern`` matches as a whole (``re.fullmatch``)."""

    pattern: str


@dataclass(frozen=True, init=False)
class Choice:
    """Exactly one of the given strings: ``Choice("yes", "no")`` or ``Choice(["yes", "no"])``."""

    choices: tuple[str, ...]

    def __init__(self, *choices: str | Sequence[str]) -> None:
        if len(choices) == 1 and not isinstance(choices[0], str):
            choices = tuple(choices[0])
        object.__setattr__(self, "choices", tuple(choices))


@dataclass(frozen=True)
class Grammar:
    """Text derived from the ``root`` rule of an EBNF (GBNF-style) grammar."""

    ebnf: str


ResponseFormat = JsonObject | JsonSchema | Regex | Choice | Grammar | Mapping[str, Any] | type
"""What ``response_format=`` takes: a helper, a JSON-schema dict, or a pydantic model class."""

Parser = Callable[[str], Any]


def _is_pydantic_model(value: object) -> bool:
    return isinstance(value, type) and callable(getattr(value, "model_json_schema", None))


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a non-empty string")
    return value


def response_format_pb(value: ResponseFormat) -> generate_pb2.ResponseFormat:
    """Check ``value`` and build the message; a ``ValueError`` names what is wrong."""
    if _is_pydantic_model(value):
        value = JsonSchema(value.model_json_schema(), name=value.__name__)  # type: ignore[union-attr]
    elif isinstance(value, Mapping):
        value = JsonSchema(value)
    if isinstance(value, JsonObject):
        return generate_pb2.ResponseFormat(json_object=generate_pb2.JsonObjectFormat())
    if isinstance(value, JsonSchema):
        schema = value.schema if isinstance(value.schema, str) else json.dumps(value.schema)
        message = generate_pb2.JsonSchemaFormat(schema=_text("response_format.schema", schema))
        if value.name is not None:
            message.name = value.name
        if value.strict is not None:
            message.strict = value.strict
        return generate_pb2.ResponseFormat(json_schema=message)
    if isinstance(value, Regex):
        return generate_pb2.ResponseFormat(regex=_text("response_format.pattern", value.pattern))
    if isinstance(value, Choice):
        if not value.choices:
            raise ValueError("`response_format` Choice needs at least one string")
        for i, choice in enumerate(value.choices):
            _text(f"response_format.choices[{i}]", choice)
        choices = generate_pb2.ChoiceFormat(choices=list(value.choices))
        return generate_pb2.ResponseFormat(choice=choices)
    if isinstance(value, Grammar):
        return generate_pb2.ResponseFormat(grammar=_text("response_format.ebnf", value.ebnf))
    raise ValueError(
        "`response_format` must be a JSON-schema dict, a pydantic model class, or one of "
        f"JsonObject, JsonSchema, Regex, Choice, Grammar; got {type(value).__name__}"
    )


def response_parser(value: ResponseFormat | None) -> Parser | None:
    """How a finished sequence's text becomes ``parsed``: the JSON value, or the pydantic
    model's instance, for JSON formats; the text itself for the others."""
    if value is None:
        return None
    if _is_pydantic_model(value):
        return value.model_validate_json  # type: ignore[union-attr]
    if isinstance(value, Mapping | JsonObject | JsonSchema):
        return json.loads
    return str


# --- tools -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A tool the model may call in a chat: its ``name``, a ``description`` for the
    model, and its arguments' JSON schema (a dict, or a pydantic model class)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | type | None = None


ToolLike = Tool | Mapping[str, Any]
"""A ``Tool``, or a mapping: ``{"name", "description", "parameters"}``, or OpenAI's
``{"type": "function", "function": {...}}``."""
ToolChoiceLike = str | Mapping[str, Any]
"""``"auto"`` (the default), ``"none"``, ``"required"``, a tool's name, or OpenAI's
``{"type": "function", "function": {"name": ...}}``."""
_MODES = {
    "auto": generate_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": generate_pb2.TOOL_CHOICE_MODE_NONE,
    "required": generate_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def tools_pb(tools: Sequence[ToolLike]) -> list[generate_pb2.Tool]:
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise ValueError("`tools` must be a list of tools")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            spec = tool.get("function", tool) if tool.get("type") == "function" else tool
            tool = Tool(spec.get("name", ""), spec.get("description", ""), spec.get("parameters"))
        if not isinstance(tool, Tool):
            raise ValueError(f"`tools[{i}]` must be a Tool or a mapping")
        _text(f"tools[{i}].name", tool.name)
        parameters = tool.parameters
        if _is_pydantic_model(parameters):
            parameters = parameters.model_json_schema()  # type: ignore[union-attr]
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"`tools[{i}].parameters` must be a JSON-schema dict")
        out.append(
            generate_pb2.Tool(
                name=tool.name,
                description=tool.description or "",
                parameters=json.dumps(parameters) if parameters is not None else "",
            )
        )
    return out


def tool_choice_pb(choice: ToolChoiceLike) -> generate_pb2.ToolChoice:
    if isinstance(choice, Mapping):
        choice = (choice.get("function") or {}).get("name", "")
    if not isinstance(choice, str) or not choice:
        raise ValueError("`tool_choice` must be 'auto', 'none', 'required' or a tool's name")
    if choice in _MODES:
        return generate_pb2.ToolChoice(mode=_MODES[choice])
    return generate_pb2.ToolChoice(name=choice)
