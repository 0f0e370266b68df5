"""Model variants that differ from a source GGUF only in the input token embedding.

- untie_head: the source with its tied head written explicitly as output.weight (the
  token_embd bytes, same type), so that changing token_embd leaves the head as it was. A CARVQ
  conversion does the same (docs/FORMAT.md), so every variant keeps the source's head.
- quantize_token_embd: llama.cpp's own quantizer (llama-quantize from the patched build) with
  --token-embedding-type TYPE on the untied source. The other tensors keep their type: the
  source's file type is passed as the target with --pure (a tensor already of the target type is
  copied, not requantized) and the head type as --output-tensor-type; verify_only_token_embd
  then checks, by content hash, that every other tensor came through unchanged.
- build_imatrix: llama-imatrix on a calibration text, for the i-quants.
- carvq: `carvq-gguf convert` (python API) with a preset.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..gguf.summary import GgufSummary, read_summary
from ..errors import CarvqError

TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"
# llama.cpp's quantizer refuses these target types for token_embd-like tensors without an imatrix
# in general (tensor_requires_imatrix); we give them one, built on the calibration text.
IMATRIX_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS")


@dataclass
class QuantizeOutcome:
    """What llama-quantize made of a --token-embedding-type request."""

    requested: str
    actual: str | None         # token_embd type in the output; None if the quantizer refused
    note: str                  # fallback reason, refusal message, imatrix remark ...
    log: str


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def refusal_reason(log: str, type_name: str) -> str:
    """Why llama-quantize refused: its assertion or error message, in one line."""
    assertion = re.search(r'GGML_ASSERT\((.*)\) failed', log)
    if assertion:
        message = re.search(r'"([^"]+)"', assertion.group(1))
        return message.group(1) if message else assertion.group(1)
    for line in log.splitlines():
        if "failed to quantize:" in line:
            return line.split("failed to quantize:", 1)[1].strip()
    if "usage:" in log:
        return f"llama-quantize does not accept {type_name} here"
    return _tail(log, 1)


def untie_head(src: Path, dst: Path) -> None:
    """Write src to dst with an explicit output.weight holding token_embd's bytes and type.

    CarvqError if src already has output.weight (nothing to untie) or has no token_embd."""
    from gguf import GGUFWriter

    from ..gguf.rewrite import architecture, copy_metadata, find_tensor
    from ..gguf.carvq_io import open_gguf

    reader = open_gguf(src)
    embd = find_tensor(reader, TOKEN_EMBD)
    if embd is None:
        raise CarvqError(f"{src} has no {TOKEN_EMBD}")
    if find_tensor(reader, OUTPUT) is not None:
        raise CarvqError(f"{src} already has {OUTPUT}: its head is not tied")
    writer = GGUFWriter(dst, architecture(reader))
    copy_metadata(reader, writer)
    plan = [(t.name, np.asarray(t.data), t.tensor_type) for t in reader.tensors]
    plan.append((OUTPUT, np.asarray(embd.data), embd.tensor_type))
    for name, arr, qtype in plan:
        writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, arr, _ in plan:
        writer.write_tensor_data(arr)
    writer.close()


def is_tied(summary: GgufSummary) -> bool:
    """True if the model has token_embd but no output.weight (its head reads token_embd)."""
    return TOKEN_EMBD in summary.tensors and OUTPUT not in summary.tensors


def verify_only_token_embd(before: GgufSummary, after: GgufSummary, what: str) -> None:
    """CarvqError unless after has before's tensors with the same type, shape and bytes, except
    token_embd.weight (whose shape must still match)."""
    if set(before.tensors) != set(after.tensors):
        raise CarvqError(f"{what}: the tensor set changed (lost {sorted(set(before.tensors) - set(after.tensors))}, "
                         f"gained {sorted(set(after.tensors) - set(before.tensors))})")
    for name, t in before.tensors.items():
        o = after.tensors[name]
        if o.shape != t.shape:
            raise CarvqError(f"{what}: {name} changed shape {t.shape} -> {o.shape}")
        if name != TOKEN_EMBD and (o.type_name != t.type_name or o.sha256 != t.sha256):
            raise CarvqError(f"{what}: {name} changed ({t.type_name} -> {o.type_name}); only {TOKEN_EMBD} may change")


def tool(name: str) -> Path:
    """A llama.cpp tool from the patched build."""
    from ..runtime import build as runtime

    return runtime.tool_path(name)


def build_imatrix(model: Path, calib_text: Path, out: Path, ctx: int = 512, chunks: int | None = None,
                  threads: int = 2) -> str:
    """llama-imatrix on calib_text; writes the importance matrix (GGUF) to out; returns the log."""
    cmd = [str(tool("llama-imatrix")), "-m", str(model), "-f", str(calib_text), "-o", str(out),
           "-c", str(ctx), "-t", str(threads), "--output-format", "gguf"]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    print(f"[pareto] llama-imatrix on {Path(calib_text).name}", file=sys.stderr)
    return run_tool(cmd, Path(out), "llama-imatrix")


def quantize_with_imatrix(src: Path, dst: Path, type_name: str, imatrix: Path, threads: int = 2) -> str:
    """llama-quantize --imatrix of a whole model (the patched build copies CARVQ tensors
    unchanged); returns the log."""
    cmd = [str(tool("llama-quantize")), "--allow-requantize", "--imatrix", str(imatrix), str(src), str(dst),
           type_name, str(threads)]
    return run_tool(cmd, Path(dst), "llama-quantize --imatrix")


def run_tool(cmd: list[str], out: Path, what: str) -> str:
    """Run a llama.cpp tool that must write out; its log, or CarvqError with the log's end."""
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.returncode != 0 or not out.is_file():
        raise CarvqError(f"{what} failed (exit {result.returncode}):\n{_tail(result.stdout, 25)}")
    return result.stdout


