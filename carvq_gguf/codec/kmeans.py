"""Batched, weighted k-means in torch: many independent groups of points clustered at once.

Points come as [G, N, h] (G groups of N points of dimension h) with a weight per point
[G, N]; every group gets its own K centroids. Seeding is k-means++ (probability proportional
to weight times squared distance), refinement is Lloyd (centroids are weighted means), and a
cluster left without weight is moved onto the point that costs most in its group. All random
choices come from one seeded torch.Generator, so the result is deterministic for a seed.
"""

from __future__ import annotations

import torch

from ..errors import CarvqError


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [G, N, K] between points [G, N, h] and centroids [G, K, h]."""
    p2 = (points * points).sum(-1, keepdim=True)
    c2 = (centroids * centroids).sum(-1).unsqueeze(1)
    d = p2 - 2.0 * torch.einsum("gnh,gkh->gnk", points, centroids) + c2
    return d.clamp_min_(0.0)


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index [G, N] (int64) of the nearest centroid of every point; ties go to the lowest index."""
    return squared_distances(points, centroids).argmin(dim=-1)


def sample_rows(prob: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of prob [G, N] (non-negative, positive row sums), drawn with
    probability proportional to prob, by inverting the cumulative sum (float64)."""
    cdf = prob.to(torch.float64).cumsum(dim=1)
    u = torch.rand(prob.shape[0], 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=prob.shape[1] - 1)


def kmeans_pp_seed(points: torch.Tensor, weights: torch.Tensor, k: int,
                   generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding per group: centroids [G, k, h]."""
    G, N, h = points.shape
    rows = torch.arange(G)
    centroids = torch.empty(G, k, h, dtype=points.dtype)
    centroids[:, 0] = points[rows, sample_rows(weights, generator)]
    best = (points - centroids[:, 0:1]).pow(2).sum(-1)
    for c in range(1, k):
        prob = weights * best
        # groups whose points all coincide with the chosen centroids: fall back to weights
        dead = prob.sum(dim=1) <= 0
        if bool(dead.any()):
            prob[dead] = weights[dead]
        centroids[:, c] = points[rows, sample_rows(prob, generator)]
        best = torch.minimum(best, (points - centroids[:, c:c + 1]).pow(2).sum(-1))
    return centroids


def _weighted_means(points: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                    k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster weighted sums divided by weight: (means [G, k, h], cluster weight [G, k])."""
    G, N, h = points.shape
    mass = torch.zeros(G, k, dtype=points.dtype).scatter_add_(1, labels, weights)
    sums = torch.zeros(G, k, h, dtype=points.dtype).scatter_add_(
        1, labels.unsqueeze(-1).expand(G, N, h), points * weights.unsqueeze(-1))
    means = sums / mass.clamp_min(1e-30).unsqueeze(-1)
    return means, mass


def _repair_empty(points: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor,
                  old: torch.Tensor, labels: torch.Tensor, mass: torch.Tensor) -> int:
    """Move every cluster with no weight onto the costliest points of its group (in place).

    Empty clusters keep their previous centroid in `old` order; the e-th empty cluster of a
    group takes the point with the e-th largest weighted distance to its centroid.
    Returns the number of clusters repaired.
    """
    empty = mass <= 0
    n_empty = int(empty.sum())
    if n_empty == 0:
        return 0
    for g in torch.nonzero(empty.any(dim=1)).flatten().tolist():
        idx = torch.nonzero(empty[g]).flatten()
        cost = weights[g] * (points[g] - old[g][labels[g]]).pow(2).sum(-1)
        far = torch.topk(cost, min(len(idx), cost.numel())).indices
        for e, c in enumerate(idx.tolist()):
            centroids[g, c] = points[g, far[e % len(far)]]
    return n_empty


def kmeans(points: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 25,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each group of points [G, N, h] into k centroids.

    weights: [G, N] or [N] (shared by all groups), non-negative with a positive sum per group;
    None means every point weighs 1. Runs k-means++ seeding then up to `iters` Lloyd steps
    (stopping early when no assignment changes), repairing empty clusters after each update.
    Returns (centroids [G, k, h] float32, labels [G, N] int64) where every label is the
    nearest of the returned centroids.
    """
    if points.dim() != 3 or points.shape[1] == 0 or points.shape[2] == 0:
        raise CarvqError(f"k-means wants points [groups, points, dim], got {tuple(points.shape)}")
    if k < 1:
        raise CarvqError(f"k-means needs k >= 1, got {k}")
    points = points.to(torch.float32)
    G, N, _ = points.shape
    if weights is None:
        weights = torch.ones(G, N)
    weights = weights.to(torch.float32)
    if weights.dim() == 1:
        weights = weights.expand(G, N)
    if tuple(weights.shape) != (G, N):
        raise CarvqError(f"k-means weights have shape {tuple(weights.shape)}, expected {(G, N)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise CarvqError("k-means weights must be finite and non-negative")
    if bool((weights.sum(dim=1) <= 0).any()):
        raise CarvqError("every k-means group needs a positive total weight")
    weights = weights.contiguous()
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    centroids = kmeans_pp_seed(points, weights, k, generator)
    labels = assign(points, centroids)
    for _ in range(iters):
        means, mass = _weighted_means(points, weights, labels, k)
        new = torch.where((mass > 0).unsqueeze(-1), means, centroids)
        _repair_empty(points, weights, new, centroids, labels, mass)
        centroids = new
        new_labels = assign(points, centroids)
        changed = bool((new_labels != labels).any())
        labels = new_labels
        if not changed:
            break
    return centroids, labels
