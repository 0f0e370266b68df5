"""--quantize TYPE: llama.cpp's own quantizer (llama_model_quantize, from the patched build
installed by `carvq-gguf build-runtime`) on a written CARVQ-GGUF. The patched quantizer copies
every carvq_* tensor unchanged; verify_quantized checks that it did."""

from __future__ import annotations

import ctypes
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFReader

from ..gguf import carvq_io
from ..codec.state import CarvqState
from ..errors import CarvqError
from ..gguf.rewrite import field_bytes

# keys llama_model_quantize rewrites; every other key must come through byte-identical
QUANTIZER_KEYS = ("general.file_type", "general.quantization_version")


def _patched_llama_cpp():
    from ..runtime import build as runtime

    if not runtime.is_patched():
        raise CarvqError("--quantize needs the patched llama-cpp-python (run `carvq-gguf build-runtime`); "
                         "the installed one is missing or unpatched")
    import llama_cpp

    return llama_cpp


def llama_ftype(llama_cpp, name: str) -> int:
    """The llama_ftype value for a type name such as Q4_K_M or q8_0."""
    attr = f"LLAMA_FTYPE_MOSTLY_{name.upper()}"
    if not hasattr(llama_cpp, attr):
        known = sorted(a[len("LLAMA_FTYPE_MOSTLY_"):] for a in dir(llama_cpp) if a.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise CarvqError(f"unknown quantization type {name!r}; llama.cpp knows {', '.join(known)}")
    return int(getattr(llama_cpp, attr))


def check_quantize_type(name: str) -> None:
    """CarvqError now, before any compressing, if --quantize NAME cannot run."""
    llama_ftype(_patched_llama_cpp(), name)


def quantize_gguf(src: Path, dst: Path, type_name: str, head_type: GGMLQuantizationType | None,
                  threads: int = 2) -> None:
    """Quantize src's transformer weights into dst with llama.cpp's quantizer.

    head_type forces output.weight's type (as --output-type asked); None lets llama.cpp choose
    it as it does for that ftype. Already-quantized weights are requantized (llama.cpp warns
    that this loses quality compared with quantizing from F16/F32).
    """
    llama_cpp = _patched_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(llama_cpp, type_name)
    params.nthread = threads
    params.allow_requantize = True
    if head_type is not None:
        params.output_tensor_type = int(head_type)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise CarvqError(f"llama_model_quantize failed on {src} (return code {rc}); see the log above")


def verify_quantized(before: GGUFReader, after: GGUFReader, state: CarvqState) -> None:
    """CarvqError unless the quantized file keeps state bit-identical, every tensor name, and
    every key but the ones the quantizer rewrites."""
    back = carvq_io.read_carvq_state(after)
    written = dict(carvq_io.carvq_tensors(back))
    for name, arr in carvq_io.carvq_tensors(state):
        if written[name].tobytes() != arr.tobytes():
            raise CarvqError(f"verification failed: the quantizer changed {name}")
    names_before = {t.name for t in before.tensors}
    names_after = {t.name for t in after.tensors}
    if names_before != names_after:
        raise CarvqError(f"verification failed: quantizing changed the tensor set "
                         f"(lost {sorted(names_before - names_after)}, gained {sorted(names_after - names_before)})")
    for field in before.fields.values():
        if field.name.startswith("GGUF.") or field.name in QUANTIZER_KEYS:
            continue
        other = after.fields.get(field.name)
        if other is None or field_bytes(other) != field_bytes(field):
            raise CarvqError(f"verification failed: quantizing changed key {field.name}")
