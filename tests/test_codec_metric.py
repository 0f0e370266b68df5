"""RVQ encoding under a quadratic error metric (codec/metric.py)."""

from __future__ import annotations

import pytest
import torch

from carvq_gguf.codec import rvq
from carvq_gguf.codec.metric import damped, metric_error, metric_refine, sequential_encode
from carvq_gguf.codec.state import RvqConfig
from carvq_gguf.errors import CarvqError

CFG = RvqConfig(subvector_dim=4, codebook_bits=4, levels=2, group_layout="column")


def _fit(V=1500, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(V, n, generator=g) @ torch.randn(n, n, generator=g) / n ** 0.5
    codes, books = rvq.encode(matrix, CFG, iters=10, seed=seed, progress=False)
    return matrix, codes, books


def _metric(n=32, seed=1):
    """An anisotropic metric: a few directions cost 100 times the rest, as a model's Fisher does."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    scales = torch.ones(n, dtype=torch.float64)
    scales[:4] = 100.0
    return basis @ torch.diag(scales) @ basis.T


def test_identity_metric_encodes_like_the_beam_search():
    """Under an isotropic metric there is nothing to feed back: the codes are the beam search's."""
    matrix, codes, books = _fit()
    n = matrix.shape[1]
    labels, targets = sequential_encode(matrix, books.float(), CFG, torch.eye(n, dtype=torch.float64))
    assert torch.equal(labels, rvq.beam_encode(rvq.to_groups(matrix, CFG), books.float()))
    assert torch.allclose(targets, matrix)


def test_metric_refine_lowers_the_metric_error_and_is_deterministic():
    matrix, codes, books = _fit()
    metric = _metric()
    H = damped(metric, 0.1)

    def error(c, b):
        return metric_error(matrix, rvq.decode(c, b, CFG), H)

    new_codes, new_books = metric_refine(matrix, codes, books, CFG, metric)
    assert new_codes.dtype == torch.uint8 and new_books.dtype == torch.float16
    assert error(new_codes, new_books) < 0.8 * error(codes, books)
    again = metric_refine(matrix, codes, books, CFG, metric)
    assert torch.equal(again[0], new_codes) and torch.equal(again[1], new_books)
    same = metric_refine(matrix, codes, books, CFG, metric, rounds=0)
    assert torch.equal(same[0], codes) and torch.equal(same[1], books)


def test_error_feedback_pays_beyond_the_per_group_metric():
    """Encoding each group under its own block of the metric, without passing its error on to the
    later groups, leaves a larger metric error than the sequential encoding."""
    matrix, codes, books = _fit()
    H = damped(_metric(), 0.1)
    h, n = CFG.subvector_dim, matrix.shape[1]
    blocks = torch.block_diag(*[H[i:i + h, i:i + h] for i in range(0, n, h)])
    sequential, _ = sequential_encode(matrix, books.float(), CFG, H)
    blockwise, _ = sequential_encode(matrix, books.float(), CFG, blocks)

    def error(labels):
        return metric_error(matrix, rvq.decode(rvq.ungroup_codes(labels, CFG, *matrix.shape), books, CFG), H)

    assert error(sequential) < 0.9 * error(blockwise)


def test_metric_refine_refuses_bad_input():
    matrix, codes, books = _fit()
    with pytest.raises(CarvqError, match="shape"):
        metric_refine(matrix, codes, books, CFG, torch.eye(8))
    bad = _metric()
    bad[0, 0] = float("nan")
    with pytest.raises(CarvqError, match="non-finite"):
        metric_refine(matrix, codes, books, CFG, bad)
    with pytest.raises(CarvqError, match="positive diagonal"):
        metric_refine(matrix, codes, books, CFG, torch.zeros(32, 32))
    with pytest.raises(CarvqError, match="damping"):
        metric_refine(matrix, codes, books, CFG, _metric(), damp=0.0)
    block = RvqConfig(subvector_dim=4, codebook_bits=4, levels=2, group_layout="block", group_size=64)
    with pytest.raises(CarvqError, match="column"):
        metric_refine(matrix, codes, books, block, _metric())
