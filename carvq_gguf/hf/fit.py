"""Fit a codec for a model's input embedding the way its preset asks: importance weights from
calibration text, the k-means fit, then (model-aware presets) the codes re-encoded under the
model's Fisher metric and end-to-end tuning.

convert and compress both come here, so a preset means the same fit from an HF directory,
from a GGUF file and from Python.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..codec.compress import add_prediction, column_weights, compress_matrix, correction_importance
from ..codec.prediction import nearest_rows
from ..codec.importance import token_weights
from ..codec.presets import get_preset
from ..codec.state import CarvqState
from ..errors import CarvqError
from .model import eval_mode
from .tune import TuneConfig, codec_kl, probe_windows, tune_codec


FISHER_WINDOWS = 32  # calibration windows of TuneConfig.window tokens for the embedding Fisher
SAMPLED_WINDOWS = 8  # sequences the model writes itself, on which predicted rows are judged too


def tuning_steps(preset: str, tune_steps: int | None = None) -> int:
    """The end-to-end tuning steps of a fit: tune_steps when given, else the preset's."""
    steps = get_preset(preset).train.tune_steps if tune_steps is None else tune_steps
    if steps < 0:
        raise CarvqError(f"tuning steps must be >= 0, got {steps}")
    return steps


def metric_rounds(preset: str, rounds: int | None = None) -> int:
    """The rounds of re-encoding under the model's Fisher metric: rounds when given, else the
    preset's; CarvqError for a negative count or a preset whose group layout cannot take it."""
    resolved = get_preset(preset)
    rounds = resolved.train.metric_rounds if rounds is None else rounds
    if rounds < 0:
        raise CarvqError(f"metric rounds must be >= 0, got {rounds}")
    if rounds and resolved.rvq.group_layout != "column":
        raise CarvqError(f"preset {preset!r} uses the {resolved.rvq.group_layout!r} group layout; "
                         "re-encoding under the model's metric needs the column layout")
    return rounds


def needs_model(preset: str, tune_steps: int | None = None, rounds: int | None = None) -> bool:
    """True when the fit runs the model (Fisher importance or metric, or end-to-end tuning)."""
    train = get_preset(preset).train
    return (tuning_steps(preset, tune_steps) > 0 or metric_rounds(preset, rounds) > 0
            or (train.weighted and train.importance == "fisher"))


def bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one in front of a text by default (Gemma), else None:
    calibration windows then start with it, as llama.cpp's perplexity windows do."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a").get("input_ids", [])
    return int(bos) if ids and ids[0] == bos else None


@dataclass
class Fit:
    """What fit_with_model made: the codec, the row weights it was fitted with (None when the
    preset is unweighted), and the seconds of each stage plus, when tuned, the calibration KL
    before and after."""

    state: CarvqState
    weights: torch.Tensor | None
    stats: dict


