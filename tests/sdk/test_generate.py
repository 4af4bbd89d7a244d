"""generate / generate_stream: request mapping, chunks, results, closing, errors."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from modelwire import (
    AsyncClient,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    ImagePart,
    InternalServerError,
    NotFoundError,
    SequenceResult,
    Token,
    TopLogprob,
    Usage,
)
from modelwire.v1 import common_pb2, generate_pb2
from tests.sdk.fakes import Fakes, plain_status

G = generate_pb2


def _hello_stream() -> list[generate_pb2.GenerateResponse]:
    """What a server sends for "Hello" from a 3-token prompt, with logprobs."""
    return [
        G.GenerateResponse(prompt_token_count=3, prompt_tokens=[G.Token(id=1, text="<s>")]),
        G.GenerateResponse(
            text="Hel",
            tokens=[
                G.Token(
                    id=10,
                    text="Hel",
                    logprob=-0.5,
                    top_logprobs=[G.TopLogprob(id=10, text="Hel", logprob=-0.5)],
                )
            ],
        ),
        G.GenerateResponse(text="lo", tokens=[G.Token(id=11, text="lo", logprob=-0.25)]),
        G.GenerateResponse(
            tokens=[G.Token(id=2, text="</s>", logprob=-1.0, special=True)],
            finish_reason=common_pb2.FINISH_REASON_EOS,
            usage=G.Usage(
                prompt_tokens=3,
                generated_tokens=3,
                queue_time=Duration(nanos=1_500_000),
                time_to_first_token=Duration(nanos=20_000_000),
                total_time=Duration(seconds=1, nanos=250_000_000),
            ),
            seed=42,
        ),
    ]


async def test_generate_collects_the_stream(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()

    result = await client.generate("Say hi", max_new_tokens=5, logprobs=True, top_logprobs=1)

    assert result.text == "Hello"
    assert result.prompt_token_count == 3
    assert result.prompt_tokens == [Token(id=1, text="<s>")]
    assert result.sequences == [
        SequenceResult(
            index=0,
            text="Hello",
            tokens=[
                Token(10, "Hel", -0.5, [TopLogprob(10, "Hel", -0.5)]),
                Token(11, "lo", -0.25),
                Token(2, "</s>", -1.0, special=True),
            ],
            finish_reason=FinishReason.EOS,
            usage=Usage(
                prompt_tokens=3,
                generated_tokens=3,
                queue_time=0.0015,
                time_to_first_token=0.02,
                total_time=1.25,
            ),
            seed=42,
        )
    ]
    assert result.sequences[0].finish_reason == "eos"
    assert result.request_id == fakes.recorder.calls[0].metadata["x-request-id"]


async def test_stream_yields_every_message_as_a_chunk(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()[:3]

    async with client.generate_stream("Say hi") as stream:
        chunks = [chunk async for chunk in stream]

    assert chunks == [
        GenerationChunk(
            index=0, text="", tokens=[], prompt_token_count=3, prompt_tokens=[Token(1, "<s>")]
        ),
        GenerationChunk(
            index=0, text="Hel", tokens=[Token(10, "Hel", -0.5, [TopLogprob(10, "Hel", -0.5)])]
        ),
        GenerationChunk(index=0, text="lo", tokens=[Token(11, "lo", -0.25)]),
    ]
    assert stream.request_id == fakes.recorder.calls[0].metadata["x-request-id"]


async def test_text_includes_chunks_already_read(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()

    async with client.generate_stream("Say hi") as stream:
        first = await anext(stream)
        second = await anext(stream)
        text = await stream.text()

    assert (first.prompt_token_count, second.text) == (3, "Hel")
    assert text == "Hello"


async def test_n_sequences_are_kept_apart(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = [
        G.GenerateResponse(prompt_token_count=2),
        G.GenerateResponse(index=1, text="b"),
        G.GenerateResponse(index=0, text="a"),
        G.GenerateResponse(index=1, text="B", finish_reason=common_pb2.FINISH_REASON_LENGTH),
        G.GenerateResponse(index=0, text="A", finish_reason=common_pb2.FINISH_REASON_STOP_SEQUENCE),
    ]

    result = await client.generate("x", n=2, temperature=1.0)

    assert [(s.index, s.text, s.finish_reason) for s in result.sequences] == [
        (0, "aA", FinishReason.STOP_SEQUENCE),
        (1, "bB", FinishReason.LENGTH),
    ]


async def test_every_parameter_reaches_the_request(client: AsyncClient, fakes: Fakes) -> None:
    await client.generate(
        "Once",
        model="tiny-gpt2",
        temperature=0.7,
        top_k=50,
        top_p=0.9,
        min_p=0.05,
        typical_p=0.95,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=2**64 - 1,
        logit_bias={7: -100.0, 8: 2.5},
        num_beams=4,
        length_penalty=0.8,
        n=2,
        max_new_tokens=16,
        min_new_tokens=2,
        stop="\n",
        stop_token_ids=[13, 14],
        ignore_eos=True,
        include_stop_in_output=True,
        time_limit_ms=500,
        logprobs=True,
        top_logprobs=5,
        echo_prompt_tokens=True,
        skip_special_tokens=False,
        truncate_prompt_tokens=64,
    )

    [request] = fakes.recorder.requests("Generate")
    s, stop, o = request.sampling, request.stopping, request.options
    assert (request.model, request.prompt) == ("tiny-gpt2", "Once")
    assert s.temperature == pytest.approx(0.7) and s.top_k == 50
    assert s.top_p == pytest.approx(0.9) and s.min_p == pytest.approx(0.05)
    assert s.typical_p == pytest.approx(0.95) and s.repetition_penalty == pytest.approx(1.1)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)
    assert s.seed == 2**64 - 1
    assert dict(s.logit_bias) == {7: -100.0, 8: 2.5}
    assert (s.num_beams, s.length_penalty, s.n) == (4, pytest.approx(0.8), 2)
    assert (stop.max_new_tokens, stop.min_new_tokens) == (16, 2)
    assert list(stop.stop) == ["\n"]  # a lone string is a list of one
    assert list(stop.stop_token_ids) == [13, 14]
    assert stop.ignore_eos and stop.include_stop_in_output and stop.time_limit_ms == 500
    assert o.logprobs and o.top_logprobs == 5 and o.echo_prompt_tokens
    assert o.HasField("skip_special_tokens") and not o.skip_special_tokens
    assert o.truncate_prompt_tokens == 64


async def test_unset_parameters_stay_unset(client: AsyncClient, fakes: Fakes) -> None:
    await client.generate("Once", stop=["a", "bc"])

    [request] = fakes.recorder.requests("Generate")
    for message, fields in (
        (request.sampling, generate_pb2_optionals(common_pb2.SamplingParameters)),
        (request.stopping, generate_pb2_optionals(common_pb2.StoppingParameters)),
        (request.options, generate_pb2_optionals(G.GenerateOptions)),
    ):
        assert fields, "every message has optional fields"
        assert [f for f in fields if message.HasField(f)] == []
    assert not request.sampling.logit_bias and not request.stopping.stop_token_ids
    assert list(request.stopping.stop) == ["a", "bc"]
    assert request.model == ""


def generate_pb2_optionals(message_class: type) -> list[str]:
    """The names of a message's `optional` (presence-tracking) scalar fields."""
    return [
        f.name for f in message_class.DESCRIPTOR.fields if f.has_presence and f.message_type is None
    ]


