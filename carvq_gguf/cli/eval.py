"""`carvq-gguf eval MODEL.gguf --text FILE [--base ORIGINAL.gguf] [--json OUT] [--plot OUT.png]`:
perplexity (and KL divergence against --base) measured by llama.cpp's llama-perplexity, with the
model's file size, input-embedding bytes and bits per weight."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the eval subcommand."""
    p = sub.add_parser("eval", help="perplexity / KL divergence of a GGUF model in llama.cpp",
                       description="Score MODEL with llama.cpp's llama-perplexity (from `carvq-gguf build-runtime`) "
                                   "on windows of TEXT, second half of each window scored. With --base, the base "
                                   "model's log-probabilities are saved once and MODEL is scored on the same tokens: "
                                   "dPPL and KL divergence. Results are cached by content hash.")
    p.add_argument("model", type=Path, help="GGUF model (plain or CARVQ-GGUF)")
    p.add_argument("--text", type=Path, default=None, help="evaluation text (default: the bundled eval.txt)")
    p.add_argument("--base", type=Path, default=None, metavar="ORIGINAL.gguf",
                   help="the unmodified model to compare with (KL divergence, dPPL)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--windows", type=int, default=10,
                   help="windows scored (default 10, as `carvq-gguf pareto`; 0 = every full window of TEXT but one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None, help="cache directory (default: <cache>/eval)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the result as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="plot the running perplexity (and KL divergence) over the windows")
    p.set_defaults(func=run)


def format_result(row: dict) -> str:
    """The result as aligned text lines."""
    lines = [
        f"model           {row['model']}",
        f"file size       {row['file_bytes']:,} bytes",
        f"input embedding {row['embedding_type']}, {row['embedding_bytes']:,} bytes, "
        f"{row['embedding_bpw']:.3f} bpw (V={row['vocab_size']} x n={row['embedding_dim']})",
        f"output head     {row['head_type'] or 'tied to token_embd'}",
        f"windows         {row['windows']} x {row['ctx']} tokens, {row['scored_tokens']} tokens scored",
        "perplexity      " + (f"{row['ppl']:.4f} +/- {row['ppl_err']:.4f}" if "ppl_err" in row else f"{row['ppl']:.4f}"),
    ]
    if "kld" in row:
        lines += [
            f"base            {row['base']}: perplexity {row['base_ppl']:.4f} on the same tokens",
            f"dPPL            {row['dppl_percent']:+.3f} % (ln ratio {row['ln_ratio']:+.5f} +/- {row['ln_ratio_err']:.5f})",
            f"KL divergence   {row['kld']:.5f} +/- {row['kld_err']:.5f} per token",
            f"same top-1      {row['same_top_p']:.2f} +/- {row['same_top_p_err']:.2f} %",
        ]
    return "\n".join(lines)


def plot_windows(row: dict, out: Path) -> None:
    """Running perplexity (and KL divergence) after each window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_write

    panels = 2 if "kld" in row else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    xs = list(range(1, len(row["chunk_ppl"]) + 1))
    axes[0][0].plot(xs, row["chunk_ppl"], marker="o", label=Path(row["model"]).name)
    if "kld" in row:
        axes[0][0].axhline(row["base_ppl"], color="gray", linestyle="--", label=f"base {row['base_ppl']:.3f}")
        axes[0][1].plot(xs, row["chunk_kld"], marker="o", color="tab:red")
        axes[0][1].set_xlabel("windows scored")
        axes[0][1].set_ylabel("running mean KL divergence")
        axes[0][1].grid(True, alpha=0.3)
    axes[0][0].set_xlabel("windows scored")
    axes[0][0].set_ylabel("running perplexity")
    axes[0][0].grid(True, alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print, and write the JSON / plot if asked."""
    from ..atomic import atomic_write
    from ..data import bundled_text
    from ..eval.cache import EvalCache
    from ..eval.evaluate import EvalSettings, evaluate_model

    text = args.text if args.text is not None else bundled_text("eval.txt")
    settings = EvalSettings(text, args.ctx, args.windows or None, args.threads)
    row = evaluate_model(args.model, settings, base=args.base, cache=EvalCache(args.cache_dir))
    print(format_result(row))
    if args.json is not None:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(row, indent=1) + "\n"))
    if args.plot is not None:
        plot_windows(row, args.plot)
    return 0
