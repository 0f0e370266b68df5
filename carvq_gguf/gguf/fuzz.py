"""Mutated CARVQ-GGUF files for fuzzing the patched llama.cpp loader.

A file is parsed into its raw parts (keys with their GGUF type and value, tensor infos, each
tensor's bytes), mutated where a loader is most likely to go wrong, and written back; the raw
form (rather than gguf-py's writer) is used so that a mutation may produce anything a file on
disk can hold: wrong key types, impossible shapes, unknown ggml types, inconsistent offsets.

Structure-aware mutations target the `carvq.*` keys (interesting values, other types, deletion),
the `carvq_*` tensors (shape, ggml type, data: code nibbles, correction ids) and the model keys
the CARVQ checks compare against; byte mutations (bit flips, overwritten runs, truncation) then
exercise the generic GGUF parsing. Every mutated file is a deterministic function of
(corpus file, seed).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
ALIGNMENT = 32
INTERESTING_U32 = (0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257, 4095, 65535, 65536,
                   2 ** 24, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 2 ** 32 - 2, 2 ** 32 - 1)
INTERESTING_STR = ("column", "block", "relu", "gelu", "", "x" * 300, "column\0block")
INTERESTING_F32 = (0.0, -0.0, -1.0, 1e-30, 1e-5, 1.0, 1e30, float("inf"), float("-inf"), float("nan"))
INTERESTING_DIM = (0, 1, 2, 3, 7, 8, 15, 16, 17, 64, 255, 256, 257, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1,
                   2 ** 62)


@dataclass
class Tensor:
    name: str
    dims: list[int]
    ggml_type: int
    data: bytes


@dataclass
class GgufFile:
    version: int
    kv: list[tuple[str, int, object]]  # (key, GGUFValueType, value); arrays: (subtype, [items])
    tensors: list[Tensor] = field(default_factory=list)


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            sub, n = self.take("<I"), self.take("<Q")
            return sub, [self.value(sub) for _ in range(n)]
        return self.take(_SCALAR[GGUFValueType(vtype)])


def nbytes(dims: list[int], ggml_type: int) -> int | None:
    """Bytes of a tensor, or None for an unknown type or a row not made of whole blocks."""
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None
    n = 1
    for d in dims:
        n *= d
    if not dims or dims[0] % block:
        return None
    return n // block * size


def parse(buf: bytes) -> GgufFile:
    """The parts of a well-formed GGUF file (the corpus files are; mutants are never re-parsed)."""
    r = _Reader(buf)
    if buf[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kv = []
    for _ in range(n_kv):
        key = r.string()
        vtype = r.take("<I")
        kv.append((key, vtype, r.value(vtype)))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        infos.append((name, dims, r.take("<I"), r.take("<Q")))
    start = (r.pos + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    tensors = []
    for name, dims, ggml_type, offset in infos:
        size = nbytes(dims, ggml_type)
        assert size is not None, name
        tensors.append(Tensor(name, dims, ggml_type, buf[start + offset:start + offset + size]))
    return GgufFile(version, kv, tensors)


def _pack_value(vtype: int, value) -> bytes:
    if vtype == GGUFValueType.STRING:
        raw = value.encode("utf-8", errors="surrogateescape")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == GGUFValueType.ARRAY:
        sub, items = value
        return struct.pack("<IQ", sub, len(items)) + b"".join(_pack_value(sub, x) for x in items)
    fmt = _SCALAR[GGUFValueType(vtype)]
    if fmt in ("<f", "<d"):
        return struct.pack(fmt, float(value))
    if fmt == "<?":
        return struct.pack("<B", 1 if value else 0)
    bits = struct.calcsize(fmt) * 8
    v = int(value) % (1 << bits)  # wrap into the type's range, as a C writer would
    if fmt[1].islower() and v >= 1 << (bits - 1):  # signed
        v -= 1 << bits
    return struct.pack(fmt, v)


def serialize(f: GgufFile) -> bytes:
    """The file's bytes; tensor offsets are laid out from the tensors' current data."""
    out = [b"GGUF", struct.pack("<IQQ", f.version, len(f.tensors), len(f.kv))]
    for key, vtype, value in f.kv:
        out += [_pack_value(GGUFValueType.STRING, key), struct.pack("<I", vtype), _pack_value(vtype, value)]
    offset, data = 0, []
    for t in f.tensors:
        out += [_pack_value(GGUFValueType.STRING, t.name), struct.pack("<I", len(t.dims)),
                b"".join(struct.pack("<Q", d % 2 ** 64) for d in t.dims), struct.pack("<IQ", t.ggml_type, offset)]
        pad = (-len(t.data)) % ALIGNMENT
        data.append(t.data + b"\0" * pad)
        offset += len(t.data) + pad
    head = b"".join(out)
    return head + b"\0" * ((-len(head)) % ALIGNMENT) + b"".join(data)


# ---- mutations -------------------------------------------------------------------------------

def _carvq_keys(f: GgufFile) -> list[int]:
    return [i for i, (k, _, _) in enumerate(f.kv) if k.startswith("carvq.")]


def _model_keys(f: GgufFile) -> list[int]:
    """The model keys the CARVQ checks compare against. Other model keys are left alone: llama.cpp
    guards many of them with GGML_ASSERT (e.g. block_count), which is outside the CARVQ code."""
    return [i for i, (k, _, _) in enumerate(f.kv) if k.endswith((".embedding_length", ".vocab_size"))]


def _carvq_tensors(f: GgufFile) -> list[Tensor]:
    return [t for t in f.tensors if t.name.startswith("carvq_")] or f.tensors


def _interesting(vtype: int, rng: random.Random):
    if vtype == GGUFValueType.STRING:
        return rng.choice(INTERESTING_STR)
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return rng.choice(INTERESTING_F32)
    if vtype == GGUFValueType.BOOL:
        return rng.random() < 0.5
    if vtype == GGUFValueType.ARRAY:
        return GGUFValueType.UINT32, [rng.choice(INTERESTING_U32) for _ in range(rng.choice((0, 1, 2, 5)))]
    return rng.choice(INTERESTING_U32) if rng.random() < 0.8 else rng.getrandbits(32)


def mutate_key_value(f: GgufFile, rng: random.Random) -> str:
    pool = _carvq_keys(f) if rng.random() < 0.85 else _model_keys(f)
    if not pool:
        return "none"
    i = rng.choice(pool)
    key, vtype, value = f.kv[i]
    if vtype == GGUFValueType.ARRAY and rng.random() < 0.5:
        sub, items = value
        if items and rng.random() < 0.5:
            items = list(items)
            items[rng.randrange(len(items))] = _interesting(sub, rng)
        else:
            items = list(items) + [_interesting(sub, rng)] if rng.random() < 0.5 else list(items)[:-1]
        f.kv[i] = (key, vtype, (sub, items))
    else:
        f.kv[i] = (key, vtype, _interesting(vtype, rng))
    return f"value {key}"


def mutate_key_type(f: GgufFile, rng: random.Random) -> str:
    pool = _carvq_keys(f)
    if not pool:
        return "none"
    i = rng.choice(pool)
    key = f.kv[i][0]
    vtype = rng.choice([t for t in GGUFValueType])
    f.kv[i] = (key, vtype, _interesting(vtype, rng))
    return f"type {key} -> {GGUFValueType(vtype).name}"


def mutate_key_presence(f: GgufFile, rng: random.Random) -> str:
    pool = _carvq_keys(f)
    if not pool:
        return "none"
    i = rng.choice(pool)
    if rng.random() < 0.7:
        key = f.kv.pop(i)[0]
        return f"drop {key}"
    f.kv.append(f.kv[i])
    return f"duplicate {f.kv[i][0]}"


def mutate_tensor_shape(f: GgufFile, rng: random.Random) -> str:
    t = rng.choice(_carvq_tensors(f))
    if rng.random() < 0.15:
        t.dims = t.dims + [1] if rng.random() < 0.5 or len(t.dims) == 1 else t.dims[:-1]
    else:
        j = rng.randrange(len(t.dims))
        t.dims[j] = rng.choice((t.dims[j] + 1, max(t.dims[j] - 1, 0), t.dims[j] * 2, t.dims[j] // 2,
                                rng.choice(INTERESTING_DIM)))
    size = nbytes(t.dims, t.ggml_type)
    if size is not None and size <= 1 << 22 and rng.random() < 0.7:
        # keep the file consistent so the loader gets past the size checks to the CARVQ ones
        t.data = (t.data + rng.randbytes(max(size - len(t.data), 0)))[:size]
    return f"shape {t.name} -> {t.dims}"


def mutate_tensor_type(f: GgufFile, rng: random.Random) -> str:
    t = rng.choice(_carvq_tensors(f))
    t.ggml_type = rng.choice((0, 1, 8, 24, 25, 26, 27, 28, 30, 39, 200)) if rng.random() < 0.9 else rng.getrandbits(32)
    size = nbytes(t.dims, t.ggml_type)
    if size is not None and size <= 1 << 22 and rng.random() < 0.7:
        t.data = (t.data + rng.randbytes(max(size - len(t.data), 0)))[:size]
    return f"ggml type {t.name} -> {t.ggml_type}"


def mutate_tensor_data(f: GgufFile, rng: random.Random) -> str:
    t = rng.choice(_carvq_tensors(f))
    if not t.data:
        return "none"
    data = bytearray(t.data)
    if t.ggml_type == GGMLQuantizationType.I32 and len(data) >= 4:
        # correction ids, prediction map and refs: out of range, negative, duplicated, unsorted
        j = rng.randrange(len(data) // 4)
        value = rng.choice((-1, -2 ** 31, 2 ** 31 - 1, 0, 1, 255, 256, 257, 2 ** 16, 2 ** 24 - 1, 2 ** 24,
                            rng.getrandbits(31)))
        struct.pack_into("<i", data, 4 * j, value)
    else:
        for _ in range(rng.choice((1, 1, 4, 64))):
            j = rng.randrange(len(data))
            data[j] = rng.choice((0x00, 0xFF, 0xF0, 0x0F, 0x7C, 0xFC, rng.getrandbits(8)))  # 0x7C00: F16 inf
    t.data = bytes(data)
    return f"data {t.name}"


def mutate_bytes(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(buf)
    kind = rng.choice(("flip", "flip", "overwrite", "truncate", "insert"))
    if kind == "flip":
        for _ in range(rng.choice((1, 2, 8))):
            j = rng.randrange(len(data))
            data[j] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        j = rng.randrange(len(data))
        data[j:j + 8] = rng.choice((b"\xff" * 8, b"\0" * 8, rng.randbytes(8)))
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    else:
        j = rng.randrange(len(data))
        data[j:j] = rng.randbytes(rng.choice((1, 4, 8, 32)))
    return bytes(data), f"bytes {kind}"


STRUCTURE_MUTATIONS = (mutate_key_value, mutate_key_value, mutate_key_type, mutate_key_presence,
                       mutate_tensor_shape, mutate_tensor_type, mutate_tensor_data, mutate_tensor_data)


def mutant(corpus: GgufFile, raw: bytes, seed: int) -> tuple[bytes, str]:
    """A mutated copy of a corpus file and a description of what was changed."""
    rng = random.Random(seed)
    if rng.random() < 0.2:
        return mutate_bytes(raw, rng)
    f = GgufFile(corpus.version, list(corpus.kv),
                 [Tensor(t.name, list(t.dims), t.ggml_type, t.data) for t in corpus.tensors])
    what = [rng.choice(STRUCTURE_MUTATIONS)(f, rng) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    buf = serialize(f)
    if rng.random() < 0.1:
        buf, extra = mutate_bytes(buf, rng)
        what.append(extra)
    return buf, "; ".join(what)


def load_corpus(paths: list[Path]) -> list[tuple[Path, GgufFile, bytes]]:
    """Parse corpus files; each must round-trip byte for byte through parse/serialize."""
    out = []
    for path in paths:
        raw = path.read_bytes()
        parsed = parse(raw)
        if serialize(parsed) != raw:
            raise ValueError(f"{path} does not round-trip through the fuzzer's GGUF writer")
        out.append((path, parsed, raw))
    return out
