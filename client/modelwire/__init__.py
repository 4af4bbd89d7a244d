"""Modelwire: a typed asyncio client for the Modelwire gRPC model server.

    from modelwire import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as client:
        [result] = await client.classify_text("I love this!")
        print(result.top.label, result.top.score)

The SDK depends on grpcio, protobuf and grpcio-status only.
"""

from modelwire._chat import ChatMessageLike
from modelwire._chat_window import ChatFit
from modelwire._client import NOT_GIVEN, AsyncClient, NotGiven
from modelwire._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    FieldViolation,
    InternalServerError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    UnavailableError,
    UnimplementedError,
)
from modelwire._generation import GenerateParams
from modelwire._media_types import (
    AudioFormat,
    BoundingBox,
    DetectedObject,
    Detections,
    RawAudio,
    Speech,
    TimedChunk,
    TimestampGranularity,
    Transcription,
)
from modelwire._seq2seq_tasks import GeneratedText, TextGenerationParams
from modelwire._streaming import GenerateStream
from modelwire._structured import (
    Choice,
    Grammar,
    JsonObject,
    JsonSchema,
    Regex,
    ResponseFormat,
    Tool,
    ToolChoiceLike,
    ToolLike,
)
from modelwire._text_types import (
    AggregationStrategyName,
    Answer,
    Entity,
    FillMaskResult,
    MaskCandidate,
    MaskFill,
)
from modelwire._types import (
    ChatMessage,
    Classification,
    Embedding,
    FinishReason,
    GenerationChunk,
    GenerationResult,
    HealthStatus,
    ImagePart,
    LabelScore,
    ModelInfo,
    ModelState,
    ResultList,
    SequenceResult,
    Token,
    Tokenization,
    ToolCall,
    TopLogprob,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AggregationStrategyName",
    "Answer",
    "AsyncClient",
    "AudioFormat",
    "AuthenticationError",
    "BadRequestError",
    "BoundingBox",
    "ChatFit",
    "ChatMessage",
    "ChatMessageLike",
    "Choice",
    "Classification",
    "DetectedObject",
    "Detections",
    "Embedding",
    "Entity",
    "FieldViolation",
    "FillMaskResult",
    "FinishReason",
    "GenerateParams",
    "GenerateStream",
    "GeneratedText",
    "GenerationChunk",
    "GenerationResult",
    "Grammar",
    "HealthStatus",
    "ImagePart",
    "InternalServerError",
    "JsonObject",
    "JsonSchema",
    "LabelScore",
    "MaskCandidate",
    "MaskFill",
    "ModelInfo",
    "ModelState",
    "ModelwireError",
    "NotFoundError",
    "NotGiven",
    "PermissionDeniedError",
    "RateLimitError",
    "RawAudio",
    "Regex",
    "RequestCancelledError",
    "ResponseFormat",
    "ResultList",
    "SequenceResult",
    "Speech",
    "TextGenerationParams",
    "TimedChunk",
    "TimestampGranularity",
    "Token",
    "Tokenization",
    "Tool",
    "ToolCall",
    "ToolChoiceLike",
    "ToolLike",
    "TopLogprob",
    "Transcription",
    "UnavailableError",
    "UnimplementedError",
    "Usage",
    "__version__",
]
