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
from typing import Any

import numpy as np
import pytest

from modelwire import AsyncClient
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
    assert data["sequences"][0]["text"] == expected.text
    assert data["sequences"][0]["finish_reason"] == "length" and data["request_id"]


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
