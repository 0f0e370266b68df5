"""Bad input gives a CarvqError that names the problem."""

import pytest
import torch

from carvq_gguf.codec import rvq
from carvq_gguf.codec.importance import token_weights
from carvq_gguf.codec.codec_file import load_codec, save_codec
from carvq_gguf.codec.compress import compress_matrix
from carvq_gguf.codec.kmeans import kmeans
from carvq_gguf.codec.state import RvqConfig
from carvq_gguf.errors import CarvqError

from conftest import make_random_state


def test_width_not_divisible_by_subvector_dim():
    with pytest.raises(CarvqError, match="not divisible by sub-vector dim h=8"):
        rvq.encode(torch.randn(50, 60), RvqConfig(), progress=False)


def test_codebook_size_not_a_power_of_two_up_to_16():
    # K = 2**codebook_bits is a power of two by construction; anything beyond 4 bits is refused
    with pytest.raises(CarvqError, match="codebook_bits must be 1..4"):
        RvqConfig(codebook_bits=5).validate(64)
    with pytest.raises(CarvqError, match="codebook_bits must be 1..4"):
        RvqConfig(codebook_bits=0).validate(64)


@pytest.mark.parametrize("matrix, message", [
    (torch.zeros(0, 64), "empty"),
    (torch.full((40, 64), float("nan")), "NaN or infinite"),
    (torch.tensor([[1.0, float("inf")] * 32] * 40), "NaN or infinite"),
    (torch.zeros(40, 64, dtype=torch.int32), "floating point"),
    (torch.zeros(64), "2-D"),
])
def test_bad_matrices(matrix, message):
    with pytest.raises(CarvqError, match=message):
        compress_matrix(matrix, "rvq-1.6", progress=False)


def test_unknown_preset_in_compress():
    with pytest.raises(CarvqError, match="unknown preset"):
        compress_matrix(torch.randn(40, 64), "carvq-3.7", progress=False)


def test_bad_token_weights():
    with pytest.raises(CarvqError, match="token weights have shape"):
        compress_matrix(torch.randn(40, 64), "rvq-1.6", token_weights=torch.ones(39), progress=False)
    with pytest.raises(CarvqError, match="lie in"):
        token_weights([0, 5, 40], 40)


def test_kmeans_bad_weights():
    with pytest.raises(CarvqError, match="positive total weight"):
        kmeans(torch.randn(2, 10, 3), 4, weights=torch.zeros(10))


def test_load_codec_bad_files(tmp_path):
    with pytest.raises(CarvqError, match="does not exist"):
        load_codec(tmp_path / "missing")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a codec")
    with pytest.raises(CarvqError, match="not a readable codec"):
        load_codec(junk)
    other = tmp_path / "other"
    torch.save({"hello": 1}, other)
    with pytest.raises(CarvqError, match="not a CARVQ codec"):
        load_codec(other)
    state = make_random_state()
    state.codes = state.codes[:, :1]
    with pytest.raises(CarvqError, match="codes has shape"):
        save_codec(state, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
