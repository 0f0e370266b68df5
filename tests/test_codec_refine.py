"""Joint RVQ refinement: beam-search encoding and least-squares codebooks over all levels."""

from __future__ import annotations

import torch

from carvq_gguf.codec import rvq
from carvq_gguf.codec.kmeans import assign
from carvq_gguf.codec.state import RvqConfig

CFG = RvqConfig(subvector_dim=8, codebook_bits=4, levels=3, group_layout="column")


def _matrix(V=600, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated columns and a shared offset, like an embedding matrix
    return torch.randn(V, n, generator=g) @ torch.randn(n, n, generator=g) * 0.1 + 0.3


def _weighted_error(matrix, codes, books, weights):
    return float((weights * (matrix - rvq.decode(codes, books, CFG)).pow(2).sum(1)).sum())


def test_beam_one_is_greedy_assignment():
    m = _matrix()
    codes, books = rvq.encode(m, CFG, iters=5, progress=False)
    points = rvq.to_groups(m, CFG)
    labels = rvq.beam_encode(points, books.to(torch.float32), beam=1)
    residual = points
    for level in range(CFG.levels):
        greedy = assign(residual, books[level].to(torch.float32))
        assert torch.equal(labels[..., level], greedy)
        residual = residual - torch.gather(books[level].to(torch.float32), 1, greedy.unsqueeze(-1).expand(-1, -1, 8))


def test_wider_beam_never_worse_per_point():
    m = _matrix(seed=1)
    _, books = rvq.encode(m, CFG, iters=5, progress=False)
    points, exact = rvq.to_groups(m, CFG), books.to(torch.float32)

    def err(labels):
        approx = sum(torch.gather(exact[lv], 1, labels[..., lv:lv + 1].expand(-1, -1, 8)) for lv in range(3))
        return (points - approx).pow(2).sum(-1)

    narrow, wide = err(rvq.beam_encode(points, exact, 1)), err(rvq.beam_encode(points, exact, 8))
    assert bool((wide <= narrow + 1e-5).all())
    assert float(wide.sum()) < 0.97 * float(narrow.sum())


def test_refine_lowers_weighted_error_and_is_deterministic():
    m = _matrix(seed=2)
    weights = torch.rand(m.shape[0], generator=torch.Generator().manual_seed(3)) * 10 + 0.01
    codes, books = rvq.encode(m, CFG, weights, iters=10, progress=False)
    a_codes, a_books = rvq.refine(m, codes, books, CFG, weights, rounds=3)
    b_codes, b_books = rvq.refine(m, codes, books, CFG, weights, rounds=3)
    assert torch.equal(a_codes, b_codes) and torch.equal(a_books, b_books)
    assert a_codes.dtype == torch.uint8 and a_books.dtype == torch.float16
    assert _weighted_error(m, a_codes, a_books, weights) < 0.95 * _weighted_error(m, codes, books, weights)


def test_joint_codebooks_solve_the_least_squares_problem():
    """With codes fixed, no other codebooks give a lower weighted error (a perturbation test)."""
    m = _matrix(V=300, seed=4)
    weights = torch.rand(300, generator=torch.Generator().manual_seed(5)) + 0.1
    codes, books = rvq.encode(m, CFG, weights, iters=5, progress=False)
    points = rvq.to_groups(m, CFG)
    w = rvq.group_weights(weights, *m.shape, CFG)
    labels = rvq.group_codes(codes, CFG)
    solved = rvq.joint_codebooks(points, w, labels, books.to(torch.float32), ridge=1e-9)

    def err(b):
        approx = sum(torch.gather(b[lv], 1, labels[..., lv:lv + 1].expand(-1, -1, 8)) for lv in range(3))
        return float((w * (points - approx).pow(2).sum(-1)).sum())

    base = err(solved)
    assert base <= err(books.to(torch.float32))
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        assert base <= err(solved + 1e-3 * torch.randn(solved.shape, generator=g)) + 1e-6
