"""Write a CarvqState into a GGUF file and read it back, as docs/FORMAT.md specifies.

This is the thin layer between the codec state (codec/state.py) and gguf-py: it only turns tensors
and settings into `carvq.*` keys and `carvq_*` tensors and back, and checks every key, type,
shape, size and index range on the way in. Copying the rest of a model is rewrite.py's job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

from ..codec.packing import pack_codes, unpack_codes
from ..codec.state import (GROUP_LAYOUTS, MAX_PREDICTED_VOCAB, MAX_PREDICTION_CHAIN, AdaptorConfig, CarvqState,
                           RowPrediction, RvqConfig, TrellisCodes, TrellisConfig, chain_lengths)
from ..errors import CarvqError
from .names import (ACTIVATIONS, FORMAT_VERSION, KEY_ACTIVATION, KEY_CODEBOOK_BITS,
                    KEY_CORRECTION_ROWS, KEY_EMBEDDING_LENGTH, KEY_GROUP_LAYOUT, KEY_GROUP_SIZE,
                    KEY_HIDDEN_DIMS, KEY_LEVELS, KEY_NORM_EPS, KEY_PREDICTION_ROWS, KEY_PREDICTION_SCALE_STEP,
                    KEY_PRESET, KEY_QUANTIZER, KEY_SUBVECTOR_DIM, PREDICTION_FORMAT_VERSION,
                    KEY_TABLE_DIM, KEY_TRELLIS_GROUPS, KEY_TRELLIS_STATE_BITS, KEY_TRELLIS_STEP_BITS,
                    KEY_TRELLIS_STEP_DIM, KEY_VERSION, KEY_VOCAB_SIZE, QUANTIZERS, TENSOR_CODEBOOKS, TENSOR_CODES,
                    TENSOR_CORR_IDS, TENSOR_CORR_ROWS, TENSOR_PRED_COLUMNS, TENSOR_PRED_MAP, TENSOR_PRED_REFS,
                    TENSOR_PREFIX, TENSOR_SIGMA0, TENSOR_TRELLIS_CODES,
                    TENSOR_TRELLIS_COLUMNS, TENSOR_TRELLIS_TABLES, TOKEN_EMBD, TRELLIS_FORMAT_VERSION,
                    mlp_bias_name, mlp_weight_name, norm_bias_name, norm_weight_name)

_F16 = GGMLQuantizationType.F16
_F32 = GGMLQuantizationType.F32
_I8 = GGMLQuantizationType.I8
_I32 = GGMLQuantizationType.I32


# ---------------------------------------------------------------------------------------------
# writing

def carvq_tensors(state: CarvqState) -> list[tuple[str, np.ndarray]]:
    """The CARVQ tensors of a state as (name, numpy array) in file order.

    Each array's numpy dtype selects its ggml type (int8 -> I8, float16 -> F16, float32 -> F32,
    int32 -> I32) and its numpy shape is the reverse of the ggml ne.
    """
    state.check()
    if state.trellis is None:
        out: list[tuple[str, np.ndarray]] = [
            (TENSOR_CODES, pack_codes(state.codes).numpy().view(np.int8)),
            (TENSOR_CODEBOOKS, state.codebooks.numpy()),
        ]
    else:
        out = [
            (TENSOR_TRELLIS_CODES, state.trellis.streams.numpy().view(np.int8)),
            (TENSOR_TRELLIS_TABLES, state.trellis.tables.numpy()),
            (TENSOR_TRELLIS_COLUMNS, state.trellis.columns.numpy()),
        ]
        p = state.trellis.prediction
        if p is not None:
            out += [
                (TENSOR_PRED_MAP, prediction_map(p.rows, state.vocab_size)),
                (TENSOR_PRED_REFS, prediction_words(p.roots, p.scale_codes)),
                (TENSOR_PRED_COLUMNS, p.columns.numpy()),
            ]
    if state.adaptor.enabled:
        assert state.sigma0 is not None
        out.append((TENSOR_SIGMA0, state.sigma0.numpy()))
        for i, (w, b) in enumerate(state.linears):
            out.append((mlp_weight_name(i), w.numpy()))
            out.append((mlp_bias_name(i), b.numpy()))
        for i, (w, b) in enumerate(state.norms):
            out.append((norm_weight_name(i), w.numpy()))
            out.append((norm_bias_name(i), b.numpy()))
    if state.n_correction_rows:
        assert state.correction_rows is not None
        out.append((TENSOR_CORR_IDS, state.correction_ids.numpy()))
        out.append((TENSOR_CORR_ROWS, state.correction_rows.numpy()))
    return [(name, np.ascontiguousarray(arr)) for name, arr in out]


def _format_version(state: CarvqState) -> int:
    """The oldest carvq.version that holds state, so older runtimes read what they can."""
    if state.trellis is None:
        return FORMAT_VERSION
    return TRELLIS_FORMAT_VERSION if state.trellis.prediction is None else PREDICTION_FORMAT_VERSION


def prediction_map(rows: torch.Tensor, vocab_size: int) -> np.ndarray:
    """int32 [ceil(V / 32), 2] (ggml ne [2, ceil(V / 32)]): per block of 32 rows the bit mask of
    its predicted rows and the count of predicted rows in the blocks before it."""
    blocks = -(-vocab_size // 32)
    bits = np.zeros(blocks * 32, dtype=np.uint64)
    bits[rows.long().numpy()] = 1
    masks = (bits.reshape(blocks, 32) << np.arange(32, dtype=np.uint64)).sum(1).astype(np.uint32)
    counts = bits.reshape(blocks, 32).sum(1).astype(np.uint32)
    ranks = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint32)
    return np.stack([masks, ranks], axis=1).view(np.int32)


def prediction_words(roots: torch.Tensor, scale_codes: torch.Tensor) -> np.ndarray:
    """int32 [P]: each root id in bits 0-23 and its int8 scale code in bits 24-31."""
    words = roots.numpy().astype(np.uint32) | (scale_codes.numpy().view(np.uint8).astype(np.uint32) << 24)
    return words.view(np.int32)


def add_carvq_metadata(writer: GGUFWriter, state: CarvqState) -> None:
    """Add every carvq.* key describing state to writer (in the order FORMAT.md lists them)."""
    state.check()
    r, a, t = state.rvq, state.adaptor, state.trellis
    writer.add_uint32(KEY_VERSION, _format_version(state))
    if t is not None:
        writer.add_string(KEY_QUANTIZER, state.quantizer)
    writer.add_uint32(KEY_VOCAB_SIZE, state.vocab_size)
    writer.add_uint32(KEY_EMBEDDING_LENGTH, state.embedding_dim)
    if t is None:
        writer.add_uint32(KEY_SUBVECTOR_DIM, r.subvector_dim)
        writer.add_uint32(KEY_CODEBOOK_BITS, r.codebook_bits)
        writer.add_uint32(KEY_LEVELS, r.levels)
        writer.add_string(KEY_GROUP_LAYOUT, r.group_layout)
        writer.add_uint32(KEY_GROUP_SIZE, r.group_size if r.group_layout == "block" else 0)
    else:
        writer.add_uint32(KEY_TRELLIS_STATE_BITS, t.config.state_bits)
        writer.add_uint32(KEY_TRELLIS_STEP_BITS, t.config.step_bits)
        writer.add_uint32(KEY_TRELLIS_STEP_DIM, t.config.step_dim)
        writer.add_uint32(KEY_TRELLIS_GROUPS, t.config.groups)
        if t.prediction is not None:
            writer.add_uint32(KEY_PREDICTION_ROWS, t.prediction.count)
            writer.add_float32(KEY_PREDICTION_SCALE_STEP, t.prediction.scale_step)
    writer.add_uint32(KEY_TABLE_DIM, a.table_dim)
    if a.enabled:
        if a.hidden_dims:  # gguf cannot store an empty array: absent means no hidden layer
            writer.add_key_value(KEY_HIDDEN_DIMS, [int(d) for d in a.hidden_dims], GGUFValueType.ARRAY,
                                 sub_type=GGUFValueType.UINT32)
        writer.add_string(KEY_ACTIVATION, "relu")
        writer.add_float32(KEY_NORM_EPS, a.norm_eps)
    writer.add_uint32(KEY_CORRECTION_ROWS, state.n_correction_rows)
    if state.preset:
        writer.add_string(KEY_PRESET, state.preset)


# ---------------------------------------------------------------------------------------------
# reading

def open_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Open a GGUF file read-only; a missing, truncated or malformed file raises CarvqError."""
    path = Path(path)
    if not path.is_file():
        raise CarvqError(f"{path}: no such file")
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # gguf-py raises ValueError, struct/numpy errors, ... on bad bytes
        raise CarvqError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e
    file_size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > file_size:
            raise CarvqError(f"{path}: tensor {t.name} ends at byte {t.data_offset + t.n_bytes} "
                             f"but the file has {file_size} bytes (truncated)")
    return reader


