"""The ``modelwire`` command, run in-process (``main([...])``) against the session server.

Tests are plain functions: ``main`` runs its own event loop with ``asyncio.run``, as the
console script does. Expected values come from the SDK, called in the same test.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest

from modelwire import (
    AsyncClient,
    BoundingBox,
    DetectedObject,
    Detections,
    ResultList,
    Speech,
    Transcription,
)
from modelwire._streaming import GenerateStream
from modelwire.cli import main
from tests.tolerances import TINY_UNIT_ATOL

REQUEST_ID = re.compile(r"\(request id [0-9a-f]{32}\)$")


def sdk(server: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    async def call() -> Any:
        async with AsyncClient(server.target) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(call())


class RecordingStdout(io.StringIO):
    """stdout that keeps each write, to see text arrive in steps; ``on_text`` hooks it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.on_text: Any = None

    def write(self, text: str) -> int:
        self.writes.append(text)
        if self.on_text is not None:
            self.on_text(text)
        return super().write(text)


def test_classify_prints_label_and_score(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    [expected] = sdk(server, "classify_text", "I love this", model="tiny-sentiment")
    argv = ["--target", server.target, "classify", "I love this", "--model", "tiny-sentiment"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == f"{expected.top.label}  {expected.top.score:.4f}\n"


def test_json_after_the_subcommand_and_target_from_env(
    server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELWIRE_TARGET", server.target)
    expected = sdk(server, "embed", ["a red fox", "a blue fish"], model="minilm", normalize=True)
    argv = ["embed", "a red fox", "a blue fish", "--model", "minilm", "--normalize", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert re.fullmatch(r"[0-9a-f]{32}", data["request_id"])
    for row, embedding in zip(data["results"], expected, strict=True):
        assert row["values"] == pytest.approx(embedding.values, abs=TINY_UNIT_ATOL)
    assert len(data["results"][0]["values"]) == 384


def test_zero_shot_and_ner_json(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    t = ["--target", server.target, "--json"]
    argv = [*t, "zero-shot", "a match", "--labels", "sport, cooking", "--model", "tiny-nli"]
    assert main(argv) == 0
    [result] = json.loads(capsys.readouterr().out)["results"]
    assert sorted(label["label"] for label in result["labels"]) == ["cooking", "sport"]
    [expected] = sdk(server, "recognize_entities", "Ada Lovelace in London", model="tiny-ner")
    assert main([*t, "ner", "Ada Lovelace in London", "--model", "tiny-ner"]) == 0
    [entities] = json.loads(capsys.readouterr().out)["results"]
    assert [(e["label"], e["start"], e["end"]) for e in entities] == [
        (e.label, e.start, e.end) for e in expected
    ]


def test_models_and_health(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--target", server.target, "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)["results"]}
    assert {"tiny-gpt2", "minilm"} <= names
    assert main(["health", "--target", server.target]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main(["health", "--target", server.target, "--service", "no.such.Service"]) == 1


def test_generate_streams_deltas_as_they_arrive(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    expected = sdk(server, "generate", "Once upon a time", model="tiny-gpt2", **params)
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    # The test paces the stream: before the CLI may take the next delta, the previous
    # one must already be on stdout. A CLI that held text back until the end fails here
    # whatever the timing of the server's steps.
    handed: list[str] = []
    next_chunk = GenerateStream.__anext__

    async def paced(stream: GenerateStream) -> Any:
        if handed:
            assert stdout.writes[-1] == handed[-1], "a delta was not printed before the next"
        chunk = await next_chunk(stream)
        if chunk.text:
            handed.append(chunk.text)
        return chunk

    monkeypatch.setattr(GenerateStream, "__anext__", paced)
    argv = ["--target", server.target, "generate", "Once upon a time", "--model", "tiny-gpt2"]
    argv += ["--temperature", "0", "--max-new-tokens", "12", "--ignore-eos"]
    assert main(argv) == 0
    assert stdout.getvalue() == expected.text + "\n"
    assert [w for w in stdout.writes if w and w != "\n"] == handed
    assert len(handed) >= 2

    monkeypatch.setattr(GenerateStream, "__anext__", next_chunk)
    stdout.writes.clear()
    stdout.seek(0)
    stdout.truncate()
    assert main([*argv, "--json"]) == 0  # for scripts: one document at the end
    data = json.loads(stdout.getvalue())
    assert set(data) == {"results", "request_id"} and data["request_id"]  # as every command
    [result] = data["results"]
    assert result["text"] == result["sequences"][0]["text"] == expected.text
    assert result["sequences"][0]["finish_reason"] == "length"


def test_error_is_one_line_with_the_request_id(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", server.target, "classify", "hi", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("modelwire: error: NOT_FOUND") and REQUEST_ID.search(err.strip())

    assert main(["--json", "--target", server.target, "classify", "hi", "--model", "nope"]) == 1
    data = json.loads(capsys.readouterr().err)
    assert data["code"] == "NOT_FOUND" and re.fullmatch(r"[0-9a-f]{32}", data["request_id"])


def test_usage_errors_exit_2(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify"]) == 2  # argparse: a missing argument
    assert main(["--target", server.target, "classify", "hi", "--top-k", "0"]) == 2  # the SDK
    assert "top_k" in capsys.readouterr().err


@pytest.fixture(scope="module")
def captioner(preset_cache: Any) -> Iterator[Any]:
    from modelwire_server.config import ServerConfig
    from modelwire_server.server import preset_configs
    from tests.conftest import start_server

    models = [m for m in preset_configs("tiny") if m.name == "tiny-blip"]
    running = start_server(ServerConfig(port=0, models=models))
    yield running
    running.stop()


def test_caption_prints_one_caption_per_image(
    captioner: Any, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(paths[-1])
    options = {"prompt": "a picture of", "max_new_tokens": 6, "num_beams": 2}
    expected = sdk(captioner, "caption_image", paths, **options)
    assert expected[0].text != expected[1].text
    argv = ["--target", captioner.target, "caption", *map(str, paths)]
    argv += ["--prompt", "a picture of", "--max-new-tokens", "6", "--num-beams", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == "".join(f"{p}\n  {r.text}\n" for p, r in zip(paths, expected, strict=True))

    assert main([*argv[:4], "--json", "--max-new-tokens", "6", "--prompt", "a picture of"]) == 0
    data = json.loads(capsys.readouterr().out)
    [alone] = sdk(captioner, "caption_image", paths[0], prompt="a picture of", max_new_tokens=6)
    assert data["results"] == [
        {
            "text": alone.text,
            "finish_reason": alone.finish_reason.value,
            "generated_tokens": alone.generated_tokens,
        }
    ]
    assert re.fullmatch(r"[0-9a-f]{32}", data["request_id"])


def test_no_model_of_the_task_says_what_the_server_has(
    captioner: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", captioner.target, "classify", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelwire: error: NOT_FOUND: this server has no sentiment-analysis")
    assert "it has models for image-to-text" in err and "LoadModel" in err
    assert "name one in 'model'" not in err  # naming a model cannot help: there is none


def test_missing_image_file_is_named(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", server.target, "classify-image", "/no/such.png"]) == 2
    assert "no such file: /no/such.png" in capsys.readouterr().err


class ScriptedStdin(io.StringIO):
    """Lines a person types at the prompt (a terminal); then Ctrl-C at the prompt
    (input() raises there)."""

    def isatty(self) -> bool:
        return True

    def readline(self, *args: Any) -> str:
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_chat_streams_each_answer_and_ctrl_c_stops_only_the_answer(
    server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = server.runner("tiny-llama").engine
    generated_before = engine.stats().generated_tokens
    stdout = RecordingStdout()
    answers: list[str] = []

    def interrupt_first_answer(text: str) -> None:
        # A real SIGINT, delivered as the first answer's first text reaches the terminal.
        if text.strip() and text not in {"> ", "\n"} and not answers:
            answers.append(text)
            signal.raise_signal(signal.SIGINT)

    stdout.on_text = interrupt_first_answer
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stdin", ScriptedStdin("Hello there\nAnd again\n"))
    argv = ["--target", server.target, "chat", "--model", "tiny-llama", "--temperature", "0"]
    argv += ["--max-new-tokens", "400", "--ignore-eos"]
    assert main(argv) == 0

    turns = _split_at_prompts(stdout.writes)
    assert len(turns) == 4, turns  # two answered prompts, a third one left with Ctrl-C
    assert capsys.readouterr().err.count("[stopped]") == 1
    first, second = turns[1], turns[2]
    assert len(first) < len(second) / 4, (first, second)  # cut short, then a full answer
    deadline = time.monotonic() + 30
    while (stats := engine.stats()).running_rows and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the engine's state, not waiting for a guess of time
    # The second answer ran its 400 tokens; the stopped one was cancelled on the server
    # instead of running its 400 too.
    assert 400 <= stats.generated_tokens - generated_before < 500, stats


def _split_at_prompts(writes: list[str]) -> list[str]:
    """The text between input()'s prompt writes (each prompt is one write of "> ")."""
    turns = [""]
    for text in writes:
        if text == "> ":
            turns.append("")
        else:
            turns[-1] += text
    return turns


def test_chat_goes_on_past_the_context_and_resets(
    server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tiny-llama has 512 positions: 200-token answers soon leave no room for the next
    one beside them, so the oldest turns are left out and the chat goes on. Piped input
    gets no "> " prompts on stdout."""
    sent: list[list[str]] = []
    generate_stream = AsyncClient.generate_stream

    def recording(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        sent.append([m.role for m in kwargs["messages"]])
        return generate_stream(self, *args, **kwargs)

    monkeypatch.setattr(AsyncClient, "generate_stream", recording)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nAgain\nMore\n/reset\nFresh\n"))
    argv = ["--target", server.target, "chat", "--model", "tiny-llama", "--system", "Be brief."]
    argv += ["--temperature", "0", "--max-new-tokens", "200", "--ignore-eos"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "error" not in captured.err, captured.err
    assert "> " not in captured.out
    assert "oldest turns to fit the model's context" in captured.err
    assert len(sent) == 4 and sent[0] == ["system", "user"]
    # Each turn kept the system message, started on a user turn and ended on the new one;
    # some left older turns out.
    for roles in sent:
        assert roles[:2] == ["system", "user"] and roles[-1] == "user"
    assert any(len(roles) < 2 * n + 2 for n, roles in enumerate(sent[:3]))
    assert "[the conversation starts over]" in captured.err
    assert sent[3] == ["system", "user"]


# --- options the server's messages point to --------------------------------------


def test_embed_truncate_is_the_option_the_error_names(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "fox " * 300  # past all-MiniLM-L6-v2's 256 tokens
    argv = ["--target", server.target, "embed", text, "--model", "minilm"]
    assert main(argv) == 1
    assert "set truncate to cut it" in capsys.readouterr().err
    [expected] = sdk(server, "embed", text, model="minilm", truncate=True)
    assert main([*argv, "--truncate", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["results"]
    assert row["values"] == pytest.approx(expected.values, abs=TINY_UNIT_ATOL)


def test_qa_and_fill_mask_take_the_sdk_options(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    question, context = "Where was Ada born?", "Ada Lovelace was born in London in 1815."
    options = {"top_k": 3, "max_answer_length": 2, "handle_impossible_answer": True}
    expected = sdk(server, "answer_question", question, context, model="tiny-qa", **options)
    argv = ["--target", server.target, "--json", "qa", "-q", question, "-c", context]
    argv += ["--model", "tiny-qa", "--top-k", "3", "--max-answer-length", "2"]
    assert main([*argv, "--handle-impossible-answer", "--doc-stride", "1"]) == 0
    answers = json.loads(capsys.readouterr().out)["results"]
    assert [(a["start"], a["end"]) for a in answers] == [(a.start, a.end) for a in expected]

    text, targets = "The cat sat on the [MASK].", ["the", "cat", "is"]
    [expected] = sdk(server, "fill_mask", text, model="tiny-fill-mask", targets=targets)
    argv = ["--target", server.target, "--json", "fill-mask", text, "--model", "tiny-fill-mask"]
    assert main([*argv, "--targets", "the, cat,is"]) == 0
    [result] = json.loads(capsys.readouterr().out)["results"]
    tokens = [c["token"] for c in result["masks"][0]["candidates"]]
    assert tokens == [c.token for c in expected.masks[0].candidates]
    assert len(tokens) == 3


# --- conventions -------------------------------------------------------------------


def test_dash_reads_standard_input(
    server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["I love this", "I hate this", "meh"]
    expected = sdk(server, "classify_text", texts, model="tiny-sentiment")
    monkeypatch.setattr("sys.stdin", io.StringIO("I love this\n\nI hate this\r\n"))
    argv = ["--target", server.target, "classify", "-", "meh", "--model", "tiny-sentiment"]
    assert main(argv) == 0  # one input per line, blank lines skipped, "-" where it stood
    out = capsys.readouterr().out
    assert out == "".join(
        f"{t}\n  {r.top.label}  {r.top.score:.4f}\n" for t, r in zip(texts, expected, strict=True)
    )

    # A single text (a question's context, a prompt) takes all of standard input.
    context = "Ada Lovelace was born in London.\nShe wrote the first program.\n"
    [answer] = sdk(server, "answer_question", "Who?", context[:-1], model="tiny-qa")
    monkeypatch.setattr("sys.stdin", io.StringIO(context))
    argv = ["--target", server.target, "--json", "qa", "-q", "Who?", "-c", "-"]
    assert main([*argv, "--model", "tiny-qa"]) == 0
    [row] = json.loads(capsys.readouterr().out)["results"]
    assert (row["start"], row["end"], row["text"]) == (answer.start, answer.end, answer.text)

    params = {"temperature": 0, "max_new_tokens": 4}
    expected = sdk(server, "generate", "Once upon\na time", model="tiny-gpt2", **params)
    monkeypatch.setattr("sys.stdin", io.StringIO("Once upon\na time\n"))
    argv = ["--target", server.target, "--json", "generate", "-", "--model", "tiny-gpt2"]
    assert main([*argv, "--temperature", "0", "--max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["text"] == expected.text

    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb\n"))
    assert main(["--target", server.target, "classify", "-", "-"]) == 2
    assert "standard input" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["--target", server.target, "classify", "-"]) == 2
    assert "standard input" in capsys.readouterr().err


def test_every_json_document_has_the_same_top_level_shape(
    server: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    t = ["--target", server.target, "--json"]
    commands = [
        ["classify", "hi", "--model", "tiny-sentiment"],
        ["zero-shot", "hi", "--labels", "a,b", "--model", "tiny-nli"],
        ["fill-mask", "a [MASK]", "--model", "tiny-fill-mask"],
        ["ner", "Ada in London", "--model", "tiny-ner"],
        ["qa", "-q", "Who?", "-c", "Ada.", "--model", "tiny-qa"],
        ["embed", "fox", "--model", "minilm"],
        ["generate", "Hi", "--model", "tiny-gpt2", "--max-new-tokens", "2"],
        ["models"],
        ["health"],
    ]
    for command in commands:
        assert main([*t, *command]) == 0, command
        data = json.loads(capsys.readouterr().out)
        assert set(data) == {"results", "request_id"}, (command, data)
        assert isinstance(data["results"], list) and data["results"], command
        if command[0] != "health":  # the health protocol carries no request id
            assert re.fullmatch(r"[0-9a-f]{32}", data["request_id"]), command

    monkeypatch.setattr("modelwire.cli.AsyncClient", FakeClient)
    assert main(["--json", "speak", "Hello", "-o", str(tmp_path / "hello.wav")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "results": [
            {
                "path": str(tmp_path / "hello.wav"),
                "sample_rate": 16000,
                "num_samples": 8000,
                "duration_s": 0.5,
                "format": "wav",
            }
        ],
        "request_id": "fake-id",
    }


def test_models_prints_a_header_row(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    [expected] = [m for m in sdk(server, "list_models") if m.name == "tiny-gpt2"]
    assert main(["--target", server.target, "models"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "TASK", "STATE", "DEFAULT"]
    [row] = [r for r in rows if r.split()[0] == "tiny-gpt2"]
    assert row.split()[:3] == ["tiny-gpt2", expected.task, expected.state]
    assert row.index(expected.task) == header.index("TASK")  # columns line up
    assert row.index(expected.state) == header.index("STATE")


def test_an_error_says_each_thing_once(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", server.target, "classify", "", "--model", "tiny-sentiment"]) == 1
    err = capsys.readouterr().err
    match = re.fullmatch(
        r"modelwire: error: INVALID_ARGUMENT: inputs\[0\]: must not be empty "
        r"\(request id [0-9a-f]{32}\)\n",
        err,
    )
    assert match, err


def test_field_violations_the_message_does_not_name_are_kept() -> None:
    from modelwire._cli_output import error_line
    from modelwire._errors import BadRequestError, FieldViolation

    code = grpc.StatusCode.INVALID_ARGUMENT
    violations = [FieldViolation("inputs[0]", "must not be empty"), FieldViolation("top_k", "≥ 1")]
    error = BadRequestError(
        "inputs[0]: must not be empty", request_id="r1", code=code, field_violations=violations
    )
    assert error_line(error) == (
        "INVALID_ARGUMENT: inputs[0]: must not be empty [top_k: ≥ 1] (request id r1)"
    )
    assert str(error) == "INVALID_ARGUMENT: inputs[0]: must not be empty (request id r1)"


def test_detect_prints_no_negative_zero(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modelwire.cli.AsyncClient", FakeClient)
    assert main(["detect", str(FakeClient.existing_file())]) == 0  # the fake reads no file
    assert capsys.readouterr().out == "cat          0.9000  box 0,0 11,5\n"


def test_transcribe_passes_the_chunk_length(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modelwire.cli.AsyncClient", FakeClient)
    assert main(["transcribe", str(FakeClient.existing_file()), "--chunk-length-s", "12.5"]) == 0
    assert FakeClient.calls["transcribe_audio"]["chunk_length_s"] == 12.5
    assert capsys.readouterr().out == "hello\n"


class FakeClient:
    """Stands in for AsyncClient where the session server has no such model: it keeps
    each call's arguments and answers as the SDK would."""

    calls: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FakeClient.calls = {}

    @staticmethod
    def existing_file() -> Path:
        """A file for commands that check their paths exist; the fake never reads it."""
        return Path(__file__)

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def detect_objects(self, images: Any, **kwargs: Any) -> Any:
        box = BoundingBox(xmin=-0.3, ymin=-0.2, xmax=10.6, ymax=5.4)
        return ResultList([Detections([DetectedObject("cat", 0.9, box)])], request_id="fake-id")

    async def transcribe_audio(self, clips: Any, **kwargs: Any) -> Any:
        self.calls["transcribe_audio"] = kwargs
        return ResultList([Transcription("hello", [])], request_id="fake-id")

    async def synthesize_speech(self, text: str, **kwargs: Any) -> Any:
        return Speech(b"", 16000, "wav", 8000, request_id="fake-id")
