"""What a CARVQ-GGUF holds, what it costs, and whether it is valid: the report behind
`carvq-gguf inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..codec.bits import component_bits, total_bits
from ..errors import CarvqError
from . import carvq_io, names


def _settings(state: Any) -> dict[str, Any]:
    r, a = state.rvq, state.adaptor
    if state.trellis is None:
        codes = {"subvector_dim": r.subvector_dim, "codebook_bits": r.codebook_bits, "codebook_size": r.codebook_size,
                 "levels": r.levels, "group_layout": r.group_layout,
                 "group_size": r.group_size if r.group_layout == "block" else 0,
                 "codebooks_per_level": r.n_groups(state.vocab_size, state.embedding_dim)}
    else:
        c = state.trellis.config
        p = state.trellis.prediction
        codes = {"trellis_state_bits": c.state_bits, "trellis_step_bits": c.step_bits,
                 "trellis_step_dim": c.step_dim, "trellis_groups": c.groups,
                 "predicted_rows": 0 if p is None else p.count}
    return {
        "vocab_size": state.vocab_size, "embedding_length": state.embedding_dim, "quantizer": state.quantizer,
        **codes,
        "adaptor_table_dim": a.table_dim, "adaptor_hidden_dims": list(a.hidden_dims),
        "adaptor_activation": "relu" if a.enabled else None, "adaptor_norm_epsilon": a.norm_eps if a.enabled else None,
        "correction_rows": state.n_correction_rows, "preset": state.preset,
    }


def inspect_file(path: Path) -> dict[str, Any]:
    """The inspect report of a file as a dict; report["valid"] is False with a "reason" when the
    file is not a valid CARVQ-GGUF (including any non-CARVQ GGUF)."""
    path = Path(path)
    report: dict[str, Any] = {"file": str(path), "file_bytes": path.stat().st_size if path.is_file() else None,
                              "valid": False, "reason": None, "format_version": None, "architecture": None}
    try:
        reader = carvq_io.open_gguf(path)
    except CarvqError as e:
        report["reason"] = str(e)
        return report
    arch = reader.get_field("general.architecture")
    report["architecture"] = None if arch is None else str(arch.contents())
    tensors = {t.name: t for t in reader.tensors}
    report["tensor_count"] = len(tensors)
    if not carvq_io.is_carvq(reader):
        embd = tensors.get(names.TOKEN_EMBD)
        dense = f" (token_embd.weight is a dense {embd.tensor_type.name} tensor)" if embd is not None else ""
        report["reason"] = f"not a CARVQ-GGUF: no {names.KEY_VERSION} key{dense}"
        return report
    version = reader.get_field(names.KEY_VERSION)
    report["format_version"] = version.contents() if version is not None else None
    try:
        state = carvq_io.read_carvq_state(reader)
    except CarvqError as e:
        report["reason"] = str(e)
        return report
    V, n = state.vocab_size, state.embedding_dim
    bits = component_bits(state)
    report["settings"] = _settings(state)
    report["components"] = {name: {"bytes": b / 8, "bpw": b / (V * n)} for name, b in bits.items()}
    report["bpw_total"] = total_bits(bits) / (V * n)
    report["embedding_bytes"] = sum(int(t.n_bytes) for name, t in tensors.items()
                                    if name.startswith(names.TENSOR_PREFIX))
    report["dense_f16_embedding_bytes"] = V * n * 2
    head = tensors.get(names.OUTPUT)
    report["output_head"] = None if head is None else {"type": head.tensor_type.name, "bytes": int(head.n_bytes)}
    report["other_tensor_bytes"] = sum(int(t.n_bytes) for name, t in tensors.items()
                                       if not name.startswith(names.TENSOR_PREFIX) and name != names.OUTPUT)
    if head is None:
        report["reason"] = (f"no {names.OUTPUT}: token_embd.weight is gone, so a tied output head "
                            "would have nothing to read")
        return report
    report["valid"] = True
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text lines."""
    lines = [f"file            {report['file']}"]
    if report.get("file_bytes") is not None:
        lines.append(f"file size       {report['file_bytes']:,} bytes")
    if report.get("architecture"):
        lines.append(f"architecture    {report['architecture']}  ({report.get('tensor_count', '?')} tensors)")
    if report.get("format_version") is not None:
        lines.append(f"carvq.version   {report['format_version']}")
    if "settings" in report:
        s = report["settings"]
        if s["quantizer"] == "rvq":
            layout = s["group_layout"] + (f" (g={s['group_size']})" if s["group_layout"] == "block" else "")
            codes = (f"RVQ             h={s['subvector_dim']} K={s['codebook_size']} (kappa={s['codebook_bits']}) "
                     f"L={s['levels']} layout={layout}, {s['codebooks_per_level']} codebooks per level")
        else:
            codes = (f"trellis         L={s['trellis_state_bits']} k={s['trellis_step_bits']} "
                     f"d={s['trellis_step_dim']} ({s['trellis_step_bits'] / s['trellis_step_dim']:g} bits per value), "
                     f"{s['trellis_groups']} tables, {s['predicted_rows']} rows predicted from related rows")
        lines += [
            f"embedding       V={s['vocab_size']} x n={s['embedding_length']}",
            codes,
            "adaptor         " + (f"m1={s['adaptor_table_dim']} hidden={s['adaptor_hidden_dims']} "
                                   f"{s['adaptor_activation']} eps={s['adaptor_norm_epsilon']:g}"
                                   if s["adaptor_table_dim"] else "none"),
            f"correction rows {s['correction_rows']}",
            f"preset          {s['preset'] or '-'}",
            "components      bytes          bpw",
        ]
        for name, c in report["components"].items():
            lines.append(f"  {name:<16}{c['bytes']:>12,.0f}  {c['bpw']:8.4f}")
        lines.append(f"  {'total':<16}{report['embedding_bytes']:>12,d}  {report['bpw_total']:8.4f}")
        lines.append(f"dense F16 would be {report['dense_f16_embedding_bytes']:,} bytes "
                     f"(x{report['dense_f16_embedding_bytes'] / report['embedding_bytes']:.1f})")
        head = report.get("output_head")
        lines.append("output.weight   " + ("missing" if head is None else f"{head['type']} {head['bytes']:,} bytes"))
    lines.append("valid           " + ("yes" if report["valid"] else f"NO: {report['reason']}"))
    return "\n".join(lines)
