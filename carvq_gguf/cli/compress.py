"""`carvq-gguf compress`: compress a model's input embedding and report what it costs and gives.

    carvq-gguf compress SOURCE --preset NAME -o CODEC [--eval-text FILE] [--calib-text FILE]
                        [--json REPORT] [--seed N] [--windows W] [--window T] [--no-eval]
                        [--tune-steps N] [--metric-rounds N]

SOURCE is an HF model directory or a GGUF file. The codec is written to CODEC (codec/codec_file.py).
Importance-weighted presets tokenize --calib-text (default: the bundled calib.txt), and the
carvq-* presets then re-encode the codes under the model's Fisher metric measured on it
(--metric-rounds 0 skips it) and tune the codec against the model's KL on it (--tune-steps 0 skips it). Unless
--no-eval, the model's perplexity in PyTorch is measured with each input embedding (original,
CARVQ, the same RVQ alone, round-to-nearest INT2/3/4 at group 64; tied head left as is) on
fixed windows of --eval-text (default: the bundled eval.txt). A model without a tokenizer
needs --no-eval and a preset without importance weighting or tuning.
"""

from __future__ import annotations

import argparse

from ..codec.presets import PRESET_NAMES
from .fit_options import add_fit_arguments


def register(subparsers) -> None:
    """Add the compress subcommand."""
    p = subparsers.add_parser("compress", help="compress a model's input embedding into a CARVQ codec",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="HF model directory or GGUF file")
    p.add_argument("--preset", default="carvq-1.6", help=f"one of {', '.join(PRESET_NAMES)} (default carvq-1.6)")
    p.add_argument("-o", "--output", required=True, help="codec file to write")
    p.add_argument("--eval-text", help="perplexity text (default: bundled eval.txt)")
    p.add_argument("--calib-text", help="calibration text for importance weights (default: bundled calib.txt)")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--seed", type=int, default=0)
    add_fit_arguments(p)
    p.add_argument("--windows", type=int, default=8, help="evaluation windows (default 8)")
    p.add_argument("--window", type=int, default=512, help="tokens per window, second half scored (default 512)")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `carvq-gguf compress`."""
    from ..eval.pytorch import CompressOptions, compress_and_compare, print_table

    options = CompressOptions(args.source, args.preset, args.output, args.calib_text, args.eval_text, args.json,
                              args.seed, args.windows, args.window, not args.no_eval, not args.quiet,
                              args.tune_steps, args.metric_rounds)
    _, report = compress_and_compare(options)
    print_table(report)
    return 0
