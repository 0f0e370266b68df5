"""Write the Pareto benchmark's report: pareto.json (all data), pareto.md (the table and what it
says) and pareto.png (embedding bpw against dPPL and KLD, one line per method)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import atomic_write
from ..units import megabytes

CARVQ_METHODS = ("CARVQ", "CARVQ, RVQ codes", "CARVQ + adaptor", "CARVQ (paper)")
# plot colour, marker and line style of each method (pareto.preset_method names them)
METHOD_STYLE = {"llama.cpp": ("tab:gray", "s", "-"), "CARVQ": ("tab:red", "o", "-"),
                "CARVQ, RVQ codes": ("tab:brown", "P", "-"), "CARVQ + adaptor": ("tab:orange", "v", ""),
                "CARVQ (paper)": ("tab:purple", "D", ""), "RVQ only": ("tab:blue", "^", "")}


def measured(rows: list[dict]) -> list[dict]:
    """Rows that were built and measured."""
    return [r for r in rows if r.get("ppl") is not None]


def stock_points(rows: list[dict]) -> list[dict]:
    """Measured llama.cpp rows, one per type actually written (fallbacks make duplicates), by bpw."""
    seen: dict[str, dict] = {}
    for r in measured(rows):
        if r["method"] == "llama.cpp" and r["actual_type"] not in seen:
            seen[r["actual_type"]] = r
    return sorted(seen.values(), key=lambda r: r["embedding_bpw"])


def nonnegative(x: float) -> float:
    """x, with the -0.0 (or rounding-negative) KL divergence of an identical model shown as 0."""
    return x if x > 0 else 0.0


def _dppl(r: dict) -> str:
    """dPPL with its uncertainty (from llama-perplexity's paired ln-ratio error) when known."""
    err = r.get("ln_ratio_err")
    known = err is not None and math.isfinite(err)
    return f"{r['dppl_percent']:+.2f}%" + (f" ± {100 * err:.2f}" if known else "")


def comparisons(rows: list[dict]) -> list[str]:
    """One sentence per stock type: the lowest-bpw CARVQ variant at or below its bpw with a dPPL
    at most its dPPL (perplexity no worse), or that there is none."""
    carvq = [r for r in measured(rows) if r["method"] in CARVQ_METHODS]
    lines = []
    for s in stock_points(rows):
        wins = [c for c in carvq if c["embedding_bpw"] <= s["embedding_bpw"] and c["dppl_percent"] <= s["dppl_percent"]]
        head = f"{s['actual_type']} ({s['embedding_bpw']:.2f} bpw, dPPL {_dppl(s)})"
        if not wins:
            lines.append(f"{head}: no CARVQ variant at or below {s['embedding_bpw']:.2f} bpw is as good.")
            continue
        best = min(wins, key=lambda c: c["embedding_bpw"])
        lines.append(f"{head}: beaten from {best['embedding_bpw']:.2f} bpw by {best['name']} "
                     f"(dPPL {_dppl(best)}, KLD {best['kld']:.4f} vs {s['kld']:.4f}).")
    return lines


def from_scratch_seconds(data: dict) -> float:
    """Time the whole benchmark takes with an empty cache: every build, the base run, and one
    llama-perplexity run per distinct model file, as recorded when each step was computed."""
    seen: set[str] = set()
    total = data["source"].get("base_seconds") or 0.0
    for r in data["rows"]:
        total += r.get("build_seconds") or 0.0
        if r.get("model_sha256") and r["model_sha256"] not in seen:
            seen.add(r["model_sha256"])
            total += r.get("eval_seconds") or 0.0
    return total + data.get("untie_imatrix_seconds", 0.0)


def _table(rows: list[dict]) -> list[str]:
    out = ["| variant | method | token_embd written as | embedding bpw | embedding MB | file MB | PPL | dPPL "
           "| KLD | same top-1 % | note |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("ppl") is None:
            out.append(f"| {r['name']} | {r['method']} | not made | | | | | | | | {r['note']} |")
            continue
        written = r["embedding_type"] if r["embedding_type"] != "CARVQ" else "CARVQ tensors"
        out.append(f"| {r['name']} | {r['method']} | {written} | {r['embedding_bpw']:.3f} | "
                   f"{megabytes(r['embedding_bytes'])} | {megabytes(r['file_bytes'])} | {r['ppl']:.3f} ± {r['ppl_err']:.3f} | "
                   f"{_dppl(r)} | {nonnegative(r['kld']):.4f} ± {r['kld_err']:.4f} | {r['same_top_p']:.1f} | "
                   f"{r['note']} |")
    return out


def markdown(data: dict, png_name: str = "pareto.png") -> str:
    """The report as markdown."""
    src, st = data["source"], data["settings"]
    head = "tied to token_embd" if src["tied"] else "a separate output.weight"
    lines = [
        f"# Input-embedding compression of {src['name']}: CARVQ against llama.cpp's token_embd types",
        "",
        f"Source: `{src['name']}` (sha256 `{src['sha256'][:16]}...`), V = {src['vocab_size']}, "
        f"n = {src['embedding_dim']}, token_embd {src['embedding_type']} ({src['embedding_bpw']:.2f} bpw, "
        f"{megabytes(src['embedding_bytes'])} MB), file {megabytes(src['file_bytes'])} MB, head {head}.",
        "",
        "What differs between variants: only the input embedding. Every other tensor is byte-identical to "
        "the source (checked by content hash for the llama.cpp types; by the converter's read-back check "
        "for CARVQ). "
        + ("The source ties its output head to token_embd, so every variant writes the head explicitly as "
           f"`output.weight` in the source's {src['embedding_type']} (the original matrix): the head is the "
           "same in all rows and the file sizes include it." if src["tied"] else
           "The source has its own output.weight, kept as it is."),
        "",
        f"Measured with llama.cpp's `llama-perplexity` built from the patched tree: text `{st['text_name']}`, "
        f"{st['windows']} windows of {st['ctx']} tokens, the second half of each scored "
        f"({st['scored_tokens']} tokens), {st['threads']} threads. The source's log-probabilities are saved "
        "once (`--kl-divergence-base`) and every variant is scored on the same tokens (`--kl-divergence`). "
        f"Source perplexity {src['ppl']:.3f}. dPPL = PPL / PPL(source) - 1; KLD = mean "
        "KL(source || variant) per token; same top-1 = tokens whose most likely next token is the source's.",
        "",
        "llama.cpp types: `llama-quantize --allow-requantize --pure --token-embedding-type TYPE "
        "--output-tensor-type <head type> UNTIED OUT <source file type>` (tensors already of the target type are "
        "copied, not requantized; a tensor-type file holds every other matrix at its current type, so a "
        "mixed-type source such as Q4_K_M keeps its tensors). i-quants get an importance matrix from `llama-imatrix` on "
        f"`{st['calib_text_name']}` ({st['imatrix_chunks']} windows; the calibration text, not the evaluation "
        "text). The table shows the type actually written, read back from each file.",
        "",
        f"CARVQ variants: `carvq-gguf convert` with each preset of `carvq_gguf.presets` (codec code version "
        f"`{st['codec_code_version']}` at commit `{st.get('git_commit') or '?'}`, calibration "
        f"`{st['calib_text_name']}`, seed {st['seed']}); "
        "the note of each row gives what the preset is made of. The main presets code every row with a "
        "bitshift trellis (a Viterbi search per row over 2^L-entry tables, k bits per step of d values) and "
        "spend the rest of their budget on F16 correction rows for the calibration's most frequent tokens; "
        "`*-rvq` and `*-adaptor` code them with RVQ levels (refined: all levels' codebooks solved jointly by "
        "least squares, alternated with beam-search encoding), and `rvq-*` are that RVQ alone, without "
        "adaptor or correction rows. Where the note says so, the model takes part: the paths are searched, "
        "or the RVQ codes re-encoded, under its Fisher with respect to an embedding row, and the tables or "
        "codebooks and the correction rows are then tuned, codes fixed, to minimise its KL on the "
        "calibration text (docs/EXPERIMENTS.md).",
        "",
        f"![embedding bpw against dPPL]({png_name})",
        "",
        *_table(data["rows"]),
        "",
        *(["Types marked not made: llama.cpp's quantizer refused them for token_embd (its message is in the "
           "note). For `--token-embedding-type` it does not fall back to another type, so a type whose block "
           f"(256 for k- and i-quants, 128 for Q1_0) does not divide the row length n = {src['embedding_dim']} "
           "stops with an error; the very-low-bit i-quants also need importance weights for token_embd itself, "
           "which llama-imatrix does not produce (token_embd is a row lookup, not a matrix product). These types "
           "do not exist for this model's embedding in llama.cpp.", ""]
          if any(r.get("ppl") is None for r in data["rows"]) else []),
        "## Where CARVQ beats each llama.cpp type",
        "",
        "A CARVQ variant beats a type when its embedding takes no more bits per weight and its perplexity "
        "change is no larger.",
        "",
        *[f"- {line}" for line in comparisons(data["rows"])],
        "",
        f"Cost on this machine (2 shared cores): {from_scratch_seconds(data) / 60:.1f} min from an empty cache "
        "(sum of the recorded times of every build, the base run and one llama-perplexity run per distinct "
        f"file); the run that wrote this report took {data['wall_seconds'] / 60:.1f} min, steps found in the "
        "cache being reused.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict, out: Path) -> None:
    """Embedding bpw against dPPL % (symlog) and KLD (log), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured(data["rows"])
    groups = {"llama.cpp": stock_points(data["rows"])}
    for method in (m for m in METHOD_STYLE if m != "llama.cpp"):
        groups[method] = sorted((r for r in rows if r["method"] == method), key=lambda r: r["embedding_bpw"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, label in ((axes[0], "dppl_percent", "perplexity change vs source (%)"),
                           (axes[1], "kld", "mean KL divergence vs source (< 1e-4 drawn at 1e-4)")):
        for method, points in groups.items():
            if not points:
                continue
            color, marker, style = METHOD_STYLE[method]
            xs = [p["embedding_bpw"] for p in points]
            ys = [max(p[key], 1e-4) if key == "kld" else p[key] for p in points]
            ax.plot(xs, ys, marker=marker, linestyle=style or "none", color=color, label=method)
            for i, (p, x, y) in enumerate(zip(points, xs, ys)):
                name = p["actual_type"] if method == "llama.cpp" else p["name"]
                # alternate right and left of the point so labels of points at the same bpw do not mix up
                right = i % 2 == 0
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5 if right else -5, 2),
                            ha="left" if right else "right", fontsize=7, color=color)
        if key == "kld":
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=0.1)
            ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("input embedding bits per weight (everything stored)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    st = data["settings"]
    fig.suptitle(f"{data['source']['name']}: input embedding only, {st['scored_tokens']} tokens of "
                 f"{st['text_name']} in llama.cpp", fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(data: dict, out_dir: Path) -> dict[str, Path]:
    """Write pareto.json, pareto.md and pareto.png into out_dir (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "pareto.json", "md": out_dir / "pareto.md", "png": out_dir / "pareto.png"}
    atomic_write(paths["json"], lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
    plot(data, paths["png"])
    atomic_write(paths["md"], lambda tmp: tmp.write_text(markdown(data, paths["png"].name)))
    return paths
