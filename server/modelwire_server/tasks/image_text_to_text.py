"""image-text-to-text: chat with images (LLaVA-style models) behind the generation engine.

A request's image parts are decoded with the media limits of ``media.py``, the chat is
rendered with the processor's chat template (an image placeholder where the template
puts each image), and the processor expands each placeholder into the image's feature
tokens and makes its pixel values. The engine gets the expanded prompt ids and the
pixel values as the request's ``extras``; its causal adapter passes them to the
model's prefill (the model scatters the image features into the placeholder
positions) and decodes plain tokens after that, so image requests stream, stop and
batch exactly like text ones, and share decode steps with them.

All of it runs in the servicer's thread (``asyncio.to_thread``), never on the event
loop or the device worker. Raw prompts and text-only chats work too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from modelwire_server import errors
from modelwire_server.engine.types import GenerationRequest
from modelwire_server.engine_client import EngineDriver
from modelwire_server.media import MediaLimits, _reason, decode_named_images
from modelwire_server.tasks.text_generation import ChatTurn, TextGenerationTask, Tokenized

if TYPE_CHECKING:
    from PIL import Image

# What of a processor's output goes to the model beside the tokens: per-image inputs,
# concatenated across the rows of a prefill along their first axis.
IMAGE_INPUTS = ("pixel_values", "image_sizes")


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered chat: its text (one placeholder per image), whether the tokenizer adds
    its special tokens to it, the expanded prompt ids and the model's image inputs."""

    text: str
    add_special_tokens: bool
    ids: list[int]
    extras: dict[str, torch.Tensor] | None


