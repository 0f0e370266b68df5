"""The patched loader refuses bad CARVQ-GGUF files with a clear error and never crashes; the
quantizer copies CARVQ tensors unchanged; the stock build refuses CARVQ files.

Every load runs in a subprocess: an abort or an out-of-bounds read would kill it with a signal
(negative return code) instead of the Python ValueError llama-cpp-python raises on a load error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from carvq_gguf.runtime import build as runtime
from carvq_gguf.gguf import rewrite as gguf_source
from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.codec.state import TrellisConfig
from conftest import make_random_state
from test_runtime_parity import ROW_TOL, embedding_rows, row_errors, tiny_base, vocab_and_width, write_carvq

pytestmark = pytest.mark.runtime
_ = tiny_base  # the session fixture, shared with the parity tests

LOAD = "import sys, llama_cpp\nllama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=True)\nprint('LOADED')\n"


def load_in_subprocess(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)


def rewrite(src: Path, out: Path, keys: dict[str, Any] | None = None,
            tensors: dict[str, np.ndarray | None] | None = None) -> Path:
    """Copy a GGUF with some keys set ((value, GGUFValueType) or None to drop) and some tensors
    replaced (array, or None to drop); new tensors are appended."""
    keys, tensors = keys or {}, dict(tensors or {})
    reader = GGUFReader(src)
    writer = GGUFWriter(out, gguf_source.architecture(reader))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in keys:
            if keys[name] is not None:
                value, vtype = keys.pop(name)
                writer.add_key_value(name, value, vtype)
            continue
        value, vtype, sub = gguf_source.field_value(field)
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for name, (value, vtype) in ((k, v) for k, v in keys.items() if v is not None):
        writer.add_key_value(name, value, vtype)
    for t in reader.tensors:
        if t.name in tensors:
            arr = tensors.pop(t.name)
            if arr is not None:
                writer.add_tensor(t.name, arr)
        else:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    for name, arr in tensors.items():
        if arr is not None:
            writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def good(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny tied llama source, its valid CARVQ-GGUF with block layout, adaptor and 3 corrections)."""
    source = tiny_base("llama")
    V, n = vocab_and_width(source)
    state = make_random_state(vocab_size=V, embedding_dim=n, group_layout="block", seed=7)
    return source, write_carvq(source, state, tmp_path_factory.mktemp("good") / "carvq.gguf")


