"""The AWQ + CARVQ report: one source model, its 4-bit variants with a dense or a CARVQ embedding,
all scored by llama-perplexity on the same windows against the source.

Variants: the source; source + CARVQ; Q4 round to nearest (llama.cpp's quantizer as is), with a
dense or CARVQ embedding; AWQ-Q4 (scales folded before quantizing), dense or CARVQ, and CARVQ
with the AWQ search run on the CARVQ model; Q4 with llama.cpp's importance matrix, dense or CARVQ. Every CARVQ variant uses one codec, so the
embedding is bit-identical across them.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..awq.search import AwqConfig, quant_proxy
from ..atomic import atomic_write
from ..data import bundled_text
from ..units import megabytes
from .cache import EvalCache
from .evaluate import EvalSettings, evaluate_model
from .pareto_report import nonnegative


@dataclass
class AwqReportOptions:
    """What the report builds and how it scores."""

    quantize: str = "Q4_0"
    preset: str = "carvq-1.6"
    calib_text: Path = field(default_factory=lambda: Path(bundled_text("calib.txt")))
    text: Path = field(default_factory=lambda: Path(bundled_text("eval.txt")))
    ctx: int = 512
    windows: int | None = 10
    imatrix_chunks: int | None = None
    awq: AwqConfig = field(default_factory=AwqConfig)
    threads: int = 2
    progress: bool = True


AWQ_ON_CARVQ = "AWQ-Q4 (calibrated with CARVQ) + CARVQ"
# (name, embedding, weights) in report order; weights is how the transformer weights were made
VARIANTS = (
    ("source", "dense", "source"),
    ("source + CARVQ", "CARVQ", "source"),
    ("Q4 RTN", "dense", "rtn"),
    ("Q4 RTN + CARVQ", "CARVQ", "rtn"),
    ("AWQ-Q4", "dense", "awq"),
    ("AWQ-Q4 + CARVQ", "CARVQ", "awq"),
    (AWQ_ON_CARVQ, "CARVQ", "awq-on-carvq"),
    ("Q4 imatrix", "dense", "imatrix"),
    ("Q4 imatrix + CARVQ", "CARVQ", "imatrix"),
)


class VariantFiles:
    """Builds the variant files of one source in a work directory, timing each step."""

    def __init__(self, source: Path, work: Path, options: AwqReportOptions) -> None:
        self.source, self.work, self.options = Path(source), Path(work), options
        self.seconds: dict[str, float] = {}
        self.awq_summary: dict | None = None
        self.codec: Path | None = None

    def _timed(self, name: str, build) -> Path:
        start = time.monotonic()
        out = self.work / (name.replace(" ", "").replace("+", "-").lower() + ".gguf")
        print(f"[awq-report] building {name}", file=sys.stderr)
        build(out)
        self.seconds[name] = time.monotonic() - start
        return out

    def build_all(self) -> dict[str, Path]:
        """Every variant's file, by name."""
        from ..codec.codec_file import save_codec
        from ..convert.awq_fold import make_awq_base
        from ..convert.pipeline import ConvertOptions, convert, read_calib_text
        from ..convert.quantize import quantize_gguf
        from ..runtime.tools import build_imatrix, quantize_with_imatrix

        o, q = self.options, self.options.quantize
        files = {"source": self.source}

        def carvq(out: Path) -> None:
            result = convert(self.source, out, ConvertOptions(o.preset, calib_text=o.calib_text, progress=o.progress))
            self.codec = self.work / "embedding.carvq"
            save_codec(result.state, self.codec)

        scaled = self.work / "awq-scaled-f32.gguf"  # what `convert --awq` quantizes, searched once for both

        def awq_dense(out: Path) -> None:
            self.awq_summary = make_awq_base(self.source, self.source, scaled, read_calib_text(o.calib_text),
                                             o.awq, o.progress)
            quantize_gguf(scaled, out, q, None, o.threads)

        files["source + CARVQ"] = self._timed("source + CARVQ", carvq)
        files["Q4 RTN"] = self._timed("Q4 RTN", lambda out: quantize_gguf(self.source, out, q, None, o.threads))
        files["Q4 RTN + CARVQ"] = self._timed("Q4 RTN + CARVQ", lambda out: convert(
            self.source, out, ConvertOptions(o.preset, codec=self.codec, quantize=q, progress=o.progress)))
        files["AWQ-Q4"] = self._timed("AWQ-Q4", awq_dense)
        files["AWQ-Q4 + CARVQ"] = self._timed("AWQ-Q4 + CARVQ", lambda out: convert(
            scaled, out, ConvertOptions(o.preset, codec=self.codec, quantize=q, progress=o.progress)))
        files[AWQ_ON_CARVQ] = self._timed(AWQ_ON_CARVQ, lambda out: convert(
            self.source, out, ConvertOptions(o.preset, calib_text=o.calib_text, codec=self.codec, quantize=q, awq=o.awq,
                                             awq_with_carvq=True, progress=o.progress)))
        imatrix = self._timed("imatrix", lambda out: build_imatrix(self.source, o.calib_text, out, o.ctx,
                                                                     o.imatrix_chunks, o.threads))
        files["Q4 imatrix"] = self._timed("Q4 imatrix", lambda out: quantize_with_imatrix(
            self.source, out, q, imatrix, o.threads))
        files["Q4 imatrix + CARVQ"] = self._timed("Q4 imatrix + CARVQ", lambda out: quantize_with_imatrix(
            files["source + CARVQ"], out, q, imatrix, o.threads))
        return files


