"""The unary task methods: what goes on the wire, and what comes back."""

from __future__ import annotations

import pytest

from modelwire import (
    AsyncClient,
    ChatMessage,
    Classification,
    Embedding,
    ImagePart,
    LabelScore,
    ModelInfo,
    NotFoundError,
    Tokenization,
)
from modelwire.v1 import common_pb2, generate_pb2, model_service_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.sdk.fakes import Fakes


async def test_classify_text_results(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["ClassifyText"] = pb.ClassifyTextResponse(
        results=[
            common_pb2.Classification(
                labels=[
                    common_pb2.LabelScore(label="POSITIVE", score=0.75),
                    common_pb2.LabelScore(label="NEGATIVE", score=0.25),
                ]
            ),
            common_pb2.Classification(labels=[common_pb2.LabelScore(label="NEGATIVE", score=0.5)]),
        ]
    )

    results = await client.classify_text(["good", "bad"], top_k=2)

    assert results == [
        Classification([LabelScore("POSITIVE", 0.75), LabelScore("NEGATIVE", 0.25)]),
        Classification([LabelScore("NEGATIVE", 0.5)]),
    ]
    assert results[0].top == LabelScore("POSITIVE", 0.75)
    assert results.request_id == fakes.recorder.calls[0].metadata["x-request-id"]


async def test_classify_text_request_leaves_unset_options_unset(
    client: AsyncClient, fakes: Fakes
) -> None:
    fakes.inference.responses["ClassifyText"] = pb.ClassifyTextResponse()

    await client.classify_text("one text")
    await client.classify_text(["a", "b"], model="sst2", top_k=3, function_to_apply="sigmoid")

    bare, full = fakes.recorder.requests("ClassifyText")
    assert list(bare.inputs) == ["one text"]
    assert bare.model == ""
    assert not bare.HasField("top_k")
    assert bare.function_to_apply == pb.SCORE_FUNCTION_UNSPECIFIED
    assert list(full.inputs) == ["a", "b"]
    assert full.model == "sst2"
    assert full.top_k == 3
    assert full.function_to_apply == pb.SCORE_FUNCTION_SIGMOID


async def test_embed_results_and_request(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["Embed"] = pb.EmbedResponse(
        embeddings=[
            pb.Embedding(values=[0.5, -0.25], token_count=4),
            pb.Embedding(
                token_vectors=[pb.Vector(values=[1.0]), pb.Vector(values=[2.0])],
                token_count=2,
                truncated=True,
            ),
        ]
    )

    results = await client.embed(["x", "y"], pooling="none", normalize=False)

    assert results == [
        Embedding(values=[0.5, -0.25], token_vectors=[], token_count=4, truncated=False),
        Embedding(values=[], token_vectors=[[1.0], [2.0]], token_count=2, truncated=True),
    ]
    [request] = fakes.recorder.requests("Embed")
    assert request.pooling == pb.POOLING_NONE
    # An explicit False differs from "unset" (the model's own config decides).
    assert request.HasField("normalize") and request.normalize is False
    assert not request.HasField("truncate")


async def test_tokenize_text(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["Tokenize"] = generate_pb2.TokenizeResponse(
        token_ids=[101, 7592, 102],
        tokens=["[CLS]", "hello", "[SEP]"],
        offsets=[
            generate_pb2.Offset(start=0, end=0),
            generate_pb2.Offset(start=0, end=5),
            generate_pb2.Offset(start=0, end=0),
        ],
        text="hello",
    )

    result = await client.tokenize("hello", model="bert")

    assert result == Tokenization(
        token_ids=[101, 7592, 102],
        tokens=["[CLS]", "hello", "[SEP]"],
        offsets=[(0, 0), (0, 5), (0, 0)],
        text="hello",
    )
    assert result.request_id
    [request] = fakes.recorder.requests("Tokenize")
    assert request.WhichOneof("input") == "text" and request.text == "hello"
    assert request.model == "bert"
    assert not request.HasField("add_special_tokens")
    assert not request.HasField("add_generation_prompt")


async def test_tokenize_messages(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["Tokenize"] = generate_pb2.TokenizeResponse()

    await client.tokenize(
        messages=[
            ChatMessage("system", "Be brief."),
            {"role": "user", "content": ["What is this?", ImagePart(b"\x89PNG")]},
        ],
        add_generation_prompt=False,
    )

    [request] = fakes.recorder.requests("Tokenize")
    assert request.WhichOneof("input") == "messages"
    system, user = request.messages.messages
    assert (system.role, [p.text for p in system.content]) == ("system", ["Be brief."])
    assert user.role == "user"
    assert user.content[0].text == "What is this?"
    assert user.content[1].image.data == b"\x89PNG"
    assert request.HasField("add_generation_prompt") and not request.add_generation_prompt


def _model(name: str, task: str, **fields: object) -> model_service_pb2.ModelInfo:
    return model_service_pb2.ModelInfo(name=name, task=task, **fields)


async def test_list_and_get_models(client: AsyncClient, fakes: Fakes) -> None:
    fakes.models.models = [
        _model(
            "gpt",
            "text-generation",
            architecture="GPT2LMHeadModel",
            source="preset:tiny/gpt2",
            device="cpu",
            dtype="float32",
            quantization="int8",
            state=model_service_pb2.MODEL_STATE_READY,
            context_length=128,
            default_for_task=True,
            rpcs=["Generate", "Tokenize"],
            preset=True,
        ),
        _model(
            "broken",
            "ner",
            state=model_service_pb2.MODEL_STATE_FAILED,
            failure_message="no such directory",
        ),
    ]

    models = await client.list_models()
    ner_only = await client.list_models(task="ner")
    gpt = await client.get_model("gpt")

    assert [m.name for m in models] == ["gpt", "broken"]
    assert [m.name for m in ner_only] == ["broken"]
    assert gpt == ModelInfo(
        name="gpt",
        task="text-generation",
        architecture="GPT2LMHeadModel",
        source="preset:tiny/gpt2",
        device="cpu",
        dtype="float32",
        quantization="int8",
        state="ready",
        failure_message="",
        context_length=128,
        default_for_task=True,
        rpcs=["Generate", "Tokenize"],
        preset=True,
    )
    assert models[1].state == "failed"
    assert models[1].failure_message == "no such directory"
    assert models[1].context_length is None
    assert gpt.request_id == fakes.recorder.calls[-1].metadata["x-request-id"]


async def test_get_unknown_model_is_not_found(client: AsyncClient, fakes: Fakes) -> None:
    with pytest.raises(NotFoundError, match="no model named 'nope'") as caught:
        await client.get_model("nope")
    assert caught.value.request_id == fakes.recorder.calls[0].metadata["x-request-id"]
