"""--awq: search AWQ scales on the source model in PyTorch (carvq_gguf.awq) and fold them into
the base GGUF's tensors, before the CARVQ embedding is written and llama.cpp quantizes.

Scales act on input channels (columns), which llama.cpp's converter never permutes, and on the
rows of v_proj / up_proj, which it never permutes either; RMSNorm weights are stored in the GGUF
as the full multiplier (Gemma's 1 + w included), so every fold is a plain multiply or divide.
Clipping ranges then clamp blocks of the scaled linears. Tensors that change are written as F32;
every other tensor keeps its bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGUFReader

from ..awq import search as awq
from ..codec.state import CarvqState
from ..errors import CarvqError
from ..gguf.rewrite import TensorPlan, architecture, dense_tensor, write_model


def tensor_name_map(reader: GGUFReader) -> gguf.TensorNameMap:
    """gguf-py's HF -> GGUF tensor name map for reader's architecture and block count."""
    arch_name = architecture(reader)
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    field = reader.get_field(f"{arch_name}.block_count")
    if arch is None or field is None:
        raise CarvqError(f"cannot map tensor names for GGUF architecture {arch_name!r}")
    return gguf.get_tensor_name_map(arch, int(field.contents()))


def gguf_name(names: gguf.TensorNameMap, hf_module: str) -> str:
    """The GGUF tensor base name (blk.N.ffn_up) of an HF module path."""
    name = names.get_name(hf_module)
    if name is None:
        raise CarvqError(f"no GGUF tensor corresponds to {hf_module}")
    return name


def folded_tensors(reader: GGUFReader, result: awq.AwqResult) -> dict[str, np.ndarray]:
    """The tensors the scales and clipping ranges change, as new float32 arrays keyed by GGUF name."""
    names = tensor_name_map(reader)
    tensors = {t.name: t for t in reader.tensors}
    changed: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in changed:
            if name not in tensors:
                raise CarvqError(f"the base GGUF has no tensor {name}, which an AWQ scale must be folded into")
            changed[name] = dense_tensor(tensors[name])
        return changed[name]

    for gs in result.scales:
        if gs.alpha == 0.0:
            continue  # s = 1
        s = gs.scale.double().numpy()
        prev = gguf_name(names, gs.module_path(gs.group.prev))
        weight = get(prev + ".weight")
        if weight.ndim == 1:            # RMSNorm: y = weight * norm(x)
            changed[prev + ".weight"] = (weight / s).astype(np.float32)
        else:                           # linear: its output rows feed the scaled inputs
            changed[prev + ".weight"] = (weight / s[:, None]).astype(np.float32)
            if prev + ".bias" in tensors:
                changed[prev + ".bias"] = (get(prev + ".bias") / s).astype(np.float32)
        for linear in gs.group.linears:
            name = gguf_name(names, gs.module_path(linear)) + ".weight"
            w = get(name)
            if w.shape[1] != s.shape[0]:
                raise CarvqError(f"{name} has {w.shape[1]} input channels but its AWQ scale has {s.shape[0]}")
            changed[name] = (w * s[None, :]).astype(np.float32)
    for clip in result.clips:
        name = gguf_name(names, awq.module_path(clip.layer, clip.linear)) + ".weight"
        changed[name] = awq.clipped(torch.from_numpy(np.array(get(name))), clip.max_val).numpy()
    return changed


def write_awq_base(reader: GGUFReader, result: awq.AwqResult, out_path: Path, progress: bool = True) -> int:
    """Write reader's model with the scales folded in and the clipping applied to out_path;
    returns how many tensors changed."""
    changed = folded_tensors(reader, result)
    plan: TensorPlan = []
    for t in reader.tensors:
        if t.name in changed:
            plan.append((t.name, changed[t.name], None))
        else:
            plan.append((t.name, np.asarray(t.data), t.tensor_type))
    print(f"[awq] folding scales into {len(changed)} tensors (written as F32)", file=sys.stderr)
    write_model(reader, out_path, plan, progress)
    return len(changed)


def make_awq_base(source: Path, base: Path, out_path: Path, calib_text: str, config: awq.AwqConfig,
                  progress: bool = True, embedding: CarvqState | None = None) -> dict:
    """Search AWQ scales on source (HF directory or GGUF, loaded in float32 by transformers) with
    calib_text under its own tokenizer, fold them into base (source's GGUF) and write out_path.
    With embedding (the CARVQ codec the file will carry) in place of the input embedding, the
    search sees the activations of the model as it will run. Returns awq.summary of the search,
    with the number of tensors changed."""
    from ..hf.model import load_causal_lm, replace_input_embedding
    from ..hf.calibration import calibration_token_ids

    ids = calibration_token_ids(source, calib_text)
    print(f"[awq] loading {source} in float32 with transformers", file=sys.stderr)
    model, _ = load_causal_lm(source)
    if embedding is not None:
        replace_input_embedding(model, embedding)
    result = awq.search(model, ids, config, progress)
    del model
    totals = awq.summary(result)
    totals["tensors_changed"] = write_awq_base(gguf.GGUFReader(base), result, out_path, progress)
    return totals
