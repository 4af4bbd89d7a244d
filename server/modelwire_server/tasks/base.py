"""The contract every task module follows.

A runner owns one loaded model. ``load`` reads weights (in a thread, off the event
loop), ``warmup`` runs one tiny input on the device worker, and the runner's typed
async methods (one per RPC it serves) are what the servicer calls with plain Python
values. One-shot runners put each input through a DynamicBatcher whose batch function
(``run_batch``: preprocess → forward → postprocess) runs on the device worker.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from modelwire_server.batcher import DynamicBatcher
from modelwire_server.config import ModelConfig
from modelwire_server.errors import InvalidArgument
from modelwire_server.prepack import packable, prepack_linears
from modelwire_server.quantize import quantize_linears
from modelwire_server.worker import DeviceWorker

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class TaskRunner(ABC):
    """One loaded model serving one task."""

    task: ClassVar[str]
    rpcs: ClassVar[tuple[str, ...]]

    def __init__(
        self, config: ModelConfig, device: torch.device, dtype: torch.dtype, worker: DeviceWorker
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.worker = worker
        self.model: Any = None
        # Linear layers that ``place`` quantized (the registry refuses a model asked to
        # be quantized that has none).
        self.quantized_layers = 0
        # Set by the registry: called (from any thread) with False and why when the
        # runner stops serving by itself (its device process died), True when it serves
        # again.
        self.availability: Callable[[bool, str], None] | None = None

    @abstractmethod
    def load(self) -> None:
        """Read the model (blocking; runs in a loader thread)."""

    @abstractmethod
    def warmup(self) -> None:
        """Run one small input (blocking; runs on the device worker)."""

    async def start(self) -> None:  # noqa: B027 - an optional hook
        """Start loop-side machinery (batchers, engines) once loaded."""

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Stop loop-side machinery; in-flight calls end."""

    def discard(self) -> None:  # noqa: B027 - an optional hook
        """Free what ``load`` took outside this process (blocking), for a model that
        loaded but will not be served (its warm-up or a check failed)."""

    @property
    def architecture(self) -> str:
        archs = getattr(getattr(self.model, "config", None), "architectures", None)
        return (archs or [type(self.model).__name__])[0]

    @property
    def context_length(self) -> int | None:
        return None

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Arguments every from_pretrained call of this model shares."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.config.trust_remote_code}
        if self.config.revision:
            kwargs["revision"] = self.config.revision
        return kwargs

    def placement_kwargs(self) -> dict[str, Any]:
        """The model's own from_pretrained arguments: with ``device_map``, accelerate
        spreads its weights at load, in their dtype (offloaded ones under the cache)."""
        device_map = self.config.device_map
        if device_map is None:
            return {}
        kwargs: dict[str, Any] = {"device_map": device_map, "dtype": self.dtype}
        if isinstance(device_map, str) or "disk" in device_map.values():
            root = os.environ.get("MODELWIRE_CACHE") or Path.home() / ".cache" / "modelwire"
            kwargs["offload_folder"] = str(Path(root) / "offload" / self.config.name)
        return kwargs

    def place(self, model: Any) -> Any:
        """Move a loaded model to its device and dtype, in inference mode, then make its
        linear layers fast on the CPU: quantized with ``quantization``; else packed for
        oneDNN in bfloat16 or float16 always, and in float32 with ``cpu_prepack``. A
        model spread by ``device_map`` stays where accelerate put it."""
        if self.config.device_map is not None:
            gpus = [d for d in spread_over(model) if d.startswith("cuda")]
            if len(gpus) > 1:
                raise ValueError(
                    f"device_map spread the model over {', '.join(gpus)}, but the generation "
                    "engine keeps a model's KV cache on one GPU for now: map it to one GPU "
                    "plus cpu or disk"
                )
            return model.eval()
        model = model.to(device=self.device, dtype=self.dtype).eval()
        name = self.config.name
        if self.config.quantization != "none":
            replaced, left = quantize_linears(model, self.config.quantization)
            self.quantized_layers += replaced
            log.info(
                "%s: %d linear layers quantized to %s, %d left in %s (a shape the kernel "
                "does not take)",
                name,
                replaced,
                self.config.quantization,
                left,
                self.dtype,
            )
        elif self.device.type == "cpu" and self.dtype != torch.float32:
            if packable(self.dtype):
                packed = prepack_linears(model)
                log.info("%s: %d %s linear layers packed for oneDNN", name, packed, self.dtype)
        elif self.config.cpu_prepack:
            if self.device.type == "cpu" and self.dtype == torch.float32:
                packed = prepack_linears(model)
                log.info("%s: %d linear layers packed for oneDNN", self.config.name, packed)
            else:
                log.warning(
                    "%s: cpu_prepack applies to float32 on the CPU, not %s %s; left as is",
                    self.config.name,
                    self.device,
                    self.dtype,
                )
        return model


