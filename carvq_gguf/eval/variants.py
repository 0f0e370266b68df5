"""Model variants that differ from a source GGUF only in the input token embedding.

- quantize_token_embd: llama.cpp's own quantizer (llama-quantize from the patched build) with
  --token-embedding-type TYPE on a source whose tied head was made explicit (gguf.rewrite.untie_head,
  so that changing token_embd leaves the head as it was; a CARVQ conversion does the same, so every
  variant keeps the source's head). The other tensors keep their type: the source's file type is
  passed as the target with --pure (a tensor already of the target type is copied, not
  requantized) and the head type as --output-tensor-type; verify_only_token_embd then checks, by
  content hash, that every other tensor came through unchanged.
- carvq_variant: `carvq-gguf convert` (python API) with a preset.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import CarvqError
from ..gguf.names import FILE_TYPE_KEY, OUTPUT, TOKEN_EMBD
from ..gguf.summary import GgufSummary, read_summary
from ..runtime.build import tool_path
from ..runtime.tools import refusal_reason

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


def pinned_tensor_types(summary: GgufSummary) -> str:
    """llama-quantize --tensor-type-file lines that keep every matrix but token_embd and the head in
    its current type: a mixed-type source (Q4_K_M's Q6_K/Q5_0 tensors) would otherwise be
    requantized to its file type's base type."""
    lines = [f"^{re.escape(name)}$={t.type_name.lower()}" for name, t in sorted(summary.tensors.items())
             if name not in (TOKEN_EMBD, OUTPUT) and len(t.shape) >= 2]
    return "\n".join(lines) + "\n"


def quantize_token_embd(untied: Path, out: Path, type_name: str, imatrix: Path | None = None,
                        threads: int = 2) -> QuantizeOutcome:
    """Requantize only token_embd of untied (a model with an explicit head) to type_name.

    Returns the outcome; actual is None (and out is not written) when llama.cpp refuses the type
    for this tensor. CarvqError if anything but token_embd would change."""
    before = read_summary(untied)
    if OUTPUT not in before.tensors:
        raise CarvqError(f"{untied} has no explicit {OUTPUT}; untie the head first")
    ftype = before.keys.get(FILE_TYPE_KEY)
    if not isinstance(ftype, int):
        raise CarvqError(f"{untied} has no integer general.file_type, so the other tensors' type is unknown")
    head_type = before.tensors[OUTPUT].type_name
    cmd = [str(tool_path("llama-quantize")), "--allow-requantize", "--pure", "--token-embedding-type", type_name,
           "--output-tensor-type", head_type]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    pins = Path(out).with_name(Path(out).name + ".tensor-types")
    pins.write_text(pinned_tensor_types(before))
    cmd += ["--tensor-type-file", str(pins), str(untied), str(out), str(ftype), str(threads)]
    print(f"[pareto] llama-quantize --token-embedding-type {type_name}", file=sys.stderr)
    try:
        # a type llama.cpp cannot use for this row length ends in a GGML_ASSERT; without GGML_NO_BACKTRACE
        # ggml forks the multithreaded quantizer to attach a debugger, and that fork can hang for good
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=env)
    finally:
        pins.unlink(missing_ok=True)
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
    from ..convert.pipeline import ConvertOptions, convert

    result = convert(source, out, ConvertOptions(preset, calib_text=calib_text, seed=seed, progress=progress))
    return {"preset": preset, "head_type": result.head_type, "carvq_bytes": result.carvq_bytes,
            "correction_rows": result.state.n_correction_rows, "recipe": recipe(result.state, preset)}


def recipe(state, preset: str) -> str:
    """What a CARVQ codec is made of, in one line (for the report)."""
    from ..codec.presets import get_preset

    r, a = state.rvq, state.adaptor
    train = get_preset(preset).train
    if state.trellis is None:
        layout = "codebooks per column" if r.group_layout == "column" else f"blocks of {r.group_size} sub-vectors"
        codes = f"RVQ L={r.levels} K={r.codebook_size} h={r.subvector_dim}, {layout}"
        fit = "k-means weighted by calibration frequency" if train.weighted else "unweighted k-means"
    else:
        c = state.trellis.config
        codes = (f"trellis L={c.state_bits} k={c.step_bits} d={c.step_dim} "
                 f"({c.step_bits / c.step_dim:g} bits per value), {c.groups} tables")
        fit = "tables fitted weighted by calibration frequency" if train.weighted else "unweighted tables"
    parts = [codes, fit,
             f"adaptor {a.table_dim}->{'->'.join(str(d) for d in a.hidden_dims)}->{state.embedding_dim}"
             if a.enabled else "no adaptor",
             f"{state.n_correction_rows} correction rows"]
    if state.trellis is not None and train.prediction:
        p = state.trellis.prediction
        parts.append(f"{0 if p is None else p.count} rows predicted from a related row")
    if train.refine_rounds and state.trellis is None:
        parts.insert(2, "refined by joint least squares + beam search")
    if train.metric_rounds:
        parts.insert(3, "paths searched under the diagonal of the model's Fisher" if state.trellis is not None
                     else f"codes re-encoded {train.metric_rounds} rounds under the model's Fisher")
    if train.tune_steps:
        # the fit keeps the tuning only where it lowers the calibration KL (hf/tune.py); the preset
        # says what was asked, so the note says the rule, not the outcome (the converter logs that)
        parts.append(f"tuned {train.tune_steps} steps on the model's KL (restarted at a lower rate if an early "
                     "check finds the KL not lower), kept if the calibration KL fell")
    return ", ".join(parts)
