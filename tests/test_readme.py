"""The README's code blocks, run as a reader would paste them, against a preset server.

Every fenced block is run or checked, so that the README cannot rot:
- ``python``: run. A block with top-level ``await`` runs inside ``async with
  AsyncClient(...) as client:`` (the tour's convention, said in the README); the
  others run as scripts. The server's address replaces ``127.0.0.1:50051``.
- ``bash``: run by bash with the SDK's ``modelwire`` on PATH, and a ``grpcurl`` that
  makes the same calls (tests/grpcurl.py; grpcurl is no Python package); the install
  and test commands must be the ones ``.ci/run`` runs.
- ``yaml``: parsed as a server config.
A block that needs what a test cannot have (Docker, a cluster, a hub model) says so in
an HTML comment just above it, ``<!-- not run by the tests: why -->``, and is then only
checked for syntax (Python: its calls bind to the SDK's signatures).
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image

from modelwire import AsyncClient
from modelwire_server.config import ServerConfig, parse_config
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, start_server

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCUMENTED_TARGET = "127.0.0.1:50051"
DOCUMENTED_HTTP = "127.0.0.1:8000"
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
    """Every model of the tiny preset (the README's tour touches every task), with the
    HTTP API on a free port."""
    config = ServerConfig(port=0, http_port=0, models=preset_configs("tiny"))
    running = start_server(config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the README's examples name, made up: images, clips, texts."""
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
    (here / "reviews.txt").write_text("Great food.\nSlow service.\n")
    return here


def _for_server(code: str, server: RunningServer) -> str:
    http = f"127.0.0.1:{server.server.http_port}"
    return code.replace(DOCUMENTED_TARGET, server.target).replace(DOCUMENTED_HTTP, http)


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


def _env(bin_dir: Path | None = None) -> dict[str, str]:
    dirs = [str(Path(sys.executable).parent)] + ([str(bin_dir)] if bin_dir else [])
    return {**os.environ, "PATH": ":".join([*dirs, os.environ.get("PATH", "")])}


@pytest.fixture(scope="module")
def grpcurl_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``grpcurl`` on PATH (grpcurl is no Python package): tests/grpcurl.py makes the
    same calls with the descriptors reflection serves and grpcurl's JSON mapping."""
    bin_dir = tmp_path_factory.mktemp("bin")
    script = bin_dir / "grpcurl"
    stand_in = Path(__file__).with_name("grpcurl.py")
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{stand_in}" "$@"\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("block", _blocks("bash", run=True))
def test_bash_blocks_run(
    block: Block, readme_server: RunningServer, workdir: Path, grpcurl_bin: Path
) -> None:
    code = _for_server(block.code, readme_server)
    if "python3 -m venv" in code:
        # The install and test commands: CI runs these very commands on a fresh clone.
        ci = (ROOT / ".ci" / "run").read_text()
        for line in code.splitlines():
            if line.strip() and not line.startswith("#"):
                for part in line.split(" && "):
                    assert part in ci, f"{block.id}: .ci/run does not run {part!r}"
        return
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + code],
        cwd=workdir,
        input="Hi there\n",  # what `modelwire chat` reads
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(grpcurl_bin),
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


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
