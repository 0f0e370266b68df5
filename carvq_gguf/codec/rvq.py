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


def group_weights(row_weights: torch.Tensor | None, vocab_size: int, embedding_dim: int,
                  cfg: RvqConfig) -> torch.Tensor:
    """Every row's weight on each of its sub-vectors, arranged like to_groups: float32 [G, N]
    (None: all rows weigh 1)."""
    V = vocab_size
    if row_weights is None:
        row_weights = torch.ones(V)
    if tuple(row_weights.shape) != (V,):
        raise CarvqError(f"row weights have shape {tuple(row_weights.shape)}, expected ({V},)")
    return group_scalar(row_weights.to(torch.float32).reshape(V, 1).expand(V, cfg.n_subvectors(embedding_dim)), cfg)


def encode(matrix: torch.Tensor, cfg: RvqConfig, row_weights: torch.Tensor | None = None,
           iters: int = 25, seed: int = 0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize matrix [V, n] float32: returns (codes uint8 [V, L, S], codebooks float16 [L, G, K, h]).

    row_weights [V] weights every row's sub-vectors in k-means (None: all rows weigh 1).
    """
    V, n = matrix.shape
    cfg.validate(n)
    K = cfg.codebook_size
    points = to_groups(matrix.to(torch.float32), cfg)
    weights = group_weights(row_weights, V, n, cfg)
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


def group_codes(codes: torch.Tensor, cfg: RvqConfig) -> torch.Tensor:
    """Arrange codes [V, L, S] like to_groups arranges sub-vectors: int64 [G, N, L]."""
    V, L, S = codes.shape
    per_level = [group_scalar(codes[:, level].long(), cfg) for level in range(L)]
    return torch.stack(per_level, dim=-1)


def ungroup_codes(labels: torch.Tensor, cfg: RvqConfig, vocab_size: int, embedding_dim: int) -> torch.Tensor:
    """Inverse of group_codes: codes uint8 [V, L, S] from labels [G, N, L] arranged like to_groups."""
    return torch.stack([from_groups(labels[..., level], cfg, vocab_size, embedding_dim)
                        for level in range(labels.shape[-1])], dim=1).to(torch.uint8).contiguous()


def beam_encode(points: torch.Tensor, codebooks: torch.Tensor, beam: int = 4,
                chunk: int = 16384) -> torch.Tensor:
    """Codes [G, N, L] (int64) of grouped points [G, N, h] under codebooks [L, G, K, h] (float32),
    by beam search over the levels: the beam best partial sums are kept after each level, so a
    worse first choice that a later level completes well is not lost (greedy is beam = 1)."""
    G, N, h = points.shape
    L, _, K, _ = codebooks.shape
    c2 = codebooks.pow(2).sum(-1)  # [L, G, K]
    out = torch.empty(G, N, L, dtype=torch.int64)
    for start in range(0, N, chunk):
        x = points[:, start:start + chunk]  # [G, n, h]
        n = x.shape[1]
        residual = x.unsqueeze(2)  # [G, n, B, h]
        error = residual.pow(2).sum(-1)  # [G, n, B]
        paths = torch.zeros(G, n, 1, 0, dtype=torch.int64)
        for level in range(L):
            dot = torch.einsum("gnbh,gkh->gnbk", residual, codebooks[level])
            cost = (error.unsqueeze(-1) - 2 * dot + c2[level][:, None, None, :]).reshape(G, n, -1)
            keep = min(beam, cost.shape[-1]) if level < L - 1 else 1
            error, flat = torch.topk(cost, keep, dim=-1, largest=False, sorted=True)
            parent, code = flat // K, flat % K
            paths = torch.cat([torch.gather(paths, 2, parent[..., None].expand(-1, -1, -1, level)),
                               code.unsqueeze(-1)], dim=-1)
            chosen = torch.gather(codebooks[level], 1, code.reshape(G, -1, 1).expand(-1, -1, h)).reshape(G, n, keep, h)
            residual = torch.gather(residual, 2, parent[..., None].expand(-1, -1, -1, h)) - chosen
        out[:, start:start + n] = paths[:, :, 0]
    return out


def joint_codebooks(points: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                    previous: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Codebooks [L, G, K, h] (float32) that minimise the weighted squared error of the sums of
    all levels for fixed codes labels [G, N, L]: one least-squares problem with L * K unknown
    centroids per group (greedy RVQ fits each level alone against what the previous ones left).
    A ridge towards previous [L, G, K, h] keeps centroids that no point uses where they were."""
    G, N, h = points.shape
    L = labels.shape[-1]
    K = previous.shape[2]
    LK = L * K
    index = labels + torch.arange(L) * K  # [G, N, L] in 0..LK
    gram = torch.zeros(G, LK * LK, dtype=torch.float64)
    rhs = torch.zeros(G, LK, h, dtype=torch.float64)
    w = weights.to(torch.float64)
    wx = w.unsqueeze(-1) * points.to(torch.float64)
    for a in range(L):
        rhs.scatter_add_(1, index[..., a:a + 1].expand(-1, -1, h), wx)
        for b in range(L):
            gram.scatter_add_(1, index[..., a] * LK + index[..., b], w)
    gram = gram.reshape(G, LK, LK)
    prior = previous.permute(1, 0, 2, 3).reshape(G, LK, h).to(torch.float64)
    scale = ridge * (gram.diagonal(dim1=1, dim2=2).mean(1) + 1e-12)  # [G]
    eye = torch.eye(LK, dtype=torch.float64)
    solved = torch.linalg.solve(gram + scale[:, None, None] * eye, rhs + scale[:, None, None] * prior)
    return solved.reshape(G, L, K, h).permute(1, 0, 2, 3).to(torch.float32).contiguous()


def refine(matrix: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, cfg: RvqConfig,
           row_weights: torch.Tensor | None = None, rounds: int = 3,
           beam: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Improve a greedy RVQ fit: alternate the joint least-squares codebooks (all levels at once)
    with beam-search re-encoding under the F16-rounded codebooks, keeping a round only if it
    lowers the weighted squared error. Returns (codes uint8 [V, L, S], codebooks float16)."""
    V, n = matrix.shape
    points = to_groups(matrix.to(torch.float32), cfg)
    weights = group_weights(row_weights, V, n, cfg)

    def distortion(labels: torch.Tensor, books: torch.Tensor) -> float:
        approx = sum(torch.gather(books[level], 1, labels[..., level:level + 1].expand(-1, -1, points.shape[-1]))
                     for level in range(labels.shape[-1]))
        return float((weights * (points - approx).pow(2).sum(-1)).sum())

    labels = group_codes(codes, cfg)
    books = codebooks.to(torch.float32)
    best = distortion(labels, books)
    for _ in range(rounds):
        new_books = joint_codebooks(points, weights, labels, books).to(torch.float16).to(torch.float32)
        new_labels = beam_encode(points, new_books, beam)
        value = distortion(new_labels, new_books)
        if value >= best:
            break
        labels, books, best = new_labels, new_books, value
    return ungroup_codes(labels, cfg, V, n), books.to(torch.float16).contiguous()
