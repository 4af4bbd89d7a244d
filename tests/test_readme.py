"""The README's code blocks, run as a reader would paste them, against a preset server.

Every fenced block is run or checked, so that the README cannot rot:
- ``python``: run. A block with top-level ``await`` runs inside ``async with
  AsyncClient(...) as client:`` (the tour's convention, said in the README); the
  others run as scripts. The server's address replaces ``127.0.0.1:50051``.
- ``bash``: each command line runs through bash with the SDK's ``modelwire`` on PATH;
  ``grpcurl`` lines (grpcurl is no Python package) are done by the same calls through
  reflection's descriptors and the JSON mapping grpcurl uses; the install and test
  commands must be the ones ``.ci/run`` runs.
- ``yaml``: parsed as a server config.
A block that needs what a test cannot have (Docker, a cluster, a hub model) says so in
an HTML comment just above it, ``<!-- not run by the tests: why -->``, and is then only
checked for syntax (Python: its calls bind to the SDK's signatures).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf
import yaml
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from PIL import Image

from modelwire import AsyncClient
from modelwire.v1 import generate_pb2, inference_service_pb2, model_service_pb2  # noqa: F401
from modelwire_server import preset
from modelwire_server.config import parse_config
from tests.conftest import RunningServer, preset_server

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCUMENTED_TARGET = "127.0.0.1:50051"
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int
    not_run: str | None  # the reason given, for blocks that are only checked

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.language}"


def readme_blocks(text: str) -> list[Block]:
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[i])
        if opening is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        previous = lines[start - 1] if start else ""
        reason = NOT_RUN.search(previous)
        blocks.append(
            Block(opening[1], "\n".join(body) + "\n", start + 1, reason[1] if reason else None)
        )
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def _blocks(language: str, *, run: bool) -> list[Any]:
    chosen = [b for b in BLOCKS if b.language == language and (b.not_run is None) == run]
    return [pytest.param(b, id=b.id) for b in chosen]


def test_every_block_is_of_a_checked_language_and_not_run_blocks_say_why() -> None:
    assert BLOCKS, "no code blocks found in the README"
    for block in BLOCKS:
        assert block.language in {"python", "bash", "yaml"}, block.id
    commented = [m for m in NOT_RUN.finditer(README.read_text())]
    assert len(commented) == sum(b.not_run is not None for b in BLOCKS), (
        "a 'not run' comment that is not right above a block"
    )


# ------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def readme_server(preset_cache: Path) -> Iterator[RunningServer]:
    """Every model of the tiny preset: the README's tour touches every task."""
    with preset_server([m.name for m in preset.all_models()]) as running:
        yield running


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the README's examples name, made up: images, clips, an article."""
    here = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    for name in ("cat.png", "dog.jpg", "street.jpg"):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(here / name)
    t = np.arange(16_000 * 2) / 16_000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(here / "speech.wav", tone, 16_000)
    sf.write(here / "clip.flac", tone, 16_000)
    sf.write(here / "interview.flac", tone, 16_000)
    (here / "article.txt").write_text("The city council met on Tuesday. " * 20)
    return here


def _for_server(code: str, server: RunningServer) -> str:
    return code.replace(DOCUMENTED_TARGET, server.target)


# ------------------------------------------------------------------------ python


def _awaits_at_top_level(code: str) -> bool:
    try:
        compile(code, "README", "exec")
    except SyntaxError:
        compile(code, "README", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return True
    return False


RUN_IN_CLIENT = """
import ast, asyncio, sys
from modelwire import AsyncClient

async def main() -> None:
    code = open(sys.argv[1]).read()
    async with AsyncClient(sys.argv[2], timeout=120) as client:
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        result = eval(compile(code, "README", "exec", flags=flags), {"client": client})
        if result is not None:
            await result

asyncio.run(main())
"""


@pytest.mark.parametrize("block", _blocks("python", run=True))
def test_python_blocks_run(
    block: Block, readme_server: RunningServer, workdir: Path, tmp_path: Path
) -> None:
    code = _for_server(block.code, readme_server)
    script = tmp_path / "block.py"
    script.write_text(code)
    if _awaits_at_top_level(code):
        command = [sys.executable, "-c", RUN_IN_CLIENT, str(script), readme_server.target]
    else:
        command = [sys.executable, str(script)]
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=240, env=_env()
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


def _sdk_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "client"
        ):
            yield node


