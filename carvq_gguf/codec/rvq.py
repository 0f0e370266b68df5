"""Group residual vector quantization: encode a matrix into codes + F16 codebooks, and decode.

Every row of E [V, n] is cut into S = n / h sub-vectors. The group layout (state.RvqConfig)
decides which sub-vectors share a codebook. Level 0 clusters the sub-vectors of each group;
level l + 1 clusters what levels 0..l left over. Codebooks are rounded to F16 before the
residual is taken and before the final assignment, so the stored codes are the nearest
stored centroids and the decode below is exactly what llama.cpp computes.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .kmeans import assign, kmeans
from ..errors import CarvqError
from .state import RvqConfig


def to_groups(matrix: torch.Tensor, cfg: RvqConfig) -> torch.Tensor:
    """Rearrange [V, n] into grouped sub-vectors [G, N, h] (block layout: last group zero-padded)."""
    V, n = matrix.shape
    h, S = cfg.subvector_dim, cfg.n_subvectors(n)
    sub = matrix.reshape(V, S, h)
    if cfg.group_layout == "column":
        return sub.permute(1, 0, 2).contiguous()
    G, g = cfg.n_groups(V, n), cfg.group_size
    flat = sub.reshape(V * S, h)
    pad = G * g - V * S
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad, h)])
    return flat.reshape(G, g, h)


def from_groups(grouped: torch.Tensor, cfg: RvqConfig, vocab_size: int, embedding_dim: int) -> torch.Tensor:
    """Inverse of to_groups for any trailing shape: [G, N, ...] -> [V, S, ...]."""
    V, S = vocab_size, cfg.n_subvectors(embedding_dim)
    tail = grouped.shape[2:]
    if cfg.group_layout == "column":
        return grouped.transpose(0, 1).contiguous()
    return grouped.reshape(-1, *tail)[: V * S].reshape(V, S, *tail)


def group_scalar(values: torch.Tensor, cfg: RvqConfig) -> torch.Tensor:
    """Arrange a per-sub-vector scalar [V, S] like to_groups arranges sub-vectors: [G, N]."""
    V, S = values.shape
    if cfg.group_layout == "column":
        return values.t().contiguous()
    g = cfg.group_size
    G = -(-V * S // g)
    flat = values.reshape(V * S)
    pad = G * g - V * S
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(G, g)


def encode(matrix: torch.Tensor, cfg: RvqConfig, row_weights: torch.Tensor | None = None,
           iters: int = 25, seed: int = 0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize matrix [V, n] float32: returns (codes uint8 [V, L, S], codebooks float16 [L, G, K, h]).

    row_weights [V] weights every row's sub-vectors in k-means (None: all rows weigh 1).
    """
    V, n = matrix.shape
    cfg.validate(n)
    K = cfg.codebook_size
    points = to_groups(matrix.to(torch.float32), cfg)
    if row_weights is None:
        row_weights = torch.ones(V)
    if tuple(row_weights.shape) != (V,):
        raise CarvqError(f"row weights have shape {tuple(row_weights.shape)}, expected ({V},)")
    weights = group_scalar(row_weights.to(torch.float32).reshape(V, 1).expand(V, cfg.n_subvectors(n)), cfg)
    generator = torch.Generator().manual_seed(seed)
    codebooks, codes = [], []
    residual = points
    for _ in tqdm(range(cfg.levels), desc="RVQ levels", disable=not progress):
        centroids, _ = kmeans(residual, K, weights, iters=iters, generator=generator)
        stored = centroids.to(torch.float16)
        exact = stored.to(torch.float32)
        labels = assign(residual, exact)
        chosen = torch.gather(exact, 1, labels.unsqueeze(-1).expand(*labels.shape, exact.shape[-1]))
        residual = residual - chosen
        codebooks.append(stored)
        codes.append(from_groups(labels, cfg, V, n).to(torch.uint8))
    return torch.stack(codes, dim=1).contiguous(), torch.stack(codebooks).contiguous()


def decode(codes: torch.Tensor, codebooks: torch.Tensor, cfg: RvqConfig,
           token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Decode rows: float32 [T, n] for token_ids (default: all V rows of codes).

    Levels are summed in order 0, 1, ... in float32 from the F16 codebook values.
    """
    V, L, S = codes.shape
    h = cfg.subvector_dim
    n = S * h
    if token_ids is None:
        token_ids = torch.arange(V)
    groups = cfg.group_index(V, n)[token_ids]
    rows = codes[token_ids].long()
    out = torch.zeros(token_ids.shape[0], S, h)
    for level in range(L):
        out = out + codebooks[level].to(torch.float32)[groups, rows[:, level]]
    return out.reshape(-1, n)
