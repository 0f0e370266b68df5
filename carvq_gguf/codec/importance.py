"""Token importance from calibration text: how often each token id occurs, plus a floor.

Frequent tokens are the outlier rows that plain RVQ fits worst (docs/EXPERIMENTS.md);
weighting k-means, the adaptor's batches and the choice of correction rows by these
frequencies is what makes low-bit CARVQ usable. Tokenizing is the caller's business.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import CarvqError

DEFAULT_FLOOR = 0.01  # best of 0.5 / 0.05 / 0.01 / 0.002 on SmolLM2 (docs/EXPERIMENTS.md)


def token_weights(token_ids: Sequence[int], vocab_size: int, floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """float32 [V]: occurrences of every token id in token_ids, plus floor for every row.

    The floor keeps rows absent from the calibration text in play (they still get fitted);
    it is in units of occurrences, so 0.01 means "one occurrence counts like 100 unseen rows".
    """
    if vocab_size < 1:
        raise CarvqError(f"vocab_size must be >= 1, got {vocab_size}")
    if not floor > 0:
        raise CarvqError(f"the weight floor must be > 0, got {floor}")
    ids = torch.as_tensor(list(token_ids), dtype=torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise CarvqError(f"calibration token ids must lie in [0, {vocab_size}), "
                         f"got {int(ids.min())}..{int(ids.max())}")
    counts = torch.bincount(ids, minlength=vocab_size).to(torch.float32)
    return counts + floor


def text_token_weights(text: str, tokenize: Callable[[str], Sequence[int]], vocab_size: int,
                       floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """token_weights of a text tokenized by the given function."""
    if not text.strip():
        raise CarvqError("the calibration text is empty")
    return token_weights(tokenize(text), vocab_size, floor)