@pytest.mark.parametrize("block", _blocks("python", run=False))
def test_python_blocks_not_run_still_match_the_sdk(block: Block) -> None:
    tree = ast.parse(block.code)  # top-level await parses; only compiling refuses it
    for call in _sdk_calls(tree):
        method = getattr(AsyncClient, call.func.attr, None)  # type: ignore[attr-defined]
        assert method is not None, f"{block.id}: AsyncClient has no {call.func.attr}"  # type: ignore[attr-defined]
        signature = inspect.signature(method)
        args = [None] * len(call.args)
        kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
        signature.bind(None, *args, **kwargs)  # raises TypeError on a wrong argument


# ------------------------------------------------------------------------ bash


def _commands(code: str) -> list[str]:
    """Command lines, with continuation lines joined and comments dropped."""
    joined = code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(line)
    return commands


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize("block", _blocks("bash", run=True))
def test_bash_blocks_run(
    block: Block, readme_server: RunningServer, workdir: Path, tmp_path: Path
) -> None:
    commands = _commands(_for_server(block.code, readme_server))
    if any(c.startswith("python3 -m venv") for c in commands):
        # The install and test commands: CI runs these very commands on a fresh clone.
        ci = (ROOT / ".ci" / "run").read_text()
        for command in commands:
            for part in command.split(" && "):
                assert part in ci, f"{block.id}: .ci/run does not run {part!r}"
        return
    shell: list[str] = []
    for command in commands:
        if command.startswith("grpcurl "):
            asyncio.run(_grpcurl(shlex.split(command, comments=True)[1:]))
        else:
            shell.append(command)
    if shell:
        script = "set -euo pipefail\n" + "\n".join(shell) + "\n"
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=workdir,
            input="Hi there\n",
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(),
        )
        assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


async def _grpcurl(args: list[str]) -> None:
    """What ``grpcurl -plaintext [-d JSON] TARGET (list | describe SYMBOL | METHOD)`` does,
    with the descriptors the server's reflection serves."""
    body, rest = "{}", []
    i = 0
    while i < len(args):
        if args[i] == "-plaintext":
            i += 1
        elif args[i] == "-d":
            body, i = args[i + 1], i + 2
        else:
            assert not args[i].startswith("-"), f"grpcurl flag the test does not know: {args[i]}"
            rest.append(args[i])
            i += 1
    target, verb, *more = rest
    async with grpc.aio.insecure_channel(target) as channel:
        if verb in ("list", "describe"):
            request = reflection_pb2.ServerReflectionRequest(
                list_services="" if verb == "list" else None,
                file_containing_symbol=more[0] if verb == "describe" else None,
            )
            call = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            async for reply in call(iter([request])):
                assert not reply.HasField("error_response"), reply.error_response
                break
            return
        service_name, method_name = verb.rsplit("/", 1)
        pool = descriptor_pool.Default()
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        message = json_format.Parse(body, request_class())
        path = f"/{service_name}/{method_name}"
        kwargs = {
            "request_serializer": request_class.SerializeToString,
            "response_deserializer": response_class.FromString,
        }
        if method.server_streaming:
            replies = [r async for r in channel.unary_stream(path, **kwargs)(message)]
            assert replies
        else:
            await channel.unary_unary(path, **kwargs)(message)


@pytest.mark.parametrize("block", _blocks("bash", run=False))
def test_bash_blocks_not_run_still_parse(block: Block) -> None:
    done = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.id}: {done.stderr}"


# ------------------------------------------------------------------------ yaml


@pytest.mark.parametrize("block", [*_blocks("yaml", run=True), *_blocks("yaml", run=False)])
def test_yaml_blocks_are_valid_config(block: Block) -> None:
    raw = yaml.safe_load(io.StringIO(block.code))
    config = parse_config(raw, origin=block.id)  # refuses unknown keys and bad values
    assert isinstance(raw, dict) and config is not None
