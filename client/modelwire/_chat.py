"""Chat messages: the caller's ``ChatMessage`` objects or plain mappings, to protobuf."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelwire._types import ChatMessage, ImagePart
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
    if isinstance(message, ChatMessage):
        role, content = message.role, message.content
    elif isinstance(message, Mapping):
        unknown = set(message) - {"role", "content"}
        if unknown:
            raise ValueError(f"`{name}` has unknown keys: {', '.join(sorted(unknown))}")
        role, content = message.get("role"), message.get("content")
    else:
        kind = type(message).__name__
        raise ValueError(f"`{name}` must be a ChatMessage or a mapping, got {kind}")
    if not isinstance(role, str) or not role:
        raise ValueError(f"`{name}.role` must be a non-empty string")
    return common_pb2.ChatMessage(role=role, content=_content(f"{name}.content", content))


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
