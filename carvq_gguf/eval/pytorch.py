"""The PyTorch comparison behind `carvq-gguf compress`: load an HF model (directory or GGUF), compress
its input embedding with a preset, and measure the perplexity and KL divergence in PyTorch with each
input embedding (original, CARVQ, the same RVQ alone, RVQ + adaptor when the codec has both,
round-to-nearest INT2/3/4 at group 64; a tied head is left as it is) on fixed windows of a text.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_output
from ..codec.baselines import rtn_bpw, rtn_quantize
from ..codec.bits import bpw, component_bits
from ..codec.codec_file import save_codec
from ..codec.compress import compress_matrix, reconstruction_metrics, rvq_only, without_corrections
from ..codec.embedding import CarvqEmbedding
from ..codec.presets import get_preset
from ..codec.state import CarvqState
from ..hf.fit import fit_with_model, needs_model
from ..data import bundled_text
from ..errors import CarvqError
from ..hf.model import input_embedding_matrix, load_causal_lm, replace_input_embedding, replace_input_matrix
from ..hf.perplexity import eval_windows, kl_divergence, perplexity_from_logprobs, tokenize_text, window_logprobs

BASELINE_BITS = (2, 3, 4)


@dataclass(frozen=True)
class CompressOptions:
    """What `carvq-gguf compress` does; texts default to the bundled ones."""

    source: str
    preset: str = "carvq-1.6"
    output: str | None = None       # codec file to write (codec_file.save_codec)
    calib_text: str | None = None
    eval_text: str | None = None
    json: str | None = None         # the report as JSON
    seed: int = 0
    windows: int = 8
    window: int = 512
    evaluate: bool = True
    progress: bool = True
    tune_steps: int | None = None     # end-to-end tuning steps (None: the preset's, 0: none)
    metric_rounds: int | None = None  # rounds of re-encoding under the model's Fisher (None: the preset's, 0: none)


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
    codes = "trellis" if report.get("quantizer") == "trellis" else "RVQ"
    rows = [("original", "original"), ("carvq", f"CARVQ {report['preset']}"), ("rvq_only", f"same {codes} alone")]
    if "bpw_rvq_adaptor" in report:
        rows.append(("rvq_adaptor", f"same {codes} + adaptor"))
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


def compress_and_compare(options: CompressOptions) -> tuple[CarvqState, dict]:
    """Compress the source's input embedding, write the codec (and the JSON report) where asked, and
    compare every input embedding; returns (codec state, report dict)."""
    preset = get_preset(options.preset)
    model, tokenizer = load_causal_lm(options.source, need_tokenizer=False)
    matrix = input_embedding_matrix(model)
    V, n = matrix.shape
    resolved = preset.resolve(V, n)
    report: dict = {"source": str(options.source), "preset": options.preset, "seed": options.seed,
                    "vocab_size": V, "embedding_dim": n}
    if tokenizer is None and options.evaluate:
        raise CarvqError(f"{options.source!r} has no tokenizer: pass --no-eval to skip the perplexity evaluation")
    text = None
    if resolved.train.weighted or needs_model(options.preset, options.tune_steps, options.metric_rounds):
        if tokenizer is None:
            raise CarvqError(f"{options.source!r} has no tokenizer; preset {options.preset!r} needs one to read "
                             "the calibration text")
        text, report["calib_text"] = _read_text(options.calib_text, "calib.txt")
    report["load_average_before"] = os.getloadavg()[0]
    start = time.perf_counter()
    if text is None:
        weights = None
        state = compress_matrix(matrix, options.preset, None, seed=options.seed, progress=options.progress)
    else:
        fit = fit_with_model(model, tokenizer, matrix, options.preset, text, seed=options.seed,
                             tune_steps=options.tune_steps, progress=options.progress,
                             rounds=options.metric_rounds)
        state, weights, report["fit"] = fit.state, fit.weights, fit.stats
    report["seconds"] = time.perf_counter() - start
    report["load_average_after"] = os.getloadavg()[0]
    if options.output:
        save_codec(state, options.output)

    bits = component_bits(state)
    report.update(bpw_total=bpw(state), bits=bits, correction_rows=state.n_correction_rows,
                  adaptor_table_dim=state.adaptor.table_dim, quantizer=state.quantizer,
                  rvq_levels=state.rvq.levels if state.trellis is None else None,
                  group_layout=state.rvq.group_layout if state.trellis is None else None)
    report["bpw_carvq"] = report["bpw_total"]
    report["bpw_original"] = float(torch.finfo(model.get_input_embeddings().weight.dtype).bits)
    plain = rvq_only(state)
    report["bpw_rvq_only"] = bpw(plain)
    matrices = {"rvq_only": CarvqEmbedding(plain).decode_all()}
    if state.adaptor.enabled and state.n_correction_rows:  # isolate the adaptor's share
        no_rows = without_corrections(state)
        report["bpw_rvq_adaptor"] = bpw(no_rows)
        matrices["rvq_adaptor"] = CarvqEmbedding(no_rows).decode_all()
    for b in BASELINE_BITS:
        matrices[f"int{b}"] = rtn_quantize(matrix, b)
        report[f"bpw_int{b}"] = rtn_bpw(b)
    decoded = CarvqEmbedding(state).decode_all()
    for name, approx in [("carvq", decoded), *matrices.items()]:
        for key, value in reconstruction_metrics(matrix, approx, weights).items():
            report[f"{key}_{name}"] = value

    if not not options.evaluate:
        text, report["eval_text"] = _read_text(options.eval_text, "eval.txt")
        windows = eval_windows(tokenize_text(tokenizer, text), options.windows, options.window)
        report.update(eval_windows=options.windows, eval_window=options.window,
                      eval_scored_tokens=options.windows * (options.window - options.window // 2))
        _evaluate(model, matrices, state, windows, report)

    if options.json:
        _write_json(report, options.json)
    return state, report
