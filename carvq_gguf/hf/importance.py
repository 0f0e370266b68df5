"""Importance measured with the model in the loop: how much an error in the input embedding costs.

Two measures. embedding_fisher: the Fisher of the next-token distribution with respect to an
input embedding row, an [n, n] metric shared by all rows, which says in which directions an
error costs (codec/metric.py encodes under it). fisher_row_scores / fisher_token_weights: a
diagonal Fisher over the rows, which says which rows cost.

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
from .model import embed_scale, eval_mode

SENSITIVITY_CLAMP = (0.25, 4.0)  # relative sensitivity kept within 1/4x..4x of the mean


def embedding_fisher(model, windows: torch.Tensor, positions: int = 64, seed: int = 0,
                     progress: bool = False) -> torch.Tensor:
    """float64 [n, n]: the mean over input positions of g g^T, g the gradient of the log-likelihood
    of next tokens sampled from the model itself, with respect to that position's (unscaled)
    embedding row. In expectation this is the Fisher of the model's next-token distributions, so
    an error e in a row costs about e F e^T / 2 nats of KL wherever the row is read.

    windows int64 [W, T] are calibration token windows (hf.tune.calibration_windows); the log-
    likelihood is taken at positions random positions of each (0: all), the whole window still
    read as context, which keeps a large vocabulary's output head cheap. The first position
    (BOS for some tokenizers, an attention sink whose row is like no other) is left out of the
    mean. Deterministic for a seed.
    """
    from tqdm import tqdm

    weight = model.get_input_embeddings().weight
    windows = torch.as_tensor(windows, dtype=torch.int64)
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise CarvqError(f"the Fisher needs windows of at least 2 tokens, got shape {tuple(windows.shape)}")
    V, n = weight.shape
    if int(windows.min()) < 0 or int(windows.max()) >= V:
        raise CarvqError(f"calibration token ids must lie in [0, {V})")
    T = windows.shape[1]
    generator = torch.Generator().manual_seed(seed)
    scale = embed_scale(model)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    with eval_mode(model):
        for window in tqdm(windows, desc="embedding Fisher", disable=not progress):
            keep = torch.arange(T) if positions <= 0 or positions >= T else \
                torch.randperm(T, generator=generator)[:positions].sort().values
            x = weight.detach()[window.to(weight.device)].float().unsqueeze(0).requires_grad_(True)
            logits = model(inputs_embeds=x * scale, logits_to_keep=keep.to(weight.device)).logits[0].float()
            sampled = torch.multinomial(torch.softmax(logits.detach().cpu(), -1), 1, generator=generator)[:, 0]
            loss = torch.nn.functional.cross_entropy(logits, sampled.to(logits.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            g = grad[0, 1:].double().cpu()
            fisher += g.T @ g
    return fisher / (windows.shape[0] * (T - 1))


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
    with eval_mode(model):
        for start in range(0, ids.numel() - 1, window):
            chunk = ids[start:start + window + 1]
            if chunk.numel() < 2:
                break
            inputs = chunk[:-1].unsqueeze(0)
            x = emb.detach()[inputs].clone().requires_grad_(True)
            logits = model(inputs_embeds=x * embed_scale(model)).logits[0].float()
            loss = torch.nn.functional.cross_entropy(logits, chunk[1:])
            (grad,) = torch.autograd.grad(loss, x)
            fisher.index_add_(0, inputs[0], grad[0].double().pow(2).sum(1))
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