@pytest.fixture(scope="module")
def good_trellis(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny tied llama source, its valid trellis-coded CARVQ-GGUF with adaptor and 3 corrections)."""
    source = tiny_base("llama")
    V, n = vocab_and_width(source)
    state = make_random_state(vocab_size=V, embedding_dim=n, seed=8, trellis=TrellisConfig(groups=4))
    return source, write_carvq(source, state, tmp_path_factory.mktemp("good_trellis") / "carvq.gguf")


def tensor(path: Path, name: str) -> np.ndarray:
    return np.array(next(t for t in GGUFReader(path).tensors if t.name == name).data)


U32, STR = GGUFValueType.UINT32, GGUFValueType.STRING


def test_the_valid_file_loads(good: tuple[Path, Path]) -> None:
    result = load_in_subprocess(good[1])
    assert result.returncode == 0 and "LOADED" in result.stdout, result.stderr[-2000:]
    assert "CARVQ token embeddings" in result.stderr


BAD_CASES = {
    "version": (lambda g: dict(keys={"carvq.version": (4, U32)}), "unsupported carvq.version 4"),
    "vocab_size": (lambda g: dict(keys={"carvq.vocab_size": (7, U32)}), "does not match the model's vocab"),
    "subvector_dim": (lambda g: dict(keys={"carvq.subvector_dim": (5, U32)}), "even number of sub-vectors"),
    "codebook_bits": (lambda g: dict(keys={"carvq.codebook_bits": (5, U32)}), "codebook_bits must be 1..4"),
    "layout": (lambda g: dict(keys={"carvq.group_layout": ("rows", STR)}), "unknown group_layout 'rows'"),
    "block_size_zero": (lambda g: dict(keys={"carvq.group_size": (0, U32)}), "group_size must be >= 1"),
    "activation": (lambda g: dict(keys={"carvq.adaptor.activation": ("gelu", STR)}), "activation 'gelu'"),
    "missing_key": (lambda g: dict(keys={"carvq.levels": None}), "carvq.levels"),
    "too_many_corrections": (lambda g: dict(keys={"carvq.correction_rows": (10 ** 6, U32)}), "correction rows for a vocab"),
    # a codebook count G that does not match the layout and group size
    "group_count": (lambda g: dict(keys={"carvq.group_size": (41, U32)}), "carvq_codebooks"),
    "codes_shape": (lambda g: dict(tensors={"carvq_codes": tensor(g, "carvq_codes")[:, :-1].copy()}), "carvq_codes"),
    "codes_type": (lambda g: dict(tensors={"carvq_codes": tensor(g, "carvq_codes").astype(np.int16)}),
                   "carvq_codes' has type i16, expected i8"),
    "sigma0_type": (lambda g: dict(tensors={"carvq_sigma0": tensor(g, "carvq_sigma0").astype(np.float32)}),
                    "carvq_sigma0' has type f32, expected f16"),
    "missing_tensor": (lambda g: dict(tensors={"carvq_mlp.2.bias": None}), "carvq_mlp.2.bias"),
    "extra_tensor": (lambda g: dict(tensors={"carvq_mlp.3.weight": np.zeros((4, 4), np.float16)}),
                     "wrong number of tensors"),
    # the other quantizer's tensors are named, not only counted
    "trellis_tensor": (lambda g: dict(tensors={"carvq_trellis_columns": np.zeros((2, 64), np.float16)}),
                       "an RVQ file must not carry the tensor carvq_trellis_columns"),
    "token_embd_too": (lambda g: dict(tensors={"token_embd.weight": np.zeros((256, 64), np.float16)}),
                       "both carvq tensors and token_embd.weight"),
    "tied_head": (lambda g: dict(tensors={"output.weight": None}), "no output.weight"),
    "unsorted_ids": (lambda g: dict(tensors={"carvq_corr_ids": tensor(g, "carvq_corr_ids")[::-1].copy()}),
                     "sorted and unique"),
    "id_out_of_range": (lambda g: dict(tensors={"carvq_corr_ids": np.array([0, 1, 256], np.int32)}),
                        "correction id 256 out of range"),
    # kappa = 3 (K = 8) while the codes use all 16 values: a code would index past its codebook
    "codes_beyond_k": (lambda g: dict(keys={"carvq.codebook_bits": (3, U32)},
                                      tensors={"carvq_codebooks": tensor(g, "carvq_codebooks")[:, :, :8].copy()}),
                       "K = 8"),
}


# the same for a trellis file (carvq.version 2): every key range the op's graph-build asserts rely on
TRELLIS_BAD_CASES = {
    "no_quantizer": (lambda g: dict(keys={"carvq.quantizer": None}), "carvq.quantizer is required"),
    "quantizer_in_v1": (lambda g: dict(keys={"carvq.version": (1, U32)}), "carvq.quantizer is not a key"),
    "unknown_quantizer": (lambda g: dict(keys={"carvq.quantizer": ("lattice", STR)}), "unknown carvq.quantizer"),
    "rvq_key": (lambda g: dict(keys={"carvq.levels": (3, U32)}), "must not carry carvq.levels"),
    "rvq_tensor": (lambda g: dict(tensors={"carvq_codebooks": np.zeros((1, 2, 16, 8), np.float16)}),
                   "a trellis file must not carry the tensor carvq_codebooks"),
    "state_bits": (lambda g: dict(keys={"carvq.trellis.state_bits": (17, U32)}), "state_bits must be 2..16"),
    "step_bits_zero": (lambda g: dict(keys={"carvq.trellis.step_bits": (0, U32)}), "step_bits must be 1..8"),
    "step_bits_above_state": (lambda g: dict(keys={"carvq.trellis.state_bits": (3, U32)}), "below state_bits = 3"),
    "step_dim": (lambda g: dict(keys={"carvq.trellis.step_dim": (3, U32)}), "not a multiple of the trellis step_dim"),
    "step_dim_zero": (lambda g: dict(keys={"carvq.trellis.step_dim": (0, U32)}), "trellis step_dim 0"),
    "groups_zero": (lambda g: dict(keys={"carvq.trellis.groups": (0, U32)}), "groups must be 1..32"),
    "groups_beyond_steps": (lambda g: dict(keys={"carvq.trellis.groups": (33, U32)}), "groups must be 1..32"),
    "tables_shape": (lambda g: dict(keys={"carvq.trellis.groups": (5, U32)}), "carvq_trellis_tables"),
    "codes_shape": (lambda g: dict(keys={"carvq.trellis.step_bits": (4, U32)}), "carvq_trellis_codes"),
    "columns_type": (lambda g: dict(tensors={"carvq_trellis_columns": tensor(g, "carvq_trellis_columns").astype(np.float32)}),
                     "carvq_trellis_columns' has type f32, expected f16"),
    "missing_tables": (lambda g: dict(tensors={"carvq_trellis_tables": None}), "carvq_trellis_tables"),
}


@pytest.fixture(scope="module")
def good_predicted(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny tied llama source, its valid CARVQ-GGUF with predicted rows, carvq.version 3)."""
    source = tiny_base("llama")
    V, n = vocab_and_width(source)
    state = make_random_state(vocab_size=V, embedding_dim=n, table_dim=0, seed=9, trellis=TrellisConfig(groups=4),
                              predicted=V // 3)
    return source, write_carvq(source, state, tmp_path_factory.mktemp("good_predicted") / "carvq.gguf")


def _map(g: Path, edit) -> np.ndarray:
    words = tensor(g, "carvq_pred_map").view(np.uint32).copy()
    edit(words)
    return words.view(np.int32)


def _refs(g: Path, edit) -> np.ndarray:
    words = tensor(g, "carvq_pred_refs").view(np.uint32).copy()
    edit(words)
    return words.view(np.int32)


def _first_predicted_row(g: Path) -> int:
    """The row that word 0 of carvq_pred_refs belongs to."""
    words = tensor(g, "carvq_pred_map").view(np.uint32)
    return int(np.flatnonzero((words[:, 0:1] >> np.arange(32, dtype=np.uint32)) & 1)[0])


def _unpredicted_bit_of_last_block(g: Path) -> tuple[int, int]:
    words = tensor(g, "carvq_pred_map").view(np.uint32)
    V = int(next(f for f in GGUFReader(g).fields.values() if f.name == "carvq.vocab_size").contents())
    last = words.shape[0] - 1
    bit = next(i for i in range(32) if 32 * last + i < V and not (int(words[last, 0]) >> i) & 1)
    return last, bit


def _set_bit(block_bit: tuple[int, int]):
    block, bit = block_bit
    return lambda w: w.__setitem__((block, 0), w[block, 0] | np.uint32(1 << bit))


# the same for predicted rows (carvq.version 3): keys, tensors, and the map and roots the op reads
PREDICTED_BAD_CASES = {
    "keys_in_v2": (lambda g: dict(keys={"carvq.version": (2, U32)}),
                   "a carvq.version 2 file must not carry carvq.prediction.rows"),
    "tensors_in_v2": (lambda g: dict(keys={"carvq.version": (2, U32), "carvq.prediction.rows": None,
                                           "carvq.prediction.scale_step": None}),
                      "a carvq.version 2 file must not carry the tensor carvq_pred_map"),
    "rvq_v3": (lambda g: dict(keys={"carvq.quantizer": ("rvq", STR)}), "carvq.version 3 requires carvq.quantizer"),
    "rows_zero": (lambda g: dict(keys={"carvq.prediction.rows": (0, U32)}), "prediction rows must be 1.."),
    "scale_step_nan": (lambda g: dict(keys={"carvq.prediction.scale_step": (float("nan"), GGUFValueType.FLOAT32)}),
                       "scale_step must be finite and > 0"),
    "scale_step_negative": (lambda g: dict(keys={"carvq.prediction.scale_step": (-1.0, GGUFValueType.FLOAT32)}),
                            "scale_step must be finite and > 0"),
    "refs_shape": (lambda g: dict(tensors={"carvq_pred_refs": tensor(g, "carvq_pred_refs")[:-1].copy()}),
                   "carvq_pred_refs"),
    "map_type": (lambda g: dict(tensors={"carvq_pred_map": tensor(g, "carvq_pred_map").astype(np.float32)}),
                 "carvq_pred_map' has type f32, expected i32"),
    "missing_columns": (lambda g: dict(tensors={"carvq_pred_columns": None}), "carvq_pred_columns"),
    "rank": (lambda g: dict(tensors={"carvq_pred_map": _map(g, lambda w: w.__setitem__((1, 1), w[1, 1] + 1))}),
             "prediction map gives"),
    "rank_negative": (lambda g: dict(tensors={"carvq_pred_map": _map(g, lambda w: w.__setitem__((0, 1), 2 ** 31))}),
                      "prediction map gives"),
    "count": (lambda g: dict(tensors={"carvq_pred_map": _map(g, _set_bit(_unpredicted_bit_of_last_block(g)))}),
              "prediction map marks"),
    "root_out_of_range": (lambda g: dict(tensors={"carvq_pred_refs": _refs(g, lambda w: w.__setitem__(
        0, (w[0] & 0xFF000000) | 0xFFFFFF))}), "outside the vocab"),
    "root_cycle": (lambda g: dict(tensors={"carvq_pred_refs": _refs(g, lambda w: w.__setitem__(  # its own root
        0, (w[0] & 0xFF000000) | _first_predicted_row(g)))}), "make a chain of more than 4 links, or a cycle"),
}


def _refused(source: Path, tmp_path: Path, case: str, edit, message: str) -> None:
    bad = rewrite(source, tmp_path / f"{case}.gguf", **edit(source))
    result = load_in_subprocess(bad)
    assert result.returncode == 1, f"rc={result.returncode} (negative = killed by a signal)\n{result.stderr[-3000:]}"
    assert "LOADED" not in result.stdout
    assert message in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_are_refused_without_crashing(good: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    _refused(good[1], tmp_path, case, *BAD_CASES[case])


@pytest.mark.parametrize("case", sorted(TRELLIS_BAD_CASES))
def test_bad_trellis_files_are_refused_without_crashing(good_trellis: tuple[Path, Path], tmp_path: Path,
                                                        case: str) -> None:
    _refused(good_trellis[1], tmp_path, case, *TRELLIS_BAD_CASES[case])


@pytest.mark.parametrize("case", sorted(PREDICTED_BAD_CASES))
def test_bad_predicted_row_files_are_refused_without_crashing(good_predicted: tuple[Path, Path], tmp_path: Path,
                                                              case: str) -> None:
    _refused(good_predicted[1], tmp_path, case, *PREDICTED_BAD_CASES[case])


def test_the_valid_predicted_row_file_loads_and_decodes_every_row(good_predicted: tuple[Path, Path]) -> None:
    from carvq_gguf.gguf.carvq_io import load_carvq_state

    path = good_predicted[1]
    state = load_carvq_state(path)
    ids = list(range(state.vocab_size))
    assert row_errors(embedding_rows(path, ids), CarvqEmbedding(state)(torch.tensor(ids)).numpy()).max() <= ROW_TOL


def test_the_valid_trellis_file_loads(good_trellis: tuple[Path, Path]) -> None:
    result = load_in_subprocess(good_trellis[1])
    assert result.returncode == 0 and "LOADED" in result.stdout, result.stderr[-2000:]
    assert "CARVQ token embeddings: trellis L = 10, k = 3, d = 2, 4 tables" in result.stderr


def test_quantizer_copies_carvq_tensors_unchanged(good: tuple[Path, Path], tmp_path: Path) -> None:
    source, carvq = good
    out = tmp_path / "q8.gguf"
    result = subprocess.run([str(runtime.tool_path("llama-quantize")), str(carvq), str(out), "Q8_0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    before = {t.name: t for t in GGUFReader(carvq).tensors}
    after = {t.name: t for t in GGUFReader(out).tensors}
    assert set(before) == set(after)
    carvq_names = [name for name in before if name.startswith("carvq_")]
    assert len(carvq_names) == 15
    for name in carvq_names:
        assert after[name].tensor_type == before[name].tensor_type, name
        assert np.array_equal(np.asarray(after[name].data), np.asarray(before[name].data)), name
    assert after["blk.0.ffn_up.weight"].tensor_type.name == "Q8_0"  # the rest was quantized
    state = gguf_source_state(carvq)
    ids = list(range(state.vocab_size))
    got = embedding_rows(out, ids)
    assert row_errors(got, CarvqEmbedding(state)(torch.tensor(ids)).numpy()).max() <= ROW_TOL


def gguf_source_state(path: Path):
    from carvq_gguf.gguf import carvq_io
    return carvq_io.load_carvq_state(path)


def test_stock_llama_cpp_python_refuses_a_carvq_file(good: tuple[Path, Path]) -> None:
    result = load_in_subprocess(good[1], env=runtime.stock_python_env())
    assert result.returncode == 1, result.stderr[-2000:]
    assert "tensor 'token_embd.weight' not found" in result.stderr
