"""The model-facing side of the engine: prefill and decode for one kind of model.

The engine loop only knows this small protocol. A causal LM is one adapter; an
encoder-decoder (encoder output computed at prefill) and an image-text-to-text model
(pixel values at prefill) are others, with the same loop around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from modelwire_server.engine.kvcache import GrowableLayer, PaddedCache, growable_cache


class BatchState(Protocol):
    """The per-row model state of the running batch (KV cache and masks)."""

    @property
    def rows(self) -> int: ...

    def select(self, index: torch.Tensor) -> None: ...

    def merge(self, other: Any) -> None: ...

    def rollback(self) -> None: ...

    def tokens_in_use(self) -> int: ...

    def slots(self) -> int: ...


@dataclass(slots=True)
class PrefillInput:
    """One prompt to prefill; ``extras`` carries model inputs such as pixel values, and
    ``decoder_ids`` an encoder-decoder's own decoder start (None: the adapter's)."""

    prompt_ids: list[int]
    want_prompt_logits: bool = False
    extras: dict[str, Any] | None = None
    decoder_ids: list[int] | None = None


@dataclass(slots=True)
class PrefillOutput:
    """``logits[i]`` is the next-token distribution after prompt ``i`` (float32, ``[N, V]``);
    ``prompt_logits[i]`` the logits at every prompt position, when asked."""

    logits: torch.Tensor
    state: BatchState
    prompt_logits: list[torch.Tensor | None]


class ModelAdapter(Protocol):
    vocab_size: int
    # The longest token sequence the decoder's positions allow (prompt included for a
    # causal LM, the decoder's own start tokens for an encoder-decoder), if bounded.
    max_context: int | None
    # The longest encoder input, for an encoder-decoder; None: bounded by max_context.
    max_prompt: int | None
    # The tokens an encoder-decoder's decoder starts from; None: the prompt continues.
    decoder_prefix: list[int] | None
    device: torch.device

    def prefill(self, inputs: list[PrefillInput]) -> PrefillOutput: ...

    def decode(self, state: BatchState, tokens: torch.Tensor) -> torch.Tensor:
        """Run one token per row (``tokens`` is ``[R]``), grow ``state``, return ``[R, V]``."""
        ...


def left_padded(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids left-padded to one width, their mask, and positions counting each
    row's real tokens from 0 (padding gets 0: it is masked out)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0)


def prompt_logits(logits: torch.Tensor, inputs: list[PrefillInput]) -> list[torch.Tensor | None]:
    """Each left-padded prompt's logits at its own positions, for the inputs that asked."""
    width = logits.shape[1]
    return [
        logits[row, width - len(item.prompt_ids) :, :].float() if item.want_prompt_logits else None
        for row, item in enumerate(inputs)
    ]


def prefill_in_groups(
    inputs: list[PrefillInput],
    groups: list[list[int]],
    prefill: Callable[[list[PrefillInput]], PrefillOutput],
    device: torch.device,
) -> PrefillOutput:
    """Prefill rows that cannot share a forward pass (``groups`` of input indices) one
    group at a time, and join the parts into one state in the callers' order."""
    if len(groups) == 1:
        return prefill(inputs)
    order = [index for group in groups for index in group]
    parts = [prefill([inputs[i] for i in group]) for group in groups]
    state = parts[0].state
    for part in parts[1:]:
        state.merge(part.state)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    state.select(inverse.to(device))
    logits = torch.cat([part.logits for part in parts])[inverse.to(device)]
    grouped = [logits for part in parts for logits in part.prompt_logits]
    return PrefillOutput(logits, state, [grouped[int(i)] for i in inverse])


class CausalState(PaddedCache):
    """A causal LM's batch state is just its padded self-attention cache."""

    def slots(self) -> int:
        return self.rows * self.width


