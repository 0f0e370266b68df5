"""GGUF in, CARVQ-GGUF out: keep every key and tensor of the source byte for byte, replace
token_embd.weight with the CARVQ tensors (docs/FORMAT.md) and make a tied head explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants
from tqdm import tqdm

from ..codec.state import CarvqState
from ..errors import CarvqError
from . import carvq_io
from .names import ALIGNMENT_KEY, ARCH_KEY, KEY_PREFIX, OUTPUT, SPLIT_COUNT_KEY, TENSOR_PREFIX, TOKEN_EMBD


@dataclass
class OutputHead:
    """The explicit output.weight written for a tied model: raw bytes and their ggml type."""

    data: np.ndarray
    qtype: GGMLQuantizationType


def find_tensor(reader: GGUFReader, name: str) -> Any | None:
    """The reader tensor called name, or None."""
    for t in reader.tensors:
        if t.name == name:
            return t
    return None


def architecture(reader: GGUFReader) -> str:
    """general.architecture of a GGUF file."""
    field = reader.get_field(ARCH_KEY)
    if field is None or field.types != [GGUFValueType.STRING]:
        raise CarvqError(f"GGUF has no string {ARCH_KEY}")
    return str(field.contents())


def token_embedding(reader: GGUFReader) -> tuple[torch.Tensor, GGMLQuantizationType]:
    """The dequantized token_embd.weight as float32 [V, n] and its ggml type in the source."""
    split = reader.get_field(SPLIT_COUNT_KEY)
    if split is not None and int(split.contents()) > 1:
        raise CarvqError(f"the source is one shard of a {int(split.contents())}-way split GGUF; merge it first "
                         "(llama.cpp's llama-gguf-split --merge)")
    t = find_tensor(reader, TOKEN_EMBD)
    if t is None:
        if carvq_io.is_carvq(reader):
            raise CarvqError("the source is already a CARVQ-GGUF (no token_embd.weight to compress)")
        raise CarvqError(f"the source GGUF has no {TOKEN_EMBD}")
    if len(t.shape) != 2:
        raise CarvqError(f"{TOKEN_EMBD} has {len(t.shape)} dimensions, expected 2")
    return torch.from_numpy(dense_tensor(t)), t.tensor_type


def dense_tensor(t: Any) -> np.ndarray:
    """A reader tensor dequantized to float32, shaped [rows, cols] (ggml's ne reversed); may be a
    read-only view of the file for an F32 tensor."""
    try:
        dense = quants.dequantize(np.asarray(t.data), t.tensor_type)
    except NotImplementedError as e:
        raise CarvqError(f"cannot dequantize {t.name} of type {t.tensor_type.name}: {e}") from e
    shape = [int(d) for d in reversed(t.shape)]
    return np.ascontiguousarray(dense, dtype=np.float32).reshape(shape)


def parse_type(name: str) -> GGMLQuantizationType:
    """A ggml type from its name (f16, Q8_0, ...)."""
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise CarvqError(f"unknown ggml type {name!r}") from None


def output_head(reader: GGUFReader, matrix: torch.Tensor, output_type: str | None) -> OutputHead | None:
    """The explicit head to write for a tied source, or None when the source has output.weight.

    output_type None (or the source's token_embd type) copies token_embd's raw bytes; any
    other type is quantized from the dequantized matrix with gguf-py.
    """
    if find_tensor(reader, OUTPUT) is not None:
        return None
    src = find_tensor(reader, TOKEN_EMBD)
    assert src is not None
    qtype = src.tensor_type if output_type is None else parse_type(output_type)
    if qtype == src.tensor_type:
        return OutputHead(np.asarray(src.data), qtype)
    try:
        data = quants.quantize(matrix.numpy(), qtype)
    except (NotImplementedError, quants.QuantError) as e:
        raise CarvqError(f"gguf-py cannot quantize the output head to {qtype.name}: {e}") from e
    return OutputHead(np.ascontiguousarray(data), qtype)


def field_value(field: Any) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """(value, type, sub_type) of a reader field, in a form GGUFWriter packs to the same bytes.

    Strings are kept as raw bytes so nothing is re-encoded.
    """
    vtype = field.types[0]
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[-1]), vtype, None
    if vtype == GGUFValueType.ARRAY:
        if len(field.types) != 2:
            raise CarvqError(f"key {field.name}: nested arrays are not supported")
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], vtype, sub
        return [field.parts[i].tolist()[0] for i in field.data], vtype, sub
    return field.parts[-1].tolist()[0], vtype, None


def field_bytes(field: Any) -> bytes:
    """The exact bytes of a key-value pair as stored in the file."""
    return b"".join(part.tobytes() for part in field.parts)


def copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    """Copy every key of the source (except the carvq.* keys of an older conversion)."""
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == ARCH_KEY or name.startswith(KEY_PREFIX):
            continue  # header fields are written by GGUFWriter; the architecture too, at creation
        value, vtype, sub = field_value(field)
        if name == ALIGNMENT_KEY:
            writer.data_alignment = int(value)
        if vtype == GGUFValueType.ARRAY and not value:
            raise CarvqError(f"key {name} is an empty array, which gguf-py cannot write")
        writer.add_key_value(name, value, vtype, sub_type=sub)


TensorPlan = list[tuple[str, np.ndarray, GGMLQuantizationType | None]]


def write_model(reader: GGUFReader, out_path: Path, plan: TensorPlan, progress: bool = True,
                add_keys: Callable[[GGUFWriter], None] | None = None) -> None:
    """Write a GGUF with every key of reader (plus add_keys' keys) and the tensors of plan, in
    order: (name, data, ggml type) with raw bytes for a quantized type, None for a numpy dtype."""
    writer = GGUFWriter(out_path, architecture(reader))
    copy_metadata(reader, writer)
    if add_keys is not None:
        add_keys(writer)
    for name, arr, qtype in plan:
        writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(arr.nbytes for _, arr, _ in plan)
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing", disable=not progress) as bar:
        for _, arr, _ in plan:
            writer.write_tensor_data(arr)
            bar.update(arr.nbytes)
    writer.close()


def untie_head(src: Path, dst: Path) -> None:
    """Write src to dst with an explicit output.weight holding token_embd's bytes and type, so that
    changing token_embd leaves the head as it was.

    CarvqError if src already has output.weight (nothing to untie) or has no token_embd."""
    reader = carvq_io.open_gguf(src)
    embd = find_tensor(reader, TOKEN_EMBD)
    if embd is None:
        raise CarvqError(f"{src} has no {TOKEN_EMBD}")
    if find_tensor(reader, OUTPUT) is not None:
        raise CarvqError(f"{src} already has {OUTPUT}: its head is not tied")
    plan: TensorPlan = [(t.name, np.asarray(t.data), t.tensor_type) for t in reader.tensors]
    plan.append((OUTPUT, np.asarray(embd.data), embd.tensor_type))
    write_model(reader, dst, plan, progress=False)


def write_carvq_model(reader: GGUFReader, state: CarvqState, out_path: Path,
                      head: OutputHead | None, progress: bool = True) -> None:
    """Write the source model with token_embd.weight replaced by state's CARVQ tensors.

    Every other tensor keeps its raw bytes and type, in the source's order; the CARVQ tensors
    take token_embd's place; a tied head (head not None) is appended as output.weight.
    """
    src_embd = find_tensor(reader, TOKEN_EMBD)
    if src_embd is None:
        raise CarvqError(f"the source GGUF has no {TOKEN_EMBD}")
    n, V = (int(d) for d in src_embd.shape)
    if (V, n) != (state.vocab_size, state.embedding_dim):
        raise CarvqError(f"codec state is {state.vocab_size} x {state.embedding_dim} but "
                         f"{TOKEN_EMBD} is {V} x {n}")
    plan: TensorPlan = []
    for t in reader.tensors:
        if t.name == TOKEN_EMBD:
            plan.extend((name, arr, None) for name, arr in carvq_io.carvq_tensors(state))
        elif t.name.startswith(TENSOR_PREFIX):
            raise CarvqError(f"the source already has CARVQ tensor {t.name}")
        else:
            plan.append((t.name, np.asarray(t.data), t.tensor_type))
    if head is not None:
        plan.append((OUTPUT, head.data, head.qtype))
        shape_check = quants.quant_shape_from_byte_shape(head.data.shape, head.qtype) \
            if head.data.dtype == np.uint8 else head.data.shape
        if tuple(shape_check) != (V, n):
            raise CarvqError(f"output head has shape {tuple(shape_check)}, expected {(V, n)}")
    write_model(reader, out_path, plan, progress, lambda writer: carvq_io.add_carvq_metadata(writer, state))


def verify_carvq_model(source: GGUFReader, out: GGUFReader, state: CarvqState,
                       head: OutputHead | None) -> None:
    """Check a written file against what was meant: CARVQ state bit-identical, every other key
    and tensor of the source byte-identical, the tied head as planned. CarvqError otherwise."""
    back = carvq_io.read_carvq_state(out)
    for name, arr in carvq_io.carvq_tensors(state):
        written = next(a for n_, a in carvq_io.carvq_tensors(back) if n_ == name)
        if arr.tobytes() != written.tobytes():
            raise CarvqError(f"verification failed: tensor {name} differs after reading back")
    out_fields = out.fields
    for field in source.fields.values():
        if field.name.startswith("GGUF.") or field.name.startswith(KEY_PREFIX):
            continue
        other = out_fields.get(field.name)
        if other is None or field_bytes(other) != field_bytes(field):
            raise CarvqError(f"verification failed: key {field.name} differs from the source")
    out_tensors = {t.name: t for t in out.tensors}
    for t in source.tensors:
        if t.name == TOKEN_EMBD:
            continue
        o = out_tensors.get(t.name)
        if o is None or o.tensor_type != t.tensor_type or list(o.shape) != list(t.shape) \
                or not np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(t.data).view(np.uint8)):
            raise CarvqError(f"verification failed: tensor {t.name} differs from the source")
    if head is not None:
        o = out_tensors.get(OUTPUT)
        if o is None or o.tensor_type != head.qtype or \
                np.asarray(o.data).tobytes() != head.data.tobytes():
            raise CarvqError(f"verification failed: {OUTPUT} is not the planned tied head")
    expected = len(source.tensors) - 1 + len(carvq_io.carvq_tensors(state)) + (head is not None)
    if len(out.tensors) != expected:
        raise CarvqError(f"verification failed: {len(out.tensors)} tensors written, expected {expected}")
