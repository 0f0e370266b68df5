"""Round trips and rejections of the CARVQ tensors and carvq.* keys (docs/FORMAT.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFValueType, GGUFWriter
from gguf.gguf_writer import GGUFValue

from carvq_gguf.gguf import carvq_io
from carvq_gguf.codec.state import CarvqState, TrellisConfig
from carvq_gguf.errors import CarvqError
from conftest import make_random_state


def write_state(path: Path, state: CarvqState, set_keys: dict | None = None, drop_keys: tuple[str, ...] = (),
                replace_tensors: dict | None = None, drop_tensors: tuple[str, ...] = ()) -> Path:
    """Write state as a CARVQ-only llama GGUF, optionally tampering with keys and tensors."""
    writer = GGUFWriter(path, "llama")
    writer.add_uint32("llama.embedding_length", state.embedding_dim)
    carvq_io.add_carvq_metadata(writer, state)
    for key, (value, vtype) in (set_keys or {}).items():
        writer.kv_data[0][key] = GGUFValue(value=value, type=vtype)
    for key in drop_keys:
        del writer.kv_data[0][key]
    for name, arr in carvq_io.carvq_tensors(state):
        if name in drop_tensors:
            continue
        writer.add_tensor(name, (replace_tensors or {}).get(name, arr))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_states_identical(a: CarvqState, b: CarvqState) -> None:
    assert (a.vocab_size, a.embedding_dim, a.preset) == (b.vocab_size, b.embedding_dim, b.preset)
    if a.trellis is not None:  # a trellis file has no RVQ keys
        pass
    elif a.rvq.group_layout == "column":  # group_size is meaningless there and stored as 0
        assert dataclasses.replace(a.rvq, group_size=0) == dataclasses.replace(b.rvq, group_size=0)
    else:
        assert a.rvq == b.rvq
    assert a.adaptor == b.adaptor
    if a.trellis is None:
        assert b.trellis is None
        assert torch.equal(a.codes, b.codes)
        assert torch.equal(a.codebooks.view(torch.int16), b.codebooks.view(torch.int16))
    else:
        assert b.codes is None and b.codebooks is None and a.trellis.config == b.trellis.config
        assert torch.equal(a.trellis.streams, b.trellis.streams)
        for part in ("tables", "columns"):
            assert torch.equal(getattr(a.trellis, part).view(torch.int16), getattr(b.trellis, part).view(torch.int16))
        pa, pb = a.trellis.prediction, b.trellis.prediction
        assert (pa is None) == (pb is None)
        if pa is not None:
            for part in ("rows", "roots", "scale_codes"):
                assert torch.equal(getattr(pa, part), getattr(pb, part)), part
            assert pa.scale_step == pb.scale_step
            assert torch.equal(pa.columns.view(torch.int16), pb.columns.view(torch.int16))
    if a.sigma0 is None:
        assert b.sigma0 is None
    else:
        assert torch.equal(a.sigma0.view(torch.int16), b.sigma0.view(torch.int16))
    assert len(a.linears) == len(b.linears) and len(a.norms) == len(b.norms)
    for (wa, ba), (wb, bb) in zip(a.linears + a.norms, b.linears + b.norms):
        assert wa.dtype == wb.dtype and torch.equal(wa, wb) and torch.equal(ba, bb)
    assert torch.equal(a.correction_ids, b.correction_ids)
    if a.n_correction_rows:
        assert torch.equal(a.correction_rows.view(torch.int16), b.correction_rows.view(torch.int16))


@pytest.mark.parametrize("kwargs", [
    {},
    {"group_layout": "block"},
    {"table_dim": 0, "n_corrections": 0},
    {"levels": 3, "hidden_dims": ()},
    {"levels": 1, "n_corrections": 1, "hidden_dims": (16,)},
])
def test_round_trip_is_identical(tmp_path: Path, kwargs: dict) -> None:
    state = make_random_state(**kwargs)
    path = write_state(tmp_path / "s.gguf", state)
    back = carvq_io.load_carvq_state(path)
    assert_states_identical(state, back)


def test_round_trip_keeps_norm_eps_and_layout_values(tmp_path: Path) -> None:
    state = make_random_state(group_layout="block")
    state.adaptor = dataclasses.replace(state.adaptor, norm_eps=1e-5)
    back = carvq_io.load_carvq_state(write_state(tmp_path / "s.gguf", state))
    assert back.adaptor.norm_eps == 1e-5
    assert back.rvq.group_size == state.rvq.group_size == 40


def test_keys_and_tensor_layout_match_format(tmp_path: Path) -> None:
    state = make_random_state()
    reader = carvq_io.open_gguf(write_state(tmp_path / "s.gguf", state))
    tensors = {t.name: t for t in reader.tensors}
    V, n, L, S = 96, 64, 2, 8
    assert [int(d) for d in tensors["carvq_codes"].shape] == [L * S // 2, V]
    assert [int(d) for d in tensors["carvq_codebooks"].shape] == [8, 16, S, L]
    assert [int(d) for d in tensors["carvq_mlp.0.weight"].shape] == [8, 32]
    assert [int(d) for d in tensors["carvq_corr_rows"].shape] == [n, 3]
    # byte j of a level holds sub-vector 2j (low nibble) and 2j + 1 (high nibble)
    row = np.asarray(tensors["carvq_codes"].data[5]).view(np.uint8)
    assert int(row[S // 2 + 1] & 0x0F) == int(state.codes[5, 1, 2])
    assert int(row[S // 2 + 1] >> 4) == int(state.codes[5, 1, 3])
    assert reader.get_field("carvq.group_size").contents() == 0
    assert reader.get_field("carvq.adaptor.hidden_dims").contents() == [32, 48]
    assert reader.get_field("carvq.adaptor.activation").contents() == "relu"


def _bad(tmp_path: Path, **tamper) -> str:
    path = write_state(tmp_path / "bad.gguf", tamper.pop("state", None) or make_random_state(), **tamper)
    with pytest.raises(CarvqError) as e:
        carvq_io.load_carvq_state(path)
    return str(e.value)


def test_rejects_unknown_version(tmp_path: Path) -> None:
    msg = _bad(tmp_path, set_keys={"carvq.version": (4, GGUFValueType.UINT32)})
    assert "unsupported carvq.version 4" in msg


def test_rejects_version_of_wrong_type(tmp_path: Path) -> None:
    msg = _bad(tmp_path, set_keys={"carvq.version": ("1", GGUFValueType.STRING)})
    assert "carvq.version has type STRING" in msg


def test_rejects_missing_version_as_not_carvq(tmp_path: Path) -> None:
    assert "not a CARVQ-GGUF" in _bad(tmp_path, drop_keys=("carvq.version",))


@pytest.mark.parametrize("key", ["carvq.levels", "carvq.vocab_size", "carvq.group_layout",
                                 "carvq.adaptor.norm_epsilon", "carvq.correction_rows"])
def test_rejects_missing_key(tmp_path: Path, key: str) -> None:
    assert f"missing metadata key {key}" in _bad(tmp_path, drop_keys=(key,))


def test_rejects_embedding_length_that_disagrees_with_arch(tmp_path: Path) -> None:
    msg = _bad(tmp_path, set_keys={"llama.embedding_length": (72, GGUFValueType.UINT32)})
    assert "disagrees with llama.embedding_length" in msg


def test_rejects_shapes_that_disagree(tmp_path: Path) -> None:
    state = make_random_state()
    wrong = np.zeros((48, 32), dtype=np.float16)  # linear 0 should be [out=32, in=8]
    msg = _bad(tmp_path, state=state, replace_tensors={"carvq_mlp.0.weight": wrong})
    assert "tensor carvq_mlp.0.weight has ne [32, 48], expected [8, 32]" in msg


def test_rejects_index_tensor_of_wrong_size(tmp_path: Path) -> None:
    state = make_random_state()
    short = np.zeros((95, 8), dtype=np.int8)
    assert "tensor carvq_codes has ne [8, 95], expected [8, 96]" in _bad(
        tmp_path, state=state, replace_tensors={"carvq_codes": short})


def test_rejects_index_tensor_of_wrong_type(tmp_path: Path) -> None:
    state = make_random_state()
    as_f16 = np.zeros((96, 8), dtype=np.float16)
    assert "tensor carvq_codes has type F16, expected I8" in _bad(
        tmp_path, state=state, replace_tensors={"carvq_codes": as_f16})


def test_rejects_codebook_count_that_does_not_match_layout(tmp_path: Path) -> None:
    # written with the column layout (G = 8), but the keys claim blocks of 40 (G = ceil(96*8/40) = 20)
    msg = _bad(tmp_path, set_keys={"carvq.group_layout": ("block", GGUFValueType.STRING),
                                   "carvq.group_size": (40, GGUFValueType.UINT32)})
    assert "tensor carvq_codebooks has ne [8, 16, 8, 2], expected [8, 16, 20, 2]" in msg


def test_rejects_levels_that_disagree_with_tensors(tmp_path: Path) -> None:
    msg = _bad(tmp_path, set_keys={"carvq.levels": (3, GGUFValueType.UINT32)})
    assert "tensor carvq_codes has ne [8, 96], expected [12, 96]" in msg


def test_rejects_out_of_range_correction_ids(tmp_path: Path) -> None:
    state = make_random_state()
    ids = np.array([3, 50, 96], dtype=np.int32)
    msg = _bad(tmp_path, state=state, replace_tensors={"carvq_corr_ids": ids})
    assert "correction ids must lie in [0, 96)" in msg


def test_rejects_unsorted_correction_ids(tmp_path: Path) -> None:
    ids = np.array([50, 3, 7], dtype=np.int32)
    assert "sorted ascending and unique" in _bad(tmp_path, replace_tensors={"carvq_corr_ids": ids})


def test_rejects_code_values_beyond_codebook_size(tmp_path: Path) -> None:
    state = make_random_state()
    # declare K = 8 (kappa 3) while codes use all 16 values; the codebook tensor shape then differs too,
    # so give it the K = 8 shape to reach the code check
    books = state.codebooks[:, :, :8].numpy()
    msg = _bad(tmp_path, state=state, set_keys={"carvq.codebook_bits": (3, GGUFValueType.UINT32)},
               replace_tensors={"carvq_codebooks": books})
    assert "holds index 15 >= K=8" in msg


def test_rejects_missing_and_unexpected_tensors(tmp_path: Path) -> None:
    assert "tensor carvq_sigma0 missing" in _bad(tmp_path, drop_tensors=("carvq_sigma0",))
    assert "unexpected CARVQ tensors ['carvq_corr_ids', 'carvq_corr_rows']" in _bad(
        tmp_path, set_keys={"carvq.correction_rows": (0, GGUFValueType.UINT32)})


def test_rejects_unknown_activation(tmp_path: Path) -> None:
    msg = _bad(tmp_path, set_keys={"carvq.adaptor.activation": ("gelu", GGUFValueType.STRING)})
    assert "carvq.adaptor.activation is 'gelu'" in msg


def test_rejects_truncated_file(tmp_path: Path) -> None:
    path = write_state(tmp_path / "s.gguf", make_random_state())
    data = path.read_bytes()
    for cut in (len(data) - 100, 200, 10):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(CarvqError, match="truncated"):
            carvq_io.load_carvq_state(short)


def test_rejects_non_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CarvqError, match="not a readable GGUF"):
        carvq_io.load_carvq_state(path)


@pytest.mark.parametrize("kwargs", [{}, {"group_layout": "block", "levels": 3}, {"table_dim": 0}])
def test_reader_decode_is_bit_identical(tmp_path: Path, kwargs: dict) -> None:
    from carvq_gguf.codec.embedding import CarvqEmbedding

    state = make_random_state(**kwargs)
    back = carvq_io.load_carvq_state(write_state(tmp_path / "s.gguf", state))
    a = CarvqEmbedding(state).decode_all()
    b = CarvqEmbedding(back).decode_all()
    assert a.dtype == torch.float32 and torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# trellis files (version 2)

TRELLIS = TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=3)


def trellis_state(**kwargs) -> CarvqState:
    return make_random_state(trellis=kwargs.pop("trellis", TRELLIS), **kwargs)


@pytest.mark.parametrize("kwargs", [
    {},
    {"table_dim": 0, "n_corrections": 0},
    {"trellis": TrellisConfig(state_bits=10, step_bits=3, step_dim=2, groups=8), "hidden_dims": ()},
    {"trellis": TrellisConfig(state_bits=5, step_bits=4, step_dim=4, groups=1)},
])
def test_trellis_round_trip_is_identical_and_decodes_the_same(tmp_path: Path, kwargs: dict) -> None:
    from carvq_gguf.codec.embedding import CarvqEmbedding

    state = trellis_state(**kwargs)
    back = carvq_io.load_carvq_state(write_state(tmp_path / "t.gguf", state))
    assert_states_identical(state, back)
    assert torch.equal(CarvqEmbedding(state).decode_all(), CarvqEmbedding(back).decode_all())


def test_trellis_keys_and_tensor_layout_match_format(tmp_path: Path) -> None:
    state = trellis_state()
    reader = carvq_io.open_gguf(write_state(tmp_path / "t.gguf", state))
    tensors = {t.name: t for t in reader.tensors}
    V, n, T = 96, 64, 32
    assert reader.get_field("carvq.version").contents() == 2
    assert reader.get_field("carvq.quantizer").contents() == "trellis"
    assert [reader.get_field(f"carvq.trellis.{k}").contents() for k in ("state_bits", "step_bits", "step_dim",
                                                                        "groups")] == [6, 3, 2, 3]
    for key in ("carvq.levels", "carvq.subvector_dim", "carvq.codebook_bits", "carvq.group_layout", "carvq.group_size"):
        assert reader.get_field(key) is None
    assert [int(d) for d in tensors["carvq_trellis_codes"].shape] == [T * 3 // 8, V]
    assert [int(d) for d in tensors["carvq_trellis_tables"].shape] == [2, 64, 3]
    assert [int(d) for d in tensors["carvq_trellis_columns"].shape] == [n, 2]
    assert "carvq_codes" not in tensors and "carvq_codebooks" not in tensors
    # the first step's 3 bits are the top bits of byte 0, and they are the low bits of its state
    row = np.asarray(tensors["carvq_trellis_codes"].data[5]).view(np.uint8)
    from carvq_gguf.codec import trellis

    states = trellis.unpack_states(state.trellis.streams[5:6], T, TRELLIS)
    assert int(row[0] >> 5) == int(states[0, 0])


def test_a_version_1_file_is_still_written_for_rvq(tmp_path: Path) -> None:
    reader = carvq_io.open_gguf(write_state(tmp_path / "s.gguf", make_random_state()))
    assert reader.get_field("carvq.version").contents() == 1
    assert reader.get_field("carvq.quantizer") is None


@pytest.mark.parametrize("tamper, message", [
    ({"drop_keys": ("carvq.quantizer",)}, "missing metadata key carvq.quantizer"),
    ({"set_keys": {"carvq.quantizer": ("lattice", GGUFValueType.STRING)}}, "carvq.quantizer is 'lattice'"),
    ({"set_keys": {"carvq.version": (1, GGUFValueType.UINT32)}}, "carvq.quantizer is not a key of carvq.version 1"),
    ({"set_keys": {"carvq.trellis.state_bits": (17, GGUFValueType.UINT32)}}, "state_bits must be 2..16"),
    ({"set_keys": {"carvq.trellis.step_bits": (6, GGUFValueType.UINT32)}}, "below state_bits=6"),
    ({"set_keys": {"carvq.trellis.step_bits": (0, GGUFValueType.UINT32)}}, "step_bits must be 1..8"),
    ({"set_keys": {"carvq.trellis.step_dim": (3, GGUFValueType.UINT32)}}, "not divisible by the trellis step"),
    ({"set_keys": {"carvq.trellis.groups": (33, GGUFValueType.UINT32)}}, "groups must be 1..32"),
    ({"set_keys": {"carvq.trellis.groups": (0, GGUFValueType.UINT32)}}, "groups must be 1..32"),
    ({"set_keys": {"carvq.trellis.groups": (4, GGUFValueType.UINT32)}},
     "tensor carvq_trellis_tables has ne [2, 64, 3], expected [2, 64, 4]"),
    ({"set_keys": {"carvq.trellis.state_bits": (7, GGUFValueType.UINT32)}},
     "tensor carvq_trellis_tables has ne [2, 64, 3], expected [2, 128, 3]"),
    ({"set_keys": {"carvq.trellis.step_bits": (4, GGUFValueType.UINT32)}},
     "tensor carvq_trellis_codes has ne [12, 96], expected [16, 96]"),
    ({"set_keys": {"carvq.levels": (3, GGUFValueType.UINT32)}}, "must not carry the RVQ keys ['carvq.levels']"),
    ({"drop_tensors": ("carvq_trellis_columns",)}, "tensor carvq_trellis_columns missing"),
    ({"replace_tensors": {"carvq_trellis_columns": np.zeros((2, 64), dtype=np.float32)}},
     "tensor carvq_trellis_columns has type F32, expected F16"),
])
def test_trellis_file_rejections_name_the_problem(tmp_path: Path, tamper: dict, message: str) -> None:
    assert message in _bad(tmp_path, state=trellis_state(), **tamper)


def test_rvq_tensors_in_a_trellis_file_are_refused(tmp_path: Path) -> None:
    rvq = make_random_state()
    writer_state = trellis_state()
    path = tmp_path / "mixed.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_uint32("llama.embedding_length", 64)
    carvq_io.add_carvq_metadata(writer, writer_state)
    for name, arr in carvq_io.carvq_tensors(writer_state) + carvq_io.carvq_tensors(rvq)[:1]:
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CarvqError, match=r"unexpected CARVQ tensors \['carvq_codes'\]"):
        carvq_io.load_carvq_state(path)


# ---- predicted rows (version 3) ------------------------------------------------------------------

def predicted_state(vocab_size: int = 96, predicted: int = 30, **kwargs) -> CarvqState:
    return trellis_state(vocab_size=vocab_size, predicted=predicted, **kwargs)


@pytest.mark.parametrize("vocab_size, predicted", [(96, 30), (2, 1), (33, 32), (64, 1), (200, 150)])
def test_predicted_rows_round_trip_and_decode_the_same(tmp_path: Path, vocab_size: int, predicted: int) -> None:
    from carvq_gguf.codec.embedding import CarvqEmbedding

    state = predicted_state(vocab_size, predicted, n_corrections=1)
    back = carvq_io.load_carvq_state(write_state(tmp_path / "p.gguf", state))
    assert_states_identical(state, back)
    assert torch.equal(CarvqEmbedding(state).decode_all(), CarvqEmbedding(back).decode_all())


def test_predicted_rows_keys_and_tensor_layout_match_format(tmp_path: Path) -> None:
    state = predicted_state()
    p = state.trellis.prediction
    reader = carvq_io.open_gguf(write_state(tmp_path / "p.gguf", state))
    tensors = {t.name: t for t in reader.tensors}
    assert reader.get_field("carvq.version").contents() == 3
    assert reader.get_field("carvq.prediction.rows").contents() == 30
    assert reader.get_field("carvq.prediction.scale_step").contents() == pytest.approx(p.scale_step)
    assert [int(d) for d in tensors["carvq_pred_map"].shape] == [2, 3]
    assert [int(d) for d in tensors["carvq_pred_refs"].shape] == [30]
    assert [int(d) for d in tensors["carvq_pred_columns"].shape] == [64, 2]
    words = np.asarray(tensors["carvq_pred_map"].data).view(np.uint32)
    rows = p.rows.tolist()
    for t in range(96):  # bit t % 32 of block t // 32 marks row t; the block's count is of the rows before it
        assert bool(words[t // 32, 0] >> (t % 32) & 1) == (t in rows)
    assert words[:, 1].tolist() == [sum(r < 32 * b for r in rows) for b in range(3)]
    refs = np.asarray(tensors["carvq_pred_refs"].data).view(np.uint32)
    assert (refs & 0xFFFFFF).tolist() == p.roots.tolist()
    assert (refs >> 24).astype(np.uint8).view(np.int8).tolist() == p.scale_codes.tolist()


def test_decode_of_a_predicted_row_follows_the_format() -> None:
    from carvq_gguf.codec import trellis

    state = predicted_state(table_dim=0, n_corrections=0)
    t, p = state.trellis, state.trellis.prediction
    j = next(j for j in range(p.count) if int(p.roots[j]) not in p.rows.tolist())  # a root not predicted itself
    row, root, code = int(p.rows[j]), int(p.roots[j]), int(p.scale_codes[j])
    plain = dataclasses.replace(t, prediction=None)
    values = trellis.table_values(plain, torch.tensor([row, root]))
    scale, own_scale, own_mean = t.columns[0].float(), p.columns[0].float(), p.columns[1].float()
    expected = p.scale_step * code * values[1] * scale + values[0] * own_scale + own_mean
    got = trellis.decode(t, torch.tensor([row, root]))
    assert torch.allclose(got[0], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1], trellis.decode(plain, torch.tensor([root]))[0])  # a root decodes as it would alone


def _map_with(state: CarvqState, edit) -> np.ndarray:
    words = carvq_io.prediction_map(state.trellis.prediction.rows, state.vocab_size).view(np.uint32).copy()
    edit(words)
    return words.view(np.int32)


def _refs_with(state: CarvqState, edit) -> np.ndarray:
    p = state.trellis.prediction
    words = carvq_io.prediction_words(p.roots, p.scale_codes).view(np.uint32).copy()
    edit(words)
    return words.view(np.int32)


def _last_unpredicted(state: CarvqState) -> int:
    return max(set(range(state.vocab_size)) - set(state.trellis.prediction.rows.tolist()))


@pytest.mark.parametrize("tamper, message", [
    (lambda s: {"set_keys": {"carvq.version": (2, GGUFValueType.UINT32)}},
     "['carvq.prediction.rows', 'carvq.prediction.scale_step'] are keys of carvq.version 3 only"),
    (lambda s: {"set_keys": {"carvq.prediction.rows": (0, GGUFValueType.UINT32)}}, "carvq.prediction.rows = 0 must be 1..95"),
    (lambda s: {"set_keys": {"carvq.prediction.rows": (96, GGUFValueType.UINT32)}}, "carvq.prediction.rows = 96 must be"),
    (lambda s: {"set_keys": {"carvq.prediction.scale_step": (0.0, GGUFValueType.FLOAT32)}}, "finite and > 0"),
    (lambda s: {"set_keys": {"carvq.prediction.scale_step": (float("nan"), GGUFValueType.FLOAT32)}}, "finite and > 0"),
    (lambda s: {"drop_keys": ("carvq.prediction.scale_step",)}, "missing metadata key carvq.prediction.scale_step"),
    (lambda s: {"drop_tensors": ("carvq_pred_refs",)}, "tensor carvq_pred_refs missing"),
    (lambda s: {"set_keys": {"carvq.prediction.rows": (31, GGUFValueType.UINT32)}},
     "tensor carvq_pred_refs has ne [30], expected [31]"),
    (lambda s: {"replace_tensors": {"carvq_pred_map": _map_with(s, lambda w: w.__setitem__((1, 1), w[1, 1] + 1))}},
     "carvq_pred_map block 1 counts"),
    (lambda s: {"replace_tensors": {"carvq_pred_map": _map_with(s, lambda w: w.__setitem__((0, 1), 7))}},
     "carvq_pred_map block 0 counts 7"),
    (lambda s: {"replace_tensors": {"carvq_pred_map": _map_with(s, lambda w: w.__setitem__(
        (2, 0), w[2, 0] | (1 << (_last_unpredicted(s) - 64))))}}, "carvq_pred_map marks 31 predicted rows"),
    (lambda s: {"replace_tensors": {"carvq_pred_refs": _refs_with(s, lambda w: w.__setitem__(4, (w[4] & 0xFF000000) | 96))}},
     "carvq_pred_refs holds root 96 >= V = 96"),
    (lambda s: {"replace_tensors": {"carvq_pred_refs": _refs_with(s, lambda w: w.__setitem__(
        4, (w[4] & 0xFF000000) | int(s.trellis.prediction.rows[4])))}}, "make a chain of more than 4 links, or a cycle"),
])
def test_predicted_row_rejections_name_the_problem(tmp_path: Path, tamper, message: str) -> None:
    state = predicted_state()
    assert message in _bad(tmp_path, state=state, **tamper(state))


def test_map_bits_past_the_vocabulary_are_refused(tmp_path: Path) -> None:
    state = predicted_state(vocab_size=40, predicted=10)

    def edit(w: np.ndarray) -> None:  # row 45 (block 1, bit 13), past V = 40
        w[1, 0] |= 1 << 13

    msg = _bad(tmp_path, state=state, replace_tensors={"carvq_pred_map": _map_with(state, edit)})
    assert "carvq_pred_map marks row 45 >= V = 40" in msg


def test_prediction_tensors_in_a_version_2_file_are_refused(tmp_path: Path) -> None:
    state = predicted_state()
    msg = _bad(tmp_path, state=state, set_keys={"carvq.version": (2, GGUFValueType.UINT32)},
               drop_keys=("carvq.prediction.rows", "carvq.prediction.scale_step"))
    assert "unexpected CARVQ tensors ['carvq_pred_columns', 'carvq_pred_map', 'carvq_pred_refs']" in msg