def is_carvq(reader: GGUFReader) -> bool:
    """True if the file carries CARVQ metadata (any version)."""
    return reader.get_field(KEY_VERSION) is not None


def _scalar(reader: GGUFReader, key: str, vtype: GGUFValueType, required: bool = True) -> Any:
    field = reader.get_field(key)
    if field is None:
        if required:
            raise CarvqError(f"missing metadata key {key}")
        return None
    if field.types != [vtype]:
        got = "/".join(t.name for t in field.types)
        raise CarvqError(f"metadata key {key} has type {got}, expected {vtype.name}")
    return field.contents()


def _uint_array(reader: GGUFReader, key: str) -> tuple[int, ...] | None:
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types != [GGUFValueType.ARRAY, GGUFValueType.UINT32]:
        got = "/".join(t.name for t in field.types)
        raise CarvqError(f"metadata key {key} has type {got}, expected ARRAY of UINT32")
    return tuple(int(v) for v in field.contents())


def _float32_value(x: float) -> float:
    """The shortest decimal that reads back as the same float32, so 1e-5 stays 1e-5."""
    return float(str(np.float32(x)))


def read_format_version(reader: GGUFReader) -> int:
    """carvq.version of the file; CarvqError if absent, mistyped or not a version we know."""
    if not is_carvq(reader):
        raise CarvqError(f"not a CARVQ-GGUF: metadata key {KEY_VERSION} missing")
    version = int(_scalar(reader, KEY_VERSION, GGUFValueType.UINT32))
    known = (FORMAT_VERSION, TRELLIS_FORMAT_VERSION, PREDICTION_FORMAT_VERSION)
    if version not in known:
        raise CarvqError(f"unsupported {KEY_VERSION} {version}: this reader knows versions "
                         f"{', '.join(map(str, known))}")
    return version


