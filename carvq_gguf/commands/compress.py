"""`carvq-gguf compress`: compress a model's input embedding and report what it costs and gives.

    carvq-gguf compress SOURCE --preset NAME -o CODEC [--eval-text FILE] [--calib-text FILE]
                        [--json REPORT] [--seed N] [--windows W] [--window T] [--no-eval]

SOURCE is an HF model directory or a GGUF file. The codec is written to CODEC (codec_io).
Importance-weighted presets tokenize --calib-text (default: the bundled calib.txt). Unless
--no-eval, the model's perplexity in PyTorch is measured with each input embedding (original,
CARVQ, the same RVQ alone, round-to-nearest INT2/3/4 at group 64; tied head left as is) on
fixed windows of --eval-text (default: the bundled eval.txt). A model without a tokenizer
needs --no-eval and a preset without importance weighting.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ..baselines import rtn_bpw, rtn_quantize
from ..bits import bpw, component_bits
from ..calib import bundled_text, text_token_weights
from ..codec_io import save_codec
from ..compress import compress_matrix, reconstruction_metrics, rvq_only, without_corrections
from ..convert.atomic import atomic_output
from ..hf_model import input_embedding_matrix, load_causal_lm
from ..module import CarvqEmbedding, replace_input_embedding, replace_input_matrix
from ..perplexity import eval_windows, kl_divergence, perplexity_from_logprobs, tokenize_text, window_logprobs
from ..presets import PRESET_NAMES, get_preset
from ..state import CarvqError

BASELINE_BITS = (2, 3, 4)


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
    p.add_argument("--windows", type=int, default=8, help="evaluation windows (default 8)")
    p.add_argument("--window", type=int, default=512, help="tokens per window, second half scored (default 512)")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _read_text(path: str | None, default: str) -> tuple[str, str]:
    file = Path(path) if path else bundled_text(default)
    if not file.is_file():
        raise CarvqError(f"text file {str(file)!r} does not exist")
    return file.read_text(encoding="utf-8", errors="replace"), str(file)


def _write_json(report: dict, path: str) -> None:
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def _evaluate(model, matrices: dict[str, torch.Tensor], carvq_state, windows: torch.Tensor,
              report: dict) -> None:
    """Perplexity and KL to the original for every input embedding; fills report."""
    reference = window_logprobs(model, windows)
    report["ppl_original"] = perplexity_from_logprobs(reference, windows)
    previous = replace_input_embedding(model, carvq_state)  # the CarvqEmbedding module itself
    logprobs = window_logprobs(model, windows)
    model.set_input_embeddings(previous)
    report["ppl_carvq"] = perplexity_from_logprobs(logprobs, windows)
    report["kl_carvq"] = kl_divergence(reference, logprobs)
    for name, matrix in matrices.items():
        previous = replace_input_matrix(model, matrix)
        logprobs = window_logprobs(model, windows)
        model.set_input_embeddings(previous)
        report[f"ppl_{name}"] = perplexity_from_logprobs(logprobs, windows)
        report[f"kl_{name}"] = kl_divergence(reference, logprobs)


def print_table(report: dict) -> None:
    """The report as a table: one line per input embedding."""
    rows = [("original", "original"), ("carvq", f"CARVQ {report['preset']}"), ("rvq_only", "same RVQ alone")]
    if "bpw_rvq_adaptor" in report:
        rows.append(("rvq_adaptor", "same RVQ + adaptor"))
    rows += [(f"int{b}", f"RTN INT{b} g64") for b in BASELINE_BITS]
    print(f"{'input embedding':<24} {'bpw':>7} {'ppl':>9} {'KL':>8} {'rel MSE':>8} {'mean cos':>8}")
    for key, label in rows:
        def cell(prefix: str, fmt: str) -> str:
            value = report.get(f"{prefix}_{key}")
            return format(value, fmt) if value is not None else "-"
        print(f"{label:<24} {cell('bpw', '7.3f'):>7} {cell('ppl', '9.3f'):>9} {cell('kl', '8.4f'):>8} "
              f"{cell('rel_mse', '8.4f'):>8} {cell('mean_cosine', '8.4f'):>8}")
    print(f"compression time {report['seconds']:.1f} s (load average before/after "
          f"{report['load_average_before']:.2f}/{report['load_average_after']:.2f}); "
          f"{report['correction_rows']} correction rows; adaptor table width {report['adaptor_table_dim']}")


def run(args: argparse.Namespace) -> int:
    """Handler of `carvq-gguf compress`."""
    preset = get_preset(args.preset)
    model, tokenizer = load_causal_lm(args.source, need_tokenizer=False)
    matrix = input_embedding_matrix(model)
    V, n = matrix.shape
    resolved = preset.resolve(V, n)
    report: dict = {"source": str(args.source), "preset": args.preset, "seed": args.seed,
                    "vocab_size": V, "embedding_dim": n}
    if tokenizer is None and not args.no_eval:
        raise CarvqError(f"{args.source!r} has no tokenizer: pass --no-eval to skip the perplexity evaluation")
    weights = None
    if resolved.train.weighted:
        if tokenizer is None:
            raise CarvqError(f"{args.source!r} has no tokenizer; preset {args.preset!r} needs one to count "
                             "calibration tokens")
        text, report["calib_text"] = _read_text(args.calib_text, "calib.txt")
        if resolved.train.importance == "fisher":
            from ..model_importance import fisher_token_weights

            weights = fisher_token_weights(model, torch.tensor(tokenize_text(tokenizer, text)))
        else:
            weights = text_token_weights(text, lambda t: tokenize_text(tokenizer, t), V)

    report["load_average_before"] = os.getloadavg()[0]
    start = time.perf_counter()
    state = compress_matrix(matrix, args.preset, weights, seed=args.seed, progress=not args.quiet)
    report["seconds"] = time.perf_counter() - start
    report["load_average_after"] = os.getloadavg()[0]
    save_codec(state, args.output)

    bits = component_bits(state)
    report.update(bpw_total=bpw(state), bits=bits, correction_rows=state.n_correction_rows,
                  adaptor_table_dim=state.adaptor.table_dim, rvq_levels=state.rvq.levels,
                  group_layout=state.rvq.group_layout)
    report["bpw_carvq"] = report["bpw_total"]
    report["bpw_original"] = float(torch.finfo(model.get_input_embeddings().weight.dtype).bits)
    plain = rvq_only(state)
    report["bpw_rvq_only"] = bpw(plain)
    matrices = {"rvq_only": CarvqEmbedding.from_state(plain).decode_all()}
    if state.adaptor.enabled and state.n_correction_rows:  # isolate the adaptor's share
        no_rows = without_corrections(state)
        report["bpw_rvq_adaptor"] = bpw(no_rows)
        matrices["rvq_adaptor"] = CarvqEmbedding.from_state(no_rows).decode_all()
    for b in BASELINE_BITS:
        matrices[f"int{b}"] = rtn_quantize(matrix, b)
        report[f"bpw_int{b}"] = rtn_bpw(b)
    decoded = CarvqEmbedding.from_state(state).decode_all()
    for name, approx in [("carvq", decoded), *matrices.items()]:
        for key, value in reconstruction_metrics(matrix, approx, weights).items():
            report[f"{key}_{name}"] = value

    if not args.no_eval:
        text, report["eval_text"] = _read_text(args.eval_text, "eval.txt")
        windows = eval_windows(tokenize_text(tokenizer, text), args.windows, args.window)
        report.update(eval_windows=args.windows, eval_window=args.window,
                      eval_scored_tokens=args.windows * (args.window - args.window // 2))
        _evaluate(model, matrices, state, windows, report)

    print_table(report)
    if args.json:
        _write_json(report, args.json)
    return 0