def quantize_token_embd(untied: Path, out: Path, type_name: str, imatrix: Path | None = None,
                        threads: int = 2) -> QuantizeOutcome:
    """Requantize only token_embd of untied (a model with an explicit head) to type_name.

    Returns the outcome; actual is None (and out is not written) when llama.cpp refuses the type
    for this tensor. CarvqError if anything but token_embd would change."""
    before = read_summary(untied)
    if OUTPUT not in before.tensors:
        raise CarvqError(f"{untied} has no explicit {OUTPUT}; untie the head first")
    ftype = before.keys.get("general.file_type")
    if not isinstance(ftype, int):
        raise CarvqError(f"{untied} has no integer general.file_type, so the other tensors' type is unknown")
    head_type = before.tensors[OUTPUT].type_name
    cmd = [str(tool("llama-quantize")), "--allow-requantize", "--pure", "--token-embedding-type", type_name,
           "--output-tensor-type", head_type]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    cmd += [str(untied), str(out), str(ftype), str(threads)]
    print(f"[pareto] llama-quantize --token-embedding-type {type_name}", file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    log = result.stdout
    if result.returncode != 0 or not Path(out).is_file():
        Path(out).unlink(missing_ok=True)
        return QuantizeOutcome(type_name, None, f"not supported by llama.cpp here: {refusal_reason(log, type_name)}",
                               log)
    after = read_summary(out)
    verify_only_token_embd(before, after, f"llama-quantize --token-embedding-type {type_name}")
    actual = after.tensors[TOKEN_EMBD].type_name
    notes = []
    if actual != type_name.upper():
        n = before.tensors[TOKEN_EMBD].shape[0]
        notes.append(f"llama.cpp fell back to {actual}: row length {n} is not a multiple of {type_name}'s block")
    if imatrix is not None:
        used = f"did not find weights for {TOKEN_EMBD}" not in log
        notes.append("imatrix applied" if used else
                     "imatrix given, but it has no entry for token_embd (a row lookup, not a matrix product)")
    return QuantizeOutcome(type_name, actual, "; ".join(notes), log)


def carvq_variant(source: Path, out: Path, preset: str, calib_text: Path | None = None, seed: int = 0,
                  progress: bool = True) -> dict:
    """Convert source with preset into out (a CARVQ-GGUF, tied head written explicitly); returns
    a summary of the conversion."""
    from ..convert.pipeline import convert

    result = convert(source, out, preset, calib_text=calib_text, seed=seed, progress=progress)
    return {"preset": preset, "head_type": result.head_type, "carvq_bytes": result.carvq_bytes,
            "correction_rows": result.state.n_correction_rows, "recipe": recipe(result.state, preset)}


def recipe(state, preset: str) -> str:
    """What a CARVQ codec is made of, in one line (for the report)."""
    from ..codec.presets import get_preset

    r, a = state.rvq, state.adaptor
    layout = "codebooks per column" if r.group_layout == "column" else f"blocks of {r.group_size} sub-vectors"
    parts = [f"RVQ L={r.levels} K={r.codebook_size} h={r.subvector_dim}, {layout}",
             "k-means weighted by calibration frequency" if get_preset(preset).train.weighted else "unweighted k-means",
             f"adaptor {a.table_dim}->{'->'.join(str(d) for d in a.hidden_dims)}->{state.embedding_dim}"
             if a.enabled else "no adaptor",
             f"{state.n_correction_rows} correction rows"]
    return ", ".join(parts)