def read_quantizer(reader: GGUFReader) -> str:
    """carvq.quantizer of the file ("rvq" for version 1, which has no such key), checked."""
    version = read_format_version(reader)
    if version == FORMAT_VERSION:
        if reader.get_field(KEY_QUANTIZER) is not None:
            raise CarvqError(f"{KEY_QUANTIZER} is not a key of {KEY_VERSION} {FORMAT_VERSION}")
        return "rvq"
    quantizer = str(_scalar(reader, KEY_QUANTIZER, GGUFValueType.STRING))
    if quantizer not in QUANTIZERS:
        raise CarvqError(f"{KEY_QUANTIZER} is {quantizer!r}, expected one of {QUANTIZERS}")
    if version == PREDICTION_FORMAT_VERSION and quantizer != "trellis":
        raise CarvqError(f"{KEY_VERSION} {version} needs {KEY_QUANTIZER} 'trellis', got {quantizer!r}")
    return quantizer


def _read_prediction_keys(reader: GGUFReader, V: int) -> tuple[int, float] | None:
    """(P, scale step) of a version 3 file, checked; None for older versions, which must not
    carry the keys."""
    keys = (KEY_PREDICTION_ROWS, KEY_PREDICTION_SCALE_STEP)
    if read_format_version(reader) != PREDICTION_FORMAT_VERSION:
        stray = [key for key in keys if reader.get_field(key) is not None]
        if stray:
            raise CarvqError(f"{stray} are keys of {KEY_VERSION} {PREDICTION_FORMAT_VERSION} only")
        return None
    P = int(_scalar(reader, KEY_PREDICTION_ROWS, GGUFValueType.UINT32))
    step = _float32_value(_scalar(reader, KEY_PREDICTION_SCALE_STEP, GGUFValueType.FLOAT32))
    if V > MAX_PREDICTED_VOCAB:
        raise CarvqError(f"a vocabulary of {V} rows is over the {MAX_PREDICTED_VOCAB} whose rows can be predicted")
    if not 1 <= P < V:
        raise CarvqError(f"{KEY_PREDICTION_ROWS} = {P} must be 1..{V - 1}")
    if not (np.isfinite(step) and step > 0):
        raise CarvqError(f"{KEY_PREDICTION_SCALE_STEP} must be finite and > 0, got {step}")
    return P, step


