"""RVQ codes chosen under a quadratic metric on the row error, one column group at a time.

The cost of an error e (a row vector of width n) in one embedding row is, to second order,
e H e^T for a positive semi-definite H [n, n]: for a model, the Fisher of its next-token
distribution with respect to the input embedding (hf/importance.embedding_fisher). Such an H
is far from isotropic (most of the cost sits in a few directions), so codes nearest in the
plain squared error are not the cheapest ones.

This is GPTQ's idea applied to a row of sub-vectors instead of a row of weights: the column
groups are encoded in order, and once group g's codes are fixed, the targets of the groups not
yet encoded absorb the error of g as far as H lets them (the conditional optimum, with the later
errors left free). Group g's own codes are chosen under the Schur complement of H, the cost
its error keeps after that compensation. The decoder is unchanged: only which codes are stored
changes, and the codebooks are then refitted by least squares to the compensated targets.
"""

from __future__ import annotations

import torch

from ..errors import CarvqError
from .rvq import beam_encode, decode, group_codes, group_weights, joint_codebooks, ungroup_codes
from .state import RvqConfig


def damped(metric: torch.Tensor, damp: float) -> torch.Tensor:
    """metric + damp * mean(diag(metric)) * I in float64. An estimated Fisher is noisy in its
    small directions; the damping keeps every direction's error counted a little (as GPTQ damps
    its Hessian), which generalises better to text unlike the calibration text."""
    H = metric.to(torch.float64)
    return H + damp * float(H.diagonal().mean()) * torch.eye(H.shape[0], dtype=torch.float64)


def check_metric(metric: torch.Tensor, embedding_dim: int, cfg: RvqConfig) -> None:
    """CarvqError unless metric is a finite [n, n] matrix with a positive mean diagonal (so that
    the damped metric is positive definite) and the layout is `column` (the
    sequential encoding needs every row's sub-vector s in the same codebook group s)."""
    n = embedding_dim
    if tuple(metric.shape) != (n, n):
        raise CarvqError(f"the error metric has shape {tuple(metric.shape)}, expected ({n}, {n})")
    if not bool(torch.isfinite(metric).all()):
        raise CarvqError("the error metric holds non-finite values")
    if not float(metric.diagonal().mean()) > 0:
        raise CarvqError("the error metric has no positive diagonal (did the model's loss have no gradient "
                         "with respect to the embedding?)")
    if cfg.group_layout != "column":
        raise CarvqError(f"encoding under an error metric needs the column group layout, not {cfg.group_layout!r}")


def metric_error(matrix: torch.Tensor, decoded: torch.Tensor, H: torch.Tensor,
                 row_weights: torch.Tensor | None = None) -> float:
    """sum over rows t of w_t * e_t H e_t^T with e = matrix - decoded (w = 1 when None)."""
    e = (matrix - decoded).to(torch.float64)
    per_row = ((e @ H) * e).sum(1)
    if row_weights is not None:
        per_row = per_row * row_weights.to(torch.float64)
    return float(per_row.sum())


def sequential_encode(matrix: torch.Tensor, codebooks: torch.Tensor, cfg: RvqConfig, H: torch.Tensor,
                      beam: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of matrix [V, n] under codebooks [L, S, K, h] (float32, column layout) that keep
    e H e^T small, group by group with error feedback. Returns (labels int64 [S, V, L], the
    compensated targets float32 [V, n] the codes were chosen for)."""
    V, n = matrix.shape
    h = cfg.subvector_dim
    S, L = n // h, codebooks.shape[0]
    targets = matrix.to(torch.float32).clone()
    labels = torch.empty(S, V, L, dtype=torch.int64)
    for g in range(S):
        lo, hi = g * h, (g + 1) * h
        own, cross, rest = H[lo:hi, lo:hi], H[lo:hi, hi:], H[hi:, hi:]
        feedback = torch.linalg.solve(rest, cross.T).T if hi < n else None  # [h, n - hi]
        schur = own - feedback @ cross.T if feedback is not None else own
        chol = torch.linalg.cholesky(schur)  # ||e chol||^2 = e schur e^T
        books = codebooks[:, g:g + 1]
        whiten = chol.to(torch.float32)
        labels[g] = beam_encode((targets[:, lo:hi] @ whiten).unsqueeze(0), books @ whiten, beam)[0]
        if feedback is not None:
            chosen = sum(books[level, 0, labels[g, :, level]] for level in range(L))
            targets[:, hi:] += (targets[:, lo:hi] - chosen) @ feedback.to(torch.float32)
    return labels, targets


def metric_refine(matrix: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, cfg: RvqConfig,
                  metric: torch.Tensor, row_weights: torch.Tensor | None = None, rounds: int = 2,
                  beam: int = 4, damp: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-encode an RVQ fit (codes uint8 [V, L, S], codebooks float16) under the error metric
    [n, n]: each round encodes sequentially (sequential_encode), then refits the codebooks by
    weighted least squares to the compensated targets for the next round. A round is kept only
    if it lowers the weighted metric error against matrix. Returns (codes, codebooks) in the
    stored dtypes."""
    V, n = matrix.shape
    check_metric(metric, n, cfg)
    if not damp > 0:
        raise CarvqError(f"the metric's damping must be > 0, got {damp}")
    H = damped(metric, damp)
    weights = group_weights(row_weights, V, n, cfg)
    matrix = matrix.to(torch.float32)

    def error(labels: torch.Tensor, books: torch.Tensor) -> float:
        return metric_error(matrix, decode(ungroup_codes(labels, cfg, V, n), books, cfg), H, row_weights)

    labels, books = group_codes(codes, cfg), codebooks.to(torch.float32)
    best = error(labels, books)
    targets = None
    for _ in range(rounds):
        new_books = books
        if targets is not None:
            grouped = targets.reshape(V, -1, cfg.subvector_dim).transpose(0, 1)
            new_books = joint_codebooks(grouped, weights, labels, books).to(torch.float16).to(torch.float32)
        new_labels, new_targets = sequential_encode(matrix, new_books, cfg, H, beam)
        value = error(new_labels, new_books)
        if value >= best:
            break
        labels, books, best, targets = new_labels, new_books, value, new_targets
    return ungroup_codes(labels, cfg, V, n), books.to(torch.float16).contiguous()
