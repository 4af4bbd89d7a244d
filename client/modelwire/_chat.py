"""Chat messages: the caller's ``ChatMessage`` objects or plain mappings, to protobuf."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from modelwire._types import ChatMessage, ImagePart, ToolCall
from modelwire.v1 import common_pb2

ChatMessageLike = ChatMessage | Mapping[str, Any]
"""A ``ChatMessage``, or a mapping with the same keys: ``{"role": ..., "content": ...}``."""


def chat_messages(name: str, messages: Sequence[ChatMessageLike]) -> common_pb2.ChatMessages:
    """Check and convert chat turns; errors name the offending turn, e.g. ``messages[1].role``."""
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise ValueError(f"`{name}` must be a sequence of chat messages")
    if not messages:
        raise ValueError(f"`{name}` must not be empty")
    return common_pb2.ChatMessages(
        messages=[_message(f"{name}[{i}]", m) for i, m in enumerate(messages)]
    )


def _message(name: str, message: ChatMessageLike) -> common_pb2.ChatMessage:
    role: object
    content: object
    call_id: object = ""
    calls: object = ()
    if isinstance(message, ChatMessage):
        role, content = message.role, message.content
        call_id, calls = message.tool_call_id, message.tool_calls
    elif isinstance(message, Mapping):
        unknown = set(message) - {"role", "content", "tool_call_id", "tool_calls"}
        if unknown:
            raise ValueError(f"`{name}` has unknown keys: {', '.join(sorted(unknown))}")
        role, content = message.get("role"), message.get("content")
        call_id, calls = message.get("tool_call_id") or "", message.get("tool_calls") or ()
        if content is None and calls:
            content = ""  # an assistant turn that only called tools
    else:
        kind = type(message).__name__
        raise ValueError(f"`{name}` must be a ChatMessage or a mapping, got {kind}")
    if not isinstance(role, str) or not role:
        raise ValueError(f"`{name}.role` must be a non-empty string")
    if not isinstance(call_id, str):
        raise ValueError(f"`{name}.tool_call_id` must be a string")
    return common_pb2.ChatMessage(
        role=role,
        content=_content(f"{name}.content", content),
        tool_call_id=call_id,
        tool_calls=_tool_calls(f"{name}.tool_calls", calls),
    )


def _tool_calls(name: str, calls: object) -> list[common_pb2.ToolCall]:
    """ToolCall objects, or mappings in the SDK's shape (id, name, arguments) or
    OpenAI's (id, function: {name, arguments}); arguments as JSON text or a mapping."""
    if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
        raise ValueError(f"`{name}` must be a list of tool calls")
    out = []
    for i, call in enumerate(calls):
        if isinstance(call, ToolCall):
            call_id, tool, arguments = call.id, call.name, call.arguments
        elif isinstance(call, Mapping):
            function = call.get("function") or call
            call_id, tool, arguments = (
                call.get("id"),
                function.get("name"),
                function.get("arguments"),
            )
        else:
            raise ValueError(f"`{name}[{i}]` must be a ToolCall or a mapping")
        if isinstance(arguments, Mapping):
            arguments = json.dumps(arguments)
        if not isinstance(call_id, str) or not isinstance(tool, str) or not tool:
            raise ValueError(f"`{name}[{i}]` needs a string id and a non-empty name")
        if not isinstance(arguments, str):
            raise ValueError(f"`{name}[{i}].arguments` must be JSON text or a mapping")
        out.append(common_pb2.ToolCall(id=call_id, name=tool, arguments=arguments))
    return out


def _content(name: str, content: object) -> list[common_pb2.ContentPart]:
    if isinstance(content, str):
        return [common_pb2.ContentPart(text=content)]
    if not isinstance(content, Sequence):
        raise ValueError(f"`{name}` must be a string or a list of strings and ImageParts")
    parts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            parts.append(common_pb2.ContentPart(text=part))
        elif isinstance(part, ImagePart):
            if not isinstance(part.data, bytes) or not part.data:
                raise ValueError(f"`{name}[{i}].data` must be non-empty bytes")
            parts.append(common_pb2.ContentPart(image=common_pb2.Image(data=part.data)))
        else:
            raise ValueError(f"`{name}[{i}]` must be a string or an ImagePart")
    return parts
