"""OpenAI's structured output and function calling ⇄ the GenerateRequest's fields.

``response_format`` ``json_object`` and ``json_schema`` (OpenAI's), plus vLLM's
``guided_regex``, ``guided_choice`` and ``guided_grammar`` extensions, become the
request's ``response_format``; ``tools`` and ``tool_choice`` become its tools; ``tool``
turns and assistant ``tool_calls`` become chat turns. The engine enforces them exactly
as for a gRPC caller.
"""

from __future__ import annotations

import json
from typing import Any

from modelwire.v1 import common_pb2, generate_pb2
from modelwire_server.errors import InvalidArgument
from modelwire_server.http import fields

_MODES = {
    "auto": generate_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": generate_pb2.TOOL_CHOICE_MODE_NONE,
    "required": generate_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def apply(body: dict[str, Any], request: generate_pb2.GenerateRequest, *, chat: bool) -> None:
    """Set ``request``'s format (and, for a chat, its tools) from an OpenAI body."""
    kinds = [k for k in ("guided_regex", "guided_choice", "guided_grammar") if k in body]
    _response_format(body.get("response_format"), request.response_format)
    if request.HasField("response_format") and kinds:
        raise InvalidArgument(kinds[0], "cannot be combined with response_format")
    if len(kinds) > 1:
        raise InvalidArgument(kinds[1], f"cannot be combined with {kinds[0]}")
    if kinds == ["guided_regex"]:
        request.response_format.regex = fields.string(body, "guided_regex") or ""
    elif kinds == ["guided_choice"]:
        request.response_format.choice.choices.extend(fields.strings(body, "guided_choice") or [])
    elif kinds == ["guided_grammar"]:
        request.response_format.grammar = fields.string(body, "guided_grammar") or ""
    if chat:
        _tools(body, request)
    elif body.get("tools") not in (None, []):
        raise InvalidArgument("tools", "need a chat: use /v1/chat/completions")


def _response_format(value: Any, target: generate_pb2.ResponseFormat) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidArgument("response_format", "must be an object with a type")
    kind = value.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        target.json_object.SetInParent()
        return
    if kind != "json_schema":
        raise InvalidArgument("response_format.type", "must be text, json_object or json_schema")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise InvalidArgument(
            "response_format.json_schema", "must be an object whose schema is a JSON schema"
        )
    target.json_schema.schema = json.dumps(spec["schema"])
    if isinstance(spec.get("name"), str):
        target.json_schema.name = spec["name"]
    # OpenAI's default is not strict: the schema's own rules on other properties hold.
    target.json_schema.strict = spec.get("strict") is True


def _tools(body: dict[str, Any], request: generate_pb2.GenerateRequest) -> None:
    tools = body.get("tools")
    if tools not in (None, []):
        if not isinstance(tools, list):
            raise InvalidArgument("tools", "must be a list of function tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not function:
                raise InvalidArgument(f"tools[{i}]", 'must be {"type": "function", "function": …}')
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"tools[{i}].function.name", "must be a non-empty string")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise InvalidArgument(f"tools[{i}].function.parameters", "must be a JSON schema")
            description = function.get("description")
            request.tools.add(
                name=name,
                description=description if isinstance(description, str) else "",
                parameters=json.dumps(parameters) if parameters is not None else "",
            )
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str) and choice in _MODES:
        request.tool_choice.mode = _MODES[choice]
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidArgument(
            "tool_choice",
            'must be "none", "auto", "required" or {"type": "function", "function": {"name": …}}',
        )
    request.tool_choice.name = name


def tool_turn(turn: common_pb2.ChatMessage, message: dict[str, Any], where: str) -> None:
    """A ``tool`` turn's call id, or an assistant turn's ``tool_calls``, onto ``turn``."""
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidArgument(f"{where}.tool_call_id", "must name the call this answers")
        turn.tool_call_id = call_id
    calls = message.get("tool_calls")
    if calls in (None, []):
        return
    if message.get("role") != "assistant" or not isinstance(calls, list):
        raise InvalidArgument(f"{where}.tool_calls", "must be a list, on an assistant turn")
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidArgument(f"{where}.tool_calls[{i}]", "must have a function and name")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        turn.tool_calls.add(id=str(call.get("id", "")), name=function["name"], arguments=arguments)


def tool_calls_json(calls: Any, *, streamed: bool) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` for a message's (``streamed``: a delta's, indexed)."""
    out = []
    for i, call in enumerate(calls):
        item: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        out.append({"index": i, **item} if streamed else item)
    return out