def model_context_length(config: Any) -> int | None:
    """The longest sequence the model's positions allow, where the config says."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class CausalLMAdapter:
    """Decoder-only models (GPT-2, Llama, ...) with a ``DynamicCache``.

    Image-text-to-text models of the LLaVA kind are causal LMs too: a prompt's
    ``extras`` (``pixel_values``, one image per item along axis 0) go into the prefill
    forward pass beside its tokens, and the model puts the image features in place of
    the prompt's image placeholder tokens, in row order; so the extras of a prefill's
    rows are concatenated in row order, and rows without images add nothing. Rows whose
    extras cannot be concatenated (images of different sizes) prefill separately and
    join as one state. Decode steps are plain tokens.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str) -> None:
        self.model = model
        self.device = torch.device(device)
        config = model.config.get_text_config(decoder=True)
        self.vocab_size = int(config.vocab_size)
        self.max_context = model_context_length(model.config)
        self.max_prompt: int | None = None
        self.decoder_prefix: list[int] | None = None
        # Padding is masked out, but a multimodal model finds its image placeholders by
        # token id before it looks at the mask: padding must never be one.
        placeholders = {
            getattr(model.config, name, None) for name in ("image_token_id", "image_token_index")
        }
        self.pad_id = next(i for i in range(len(placeholders) + 1) if i not in placeholders)
        self._decode_mask = decode_mask_kind(config)

    @torch.inference_mode()
    def prefill(self, inputs: list[PrefillInput]) -> PrefillOutput:
        return prefill_in_groups(inputs, _extras_groups(inputs), self._prefill, self.device)

    def _prefill(self, inputs: list[PrefillInput]) -> PrefillOutput:
        ids, mask, positions = left_padded([i.prompt_ids for i in inputs], self.pad_id, self.device)
        want_all = any(i.want_prompt_logits for i in inputs)
        cache = growable_cache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if want_all else 1,
            **self._extras(inputs),
        )
        logits = out.logits[:, -1, :].float()
        return PrefillOutput(logits, CausalState(cache, mask), prompt_logits(out.logits, inputs))

    # ---- one-row prefill in parts: prefix-cache hits and chunked prefill ----------

    def state_from_kv(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> CausalState:
        """A one-row state holding ``kv`` (per layer ``[1, H, L, D]`` keys and values, a
        prompt's first ``L`` tokens, no padding), for ``extend`` to continue."""
        cache = growable_cache()
        for keys, values in kv:
            layer = GrowableLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            cache.layers.append(layer)
        width = int(kv[0][0].shape[-2])
        mask = torch.ones((1, width), dtype=torch.long, device=self.device)
        return CausalState(cache, mask)

    @torch.inference_mode()
    def extend(self, state: CausalState | None, ids: list[int]) -> tuple[torch.Tensor, CausalState]:
        """Run the next ``ids`` of one unpadded row's prompt on top of ``state`` (None:
        from the prompt's start), positions counting on from the tokens it holds;
        return the logits after the last of them (``[1, V]``, float32) and the state
        grown by ``len(ids)`` columns. Chunked prefill and prefix-cache hits both call
        it, so a prompt's KV is the same whichever way it was put together."""
        if state is None:
            state = CausalState(growable_cache(), torch.ones((1, 0), dtype=torch.long))
            state.mask = state.mask.to(self.device)
        assert state.rows == 1
        start, count = state.width, len(ids)
        mask = torch.ones((1, start + count), dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + count, device=self.device).view(1, -1)
        out = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            attention_mask=mask,
            position_ids=positions,
            cache=state.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state.mask = mask
        return out.logits[:, -1, :].float(), state

    def _extras(self, inputs: list[PrefillInput]) -> dict[str, torch.Tensor]:
        """The rows' extras concatenated in row order, on the model's device and dtype."""
        present = [item.extras for item in inputs if item.extras]
        if not present:
            return {}
        dtype = getattr(self.model, "dtype", None)
        joined = {}
        for key in present[0]:
            value = torch.cat([extras[key] for extras in present]).to(self.device)
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
            joined[key] = value
        return joined

    @torch.inference_mode()
    def decode(self, state: BatchState, tokens: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, CausalState)
        step_mask = state.mask_for_step()
        out = self.model(
            input_ids=tokens.to(self.device).view(-1, 1),
            attention_mask=decode_attention_mask(self._decode_mask, state, step_mask),
            position_ids=state.positions().view(-1, 1),
            cache=state.cache,
            use_cache=True,
        )
        state.commit_step(step_mask)
        return out.logits[:, -1, :].float()


MaskKind = Literal["2d", "sdpa", "none"]


def decode_mask_kind(config: Any) -> MaskKind:
    """How a decode step passes its mask to this decoder (``config``: its text config).

    A one-token step attends to every real column of its row, so a mask only has to
    say which columns are padding: with none, ``"none"`` passes no mask at all (as
    ``generate`` ends up doing; transformers then skips building one, and on CUDA, sdpa
    can take its grouped-query path); with padding, an sdpa model gets the boolean
    ``[rows, 1, 1, columns]`` mask sdpa takes (``"sdpa"``), which transformers uses as
    it is instead of rebuilding it from the 2D mask every step. A sliding-window model
    keeps the 2D mask (``"2d"``): transformers cuts the window out of it.
    """
    layer_types = getattr(config, "layer_types", None) or ()
    if getattr(config, "sliding_window", None) or any("sliding" in str(t) for t in layer_types):
        return "2d"
    return "sdpa" if getattr(config, "_attn_implementation", None) == "sdpa" else "none"


def decode_attention_mask(kind: MaskKind, state: PaddedCache, step_mask: torch.Tensor) -> Any:
    """The ``attention_mask`` argument of a decode step (see ``decode_mask_kind``)."""
    if kind == "2d":
        return step_mask
    if not state.padded():
        return None
    if kind == "sdpa":
        return step_mask.bool()[:, None, None, :]
    return step_mask


def _extras_signature(extras: dict[str, Any]) -> tuple[object, ...]:
    return tuple(sorted((key, tuple(value.shape[1:])) for key, value in extras.items()))


def _extras_groups(inputs: list[PrefillInput]) -> list[list[int]]:
    """Row indices by what their extras concatenate with: one group when all of them do
    (the usual case: rows without extras join any group)."""
    groups: dict[tuple[object, ...], list[int]] = {}
    plain: list[int] = []
    for index, item in enumerate(inputs):
        if item.extras:
            groups.setdefault(_extras_signature(item.extras), []).append(index)
        else:
            plain.append(index)
    if not groups:
        return [plain]
    ordered = list(groups.values())
    ordered[0] = sorted(ordered[0] + plain)
    return ordered
