"""Token-row importance measured with the model in the loop: a diagonal Fisher of the embedding.

Frequency alone says how often a row is read, not how much an error in it costs. The mean
squared gradient of the next-token loss with respect to each embedding row, summed over the
calibration tokens, is the diagonal Fisher of that row: it grows with the row's frequency and
with how sensitive the model is to it. The weights returned here are frequency times a
clamped relative sensitivity, plus the same floor as calib.token_weights, so that rows absent
from the calibration text keep being fitted (unseen text must not break) and one odd row
cannot take the whole budget.

This needs a torch model (transformers-style: get_input_embeddings, inputs_embeds=), so it
belongs with the model layer, not with the codec maths.
"""

from __future__ import annotations

import torch

from ..codec.importance import DEFAULT_FLOOR
from ..errors import CarvqError

SENSITIVITY_CLAMP = (0.25, 4.0)  # relative sensitivity kept within 1/4x..4x of the mean


def fisher_row_scores(model, token_ids: torch.Tensor, window: int = 256, max_tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(fisher [V], counts [V]) over the first max_tokens calibration tokens, in windows.

    fisher[t] = sum over the occurrences of t of |d loss / d embedding|^2, with the loss the
    mean next-token cross entropy of its window. Deterministic: no sampling, no dropout.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.int64).flatten()[:max_tokens]
    if ids.numel() < 2:
        raise CarvqError("the calibration text needs at least 2 tokens to measure row importance")
    emb = model.get_input_embeddings().weight
    V = emb.shape[0]
    if int(ids.min()) < 0 or int(ids.max()) >= V:
        raise CarvqError(f"calibration token ids must lie in [0, {V})")
    fisher = torch.zeros(V, dtype=torch.float64)
    counts = torch.bincount(ids, minlength=V).to(torch.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, ids.numel() - 1, window):
            chunk = ids[start:start + window + 1]
            if chunk.numel() < 2:
                break
            inputs = chunk[:-1].unsqueeze(0)
            x = emb.detach()[inputs].clone().requires_grad_(True)
            logits = model(inputs_embeds=x).logits[0].float()
            loss = torch.nn.functional.cross_entropy(logits, chunk[1:])
            (grad,) = torch.autograd.grad(loss, x)
            fisher.index_add_(0, inputs[0], grad[0].double().pow(2).sum(1))
    finally:
        model.train(was_training)
    return fisher, counts


def fisher_token_weights(model, token_ids: torch.Tensor, floor: float = DEFAULT_FLOOR, window: int = 256,
                         max_tokens: int = 4096, power: float = 1.0) -> torch.Tensor:
    """float32 [V] importance weights: counts * clamped relative sensitivity ** power + floor.

    Counts are over all of token_ids (as calib.token_weights); the sensitivity of a row is its
    mean squared gradient over the first max_tokens tokens, divided by the count-weighted mean
    of all measured rows, clamped to SENSITIVITY_CLAMP; rows not measured get 1.
    """
    if not floor > 0:
        raise CarvqError(f"the weight floor must be > 0, got {floor}")
    ids = torch.as_tensor(token_ids, dtype=torch.int64).flatten()
    fisher, seen = fisher_row_scores(model, ids, window, max_tokens)
    V = fisher.shape[0]
    counts = torch.bincount(ids, minlength=V).to(torch.float64)
    measured = seen > 0
    per_use = torch.ones(V, dtype=torch.float64)
    per_use[measured] = fisher[measured] / seen[measured]
    mean = fisher[measured].sum() / seen[measured].sum()
    if not mean > 0:
        raise CarvqError("the model's loss has no gradient with respect to the embedding rows")
    sensitivity = torch.ones(V, dtype=torch.float64)
    sensitivity[measured] = (per_use[measured] / mean).clamp(*SENSITIVITY_CLAMP).pow(power)
    return (counts * sensitivity + floor).to(torch.float32)


def model_token_weights(source, text: str, vocab_size: int, floor: float = DEFAULT_FLOOR,
                        max_tokens: int = 4096, threads: int | None = None) -> torch.Tensor:
    """fisher_token_weights of source (HF directory or GGUF file) on text, tokenized by source's
    own tokenizer; CarvqError when source has no tokenizer, since the model-aware fit needs one."""
    from .model import load_causal_lm
    from .perplexity import tokenize_text

    if not text.strip():
        raise CarvqError("the calibration text is empty")
    if threads is not None:
        torch.set_num_threads(threads)
    model, tokenizer = load_causal_lm(source, need_tokenizer=True)
    if tokenizer is None:
        raise CarvqError(f"{str(source)!r} has no tokenizer; model-aware importance needs one to read the "
                         "calibration text")
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != vocab_size:
        raise CarvqError(f"the model's input embedding has {rows} rows, the matrix being compressed {vocab_size}")
    ids = torch.tensor(tokenize_text(tokenizer, text), dtype=torch.int64)
    with torch.enable_grad():
        return fisher_token_weights(model, ids, floor=floor, max_tokens=max_tokens)
