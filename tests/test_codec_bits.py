"""Bit accounting against a hand count, and the RTN baseline's bits."""

from carvq_gguf.codec.baselines import rtn_bits, rtn_bpw
from carvq_gguf.codec.bits import bits_from_config, bpw, component_bits
from carvq_gguf.codec.state import AdaptorConfig, RvqConfig

from conftest import make_random_state


def test_component_bits_hand_count():
    # V=96, n=64, h=8 -> S=8, L=2, K=16, column -> G=8; adaptor 8 -> 32 -> 48 -> 64; 3 correction rows
    state = make_random_state()
    bits = component_bits(state)
    assert bits["codes"] == 96 * 2 * 8 * 4
    assert bits["codebooks"] == 2 * 8 * 16 * 8 * 16
    assert bits["sigma0"] == 96 * 8 * 16
    assert bits["mlp_weights"] == (8 * 32 + 32 * 48 + 48 * 64) * 16
    assert bits["mlp_biases"] == (32 + 48 + 64) * 32
    assert bits["norms"] == (2 * 32 + 2 * 48) * 32
    assert bits["correction_rows"] == 3 * 64 * 16
    assert bits["correction_ids"] == 3 * 32
    total = (6144 + 32768 + 12288 + 77824 + 4608 + 5120 + 3072 + 96)
    assert sum(bits.values()) == total
    assert bpw(state) == total / (96 * 64)


def test_block_layout_codebook_count():
    cfg = RvqConfig(levels=2, group_layout="block", group_size=1024)
    bits = bits_from_config(49152, 576, cfg, AdaptorConfig(table_dim=0, hidden_dims=()))
    groups = -(-49152 * 72 // 1024)
    assert bits["codebooks"] == 2 * groups * 16 * 8 * 16
    assert bits["sigma0"] == bits["mlp_weights"] == bits["norms"] == 0


def test_rtn_bits():
    assert rtn_bits(10, 128, 2) == 10 * 128 * 2 + 20 * 32
    assert rtn_bpw(2) == 2.5