def window_log_ppl(running: list[float]) -> list[float]:
    """Per-window ln perplexity from llama-perplexity's running perplexity after each window
    (every window scores the same number of tokens)."""
    totals = [k * math.log(p) for k, p in enumerate(running, 1)]
    return [t - prev for t, prev in zip(totals, [0.0, *totals[:-1]])]


def cost_gap_standard_error(by: dict[str, dict]) -> float:
    """Standard error, over the windows, of (CARVQ's cost on AWQ-Q4) - (its cost on the source)
    in percentage points."""
    def costs(carvq: str, dense: str) -> list[float]:
        return [100 * (math.exp(a - b) - 1) for a, b in
                zip(window_log_ppl(by[carvq]["chunk_ppl"]), window_log_ppl(by[dense]["chunk_ppl"]))]

    gaps = [a - b for a, b in zip(costs("AWQ-Q4 + CARVQ", "AWQ-Q4"), costs("source + CARVQ", "source"))]
    return statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan


def findings(rows: list[dict]) -> dict:
    """The comparisons the report exists for, from the measured rows."""
    by = {r["name"]: r for r in rows}

    def cost(carvq: str, dense: str) -> float:
        """Perplexity CARVQ adds on top of a dense-embedding model, in percent."""
        return 100 * (by[carvq]["ppl"] / by[dense]["ppl"] - 1)

    unquantized, on_awq = cost("source + CARVQ", "source"), cost("AWQ-Q4 + CARVQ", "AWQ-Q4")
    return {
        "awq_ppl": by["AWQ-Q4"]["ppl"], "rtn_ppl": by["Q4 RTN"]["ppl"],
        "awq_beats_rtn": by["AWQ-Q4"]["ppl"] < by["Q4 RTN"]["ppl"],
        "carvq_cost_unquantized_percent": unquantized,
        "carvq_cost_rtn_percent": cost("Q4 RTN + CARVQ", "Q4 RTN"),
        "carvq_cost_awq_percent": on_awq,
        "awq_on_carvq_ppl": by[AWQ_ON_CARVQ]["ppl"],
        "awq_on_carvq_cost_percent": cost(AWQ_ON_CARVQ, "AWQ-Q4"),
        "carvq_cost_imatrix_percent": cost("Q4 imatrix + CARVQ", "Q4 imatrix"),
        "carvq_cost_gap_points": on_awq - unquantized,
        "carvq_cost_gap_se_points": cost_gap_standard_error(by),
        "carvq_cost_awq_within_2pp": on_awq <= unquantized + 2.0,
        "awq_carvq_size_ratio": by["AWQ-Q4 + CARVQ"]["file_bytes"] / by["source"]["file_bytes"],
    }