class ImageTextToTextTask(TextGenerationTask):
    task = "image-text-to-text"

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.processor = AutoProcessor.from_pretrained(source, **kwargs)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError(
                f"{type(model).__name__} is an encoder-decoder; image-text-to-text serves "
                "decoder-only (LLaVA-style) models"
            )
        self.model = self.place(model)
        self.limits = MediaLimits.of(self.config)
        self.image_token: str = self.processor.image_token
        self.image_token_id = int(self.processor.image_token_id)
        self.placeholder_ids = frozenset([self.image_token_id])
        self.engine = self.make_engine()
        self.driver = EngineDriver(self.engine, self.worker, self.config.name)

    def warmup(self) -> None:
        """Text as the base does, then one token from an image prompt (vision tower too)."""
        super().warmup()
        from PIL import Image

        out = self.processor(
            text=[f"{self.image_token} Hello"],
            images=[Image.new("RGB", (8, 8))],
            return_tensors="pt",
        )
        request = GenerationRequest(
            prompt_ids=out["input_ids"][0].tolist(),
            extras={key: out[key] for key in IMAGE_INPUTS if out.get(key) is not None},
        )
        self.run_inline(request, max_new_tokens=1)

    # -- prompts -----------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = super().encode_prompt(prompt)
        if self.image_token_id in ids:
            # Its features would be missing: images come only as message parts.
            raise errors.InvalidArgument(
                "prompt",
                f"contains the image placeholder {self.image_token!r}; send images as "
                "image parts of chat messages",
            )
        return ids

    def render_chat(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool) -> str:
        template = getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )
        if template is None:
            raise errors.InvalidArgument(
                "messages", f"model {self.config.name!r} has no chat template; send a prompt"
            )
        messages = []
        for i, turn in enumerate(turns):
            if not turn.role:
                raise errors.InvalidArgument(f"messages[{i}].role", "must not be empty")
            content: list[dict[str, str]] = []
            for j, part in enumerate(turn.parts):
                if isinstance(part, bytes):
                    content.append({"type": "image"})
                elif self.image_token in part:
                    raise errors.InvalidArgument(
                        f"messages[{i}].content[{j}].text",
                        f"contains the image placeholder {self.image_token!r}; send images "
                        "as image parts",
                    )
                else:
                    content.append({"type": "text", "text": part})
            messages.append({"role": turn.role, "content": content})
        try:
            return self.processor.apply_chat_template(
                messages,
                chat_template=template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        except Exception as exc:  # a template may reject roles or orderings
            raise errors.InvalidArgument(
                "messages", f"the chat template refused them: {_reason(exc)}"
            ) from None

    def chat_prompt(
        self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True
    ) -> ChatPrompt:
        """Decode the images, render the chat, run the processor (in the caller's thread)."""
        images = self._decode_images(turns)
        text = self.render_chat(turns, add_generation_prompt=add_generation_prompt)
        placed = text.count(self.image_token)
        if placed != len(images):
            raise errors.InvalidArgument(
                "messages",
                f"the chat template placed {placed} image placeholders for {len(images)} "
                "images (it may not take images in every role)",
            )
        # As processor.apply_chat_template(tokenize=True) does: a template that writes
        # the BOS itself gets no second one from the tokenizer.
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        if not images:
            ids = list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])
            return ChatPrompt(text, add_special, ids, None)
        try:
            out = self.processor(
                text=[text],
                images=[image for _, image in images],
                add_special_tokens=add_special,
                return_tensors="pt",
            )
        except Exception as exc:
            raise self._image_error(images, exc) from None
        ids = out["input_ids"][0].tolist()
        extras = {key: out[key] for key in IMAGE_INPUTS if out.get(key) is not None}
        return ChatPrompt(text, add_special, ids, extras)

    def encode_chat(self, turns: Sequence[ChatTurn]) -> list[int]:
        """Text-only chats; with images, ``chat_prompt`` also gives the pixel values."""
        prompt = self.chat_prompt(turns)
        if prompt.extras is not None:
            raise errors.InvalidArgument("messages", "image parts need chat_prompt")
        return prompt.ids

    def prompt_inputs(
        self, turns: Sequence[ChatTurn]
    ) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        prompt = self.chat_prompt(turns)
        return prompt.ids, prompt.extras

    def _decode_images(self, turns: Sequence[ChatTurn]) -> list[tuple[str, Image.Image]]:
        fields = [
            (f"messages[{i}].content[{j}].image", part)
            for i, turn in enumerate(turns)
            for j, part in enumerate(turn.parts)
            if isinstance(part, bytes)
        ]
        if len(fields) > self.limits.max_inputs:
            raise errors.InvalidArgument(
                "messages",
                f"hold {len(fields)} images; this model takes at most {self.limits.max_inputs}",
            )
        images = decode_named_images(fields, self.limits, "messages")
        return [(field, image) for (field, _), image in zip(fields, images, strict=True)]

    def _image_error(
        self, images: list[tuple[str, Image.Image]], exc: Exception
    ) -> errors.InvalidArgument:
        """The processor failed on the request: name the image it fails on alone, if any."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is not None:
            for field, image in images:
                try:
                    image_processor(images=[image], return_tensors="pt")
                except Exception as alone:
                    return errors.InvalidArgument(
                        field, f"cannot be prepared for this model: {_reason(alone)}"
                    )
        return errors.InvalidArgument(
            "messages", f"cannot be prepared for this model: {_reason(exc)}"
        )

    # -- Tokenize ----------------------------------------------------------------------

    def tokenize(
        self,
        text: str | None,
        turns: Sequence[ChatTurn] | None,
        *,
        add_special_tokens: bool,
        add_generation_prompt: bool,
    ) -> Tokenized:
        """A chat tokenizes to the ids Generate would prefill: each image placeholder
        expanded into its feature tokens, all of which carry the placeholder's offsets
        in ``text`` (the rendered chat, one placeholder per image)."""
        if turns is None:
            return super().tokenize(
                text,
                None,
                add_special_tokens=add_special_tokens,
                add_generation_prompt=add_generation_prompt,
            )
        prompt = self.chat_prompt(turns, add_generation_prompt=add_generation_prompt)
        encoded = self.tokenizer(
            prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True
        )
        offsets = [(int(s), int(e)) for s, e in encoded["offset_mapping"]]
        return Tokenized(
            ids=prompt.ids,
            tokens=self.tokenizer.convert_ids_to_tokens(prompt.ids),
            offsets=expand_offsets(
                list(encoded["input_ids"]), offsets, prompt.ids, self.image_token_id
            ),
            text=prompt.text,
        )


def expand_offsets(
    rendered: list[int], offsets: list[tuple[int, int]], expanded: list[int], placeholder: int
) -> list[tuple[int, int]]:
    """Offsets for ``expanded``: ``rendered`` with each run of placeholder tokens grown
    into a longer run (split evenly among the run's placeholders). Where the two do not
    line up otherwise, every offset is (0, 0)."""
    out: list[tuple[int, int]] = []
    p = k = 0
    while p < len(rendered) and k < len(expanded):
        if rendered[p] != placeholder:
            if expanded[k] != rendered[p]:
                break
            out.append(offsets[p])
            p, k = p + 1, k + 1
            continue
        q, r = p, k
        while q < len(rendered) and rendered[q] == placeholder:
            q += 1
        while r < len(expanded) and expanded[r] == placeholder:
            r += 1
        per, extra = divmod(r - k, q - p)
        for n in range(q - p):
            out += [offsets[p + n]] * (per + (extra if n == q - p - 1 else 0))
        p, k = q, r
    if p != len(rendered) or k != len(expanded) or len(out) != len(expanded):
        return [(0, 0)] * len(expanded)
    return out


__all__ = ["ChatPrompt", "ImageTextToTextTask", "expand_offsets"]
