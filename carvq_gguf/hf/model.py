"""Load a Hugging Face causal LM (model directory or GGUF file), reach its input embedding and swap
it for a CARVQ codec or another dense matrix."""

from __future__ import annotations

import contextlib
from pathlib import Path

import copy

import torch
from torch import nn

from ..codec.embedding import CarvqEmbedding
from ..codec.state import CarvqState
from ..errors import CarvqError


def load_causal_lm(source: str | Path, need_tokenizer: bool = False):
    """Load (model, tokenizer) from an HF model directory or a GGUF file, in float32, eval mode.

    A GGUF file is read through transformers' gguf_file= support (dequantized to float32).
    The tokenizer is None when the source has none (CarvqError instead if need_tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source)
    if not path.exists():
        raise CarvqError(f"model source {str(source)!r} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise CarvqError(f"model source {str(source)!r} is a file but not a .gguf file")
        kwargs = {"gguf_file": path.name}
        directory = str(path.parent)
    else:
        if not (path / "config.json").exists():
            raise CarvqError(f"model directory {str(source)!r} has no config.json")
        kwargs = {}
        directory = str(path)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        if need_tokenizer:
            raise CarvqError(f"cannot load a tokenizer from {str(source)!r}: {e}") from e
        tokenizer = None
    return model, tokenizer


@contextlib.contextmanager
def eval_mode(model):
    """model in eval mode for the block (no dropout: measurements and samples are repeatable),
    its own mode restored afterwards, on error too."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def embed_scale(model) -> float | torch.Tensor:
    """The factor the model's embedding module applies after the lookup (Gemma: sqrt(n)), else 1:
    whoever feeds inputs_embeds must apply it too."""
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    return 1.0 if scale is None else scale


def input_embedding_matrix(model) -> torch.Tensor:
    """A float32 copy of the model's input token-embedding matrix, [V, n]."""
    weight = model.get_input_embeddings().weight
    return weight.detach().to(torch.float32).clone()


def untie_output_head(model) -> None:
    """Give a tied output head its own copy of the weights, so replacing the input embedding
    leaves the head as it was."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return
    head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = []


class _ScaledInput(nn.Module):
    """Applies a model's embedding scale (e.g. Gemma's sqrt(n)) after a CARVQ lookup."""

    def __init__(self, inner: CarvqEmbedding, scale: torch.Tensor | float):
        super().__init__()
        self.inner = inner
        self.scale = scale

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(token_ids) * self.scale


def replace_input_embedding(model, state: CarvqState) -> nn.Module:
    """Make state the model's input embedding; a tied output head keeps the original weights.

    Returns the previous input-embedding module so callers can put it back with
    model.set_input_embeddings(previous).
    """
    previous = model.get_input_embeddings()
    if previous.weight.shape != (state.vocab_size, state.embedding_dim):
        raise CarvqError(f"codec is {state.vocab_size} x {state.embedding_dim} but the model's embedding is "
                         f"{tuple(previous.weight.shape)}")
    untie_output_head(model)
    module: nn.Module = CarvqEmbedding(state)
    scale = getattr(previous, "embed_scale", None)
    if scale is not None:
        module = _ScaledInput(module, scale)
    model.set_input_embeddings(module)
    return previous


def replace_input_matrix(model, matrix: torch.Tensor) -> nn.Module:
    """Make a dense matrix [V, n] the model's input embedding (same module type, so any embedding
    scale stays); a tied output head keeps the original weights. Returns the previous module."""
    previous = model.get_input_embeddings()
    if tuple(previous.weight.shape) != tuple(matrix.shape):
        raise CarvqError(f"matrix is {tuple(matrix.shape)} but the model's embedding is {tuple(previous.weight.shape)}")
    untie_output_head(model)
    weight = previous.weight
    previous.weight = None  # do not deep-copy the big matrix
    try:
        module = copy.deepcopy(previous)
    finally:
        previous.weight = weight
    module.weight = nn.Parameter(matrix.to(weight.dtype).clone(), requires_grad=False)
    model.set_input_embeddings(module)
    return previous