def run_awq_report(source: Path, options: AwqReportOptions | None = None, cache: EvalCache | None = None,
                   work_dir: Path | None = None) -> dict:
    """Build every variant of source, score each against it, and return the report data."""
    options = options or AwqReportOptions()
    options = replace(options, awq=replace(options.awq, quant=quant_proxy(options.quantize)))
    source = Path(source)
    cache = cache or EvalCache()
    settings = EvalSettings(text=options.text, ctx=options.ctx, windows=options.windows, threads=options.threads)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="carvq-awq-report-", dir=work_dir) as tmp:
        builder = VariantFiles(source, Path(tmp), options)
        files = builder.build_all()
        rows = []
        for name, embedding, weights in VARIANTS:
            print(f"[awq-report] scoring {name}", file=sys.stderr)
            row = evaluate_model(files[name], settings, base=source, cache=cache)
            row.update(name=name, embedding=embedding, weights=weights, build_seconds=builder.seconds.get(name),
                       model=files[name].name)
            row.pop("base", None)
            rows.append(row)
    from .pareto import git_commit

    return {"source": source.name, "source_bytes": source.stat().st_size, "quantize": options.quantize,
            "preset": options.preset, "calib_text": options.calib_text.name, "text": options.text.name,
            "ctx": options.ctx, "windows": rows[0]["windows"], "scored_tokens": rows[0]["scored_tokens"],
            "awq": {**(builder.awq_summary or {}), "quant_simulated": options.awq.quant,
                    "windows": options.awq.max_windows, "seq_len": options.awq.seq_len,
                    "search_tokens": options.awq.search_tokens, "n_grid": options.awq.n_grid},
            "rows": rows, "findings": findings(rows), "commit": git_commit(),
            "seconds": time.monotonic() - start}


