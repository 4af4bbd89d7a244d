"""A tiny random Reformer language model (local + LSH attention), built offline."""

from __future__ import annotations

import torch
from transformers import ReformerConfig, ReformerModelWithLMHead


def tiny_reformer_model(vocab_size: int, eos_token_id: int) -> ReformerModelWithLMHead:
    """Chunks of 8 tokens and 128 positions: prompts past 8 tokens that are not a
    multiple of 8 take Reformer's own padding path."""
    torch.manual_seed(0)
    config = ReformerConfig(
        vocab_size=vocab_size,
        attn_layers=["local", "lsh"],
        hidden_size=32,
        feed_forward_size=64,
        num_attention_heads=2,
        attention_head_size=16,
        axial_pos_embds=True,
        axial_pos_shape=[8, 16],
        axial_pos_embds_dim=[16, 16],
        max_position_embeddings=128,
        local_attn_chunk_length=8,
        lsh_attn_chunk_length=8,
        num_buckets=4,
        num_hashes=1,
        hash_seed=0,  # LSH rotations are random per forward pass unless seeded
        initializer_range=0.5,
        is_decoder=True,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return ReformerModelWithLMHead(config).eval()