def read_prediction(map_words: np.ndarray, ref_words: np.ndarray, V: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """(rows, roots, scale codes) of the prediction tensors, map int32 [ceil(V/32), 2] and refs
    int32 [P]; CarvqError naming the first thing that breaks docs/FORMAT.md "Predicted rows"."""
    words = map_words.view(np.uint32).astype(np.int64)
    masks, ranks = words[:, 0], words[:, 1]
    bits = ((masks[:, None] >> np.arange(32)) & 1).reshape(-1)
    if bits[V:].any():
        raise CarvqError(f"{TENSOR_PRED_MAP} marks row {int(np.flatnonzero(bits[V:])[0]) + V} >= V = {V}")
    counts = bits.reshape(-1, 32).sum(1)
    expected = np.concatenate([[0], np.cumsum(counts)[:-1]])
    bad = np.flatnonzero(ranks != expected)
    if bad.size:
        b = int(bad[0])
        raise CarvqError(f"{TENSOR_PRED_MAP} block {b} counts {int(ranks[b])} predicted rows before it, "
                         f"its masks say {int(expected[b])}")
    if int(counts.sum()) != ref_words.size:
        raise CarvqError(f"{TENSOR_PRED_MAP} marks {int(counts.sum())} predicted rows, {KEY_PREDICTION_ROWS} "
                         f"says {ref_words.size}")
    rows = np.flatnonzero(bits)
    refs = ref_words.view(np.uint32)
    roots = (refs & 0xFFFFFF).astype(np.int64)
    if roots.size and int(roots.max()) >= V:
        raise CarvqError(f"{TENSOR_PRED_REFS} holds root {int(roots.max())} >= V = {V}")
    too_long = np.flatnonzero(chain_lengths(torch.from_numpy(rows), torch.from_numpy(roots), V).numpy()
                              > MAX_PREDICTION_CHAIN)
    if too_long.size:
        raise CarvqError(f"{TENSOR_PRED_REFS}: the roots of predicted row {int(rows[too_long[0]])} make a chain of "
                         f"more than {MAX_PREDICTION_CHAIN} links, or a cycle")
    codes = (refs >> 24).astype(np.uint8).view(np.int8)
    return (torch.from_numpy(rows.astype(np.int32)), torch.from_numpy(roots.astype(np.int32)),
            torch.from_numpy(codes.copy()))


def _read_rvq(reader: GGUFReader, n: int) -> RvqConfig:
    u32 = GGUFValueType.UINT32
    layout = str(_scalar(reader, KEY_GROUP_LAYOUT, GGUFValueType.STRING))
    if layout not in GROUP_LAYOUTS:
        raise CarvqError(f"{KEY_GROUP_LAYOUT} is {layout!r}, expected one of {GROUP_LAYOUTS}")
    group_size = int(_scalar(reader, KEY_GROUP_SIZE, u32))
    if layout == "column":
        group_size = RvqConfig.group_size  # not used by the column layout
    rvq = RvqConfig(subvector_dim=int(_scalar(reader, KEY_SUBVECTOR_DIM, u32)),
                    codebook_bits=int(_scalar(reader, KEY_CODEBOOK_BITS, u32)),
                    levels=int(_scalar(reader, KEY_LEVELS, u32)),
                    group_layout=layout, group_size=group_size)
    rvq.validate(n)
    return rvq


def _read_trellis(reader: GGUFReader, n: int) -> TrellisConfig:
    u32 = GGUFValueType.UINT32
    stray = [key for key in (KEY_SUBVECTOR_DIM, KEY_CODEBOOK_BITS, KEY_LEVELS, KEY_GROUP_LAYOUT, KEY_GROUP_SIZE)
             if reader.get_field(key) is not None]
    if stray:
        raise CarvqError(f"a trellis file must not carry the RVQ keys {stray}")
    cfg = TrellisConfig(state_bits=int(_scalar(reader, KEY_TRELLIS_STATE_BITS, u32)),
                        step_bits=int(_scalar(reader, KEY_TRELLIS_STEP_BITS, u32)),
                        step_dim=int(_scalar(reader, KEY_TRELLIS_STEP_DIM, u32)),
                        groups=int(_scalar(reader, KEY_TRELLIS_GROUPS, u32)))
    cfg.validate(n)
    return cfg


def read_configs(reader: GGUFReader) -> tuple[int, int, RvqConfig, AdaptorConfig, int, str, TrellisConfig | None]:
    """(V, n, RvqConfig, AdaptorConfig, R, preset, TrellisConfig or None) from the carvq.* keys,
    all checked (a trellis file has the default RvqConfig, which nothing reads)."""
    quantizer = read_quantizer(reader)
    u32 = GGUFValueType.UINT32
    V = int(_scalar(reader, KEY_VOCAB_SIZE, u32))
    n = int(_scalar(reader, KEY_EMBEDDING_LENGTH, u32))
    if V < 1 or n < 1:
        raise CarvqError(f"vocab size {V} and embedding length {n} must both be >= 1")
    arch = reader.get_field("general.architecture")
    if arch is not None:
        arch_n = reader.get_field(f"{arch.contents()}.embedding_length")
        if arch_n is not None and int(arch_n.contents()) != n:
            raise CarvqError(f"{KEY_EMBEDDING_LENGTH} = {n} disagrees with "
                             f"{arch.contents()}.embedding_length = {int(arch_n.contents())}")
    trellis = _read_trellis(reader, n) if quantizer == "trellis" else None
    rvq = RvqConfig() if trellis is not None else _read_rvq(reader, n)
    table_dim = int(_scalar(reader, KEY_TABLE_DIM, u32))
    if table_dim:
        hidden = _uint_array(reader, KEY_HIDDEN_DIMS) or ()
        if any(d < 1 for d in hidden):
            raise CarvqError(f"{KEY_HIDDEN_DIMS} must be >= 1, got {list(hidden)}")
        activation = str(_scalar(reader, KEY_ACTIVATION, GGUFValueType.STRING))
        if activation not in ACTIVATIONS:
            raise CarvqError(f"{KEY_ACTIVATION} is {activation!r}, expected one of {ACTIVATIONS}")
        eps = _float32_value(_scalar(reader, KEY_NORM_EPS, GGUFValueType.FLOAT32))
        if not eps > 0:
            raise CarvqError(f"{KEY_NORM_EPS} must be > 0, got {eps}")
        adaptor = AdaptorConfig(table_dim=table_dim, hidden_dims=hidden, norm_eps=eps)
    else:
        adaptor = AdaptorConfig(table_dim=0, hidden_dims=())
    R = int(_scalar(reader, KEY_CORRECTION_ROWS, u32))
    if R > V:
        raise CarvqError(f"{KEY_CORRECTION_ROWS} = {R} exceeds the vocabulary size {V}")
    preset = _scalar(reader, KEY_PRESET, GGUFValueType.STRING, required=False) or ""
    return V, n, rvq, adaptor, R, str(preset), trellis


def expected_tensors(V: int, n: int, rvq: RvqConfig, adaptor: AdaptorConfig, R: int,
                     trellis: TrellisConfig | None = None,
                     n_predicted: int = 0) -> dict[str, tuple[GGMLQuantizationType, tuple[int, ...]]]:
    """Every carvq_* tensor the settings call for: name -> (ggml type, ne)."""
    out: dict[str, tuple[GGMLQuantizationType, tuple[int, ...]]]
    if trellis is None:
        S, L = rvq.n_subvectors(n), rvq.levels
        out = {
            TENSOR_CODES: (_I8, (L * S // 2, V)),
            TENSOR_CODEBOOKS: (_F16, (rvq.subvector_dim, rvq.codebook_size, rvq.n_groups(V, n), L)),
        }
    else:
        out = {
            TENSOR_TRELLIS_CODES: (_I8, (trellis.stream_bytes(n), V)),
            TENSOR_TRELLIS_TABLES: (_F16, (trellis.step_dim, trellis.table_size, trellis.groups)),
            TENSOR_TRELLIS_COLUMNS: (_F16, (n, 2)),
        }
        if n_predicted:
            out[TENSOR_PRED_MAP] = (_I32, (2, -(-V // 32)))
            out[TENSOR_PRED_REFS] = (_I32, (n_predicted,))
            out[TENSOR_PRED_COLUMNS] = (_F16, (n, 2))
    if adaptor.enabled:
        out[TENSOR_SIGMA0] = (_F16, (adaptor.table_dim, V))
        layer_dims = adaptor.layer_dims(n)
        for i, (d_in, d_out) in enumerate(layer_dims):
            out[mlp_weight_name(i)] = (_F16, (d_in, d_out))
            out[mlp_bias_name(i)] = (_F32, (d_out,))
            if i < len(layer_dims) - 1:
                out[norm_weight_name(i)] = (_F32, (d_out,))
                out[norm_bias_name(i)] = (_F32, (d_out,))
    if R:
        out[TENSOR_CORR_IDS] = (_I32, (R,))
        out[TENSOR_CORR_ROWS] = (_F16, (n, R))
    return out


def _check_tensor_set(reader: GGUFReader, expected: dict[str, tuple[GGMLQuantizationType, tuple[int, ...]]]) -> None:
    present = {t.name: t for t in reader.tensors}
    if TOKEN_EMBD in present:
        raise CarvqError(f"a CARVQ-GGUF must not contain {TOKEN_EMBD} (it is replaced by the CARVQ tensors)")
    for name, (qtype, ne) in expected.items():
        t = present.get(name)
        if t is None:
            raise CarvqError(f"tensor {name} missing")
        if t.tensor_type != qtype:
            raise CarvqError(f"tensor {name} has type {t.tensor_type.name}, expected {qtype.name}")
        shape = tuple(int(d) for d in t.shape)
        if shape != ne:
            raise CarvqError(f"tensor {name} has ne {list(shape)}, expected {list(ne)} (from the carvq.* keys)")
        block, type_size = GGML_QUANT_SIZES[qtype]
        if t.n_bytes != int(np.prod(ne)) * type_size // block:
            raise CarvqError(f"tensor {name} has {t.n_bytes} bytes, expected {int(np.prod(ne)) * type_size // block}")
    extra = sorted(name for name in present if name.startswith(TENSOR_PREFIX) and name not in expected)
    if extra:
        raise CarvqError(f"unexpected CARVQ tensors {extra} (not called for by the carvq.* keys)")


def _torch(reader_tensors: dict[str, Any], name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(reader_tensors[name].data, copy=True))


def read_carvq_state(reader: GGUFReader) -> CarvqState:
    """Read and fully validate the CarvqState stored in an open GGUF file."""
    V, n, rvq, adaptor, R, preset, trellis = read_configs(reader)
    prediction_keys = _read_prediction_keys(reader, V)
    P = 0 if prediction_keys is None else prediction_keys[0]
    _check_tensor_set(reader, expected_tensors(V, n, rvq, adaptor, R, trellis, P))
    tensors = {t.name: t for t in reader.tensors}
    if trellis is None:
        packed = _torch(tensors, TENSOR_CODES).view(torch.uint8)
        codes = unpack_codes(packed, rvq.levels)
        if codes.numel() and int(codes.max()) >= rvq.codebook_size:
            row = int((codes >= rvq.codebook_size).flatten(1).any(1).nonzero()[0])
            raise CarvqError(f"{TENSOR_CODES} holds index {int(codes.max())} >= K={rvq.codebook_size} "
                             f"(first in row {row})")
        state = CarvqState(vocab_size=V, embedding_dim=n, rvq=rvq, adaptor=adaptor, codes=codes,
                           codebooks=_torch(tensors, TENSOR_CODEBOOKS), preset=preset)
    else:  # every bit pattern of a stream is a path: nothing to range-check
        prediction = None
        if prediction_keys is not None:
            rows, roots, scale_codes = read_prediction(np.asarray(tensors[TENSOR_PRED_MAP].data),
                                                       np.asarray(tensors[TENSOR_PRED_REFS].data), V)
            prediction = RowPrediction(rows=rows, roots=roots, scale_codes=scale_codes,
                                       scale_step=prediction_keys[1], columns=_torch(tensors, TENSOR_PRED_COLUMNS))
        codes = TrellisCodes(config=trellis, streams=_torch(tensors, TENSOR_TRELLIS_CODES).view(torch.uint8),
                             tables=_torch(tensors, TENSOR_TRELLIS_TABLES),
                             columns=_torch(tensors, TENSOR_TRELLIS_COLUMNS), prediction=prediction)
        state = CarvqState(vocab_size=V, embedding_dim=n, rvq=rvq, adaptor=adaptor, codes=None, codebooks=None,
                           preset=preset, trellis=codes)
    if adaptor.enabled:
        state.sigma0 = _torch(tensors, TENSOR_SIGMA0)
        n_layers = len(adaptor.layer_dims(n))
        state.linears = [(_torch(tensors, mlp_weight_name(i)), _torch(tensors, mlp_bias_name(i)))
                         for i in range(n_layers)]
        state.norms = [(_torch(tensors, norm_weight_name(i)), _torch(tensors, norm_bias_name(i)))
                       for i in range(n_layers - 1)]
    if R:
        state.correction_ids = _torch(tensors, TENSOR_CORR_IDS)
        state.correction_rows = _torch(tensors, TENSOR_CORR_ROWS)
    try:
        state.check()
    except CarvqError as e:
        raise CarvqError(f"inconsistent CARVQ tensors: {e}") from e
    return state


def load_carvq_state(path: str | os.PathLike[str]) -> CarvqState:
    """Open a CARVQ-GGUF file and return its validated CarvqState."""
    reader = open_gguf(path)
    try:
        return read_carvq_state(reader)
    except CarvqError as e:
        raise CarvqError(f"{path}: {e}") from e
