"""Shared fixtures: small valid codec states and tiny random Hugging Face models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from carvq_gguf.codec.state import CarvqState, TrellisConfig
from carvq_gguf.codec import synthetic


def make_random_state(vocab_size: int = 96, embedding_dim: int = 64, levels: int = 2,
                      group_layout: str = "column", table_dim: int = 8,
                      hidden_dims: tuple[int, ...] = (32, 48), n_corrections: int = 3,
                      seed: int = 0, trellis: TrellisConfig | None = None, predicted: int = 0) -> CarvqState:
    """A small random CarvqState (codec.synthetic.random_state with the tests' defaults)."""
    return synthetic.random_state(vocab_size, embedding_dim, levels, group_layout, table_dim, hidden_dims, n_corrections,
                                  seed, trellis, predicted)


@pytest.fixture
def random_state() -> CarvqState:
    """A small random CarvqState with adaptor and correction rows."""
    return make_random_state()


def save_tiny_llama(path: Path, tie_word_embeddings: bool, vocab_size: int = 256, seed: int = 0) -> Path:
    """Save a tiny random llama model (and no tokenizer) with save_pretrained; returns path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tie_word_embeddings)
    LlamaForCausalLM(config).save_pretrained(path)
    return path
