"""Perplexity of a causal LM in PyTorch on fixed windows of a text.

Windows: the text is tokenized once (no special tokens added); window i covers tokens
[i * window, (i + 1) * window) for i < n_windows, consecutive and non-overlapping. Inside a
window the model sees the whole window and only the second half is scored (each of its
tokens has at least window / 2 tokens of context). With the
defaults that is 8 x 256 = 2048 scored tokens. Deterministic: no sampling, no dropout.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import CarvqError


def eval_windows(token_ids: Sequence[int], n_windows: int = 8, window: int = 512) -> torch.Tensor:
    """int64 [n_windows, window]: the fixed evaluation windows of a token sequence."""
    if n_windows < 1 or window < 2:
        raise CarvqError(f"need n_windows >= 1 and window >= 2, got {n_windows}, {window}")
    need = n_windows * window
    if len(token_ids) < need:
        raise CarvqError(f"the evaluation text has {len(token_ids)} tokens; {n_windows} windows of {window} "
                         f"need {need}")
    return torch.as_tensor(list(token_ids[:need]), dtype=torch.int64).reshape(n_windows, window)


@torch.no_grad()
def window_logprobs(model, windows: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Log-probabilities float32 [W, window - window // 2, V] of the scored half of each window."""
    half = windows.shape[1] // 2
    out = []
    for start in range(0, windows.shape[0], batch):
        ids = windows[start:start + batch]
        logits = model(input_ids=ids).logits[:, half - 1:-1].float()
        out.append(torch.log_softmax(logits, dim=-1))
    return torch.cat(out)


def perplexity_from_logprobs(logprobs: torch.Tensor, windows: torch.Tensor) -> float:
    """exp(mean negative log-likelihood) of the scored tokens."""
    half = windows.shape[1] // 2
    targets = windows[:, half:]
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return math.exp(float(nll.double().mean()))


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(reference || other) per scored token, from log-probabilities of equal shape."""
    return float((reference.exp() * (reference - other)).sum(-1).double().mean())


def tokenize_text(tokenizer, text: str) -> list[int]:
    """Token ids of text, no special tokens added."""
    if not text.strip():
        raise CarvqError("the evaluation text is empty")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def perplexity(model, tokenizer, text: str, n_windows: int = 8, window: int = 512) -> float:
    """Perplexity of model on text over the fixed windows described in this module's docstring."""
    windows = eval_windows(tokenize_text(tokenizer, text), n_windows, window)
    return perplexity_from_logprobs(window_logprobs(model, windows), windows)