async def test_chat_messages_become_the_input(client: AsyncClient, fakes: Fakes) -> None:
    await client.generate(messages=[{"role": "user", "content": "Hi"}])

    [request] = fakes.recorder.requests("Generate")
    assert request.WhichOneof("input") == "messages"
    [turn] = request.messages.messages
    assert turn.role == "user" and turn.content[0].text == "Hi"


async def test_image_parts_are_sent_in_order(
    client: AsyncClient, fakes: Fakes, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(png, format="PNG")
    path = tmp_path / "red.png"
    path.write_bytes(png.getvalue())
    array = np.zeros((2, 5, 3), np.uint8)
    parts: list[str | ImagePart] = [
        "Compare",
        ImagePart(png.getvalue()),
        ImagePart(path),
        ImagePart(str(path)),
        ImagePart(Image.new("RGB", (4, 4), "blue")),
        ImagePart(array),
    ]
    messages = [ChatMessage("user", parts)]
    await client.generate(messages=messages, model="llava")
    async with client.generate_stream(messages=messages, model="llava") as stream:
        await stream.final()
    fakes.inference.responses["Tokenize"] = generate_pb2.TokenizeResponse()
    await client.tokenize(messages=messages, model="llava")

    sent = [r.messages for r in fakes.recorder.requests("Generate")]
    sent += [r.messages for r in fakes.recorder.requests("Tokenize")]
    assert len(sent) == 3
    for chat in sent:
        [turn] = chat.messages
        kinds = [p.WhichOneof("part") for p in turn.content]
        assert kinds == ["text"] + ["image"] * 5
        assert turn.content[0].text == "Compare"
        images = [p.image.data for p in turn.content[1:]]
        assert images[:3] == [png.getvalue()] * 3  # bytes as given; paths read
        decoded = [Image.open(io.BytesIO(data)) for data in images[3:]]
        assert [d.size for d in decoded] == [(4, 4), (5, 2)]
        assert decoded[0].convert("RGB").getpixel((0, 0)) == (0, 0, 255)
        assert np.array_equal(np.asarray(decoded[1].convert("RGB")), array)


def test_image_part_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ImagePart\.data"):
        ImagePart(3)
    with pytest.raises(ValueError, match="cannot read"):
        ImagePart(tmp_path / "missing.png")
    assert ImagePart(data=b"x") == ImagePart(bytearray(b"x"))


async def test_close_cancels_the_call_on_the_server(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()[:2]
    fakes.inference.hold_stream = True

    stream = client.generate_stream("Say hi")
    await anext(stream)
    await anext(stream)
    await stream.close()

    await asyncio.wait_for(fakes.recorder.cancelled.wait(), timeout=10)
    assert [chunk async for chunk in stream] == []
    assert await stream.text() == "Hel"  # what arrived before closing is kept


async def test_leaving_async_with_early_cancels(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()[:2]
    fakes.inference.hold_stream = True

    async with client.generate_stream("Say hi") as stream:
        async for chunk in stream:
            if chunk.text:
                break

    await asyncio.wait_for(fakes.recorder.cancelled.wait(), timeout=10)


async def test_close_from_another_task_ends_iteration(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()[:1]
    fakes.inference.hold_stream = True
    stream = client.generate_stream("Say hi")
    await anext(stream)

    reading = asyncio.Event()

    async def read_rest() -> list[GenerationChunk]:
        reading.set()  # this task runs on into the read and suspends there, before we resume
        return [chunk async for chunk in stream]

    reader = asyncio.create_task(read_rest())
    await reading.wait()
    await stream.close()

    assert await asyncio.wait_for(reader, timeout=10) == []


async def test_error_mid_stream_raises_the_sdk_error(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.stream = _hello_stream()[:2]
    fakes.inference.stream_error = plain_status(grpc.StatusCode.INTERNAL, "device lost")

    async with client.generate_stream("Say hi") as stream:
        with pytest.raises(InternalServerError, match="device lost") as caught:
            async for _ in stream:
                pass

    assert caught.value.request_id == fakes.recorder.calls[0].metadata["x-request-id"]
    assert await stream.text() == "Hel"


async def test_error_before_any_message(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recorder.failures = [plain_status(grpc.StatusCode.NOT_FOUND, "no model 'x'")]

    with pytest.raises(NotFoundError, match="no model 'x'") as caught:
        await client.generate("hi", model="x")

    assert caught.value.request_id == fakes.recorder.calls[0].metadata["x-request-id"]
