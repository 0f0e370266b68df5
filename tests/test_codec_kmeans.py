"""k-means invariants: nearest-centroid labels, empty-cluster repair, determinism, weights."""

import torch

from carvq_gguf.codec.kmeans import _repair_empty, kmeans, squared_distances


def _points(groups=3, n=200, h=4, seed=0):
    return torch.randn(groups, n, h, generator=torch.Generator().manual_seed(seed))


def test_every_point_goes_to_its_nearest_centroid():
    pts = _points()
    centroids, labels = kmeans(pts, 8, iters=10, generator=torch.Generator().manual_seed(1))
    d = squared_distances(pts, centroids)
    chosen = d.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.all(chosen <= d.min(dim=-1).values + 1e-6)
    assert centroids.shape == (3, 8, 4) and labels.shape == (3, 200)


def test_centroids_are_weighted_means_after_convergence():
    pts = _points(groups=1, n=300)
    w = torch.rand(300, generator=torch.Generator().manual_seed(2)) + 0.1
    centroids, labels = kmeans(pts, 4, weights=w, iters=200)
    for c in range(4):
        mask = labels[0] == c
        mean = (pts[0][mask] * w[mask, None]).sum(0) / w[mask].sum()
        assert torch.allclose(centroids[0, c], mean, atol=1e-5)


def test_same_seed_same_result_and_seed_matters():
    pts = _points()
    a = kmeans(pts, 8, generator=torch.Generator().manual_seed(5))
    b = kmeans(pts, 8, generator=torch.Generator().manual_seed(5))
    c = kmeans(pts, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_empty_cluster_moves_to_costliest_point():
    pts = torch.tensor([[[0.0], [0.1], [10.0]]])
    w = torch.ones(1, 3)
    old = torch.tensor([[[0.05], [100.0]]])  # cluster 1 gets nothing
    labels = torch.tensor([[0, 0, 0]])
    mass = torch.tensor([[3.0, 0.0]])
    new = old.clone()
    assert _repair_empty(pts, w, new, old, labels, mass) == 1
    assert new[0, 1, 0] == 10.0 and new[0, 0, 0] == old[0, 0, 0]


def test_no_cluster_left_empty_with_duplicate_points():
    pts = torch.cat([torch.zeros(1, 50, 2), torch.arange(10.0).reshape(1, 10, 1).expand(1, 10, 2)], dim=1)
    centroids, labels = kmeans(pts, 8, iters=20)
    assert len(torch.unique(labels)) == 8


def test_weight_pulls_centroid():
    pts = torch.tensor([[[0.0], [1.0]]])
    heavy_right = kmeans(pts, 1, weights=torch.tensor([1.0, 9.0]))[0]
    assert abs(float(heavy_right[0, 0, 0]) - 0.9) < 1e-6