def spread_over(model: Any) -> list[str]:
    """The devices a ``device_map`` put a model's modules on ("cuda:N" for a GPU index);
    offloaded modules are on "cpu" or "disk" and run on the first GPU (or the CPU)."""
    placed = getattr(model, "hf_device_map", None) or {}
    return sorted({f"cuda:{d}" if isinstance(d, int) else str(d) for d in placed.values()})


class BatchedTask(TaskRunner, Generic[ItemT, ResultT]):
    """A one-shot task whose inputs from concurrent requests share forward passes."""

    batcher: DynamicBatcher[ItemT, ResultT]

    @abstractmethod
    def run_batch(self, items: list[ItemT]) -> Sequence[ResultT | BaseException]:
        """Preprocess, forward and postprocess a batch (on the device worker)."""

    async def start(self) -> None:
        self.batcher = DynamicBatcher(
            self.worker,
            self.run_batch,
            max_batch_size=self.config.max_batch_size,
            max_wait_ms=self.config.max_wait_ms,
            max_queue=self.config.max_queue,
            max_batch_cost=self.config.max_batch_tokens,
            cost=self.item_cost,
            name=self.config.name,
        )

    def item_cost(self, item: ItemT) -> int:
        """About how many tokens ``item`` adds to a forward pass, known before it is
        tokenized, so that one batch holds the worker for about one pass of at most
        ``max_batch_tokens``. 1 where batches are bounded by ``max_batch_size`` alone."""
        return 1

    async def close(self) -> None:
        await self.batcher.close()

    def warmup(self) -> None:
        results = self.run_batch([self.warmup_item()])
        if isinstance(results[0], BaseException):
            raise results[0]

    @abstractmethod
    def warmup_item(self) -> ItemT:
        """A small valid input."""


def check_text_inputs(inputs: Sequence[str], config: ModelConfig, field: str = "inputs") -> None:
    """The per-request limits every text task shares."""
    if not inputs:
        raise InvalidArgument(field, "must hold at least one input")
    if len(inputs) > config.max_inputs:
        raise InvalidArgument(
            field, f"has {len(inputs)} inputs; this model takes at most {config.max_inputs}"
        )
    for i, text in enumerate(inputs):
        if not text.strip():
            raise InvalidArgument(f"{field}[{i}]", "must not be empty")
        if len(text) > config.max_input_chars:
            raise InvalidArgument(
                f"{field}[{i}]",
                f"has {len(text)} characters; the limit is {config.max_input_chars}",
            )


def estimated_tokens(chars: int, max_length: int | None) -> int:
    """A text's tokens before it is tokenized, for batch costs: about one per character
    at most (plus special tokens), and no more than the window it is cut to."""
    tokens = chars + 2
    return tokens if max_length is None else min(tokens, max_length)


def encoder_max_length(tokenizer: Any, model_config: Any) -> int | None:
    """The longest input an encoder takes: the tokenizer's limit or its position table."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:
        limits.append(tok_max)
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models reserve padding_idx + 1 positions.
        offset = 2 if getattr(model_config, "model_type", "") in ("roberta", "xlm-roberta") else 0
        limits.append(positions - offset)
    return min(limits) if limits else None


def input_token_limit(config: ModelConfig, tokenizer: Any, model_config: Any, fallback: int) -> int:
    """The most tokens one input may have: the config's ``max_input_tokens``, else the
    model's own limit (``encoder_max_length``), else ``fallback`` for models that set
    none, whose memory would otherwise grow with whatever length a caller sends."""
    if config.max_input_tokens is not None:
        return config.max_input_tokens
    return encoder_max_length(tokenizer, model_config) or fallback


def check_input_tokens(lengths: Sequence[int], limit: int, field: str = "inputs") -> None:
    for i, length in enumerate(lengths):
        if length > limit:
            raise InvalidArgument(
                f"{field}[{i}]", f"is {length} tokens; this model takes at most {limit}"
            )


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
