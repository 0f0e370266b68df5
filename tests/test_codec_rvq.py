"""Group RVQ: shapes, F16 codebooks, packing round trip, layouts and determinism."""

import pytest
import torch

from carvq_gguf.codec import rvq
from carvq_gguf.codec.packing import pack_codes, unpack_codes
from carvq_gguf.codec.state import RvqConfig


def _matrix(V=300, n=32, seed=0):
    return torch.randn(V, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["column", "block"])
def test_encode_shapes_and_decode_improves_with_levels(layout):
    E = _matrix()
    errors = []
    for levels in (1, 2, 3):
        cfg = RvqConfig(levels=levels, group_layout=layout, group_size=100)
        codes, books = rvq.encode(E, cfg, progress=False)
        assert codes.dtype == torch.uint8 and codes.shape == (300, levels, 4)
        assert books.dtype == torch.float16 and books.shape == (levels, cfg.n_groups(300, 32), 16, 8)
        errors.append(float((E - rvq.decode(codes, books, cfg)).pow(2).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_group_roundtrip_block_with_padding():
    cfg = RvqConfig(group_layout="block", group_size=7)
    E = _matrix(V=5, n=16)
    grouped = rvq.to_groups(E, cfg)
    assert grouped.shape == (2, 7, 8)
    assert torch.equal(rvq.from_groups(grouped, cfg, 5, 16).reshape(5, 16), E)


def test_packing_roundtrip_of_encoded_codes_and_nibble_layout():
    codes, _ = rvq.encode(_matrix(), RvqConfig(levels=3), progress=False)
    packed = pack_codes(codes)
    assert packed.shape == (300, 3 * 4 // 2)
    assert torch.equal(unpack_codes(packed, 3), codes)
    assert int(packed[0, 0]) == int(codes[0, 0, 0]) | (int(codes[0, 0, 1]) << 4)


def test_codes_are_nearest_stored_centroid_at_level_zero():
    E = _matrix()
    cfg = RvqConfig(levels=1)
    codes, books = rvq.encode(E, cfg, progress=False)
    sub = E.reshape(300, 4, 8)
    for s in range(4):
        d = (sub[:, s, None, :] - books[0, s].float()[None]).pow(2).sum(-1)
        chosen = d.gather(1, codes[:, 0, s].long()[:, None]).squeeze(1)
        assert torch.all(chosen <= d.min(1).values + 1e-6)


def test_encode_is_deterministic_for_a_seed():
    E = _matrix()
    a = rvq.encode(E, RvqConfig(levels=2), seed=3, progress=False)
    b = rvq.encode(E, RvqConfig(levels=2), seed=3, progress=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
