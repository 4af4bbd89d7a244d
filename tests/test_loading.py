"""Model loading holds one process-wide lock: transformers' from_pretrained swaps
process-wide functions (``PreTrainedModel.tie_weights``, torch's init functions) while it
loads, so two loads at once in two threads can leave them swapped for good."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelwire_server import preset
from modelwire_server import registry as registry_module
from modelwire_server.config import ModelConfig
from modelwire_server.registry import LOAD_LOCK, ModelState, Registry
from modelwire_server.worker import WorkerPool


def held_elsewhere() -> bool:
    """Whether some other thread holds LOAD_LOCK now."""
    seen: list[bool] = []

    def probe() -> None:
        got = LOAD_LOCK.acquire(blocking=False)
        if got:
            LOAD_LOCK.release()
        seen.append(not got)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return seen[0]


async def test_the_registry_loads_and_prepares_under_the_lock(
    preset_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, bool] = {}
    real_class = registry_module.tasks.runner_class("text-generation")
    assert real_class is not None

    class Probe(real_class):  # type: ignore[misc,valid-type]
        def load(self) -> None:
            seen["load"] = held_elsewhere()
            super().load()

    monkeypatch.setattr(registry_module.tasks, "runner_class", lambda task: Probe)

    def prepare(config: ModelConfig) -> None:
        seen["prepare"] = held_elsewhere()

    source = str(preset.ensure_model("tiny-gpt2"))
    config = ModelConfig(name="gpt2", task="text-generation", source=source, device="cpu")
    workers = WorkerPool()
    registry = Registry([config], workers, prepare_source=prepare)
    try:
        await registry.load_all()
        entry = registry.entries["gpt2"]
        assert entry.state is ModelState.READY, entry.failure
        assert seen == {"load": True, "prepare": True}
        # Loaded whole: the LM head is the tied embedding, not a fresh random matrix.
        model = entry.runner.model  # type: ignore[union-attr]
        reference = AutoModelForCausalLM.from_pretrained(config.source)
        assert torch.equal(model.get_output_embeddings().weight, reference.lm_head.weight)
    finally:
        await registry.close()
        workers.close()
