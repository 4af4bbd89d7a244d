"""The generation engine: continuous batching, sampling, beams and streaming text.

Pure Python and torch; the gRPC servicer converts protobuf to these types.
"""

from modelwire_server.engine.engine import EngineStats, GenerationEngine, Handle
from modelwire_server.engine.errors import (
    DeadlineExceeded,
    EngineError,
    InvalidRequest,
    QueueFull,
    ResourceExhausted,
)
from modelwire_server.engine.types import (
    Delta,
    Event,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    OutputOptions,
    PromptInfo,
    ResolvedSampling,
    SamplingParams,
    Sink,
    StoppingParams,
    TokenInfo,
    Usage,
)

__all__ = [
    "DeadlineExceeded",
    "Delta",
    "EngineError",
    "EngineStats",
    "Event",
    "Failed",
    "FinishReason",
    "Finished",
    "GenerationEngine",
    "GenerationRequest",
    "Handle",
    "InvalidRequest",
    "OutputOptions",
    "PromptInfo",
    "QueueFull",
    "ResolvedSampling",
    "ResourceExhausted",
    "SamplingParams",
    "Sink",
    "StoppingParams",
    "TokenInfo",
    "Usage",
]
