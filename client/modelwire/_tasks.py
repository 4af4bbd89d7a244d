"""Per-task request builders and result converters of the unary RPCs.

Each task is a ``<task>_request`` function (check the arguments, build the protobuf
request) and a ``<task>_results`` function (protobuf response to SDK types). Adding a
task is a pair here and a few lines in ``AsyncClient``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from modelwire import _validation as check
from modelwire._chat import ChatMessageLike, chat_messages
from modelwire._types import (
    Classification,
    Embedding,
    LabelScore,
    ModelInfo,
    ModelState,
    Tokenization,
)
from modelwire.v1 import common_pb2, generate_pb2, model_service_pb2
from modelwire.v1 import inference_service_pb2 as pb

ScoreFunctionName = Literal["softmax", "sigmoid", "none"]
PoolingName = Literal["mean", "cls", "none"]

_SCORE_FUNCTIONS: dict[str, pb.ScoreFunction] = {
    "softmax": pb.SCORE_FUNCTION_SOFTMAX,
    "sigmoid": pb.SCORE_FUNCTION_SIGMOID,
    "none": pb.SCORE_FUNCTION_NONE,
}
_POOLINGS: dict[str, pb.Pooling] = {
    "mean": pb.POOLING_MEAN,
    "cls": pb.POOLING_CLS,
    "none": pb.POOLING_NONE,
}


def classifications(results: Sequence[common_pb2.Classification]) -> list[Classification]:
    """Shared by every classifier RPC (text, zero-shot, image, audio)."""
    return [
        Classification(labels=[LabelScore(s.label, s.score) for s in r.labels]) for r in results
    ]


# --- ClassifyText -------------------------------------------------------------------


def classify_text_request(
    inputs: str | Sequence[str],
    *,
    model: str | None,
    top_k: int | None,
    function_to_apply: ScoreFunctionName | None,
) -> pb.ClassifyTextRequest:
    check.integer("top_k", top_k, minimum=1)
    check.choice("function_to_apply", function_to_apply, _SCORE_FUNCTIONS)
    request = pb.ClassifyTextRequest(
        model=check.optional_str("model", model), inputs=check.texts("inputs", inputs)
    )
    if top_k is not None:
        request.top_k = top_k
    if function_to_apply is not None:
        request.function_to_apply = _SCORE_FUNCTIONS[function_to_apply]
    return request


def classify_text_results(response: pb.ClassifyTextResponse) -> list[Classification]:
    return classifications(response.results)


# --- Embed --------------------------------------------------------------------------


def embed_request(
    inputs: str | Sequence[str],
    *,
    model: str | None,
    pooling: PoolingName | None,
    normalize: bool | None,
    truncate: bool | None,
) -> pb.EmbedRequest:
    check.choice("pooling", pooling, _POOLINGS)
    check.boolean("normalize", normalize)
    check.boolean("truncate", truncate)
    request = pb.EmbedRequest(
        model=check.optional_str("model", model), inputs=check.texts("inputs", inputs)
    )
    if pooling is not None:
        request.pooling = _POOLINGS[pooling]
    if normalize is not None:
        request.normalize = normalize
    if truncate is not None:
        request.truncate = truncate
    return request


def embed_results(response: pb.EmbedResponse) -> list[Embedding]:
    return [
        Embedding(
            values=list(e.values),
            token_vectors=[list(v.values) for v in e.token_vectors],
            token_count=e.token_count,
            truncated=e.truncated,
        )
        for e in response.embeddings
    ]


# --- Tokenize -----------------------------------------------------------------------


def tokenize_request(
    text: str | None,
    *,
    messages: Sequence[ChatMessageLike] | None,
    model: str | None,
    add_special_tokens: bool | None,
    add_generation_prompt: bool | None,
) -> generate_pb2.TokenizeRequest:
    if (text is None) == (messages is None):
        raise ValueError("pass exactly one of `text` and `messages`")
    check.boolean("add_special_tokens", add_special_tokens)
    check.boolean("add_generation_prompt", add_generation_prompt)
    request = generate_pb2.TokenizeRequest(model=check.optional_str("model", model))
    if messages is not None:
        request.messages.CopyFrom(chat_messages("messages", messages))
    else:
        request.text = check.optional_str("text", text)
    if add_special_tokens is not None:
        request.add_special_tokens = add_special_tokens
    if add_generation_prompt is not None:
        request.add_generation_prompt = add_generation_prompt
    return request


def tokenize_result(
    response: generate_pb2.TokenizeResponse, request_id: str | None
) -> Tokenization:
    return Tokenization(
        token_ids=list(response.token_ids),
        tokens=list(response.tokens),
        offsets=[(o.start, o.end) for o in response.offsets],
        text=response.text,
        request_id=request_id,
    )


# --- ModelService -------------------------------------------------------------------

_MODEL_STATES: dict[int, ModelState] = {
    model_service_pb2.MODEL_STATE_LOADING: "loading",
    model_service_pb2.MODEL_STATE_READY: "ready",
    model_service_pb2.MODEL_STATE_FAILED: "failed",
    model_service_pb2.MODEL_STATE_UNLOADING: "unloading",
}


def model_info(info: model_service_pb2.ModelInfo, request_id: str | None) -> ModelInfo:
    return ModelInfo(
        name=info.name,
        task=info.task,
        architecture=info.architecture,
        source=info.source,
        device=info.device,
        dtype=info.dtype,
        # UNSPECIFIED is never sent; reading it as "loading" (not usable yet) is the
        # cautious choice for a caller deciding whether to send requests.
        state=_MODEL_STATES.get(info.state, "loading"),
        failure_message=info.failure_message,
        context_length=info.context_length if info.HasField("context_length") else None,
        default_for_task=info.default_for_task,
        rpcs=list(info.rpcs),
        preset=info.preset,
        quantization=info.quantization,
        request_id=request_id,
    )
