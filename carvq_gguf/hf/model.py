"""Load a Hugging Face causal LM (model directory or GGUF file) and reach its input embedding."""

from __future__ import annotations

from pathlib import Path

import torch

from ..codec.state import CarvqError


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
