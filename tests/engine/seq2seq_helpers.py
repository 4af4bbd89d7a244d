"""Tiny encoder-decoders of each decoder-position kind, and their ``generate`` references.

- T5: no position embedding, a relative attention bias (scaled up here, so a position
  mistake under left padding changes the output rather than hiding in noise);
- M2M100: sinusoidal positions counted from ``padding_idx + 1``, language tokens and a
  forced first token;
- BART: a learned position table with offset 2;
- Marian: a sinusoidal ``nn.Embedding`` indexed from 0, decoding from the pad token
  (its outputs stay repetitive, so it is checked on logits, not on token parity).

Random decoders tend to repeat the token they were just fed; each builder rescales a
few residual branches (as the preset's M2M100 does) so outputs vary with the input.
"""

from __future__ import annotations

from typing import Any

import torch
from engine_helpers import Bundle, _byte_fallback_backend
from tokenizers import processors
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

LANGUAGES = ["__en__", "__fr__", "__de__"]

SOURCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "Once upon a time there was a tiny model that wrote stories about the sea",
    "数据 模型 🙂 café",
    "def main():",
    "Streaming tokens from a model server is fun and fast.",
]


def seq2seq_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-fallback tokenizer as encoder-decoders use it: ``text </s>``, a pad
    token and M2M100-style language tokens."""
    # The pad id stays small: M2M100's sinusoidal table has a row for it.
    tok = _byte_fallback_backend(("<unk>", "<s>", "</s>", "<pad>"))
    tok.add_special_tokens(LANGUAGES)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=LANGUAGES,
    )


def _ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
    }


def tiny_t5() -> Bundle:
    tok = seq2seq_tokenizer()
    ids = _ids(tok)
    torch.manual_seed(0)
    config = T5Config(
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        initializer_factor=4.0,
        decoder_start_token_id=ids["pad_token_id"],
        **ids,
    )
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for block in model.decoder.block:
            block.layer[0].SelfAttention.o.weight.mul_(4.0)
        bias = model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias
        bias.weight.mul_(30.0)
    return _bundle("t5", model, tok, ids["pad_token_id"])


def tiny_m2m100() -> Bundle:
    tok = seq2seq_tokenizer()
    ids = _ids(tok)
    torch.manual_seed(0)
    config = M2M100Config(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=256,
        init_std=0.2,
        tie_word_embeddings=False,
        decoder_start_token_id=ids["eos_token_id"],
        **ids,
    )
    model = M2M100ForConditionalGeneration(config).eval()
    _shrink(model.model.decoder.layers, 0.3, 0.3)
    return _bundle("m2m100", model, tok, ids["eos_token_id"])


def tiny_bart() -> Bundle:
    tok = seq2seq_tokenizer()
    ids = _ids(tok)
    torch.manual_seed(0)
    config = BartConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
        init_std=0.2,
        tie_word_embeddings=False,
        decoder_start_token_id=ids["eos_token_id"],
        forced_eos_token_id=None,
        **ids,
    )
    model = BartForConditionalGeneration(config).eval()
    _shrink(model.model.decoder.layers, 0.1, 0.3)
    return _bundle("bart", model, tok, ids["eos_token_id"])


def tiny_marian() -> Bundle:
    tok = seq2seq_tokenizer()
    ids = _ids(tok)
    torch.manual_seed(0)
    config = MarianConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
        init_std=0.2,
        tie_word_embeddings=False,
        decoder_start_token_id=ids["pad_token_id"],
        decoder_vocab_size=ids["vocab_size"],
        forced_eos_token_id=None,  # Marian's default forces token 0 last; tests set their own
        **ids,
    )
    model = MarianMTModel(config).eval()
    _shrink(model.model.decoder.layers, 0.3, 0.3)
    return _bundle("marian", model, tok, ids["pad_token_id"])


def _shrink(layers: Any, cross_scale: float, ffn_scale: float) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.encoder_attn.out_proj.weight.mul_(cross_scale)
            layer.fc2.weight.mul_(ffn_scale)


def _bundle(name: str, model: Any, tok: PreTrainedTokenizerFast, start: int) -> Bundle:
    """The model's own generation_config is the bundle's, so ``generate`` and the engine
    read the same defaults."""
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return Bundle(name, model, tok, model.generation_config)


def reference(bundle: Bundle, prompt: list[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    """``generate``'s greedy output after the decoder start token, EOS kept out."""
    [tokens] = reference_beams(
        bundle, prompt, max_new_tokens, min_new_tokens=max_new_tokens, **kwargs
    )
    return tokens


def reference_beams(
    bundle: Bundle, prompt: list[int], max_new_tokens: int, **kwargs: Any
) -> list[list[int]]:
    """Every returned sequence after the decoder start token, cut after its EOS."""
    config = bundle.generation_config
    out = bundle.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        **kwargs,
    )
    eos = kwargs.get("eos_token_id", config.eos_token_id)
    rows = []
    for row in out[:, 1:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows
