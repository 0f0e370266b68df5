"""`carvq-gguf pareto SOURCE.gguf -o DIR`: build every input-embedding variant of SOURCE (llama.cpp's
token_embd types, CARVQ presets, RVQ only) and measure them in llama.cpp; writes DIR/pareto.md,
pareto.json and pareto.png."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the pareto subcommand."""
    from ..eval.pareto import STOCK_TYPES, ParetoOptions

    defaults = ParetoOptions()
    p = sub.add_parser("pareto", help="benchmark CARVQ against llama.cpp's token_embd types on one model",
                       description="Every variant differs from SOURCE only in the input embedding (a tied head is "
                                   "written explicitly in the source's type). Each step is cached by content hash, "
                                   "so a rerun only recomputes what changed.")
    p.add_argument("source", type=Path, help="source GGUF model")
    p.add_argument("-o", "--out-dir", type=Path, required=True, help="directory for pareto.md/.json/.png")
    p.add_argument("--text", type=Path, default=None, help="evaluation text (default: the bundled eval.txt)")
    p.add_argument("--calib-text", type=Path, default=None,
                   help="calibration text for the imatrix and CARVQ (default: the bundled calib.txt)")
    p.add_argument("--ctx", type=int, default=defaults.ctx)
    p.add_argument("--windows", type=int, default=defaults.windows, help=f"windows scored (default {defaults.windows})")
    p.add_argument("--imatrix-chunks", type=int, default=defaults.imatrix_chunks)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--types", default=",".join(STOCK_TYPES), help="comma-separated llama.cpp types")
    p.add_argument("--presets", default=None, help="comma-separated presets (default: all)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--cache-dir", type=Path, default=None, help="cache directory (default: <cache>/eval)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write the report."""
    from ..eval.cache import EvalCache
    from ..eval.pareto import ParetoOptions, run_pareto
    from ..eval.pareto_report import comparisons, write_report

    options = ParetoOptions(ctx=args.ctx, windows=args.windows, imatrix_chunks=args.imatrix_chunks,
                            threads=args.threads, stock_types=_names(args.types) or (),
                            presets=_names(args.presets), seed=args.seed, progress=not args.no_progress)
    if args.text is not None:
        options.text = args.text
    if args.calib_text is not None:
        options.calib_text = args.calib_text
    data = run_pareto(args.source, options, EvalCache(args.cache_dir))
    paths = write_report(data, args.out_dir)
    for line in comparisons(data["rows"]):
        print(line)
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']} ({data['wall_seconds'] / 60:.1f} min)")
    return 0
