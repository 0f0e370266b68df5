"""Codec files: bit-exact round trip, atomic write; compress_matrix determinism and contract."""

import torch

from carvq_gguf.codec.bits import bpw
from carvq_gguf.codec.importance import token_weights
from carvq_gguf.codec.codec_file import load_codec, save_codec
from carvq_gguf.codec.compress import compress_matrix, rvq_only, without_corrections
from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.codec.presets import Preset, PRESETS, TrainConfig
from carvq_gguf.codec.state import AdaptorConfig, RvqConfig

from conftest import make_random_state


def test_save_load_round_trip(tmp_path):
    state = make_random_state(group_layout="block")
    path = tmp_path / "x.carvq"
    save_codec(state, path)
    back = load_codec(path)
    assert back.rvq == state.rvq and back.adaptor == state.adaptor and back.preset == state.preset
    for a, b in [(back.codes, state.codes), (back.codebooks, state.codebooks), (back.sigma0, state.sigma0),
                 (back.correction_ids, state.correction_ids), (back.correction_rows, state.correction_rows)]:
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(back.linears, state.linears))
    assert [p.name for p in tmp_path.iterdir()] == ["x.carvq"]  # no temporary file left


def test_save_load_round_trip_of_a_trellis_codec(tmp_path):
    from carvq_gguf.codec.state import TrellisConfig

    state = make_random_state(trellis=TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=3))
    save_codec(state, tmp_path / "t.carvq")
    back = load_codec(tmp_path / "t.carvq")
    assert back.quantizer == "trellis" and back.trellis.config == state.trellis.config and back.codes is None
    for part in ("streams", "tables", "columns"):
        assert torch.equal(getattr(back.trellis, part), getattr(state.trellis, part))
    assert torch.equal(CarvqEmbedding(back).decode_all(), CarvqEmbedding(state).decode_all())


def test_save_load_round_trip_of_predicted_rows(tmp_path):
    from carvq_gguf.codec.state import TrellisConfig

    state = make_random_state(trellis=TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=3), predicted=40)
    save_codec(state, tmp_path / "p.carvq")
    back = load_codec(tmp_path / "p.carvq")
    p, q = state.trellis.prediction, back.trellis.prediction
    assert q.scale_step == p.scale_step
    for part in ("rows", "roots", "scale_codes", "columns"):
        assert torch.equal(getattr(q, part), getattr(p, part)) and getattr(q, part).dtype == getattr(p, part).dtype
    assert torch.equal(CarvqEmbedding(back).decode_all(), CarvqEmbedding(state).decode_all())


def test_compress_matrix_contract_and_determinism(monkeypatch):
    # a small budgeted preset for a toy shape: L=2 column RVQ + tiny adaptor + correction rows
    toy = Preset("toy-3.0", 3.0, RvqConfig(levels=2), AdaptorConfig(table_dim=2, hidden_dims=(16,)),
                 TrainConfig(kmeans_iters=10, epochs=3, batch_size=256))
    monkeypatch.setitem(PRESETS, "toy-3.0", toy)
    gen = torch.Generator().manual_seed(0)
    E = torch.randn(2048, 32, generator=gen)
    w = token_weights(torch.randint(0, 64, (3000,), generator=gen).tolist(), 2048)
    a = compress_matrix(E, "toy-3.0", w, seed=1, progress=False)
    b = compress_matrix(E, "toy-3.0", w, seed=1, progress=False)
    assert bpw(a) <= 3.0 and a.n_correction_rows > 0 and a.adaptor.table_dim == 2
    assert torch.equal(a.codes, b.codes) and torch.equal(a.sigma0, b.sigma0)
    assert torch.equal(a.correction_rows, b.correction_rows)
    # correction rows go to the most frequent tokens and make them (F16-)exact
    top = torch.argsort(-w, stable=True)[:a.n_correction_rows].sort().values
    assert torch.equal(a.correction_ids.long(), top)
    decoded = CarvqEmbedding(a).decode_all()
    assert torch.allclose(decoded[top], E[top], atol=2e-3)
    plain = CarvqEmbedding(rvq_only(a)).decode_all()
    assert (decoded - E).abs().mean() < (plain - E).abs().mean()
    no_rows = without_corrections(a)
    assert no_rows.n_correction_rows == 0 and torch.equal(no_rows.sigma0, a.sigma0)
    rest = torch.ones(2048, dtype=torch.bool)
    rest[top] = False
    assert torch.equal(CarvqEmbedding(no_rows).decode_all()[rest], decoded[rest])
