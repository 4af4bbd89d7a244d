"""A Reformer language model (its own cache kind) through a real server: served for
real with generate()'s greedy output, and a model whose warm-up cannot run end to end
fails at load with a sentence instead of loading READY and failing every call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelwire import AsyncClient
from modelwire_server import preset
from modelwire_server.config import ModelConfig, ServerConfig
from modelwire_server.engine import engine as engine_module
from modelwire_server.engine.adapter import CausalLMAdapter
from tests.conftest import RunningServer, one_torch_thread_fixture, start_server
from tests.reformer_model import tiny_reformer_model

one_thread = one_torch_thread_fixture()

# Short ones and ones past Reformer's chunk of 8 that it pads itself.
PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog and then",
    "Once upon a time there was a tiny model that wrote stories about the sea and ships",
]
NEW = 10


@pytest.fixture(scope="module")
def reformer_dir(preset_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(preset.ensure_model("tiny-gpt2"))
    path = tmp_path_factory.mktemp("tiny-reformer")
    tiny_reformer_model(len(tokenizer), tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _config(path: Path) -> ServerConfig:
    model = ModelConfig(name="tiny-reformer", task="text-generation", source=str(path))
    return ServerConfig(port=0, models=[model])


@pytest.fixture(scope="module")
def server(reformer_dir: Path) -> Iterator[RunningServer]:
    running = start_server(_config(reformer_dir))
    yield running
    running.stop()


def reference(path: Path, prompt: str) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)
    return out[0, ids.shape[1] :].tolist()


async def test_reformer_generates_what_generate_does(
    server: RunningServer, reformer_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(reformer_dir)
    assert any(len(tokenizer(p)["input_ids"]) % 8 for p in PROMPTS[1:])
    expected = [reference(reformer_dir, p) for p in PROMPTS]
    async with AsyncClient(server.target, timeout=120) as client:
        results = await asyncio.gather(
            *(
                client.generate(
                    p, model="tiny-reformer", temperature=0, max_new_tokens=NEW, ignore_eos=True
                )
                for p in PROMPTS
            )
        )
    for result, want in zip(results, expected, strict=True):
        assert [t.id for t in result.sequences[0].tokens] == want


def test_a_model_the_engine_cannot_drive_fails_at_load(
    reformer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Driven as a padded causal LM (as the engine once did), Reformer fails inside its
    chunk padding on any prompt past one chunk: the warm-up must meet that at load."""

    def causal(model: Any, device: torch.device) -> CausalLMAdapter:
        return CausalLMAdapter(model, device)

    monkeypatch.setattr(engine_module, "make_adapter", causal)
    running = start_server(_config(reformer_dir))
    try:
        entry = running.server.registry.entries["tiny-reformer"]
        assert entry.state.name == "FAILED", entry.failure
        assert "warm-up" in entry.failure and "cannot serve it" in entry.failure
        assert "Traceback" not in entry.failure
    finally:
        running.stop()
