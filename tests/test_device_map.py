"""``device_map``: a text-generation model bigger than one device, spread by accelerate.

On this CPU-only machine the spread is CPU and disk (offloaded weights live on the meta
device and are loaded per forward pass by accelerate's hooks): the same code path as
several GPUs, without the GPUs. The server's greedy output must equal ``generate()``
on the whole model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from modelwire import AsyncClient
from modelwire_server import preset
from modelwire_server.config import ConfigError, parse_config
from modelwire_server.tasks.base import spread_over
from modelwire_server.tasks.text_generation import TextGenerationTask
from tests.conftest import RunningServer, preset_server, preset_variant

# tiny-llama's modules, half in memory and half offloaded to disk.
SPLIT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}


def _model(**fields: object) -> dict[str, object]:
    return {"name": "m", "task": "text-generation", "source": "/models/m", **fields}


@pytest.mark.parametrize("device_map", ["auto", "balanced", "sequential", SPLIT])
def test_config_takes_a_strategy_or_a_module_mapping(device_map: object) -> None:
    [model] = parse_config({"models": [_model(device_map=device_map)]}).models
    assert model.device_map == device_map


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"device_map": "everywhere"}, r"models\[0\]\.device_map 'everywhere' must be one of"),
        ({"device_map": {"lm_head": "gpu"}}, r"device_map\['lm_head'\] 'gpu' must be cpu"),
        ({"device_map": {"lm_head": 0}}, r"maps module names to device names"),
        ({"device_map": []}, r"must be a strategy or a mapping"),
        ({"device_map": "auto", "task": "fill-mask"}, r"text-generation models only"),
        ({"device_map": {"a": "cuda:0", "b": "cuda:1"}}, r"uses cuda:0, cuda:1: one GPU at"),
    ],
)
def test_config_refuses_a_bad_device_map_naming_it(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [_model(**fields)]})


@pytest.fixture(scope="module")
def split_server(preset_cache: Path) -> Iterator[RunningServer]:
    split = preset_variant("split", "text-generation", "tiny-llama", device_map=SPLIT)
    with preset_server(set(), extra=[split]) as running:
        yield running


async def test_a_model_spread_over_cpu_and_disk_generates_as_the_whole_model(
    split_server: RunningServer, preset_cache: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = preset.ensure_model("tiny-llama")  # the directory the server loaded
    entry = split_server.server.registry.entries["split"]
    placed = entry.runner.model.hf_device_map
    assert set(placed.values()) == {"cpu", "disk"}
    assert {p.device.type for p in entry.runner.model.parameters()} == {"cpu", "meta"}

    prompt = "The quick brown fox"
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = reference.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    async with AsyncClient(split_server.target) as client:
        result = await client.generate(
            prompt, model="split", max_new_tokens=12, min_new_tokens=12, temperature=0
        )
        [info] = [m for m in await client.list_models() if m.name == "split"]
    [sequence] = result.sequences
    assert [t.id for t in sequence.tokens] == expected[0, ids.shape[1] :].tolist()
    assert info.device == "cpu,disk"


def test_a_spread_over_several_gpus_is_refused_at_load() -> None:
    """A strategy is only resolved at load: a spread over two GPUs fails that model
    with a sentence (the engine's KV cache lives on one device) instead of failing
    calls later; one GPU plus offloaded modules is allowed."""
    config = parse_config({"models": [_model(device_map="auto")]}).models[0]
    runner = TextGenerationTask(config, torch.device("cpu"), torch.float32, worker=None)
    two_gpus = torch.nn.Linear(2, 2)
    two_gpus.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1, "lm_head": "cpu"}
    with pytest.raises(ValueError, match="over cuda:0, cuda:1, but the generation engine"):
        runner.place(two_gpus)
    one_gpu = torch.nn.Linear(2, 2).train()
    one_gpu.hf_device_map = {"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}
    assert runner.place(one_gpu) is one_gpu and not one_gpu.training
    assert spread_over(one_gpu) == ["cpu", "cuda:0", "disk"]
