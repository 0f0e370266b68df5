"""`carvq-gguf convert SOURCE -o OUT.gguf`: HF model directory or GGUF in, CARVQ-GGUF out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..awq.search import AwqConfig
from ..codec.presets import PRESET_NAMES
from ..units import megabytes
from .fit_options import add_fit_arguments


DEFAULT_PRESET = "carvq-1.6"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the convert subcommand."""
    p = sub.add_parser("convert", help="write a CARVQ-GGUF from an HF model directory or a GGUF file",
                       description="Replace token_embd.weight of a model with CARVQ tensors (docs/FORMAT.md). "
                                   "Every other tensor and key is copied byte for byte; a tied head is "
                                   "written explicitly as output.weight.")
    p.add_argument("source", type=Path, help="HF model directory or .gguf file")
    p.add_argument("-o", "--output", type=Path, required=True, help="CARVQ-GGUF file to write")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"one of {', '.join(PRESET_NAMES)} (default {DEFAULT_PRESET})")
    p.add_argument("--calib-text", type=Path, default=None,
                   help="calibration text for importance weights and --awq (default: the bundled calib.txt)")
    p.add_argument("--codec", type=Path, default=None, metavar="FILE",
                   help="use a codec written by `carvq-gguf compress -o FILE` instead of compressing again")
    p.add_argument("--output-type", default=None,
                   help="ggml type of the explicit output.weight written for a tied head "
                        "(default: the source token_embd's type, bytes copied as-is)")
    p.add_argument("--base-type", default="auto",
                   help="HF source only: convert_hf_to_gguf.py --outtype for the base GGUF (default auto)")
    p.add_argument("--keep-base", type=Path, default=None, metavar="FILE",
                   help="HF source only: keep the base GGUF from convert_hf_to_gguf.py at FILE")
    p.add_argument("--seed", type=int, default=0)
    add_fit_arguments(p)
    p.add_argument("--quantize", default=None, metavar="TYPE",
                   help="quantize the transformer weights with llama.cpp's quantizer, e.g. Q4_K_M (needs the patched "
                        "runtime from `carvq-gguf build-runtime`); output.weight follows llama.cpp's choice "
                        "for TYPE unless --output-type is given")
    p.add_argument("--awq", action="store_true",
                   help="before quantizing, fold AWQ-style activation-aware scales and clipping (searched on --calib-text "
                        "against TYPE's 4-bit blocks) into the transformer weights; needs --quantize "
                        "Q4_0, Q4_1, Q4_K_S or Q4_K_M")
    p.add_argument("--awq-windows", type=int, default=AwqConfig.max_windows, metavar="N",
                   help=f"AWQ calibration windows of {AwqConfig.seq_len} tokens (default {AwqConfig.max_windows})")
    p.add_argument("--awq-with-carvq", action="store_true",
                   help="run the AWQ search with the CARVQ embedding in place, on the activations the quantized "
                        "layers will see (whether that helps depends on the model: see reports/*/awq-q4.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, then print sizes."""
    from ..convert.pipeline import ConvertOptions, convert

    options = ConvertOptions(args.preset, calib_text=args.calib_text, output_type=args.output_type,
                             base_type=args.base_type, seed=args.seed, progress=not args.no_progress,
                             keep_base=args.keep_base, codec=args.codec, quantize=args.quantize,
                             awq=AwqConfig(max_windows=args.awq_windows) if args.awq else None,
                             awq_with_carvq=args.awq_with_carvq, tune_steps=args.tune_steps,
                             metric_rounds=args.metric_rounds)
    result = convert(args.source, args.output, options)
    delta = result.out_bytes - result.base_bytes
    print(f"wrote {result.out_path} ({megabytes(result.out_bytes)} MB), verified by reading it back")
    if result.awq:
        a = result.awq
        print(f"  AWQ: {a['groups']} scale groups, {a['tensors_changed']} tensors rescaled; simulated 4-bit output "
              f"error {a['error_ratio']:.3f}x round-to-nearest on the calibration tokens")
    if result.quantized:
        print(f"  transformer weights quantized to {result.quantized} by llama.cpp; CARVQ tensors unchanged")
    print(f"  token_embd.weight {result.token_embd_type} {megabytes(result.token_embd_bytes)} MB -> "
          f"CARVQ tensors {megabytes(result.carvq_bytes)} MB")
    if result.head_type:
        print(f"  tied head written as output.weight {result.head_type} {megabytes(result.head_bytes)} MB")
    print(f"  file size {megabytes(result.base_bytes)} MB -> {megabytes(result.out_bytes)} MB ({delta:+,d} bytes, "
          f"{100 * delta / result.base_bytes:+.1f}%)")
    return 0