def markdown(data: dict, png_name: str) -> str:
    """The report as markdown: the table, then what it shows."""
    f, a, q = data["findings"], data["awq"], data["quantize"]
    src = data["source_bytes"]
    lines = [f"# AWQ-{q} + CARVQ: {data['source']}", "",
             f"Perplexity from llama.cpp's `llama-perplexity` on `{data['text']}`, {data['windows']} windows of "
             f"{data['ctx']} tokens ({data['scored_tokens']} scored), every model on the same windows as the source; "
             f"KLD is the mean KL divergence from the source's token distributions. AWQ scales and the "
             f"importance matrix come from `{data['calib_text']}`, which shares no text with the evaluation file. "
             f"Quantization: `{q}`; embedding codec: `{data['preset']}` (one codec for every CARVQ row).", "",
             "| variant | file MB | vs source | input embedding | ppl | dPPL vs source | KLD |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        emb = r["embedding_type"] if r["embedding_type"] != "CARVQ" else "CARVQ"
        lines.append(f"| {r['name']} | {megabytes(r['file_bytes'], 1)} | {100 * r['file_bytes'] / src:.1f}% | "
                     f"{emb} {r['embedding_bpw']:.2f} bpw | {r['ppl']:.3f} | {r['dppl_percent']:+.2f}% | "
                     f"{nonnegative(r['kld']):.4f} |")
    source = data["rows"][0]
    if abs(source["dppl_percent"]) >= 0.05:
        lines += ["", f"The source scores {source['dppl_percent']:+.2f}% against itself: llama-perplexity takes the "
                      f"base perplexity ({source['base_ppl']:.3f}) from the log-probabilities it saved in 16 bits "
                      f"(one step is the position's logit range / 65535). The ppl column, each model's own, "
                      f"is exact; the comparisons below use it."]
    lines += ["", f"![file size against perplexity]({png_name})", "", "## What it shows", "",
              f"- AWQ-{q} perplexity {f['awq_ppl']:.3f} against round-to-nearest {f['rtn_ppl']:.3f}: "
              + ("AWQ is lower." if f["awq_beats_rtn"] else "AWQ is NOT lower."),
              f"- CARVQ adds {f['carvq_cost_unquantized_percent']:+.2f}% perplexity on the unquantized source and "
              f"{f['carvq_cost_awq_percent']:+.2f}% on AWQ-{q}: {f['carvq_cost_gap_points']:+.2f} points "
              f"(standard error {f['carvq_cost_gap_se_points']:.2f} over the windows), "
              + ("within the 2-point allowance." if f["carvq_cost_awq_within_2pp"] else
                 "MORE than the 2-point allowance."),
              f"- With the AWQ search run on the CARVQ model (`--awq-with-carvq`), the CARVQ file scores "
              f"{f['awq_on_carvq_ppl']:.3f}, {f['awq_on_carvq_cost_percent']:+.2f}% over AWQ-{q} with a dense "
              f"embedding (whose weights come from the dense search, so they differ).",
              f"- On round-to-nearest {q} it adds {f['carvq_cost_rtn_percent']:+.2f}%, on imatrix {q} "
              f"{f['carvq_cost_imatrix_percent']:+.2f}%.",
              f"- AWQ-{q} + CARVQ is {100 * f['awq_carvq_size_ratio']:.1f}% of the source file.", *_tied_note(data), "",
              "## How AWQ ran", "",
              f"{a.get('groups', 0)} scale groups ({a.get('unscaled_groups', 0)} kept s = 1), "
              f"{a.get('tensors_changed', 0)} tensors rescaled; calibration {a['windows']} windows of {a['seq_len']} "
              f"tokens, error measured on {a['search_tokens']} of them, alpha grid of {a['n_grid']}, "
              f"simulating {a['quant_simulated'].upper()} blocks. Summed simulated output error "
              f"{a.get('error_ratio', float('nan')):.3f}x round-to-nearest on the calibration tokens; "
              f"clipping ranges on {a.get('clipped_linears', 0)} linears (q and k excepted) cut the summed "
              f"per-block error of the scaled weights to {a.get('clip_error_ratio', float('nan')):.3f}x.", "",
              f"Built and scored in {data['seconds'] / 60:.1f} minutes at commit {data['commit']}.", ""]
    return "\n".join(lines)


def _tied_note(data: dict) -> list[str]:
    """Why the CARVQ files are not smaller than the dense ones, when the source ties its head."""
    by = {r["name"]: r for r in data["rows"]}
    if by["source"]["head_type"] is not None:
        return []
    carvq, dense = by["AWQ-Q4 + CARVQ"], by["AWQ-Q4"]
    return [f"- The source ties its output head to `token_embd`, so the dense files keep one "
            f"{dense['embedding_type']} matrix for both, while the CARVQ files keep it as an explicit "
            f"`output.weight` ({carvq['head_type']}) and add {carvq['embedding_bytes'] / 1e6:.1f} MB of CARVQ "
            f"tensors: on a tied model CARVQ shrinks the input lookup, not the file."]


def _label_place(row: dict, rows: list[dict]) -> tuple[tuple[int, int], str]:
    """Label offset and alignment: the AWQ and imatrix points of one embedding sit close together,
    so the higher one is labelled above-right and the lower one below-left."""
    partner = {"awq": "imatrix", "imatrix": "awq"}.get(row["weights"])
    other = next((r for r in rows if r["weights"] == partner and r["embedding"] == row["embedding"]), None)
    if other is None or row["ppl"] >= other["ppl"]:
        return (6, 5), "left"
    return (-6, -12), "right"


def plot(data: dict, out: Path) -> None:
    """File size against perplexity, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in data["rows"]:
        color = "tab:red" if r["embedding"] == "CARVQ" else "tab:gray"
        ax.scatter(r["file_bytes"] / 1e6, r["ppl"], color=color, marker={"awq": "o", "awq-on-carvq": "D"}.get(r["weights"], "s"))
        offset, align = _label_place(r, data["rows"])
        ax.annotate(r["name"], (r["file_bytes"] / 1e6, r["ppl"]), textcoords="offset points", xytext=offset,
                    ha=align, fontsize=8)
    ax.margins(x=0.12, y=0.08)  # room for the labels at the edges
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel(f"perplexity ({data['text']}, {data['scored_tokens']} tokens)")
    ax.set_title(f"{data['source']}: {data['quantize']} weights, dense (gray) or CARVQ (red) embedding", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_awq_report(data: dict, out_dir: Path, stem: str = "awq-q4") -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and <stem>.png into out_dir (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("json", "md", "png")}
    atomic_write(paths["json"], lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
    plot(data, paths["png"])
    atomic_write(paths["md"], lambda tmp: tmp.write_text(markdown(data, paths["png"].name)))
    return paths