def fit_with_model(model, tokenizer, matrix: torch.Tensor, preset: str, text: str, seed: int = 0,
                   tune_steps: int | None = None, progress: bool = True, rounds: int | None = None) -> Fit:
    """Fit matrix [V, n] (the model's input embedding) with preset on calibration text.
    tune_steps and rounds override the preset's end-to-end tuning steps and rounds of
    re-encoding under the model's Fisher metric (both 0: the matrix-only fit)."""
    import time

    from .importance import embedding_fisher, fisher_token_weights
    from .tune import calibration_windows, spread_windows
    from .perplexity import tokenize_text

    if tokenizer is None:
        raise CarvqError(f"preset {preset!r} fits with the model on calibration text and needs a tokenizer; "
                         "the source has none")
    if not text.strip():
        raise CarvqError("the calibration text is empty")
    V = matrix.shape[0]
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != V:
        raise CarvqError(f"the model's input embedding has {rows} rows, the matrix being compressed {V}")
    train = get_preset(preset).train
    ids = torch.tensor(tokenize_text(tokenizer, text), dtype=torch.int64)
    if ids.numel() and int(ids.max()) >= V:
        raise CarvqError(f"the tokenizer produced id {int(ids.max())} >= vocabulary size {V}")
    stats: dict = {}
    start = time.perf_counter()
    if train.weighted and train.importance == "fisher":
        with torch.enable_grad():
            weights = fisher_token_weights(model, ids)
    else:
        weights = token_weights(ids.tolist(), V) if train.weighted else None
    bos = bos_id(tokenizer)
    if weights is not None and bos is not None:  # read at the start of every sequence, whatever the text
        weights = weights.clone()
        weights[bos] = weights.max()
    metric = None
    rounds = metric_rounds(preset, rounds)
    config = TuneConfig(steps=tuning_steps(preset, tune_steps))
    if rounds:
        windows = spread_windows(calibration_windows(ids, config.window, bos), FISHER_WINDOWS)[:, :-1]
        with torch.enable_grad():
            metric = embedding_fisher(model, windows, config.kl_positions, seed=seed, progress=progress)
        stats["fisher_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
    state = compress_matrix(matrix, preset, weights, seed=seed, progress=progress, metric=metric, metric_rounds=rounds,
                            predict=False)
    stats["fit_seconds"] = time.perf_counter() - start
    if train.prediction and state.trellis is not None:
        start = time.perf_counter()
        probe = probe_windows(ids, config, bos)
        start_id = next((i for i in (bos, getattr(model.config, "bos_token_id", None),
                                     getattr(model.config, "eos_token_id", None)) if isinstance(i, int)), None)
        if start_id is not None:  # else the calibration windows alone judge
            probe = torch.cat([probe, sampled_windows(model, start_id, SAMPLED_WINDOWS, probe.shape[1], seed)])
        state, stats["prediction_kl"] = choose_prediction(
            model, state, matrix, train.prediction, probe,
            correction_importance(state, matrix, weights), None if metric is None else column_weights(metric),
            progress=progress)
        stats["prediction_seconds"] = time.perf_counter() - start
    if config.steps > 0:
        start = time.perf_counter()
        state, tune_stats = tune_codec(model, state, matrix, ids, weights, config, seed=seed, bos=bos,
                                       progress=progress)
        stats.update(tune_stats, tune_seconds=time.perf_counter() - start)
    return Fit(state, weights, stats)


def sampled_windows(model, start: int, count: int, length: int, seed: int = 0) -> torch.Tensor:
    """int64 [count, length]: text the model writes from token start at temperature 1, without
    top-k or top-p, so a sample of what it was trained on. Seeded in a forked random state, so
    the rest of the fit draws the same numbers with or without it."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        first = torch.full((count, 1), start, dtype=torch.int64, device=device)
        out = model.generate(first, attention_mask=torch.ones_like(first), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=length - 1, min_new_tokens=length - 1,
                             pad_token_id=start)
    return out[:, :length].cpu()


def choose_prediction(model, state: CarvqState, matrix: torch.Tensor, thresholds: tuple[float, ...],
                      probe: torch.Tensor, importance: torch.Tensor, col_weights: torch.Tensor | None = None,
                      progress: bool = True) -> tuple[CarvqState, dict[str, float]]:
    """state with rows predicted from their nearest rows (codec/compress.add_prediction) at
    whichever of the cos^2 thresholds gives the lowest KL on the windows probe, or state as it
    is when none lowers it; returns (state, the KL of each candidate). How closely related rows
    must be to pay depends on the model (docs/EXPERIMENTS.md), so the model decides.

    probe must hold windows whose tokens did not choose the correction rows (text the model
    writes, sampled_windows): predicted rows are paid for with correction rows, and on the
    calibration windows alone those count at full value and what the prediction buys at none."""
    neighbours = nearest_rows(matrix, progress=progress)
    best, best_kl = state, codec_kl(model, state, matrix, probe)
    tried = {"none": best_kl}
    for threshold in thresholds:
        candidate = add_prediction(state, matrix, threshold, neighbours, importance, col_weights, progress=progress)
        if candidate is state:
            continue
        kl = tried[f"cos2>={threshold:g}"] = codec_kl(model, candidate, matrix, probe)
        if kl < best_kl:
            best, best_kl = candidate, kl
    return best, tried


def fit_source(source: Path, matrix: torch.Tensor, preset: str, text: str, seed: int = 0,
               tune_steps: int | None = None, progress: bool = True, rounds: int | None = None) -> CarvqState:
    """Fit matrix, the token_embd of source (HF directory or GGUF file), with preset.

    Presets that only count tokens need just the tokenizer (calibration_token_ids, which also
    reads GGUF vocabularies transformers cannot); model-aware ones load the model in float32.
    """
    from .calibration import calibration_token_ids
    from .model import load_causal_lm

    train = get_preset(preset).train
    V = matrix.shape[0]
    if not needs_model(preset, tune_steps, rounds):
        weights = None
        if train.weighted:
            weights = token_weights(calibration_token_ids(source, text).tolist(), V)
        return compress_matrix(matrix, preset, weights, seed=seed, progress=progress)
    print(f"[fit] preset {preset} fits with the model in the loop: loading {source}", file=sys.stderr)
    try:
        model, tokenizer = load_causal_lm(source, need_tokenizer=False)
    except CarvqError:
        raise
    except Exception as e:  # transformers reads only some architectures from a GGUF file
        if train.weighted and train.importance == "fisher":
            raise CarvqError(f"preset {preset!r} needs the model in PyTorch, and transformers cannot load "
                             f"{source}: {e}") from e
        print(f"[fit] WARNING: transformers cannot load {source} ({type(e).__name__}: {e}); fitting to the "
              "matrix alone, without the model's metric or end-to-end tuning (pass --metric-rounds 0 "
              "--tune-steps 0 to ask for this directly)", file=sys.stderr)
        return fit_source(source, matrix, preset, text, seed=seed, tune_steps=0, progress=progress, rounds=0)
    if torch.cuda.is_available():
        model.to("cuda")
    fit = fit_with_model(model, tokenizer, matrix, preset, text, seed=seed, tune_steps=tune_steps,
                         progress=progress, rounds=rounds)
    stats = fit.stats
    parts = [f"fit of the codes {stats['fit_seconds']:.0f} s"]
    if "prediction_kl" in stats:
        tried = ", ".join(f"{name} {kl:.4f}" for name, kl in stats["prediction_kl"].items())
        parts.append(f"predicted rows {stats['prediction_seconds']:.0f} s (KL on calibration and sampled text "
                     f"{tried})")
    if "fisher_seconds" in stats:
        parts.insert(0, f"the model's Fisher {stats['fisher_seconds']:.0f} s")
    if "skipped" in stats:
        parts.append(f"end-to-end tuning skipped: {stats['skipped']}")
    elif "tune_seconds" in stats:
        kept = "kept" if stats["kept"] else "discarded"
        retried = f", restarted gentler at step {stats['retried_at']}" if "retried_at" in stats else ""
        parts.append(f"end-to-end tuning {stats['tune_seconds']:.0f} s{retried} "
                     f"(calibration KL {stats['kl_start']:.4f} -> {stats['kl_end']:.4f}, {kept})")
    print(f"[fit] {', '.join(parts)}", file=sys.stderr)
    return fit.state
