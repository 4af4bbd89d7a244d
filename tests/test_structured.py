"""Structured output (response_format) through the SDK against a real server.

The tiny preset models are random: unconstrained, their output is noise, so a valid
output proves the mask. Each kind gets 200 seeded samples (10 requests of n=20, all in
flight at once) in one batch with unconstrained greedy requests, whose tokens must stay
those of ``model.generate()``. A sample is valid when the format closed it (EOS) and
its text passes an independent check (jsonschema, ``re.fullmatch``, membership, Python's
own parser for the arithmetic grammar); a sample cut by ``max_new_tokens`` reports
LENGTH and need not be complete, but most must close or the check would prove little.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from transformers import AutoTokenizer

from modelwire import (
    AsyncClient,
    BadRequestError,
    Choice,
    FinishReason,
    Grammar,
    JsonObject,
    JsonSchema,
    Regex,
    SequenceResult,
)
from modelwire.v1 import generate_pb2
from tests.helpers import bad_request_fields, raw_error
from tests.test_generate import ids, reference_greedy

MODELS = ["tiny-gpt2", "tiny-llama"]
SAMPLES, PER_REQUEST = 200, 20
MAX_NEW = 160

NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["cat", "dog", "fish"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "weight": {"type": "number", "minimum": 0.5, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 999},
                "vip": {"type": "boolean"},
            },
            "required": ["id", "vip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "age", "tags", "owner"],
    "additionalProperties": False,
}
REGEX = r"[A-Z]{2}-\d{3}(\.[a-z]{1,4})?"
CHOICES = ["yes", "no", "maybe so", "café ☕"]
# Arithmetic over small numbers; Python's parser is the independent check.
ARITHMETIC = """
root ::= expr
expr ::= term (("+" | "-") term){0,3}
term ::= num | "(" expr ")"
num ::= [1-9] [0-9]{0,2}
"""


def valid_arithmetic(text: str) -> bool:
    allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub)
    tree = ast.parse(text, mode="eval")
    return re.fullmatch(r"[0-9+\-()]+", text) is not None and all(
        isinstance(node, allowed) for node in ast.walk(tree)
    )


def valid_json(text: str) -> bool:
    json.loads(text)
    return True


CASES: dict[str, tuple[Any, Callable[[str], bool]]] = {
    "json_object": (JsonObject(), valid_json),
    "json_schema": (
        NESTED_SCHEMA,
        lambda t: jsonschema.validate(json.loads(t), NESTED_SCHEMA) or True,
    ),
    "regex": (Regex(REGEX), lambda t: re.fullmatch(REGEX, t) is not None),
    "choice": (Choice(CHOICES), lambda t: t in CHOICES),
    "grammar": (Grammar(ARITHMETIC), valid_arithmetic),
}
UNCONSTRAINED = [("The quick brown fox", 24), ("Once upon a time there was", 17)]


def eos_bias(server: Any, model: str) -> dict[int, float]:
    """A bias towards EOS, which the mask allows only where the format is complete: so
    an unbounded format (any JSON) ends where it first can instead of running on."""
    tokenizer = AutoTokenizer.from_pretrained(server.runner(model).config.source)
    return {tokenizer.eos_token_id: 10.0}


def check_sample(sample: SequenceResult, valid: Callable[[str], bool]) -> bool:
    """True when the format closed the sample and it is valid; False when it was cut by
    length (allowed); anything else fails the test."""
    assert sample.usage is not None
    if sample.finish_reason is FinishReason.LENGTH:
        assert sample.usage.generated_tokens == MAX_NEW
        return False
    assert sample.finish_reason is FinishReason.EOS, sample
    assert valid(sample.text), sample.text
    return True


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("model", MODELS)
async def test_every_sample_is_valid_beside_unconstrained_requests(
    server, client: AsyncClient, model: str, kind: str
) -> None:
    fmt, valid = CASES[kind]
    path = server.runner(model).config.source
    expected = [reference_greedy(path, p, n) for p, n in UNCONSTRAINED]
    bias = eos_bias(server, model) if kind == "json_object" else None
    constrained = [
        client.generate(
            "Tell me something:",
            model=model,
            response_format=fmt,
            temperature=1.0,
            seed=1000 * k,
            n=PER_REQUEST,
            max_new_tokens=MAX_NEW,
            logit_bias=bias,
        )
        for k in range(SAMPLES // PER_REQUEST)
    ]
    free = [
        client.generate(p, model=model, temperature=0, max_new_tokens=n, ignore_eos=True)
        for p, n in UNCONSTRAINED
    ]
    results = await asyncio.gather(*constrained, *free)
    samples = [s for r in results[: len(constrained)] for s in r.sequences]
    assert len(samples) == SAMPLES
    closed = sum(check_sample(s, valid) for s in samples)
    assert closed >= 0.9 * SAMPLES, f"only {closed} of {SAMPLES} samples closed"
    assert len({s.text for s in samples}) > 1  # seeds differ, and so do samples
    for result, want in zip(results[len(constrained) :], expected, strict=True):
        assert ids(result) == want


async def test_constrained_seeded_samples_repeat_and_parse(client: AsyncClient) -> None:
    async def run() -> Any:
        return await client.generate(
            "Pick:",
            model="tiny-llama",
            response_format=JsonSchema(NESTED_SCHEMA, name="pet"),
            temperature=1.0,
            seed=7,
            n=3,
            max_new_tokens=MAX_NEW,
        )

    first, again = await asyncio.gather(run(), run())
    assert [s.text for s in first.sequences] == [s.text for s in again.sequences]
    for sample in first.sequences:
        assert sample.finish_reason is FinishReason.EOS
        assert sample.parsed == json.loads(sample.text)
    assert first.parsed == first.sequences[0].parsed


async def test_pydantic_model_in_parsed_object_out(client: AsyncClient) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Owner(pydantic.BaseModel):
        id: int = pydantic.Field(ge=1, le=99)
        vip: bool

    class Pet(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=8)
        kind: str = pydantic.Field(pattern="^(cat|dog)$")
        owner: Owner

    result = await client.generate(
        "A pet:", model="tiny-gpt2", response_format=Pet, temperature=1.0, seed=3
    )
    assert result.sequences[0].finish_reason is FinishReason.EOS
    assert isinstance(result.parsed, Pet)
    assert result.parsed == Pet.model_validate_json(result.text)


async def test_stream_deltas_concatenate_to_valid_json_with_multibyte_strings(
    client: AsyncClient,
) -> None:
    # Strings drawn from characters of 2, 3 and 4 bytes in UTF-8: a token may end
    # inside one, so some deltas are held back until it is whole.
    schema = {
        "type": "object",
        "properties": {"word": {"type": "string", "pattern": "^[é☕😀]{3,6}$"}},
        "required": ["word"],
        "additionalProperties": False,
    }
    for model in MODELS:
        async with client.generate_stream(
            "Say it:", model=model, response_format=schema, temperature=1.0, seed=11, n=4
        ) as stream:
            deltas: dict[int, list[str]] = {}
            async for chunk in stream:
                deltas.setdefault(chunk.index, []).append(chunk.text)
            result = await stream.final()
        for sample in result.sequences:
            assert "".join(deltas[sample.index]) == sample.text
            assert sample.finish_reason is FinishReason.EOS
            jsonschema.validate(sample.parsed, schema)
            assert re.fullmatch("[é☕😀]{3,6}", sample.parsed["word"])


async def test_stop_strings_and_length_cut_a_constrained_output(client: AsyncClient) -> None:
    long_regex = Regex(r"[a-z]{40}")
    cut = await client.generate(
        "x", model="tiny-gpt2", response_format=long_regex, max_new_tokens=5, temperature=0
    )
    assert cut.sequences[0].finish_reason is FinishReason.LENGTH
    assert cut.parsed is None
    assert re.fullmatch("[a-z]*", cut.text) and len(cut.sequences[0].tokens) == 5
    free = await client.generate(
        "x", model="tiny-gpt2", response_format=long_regex, max_new_tokens=60, temperature=0
    )
    assert free.sequences[0].finish_reason is FinishReason.EOS
    stop = free.text[10:12]
    stopped = await client.generate(
        "x",
        model="tiny-gpt2",
        response_format=long_regex,
        max_new_tokens=60,
        temperature=0,
        stop=stop,
    )
    assert stopped.sequences[0].finish_reason is FinishReason.STOP_SEQUENCE
    assert stopped.text == free.text[: free.text.index(stop)]


async def test_a_format_is_compiled_once(server, client: AsyncClient) -> None:
    compiler = server.runner("tiny-llama").constraints
    fmt = Regex(r"once-[0-9]{2}")
    before = compiler.compiles
    for seed in range(3):
        result = await client.generate(
            "x", model="tiny-llama", response_format=fmt, temperature=1.0, seed=seed
        )
        assert re.fullmatch(r"once-[0-9]{2}", result.text)
    assert compiler.compiles == before + 1


def raw_request(**fmt: Any) -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(
        model="tiny-gpt2", prompt="x", response_format=generate_pb2.ResponseFormat(**fmt)
    )


@pytest.mark.parametrize(
    ("fmt", "field", "words"),
    [
        ({"json_schema": generate_pb2.JsonSchemaFormat(schema="{not json")}, "json_schema", "JSON"),
        (
            {"json_schema": generate_pb2.JsonSchemaFormat(schema='{"type": "foo"}')},
            "json_schema",
            "foo",
        ),
        ({"regex": "(abc"}, "regex", "parenthesis"),
        ({"grammar": "root ::= missing"}, "grammar", "missing"),
        ({"grammar": 'start ::= "a"'}, "grammar", "root"),
        ({"choice": generate_pb2.ChoiceFormat(choices=["a", ""])}, "choice", "empty"),
        ({}, "", "set one of"),
    ],
)
async def test_bad_formats_are_invalid_argument_naming_the_field(
    server, client: AsyncClient, fmt: dict[str, Any], field: str, words: str
) -> None:
    error = await raw_error(server, "Generate", raw_request(**fmt))
    name = f"response_format.{field}" if field else "response_format"
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [name]
    assert words in error.details()
    assert await client.generate("still serving", model="tiny-gpt2", max_new_tokens=2)


async def test_beam_search_and_ignore_eos_are_refused_with_a_format(client: AsyncClient) -> None:
    with pytest.raises(BadRequestError) as beams:
        await client.generate("x", model="tiny-gpt2", response_format=JsonObject(), num_beams=2)
    assert [v.field for v in beams.value.field_violations] == ["response_format"]
    with pytest.raises(BadRequestError) as eos:
        await client.generate("x", model="tiny-gpt2", response_format=JsonObject(), ignore_eos=True)
    assert [v.field for v in eos.value.field_violations] == ["stopping.ignore_eos"]


def test_sdk_checks_formats_before_sending() -> None:
    from modelwire._structured import response_format_pb

    assert response_format_pb({"type": "object"}).json_schema.schema == '{"type": "object"}'
    assert list(response_format_pb(Choice("a", "b")).choice.choices) == ["a", "b"]
    with pytest.raises(ValueError, match="Choice"):
        response_format_pb(Choice())
    with pytest.raises(ValueError, match="response_format"):
        response_format_pb(42)  # type: ignore[arg-type]


def test_cli_json_schema_and_regex(server, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelwire.cli import main

    schema_file = tmp_path / "pet.json"
    schema_file.write_text(json.dumps(NESTED_SCHEMA))
    base = ["--target", server.target, "generate", "A pet:", "--model", "tiny-llama"]
    base += ["--temperature", "1", "--seed", "5", "--max-new-tokens", str(MAX_NEW)]
    assert main([*base, "--json-schema", str(schema_file), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)["results"]
    jsonschema.validate(json.loads(result["text"]), NESTED_SCHEMA)
    assert result["sequences"][0]["parsed"] == json.loads(result["text"])

    assert main([*base, "--regex", REGEX]) == 0
    assert re.fullmatch(REGEX, capsys.readouterr().out.removesuffix("\n"))

    assert main([*base, "--json-schema", str(tmp_path / "missing.json")]) != 0
    assert "no such file" in capsys.readouterr().err


async def test_compiling_runs_off_the_event_loop_and_the_device_worker(
    server, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from modelwire_server.engine.constraints import ConstraintCompiler

    threads: list[threading.Thread] = []
    compile_format = ConstraintCompiler.compile

    def recording(self: ConstraintCompiler, fmt: Any) -> Any:
        threads.append(threading.current_thread())
        return compile_format(self, fmt)

    monkeypatch.setattr(ConstraintCompiler, "compile", recording)
    result = await client.generate(
        "x", model="tiny-gpt2", response_format=Regex("off-loop-[0-9]"), temperature=0
    )
    assert re.fullmatch("off-loop-[0-9]", result.text)
    [thread] = threads
    assert thread is not server.thread  # the server's event loop
    assert not thread.name.startswith("modelwire-worker")  # the device worker
