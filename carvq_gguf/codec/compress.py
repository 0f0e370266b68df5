"""Compress one embedding matrix into a CARVQ codec state with a named preset.

Order of work: pick the correction tokens (most important rows) -> RVQ with importance-weighted
k-means (correction tokens weigh only the floor there, they get fixed anyway), refined by joint
least-squares codebooks and beam-search encoding -> (with the model's error metric) codes
re-encoded under it, group by group -> adaptor on the RVQ residual -> correction rows = what
RVQ + adaptor still miss on those tokens, in F16. A trellis preset replaces the RVQ steps by
the trellis fit (codec/trellis.py): tables fitted on a weighted sample of rows, every row
encoded by a Viterbi search under the metric's diagonal, then one scale that gives the rows
without a correction row back their mean norm (trellis.restore_norm); then, where the preset asks,
rows with a close relative are predicted from it (add_prediction, codec/prediction.py), paid for
by the least important correction rows.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from . import prediction, rvq, trellis
from .adaptor import train_adaptor
from .bits import correction_row_bits, prediction_bits
from .embedding import CarvqEmbedding
from .metric import check_metric, damped, metric_refine
from .presets import get_preset
from ..errors import CarvqError
from .state import MAX_PREDICTED_VOCAB, MAX_PREDICTION_CHAIN, CarvqState


def check_matrix(matrix: torch.Tensor) -> None:
    """CarvqError unless matrix is a non-empty, finite, floating-point [V, n] tensor."""
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        raise CarvqError(f"the embedding must be a 2-D tensor [V, n], got {getattr(matrix, 'shape', type(matrix))}")
    if matrix.numel() == 0:
        raise CarvqError(f"the embedding matrix is empty (shape {tuple(matrix.shape)})")
    if not matrix.dtype.is_floating_point:
        raise CarvqError(f"the embedding must be floating point, got {matrix.dtype}")
    if not bool(torch.isfinite(matrix).all()):
        raise CarvqError("the embedding matrix holds NaN or infinite values")


def pick_correction_ids(importance: torch.Tensor, count: int) -> torch.Tensor:
    """The count most important token ids (ties: lower id first), sorted ascending, int32."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.int32)
    order = torch.argsort(-importance.to(torch.float64), stable=True)
    return order[:count].sort().values.to(torch.int32)


TRELLIS_FIT_ROWS = 8192  # rows the trellis tables are fitted on (docs/EXPERIMENTS.md)
METRIC_DAMP = 0.1  # as metric_refine damps the Fisher


def fit_sample(weights: torch.Tensor | None, vocab_size: int, count: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows to fit tables on when the vocabulary is too large to use whole: (ids int64 sorted,
    their weights). Every row weighing more than the least (the rows the calibration text
    reads) is kept; the rest of the count is a uniform random sample of the other rows, whose
    weights are scaled by how many rows each stands for, so the sample's weighted distortion
    estimates the whole matrix's."""
    if weights is None:
        weights = torch.ones(vocab_size)
    generator = torch.Generator().manual_seed(seed)
    read = weights > weights.min()
    kept, rest = read.nonzero()[:, 0], (~read).nonzero()[:, 0]
    picked = rest[torch.randperm(rest.numel(), generator=generator)[:max(0, count - kept.numel())]]
    ids = torch.cat([kept, picked]).sort().values
    sample_weights = weights[ids].clone()
    if picked.numel():
        sample_weights[~read[ids]] *= rest.numel() / picked.numel()
    return ids, sample_weights


def compress_matrix(matrix: torch.Tensor, preset: str, token_weights: torch.Tensor | None = None,
                    seed: int = 0, progress: bool = True, metric: torch.Tensor | None = None,
                    metric_rounds: int | None = None, predict: bool = True) -> CarvqState:
    """Compress matrix [V, n] with the named preset; deterministic for a seed.

    token_weights [V] (calibration frequencies, calib.token_weights) is used when the preset is
    importance-weighted; without it every row weighs the same, and correction rows go to the
    rows the codec fits worst. metric [n, n], the cost of a row error e as e metric e^T (the
    model's Fisher, hf/importance.embedding_fisher), makes the codes be re-encoded under it for
    metric_rounds rounds (None: the preset's; metric.metric_refine); without it the fit is to
    the matrix alone. With predict, a preset that predicts rows (TrainConfig.prediction) has the
    rows related closely enough by its first threshold predicted (add_prediction). Returns a
    checked state in stored dtypes.
    """
    check_matrix(matrix)
    matrix = matrix.detach().to(torch.float32).cpu()
    V, n = matrix.shape
    resolved = get_preset(preset).resolve(V, n)
    train = resolved.train
    weights = None
    if token_weights is not None and train.weighted:
        if tuple(token_weights.shape) != (V,):
            raise CarvqError(f"token weights have shape {tuple(token_weights.shape)}, expected ({V},)")
        weights = token_weights.detach().to(torch.float32).cpu()
        if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
            raise CarvqError("token weights must be finite and positive (use a floor)")

    corr_ids = torch.zeros(0, dtype=torch.int32)
    fit_weights = weights
    if weights is not None and resolved.correction_rows:
        corr_ids = pick_correction_ids(weights, resolved.correction_rows)
        fit_weights = weights.clone()
        fit_weights[corr_ids.long()] = weights.min()

    rounds = train.metric_rounds if metric_rounds is None else metric_rounds
    use_metric = metric is not None and rounds > 0
    col_weights = None
    if resolved.trellis is not None:
        if use_metric:
            check_metric(metric, n, resolved.rvq)
            col_weights = column_weights(metric)
        ids, sample_weights = fit_sample(fit_weights, V, TRELLIS_FIT_ROWS, seed)
        state = CarvqState(vocab_size=V, embedding_dim=n, rvq=resolved.rvq, adaptor=resolved.adaptor, codes=None,
                           codebooks=None, preset=preset,
                           trellis=trellis.fit_trellis(matrix, resolved.trellis, ids, sample_weights, col_weights,
                                                       seed=seed, progress=progress))
        coded = torch.ones(V, dtype=torch.bool)
        coded[corr_ids.long()] = False  # the rows the codes alone serve
        state.trellis = trellis.restore_norm(state.trellis, matrix, coded)
    else:
        codes, codebooks = rvq.encode(matrix, resolved.rvq, fit_weights, iters=train.kmeans_iters, seed=seed,
                                      progress=progress)
        if train.refine_rounds:
            codes, codebooks = rvq.refine(matrix, codes, codebooks, resolved.rvq, fit_weights,
                                          rounds=train.refine_rounds)
        if use_metric:
            codes, codebooks = metric_refine(matrix, codes, codebooks, resolved.rvq, metric.detach().cpu(),
                                             fit_weights, rounds=rounds)
        state = CarvqState(vocab_size=V, embedding_dim=n, rvq=resolved.rvq, adaptor=resolved.adaptor,
                           codes=codes, codebooks=codebooks, preset=preset)
    if resolved.adaptor.enabled:
        coded = (rvq.decode(state.codes, state.codebooks, resolved.rvq) if state.trellis is None
                 else trellis.decode(state.trellis, torch.arange(V)))
        residual = matrix - coded
        net = train_adaptor(residual, resolved.adaptor, epochs=train.epochs, batch_size=train.batch_size,
                            lr=train.lr, row_weights=fit_weights, seed=seed, progress=progress)
        state.sigma0, state.linears, state.norms = net.stored_tensors()

    if resolved.correction_rows:
        decoded = CarvqEmbedding(state).decode_all()
        if weights is None:  # no importance: correct the rows fitted worst
            corr_ids = pick_correction_ids((matrix - decoded).pow(2).sum(1), resolved.correction_rows)
        ids = corr_ids.long()
        state.correction_ids = corr_ids
        state.correction_rows = (matrix[ids] - decoded[ids]).to(torch.float16).contiguous()
    state.check()
    if predict and train.prediction and state.trellis is not None:
        state = add_prediction(state, matrix, train.prediction[0], prediction.nearest_rows(matrix, progress=progress),
                               correction_importance(state, matrix, weights), col_weights, progress=progress)
    return state


def column_weights(metric: torch.Tensor) -> torch.Tensor:
    """The cost of an error in each column [n] that trellis paths are searched under: the
    diagonal of the model's damped Fisher metric [n, n]."""
    return damped(metric.detach().cpu(), METRIC_DAMP).diagonal().float()


def correction_importance(state: CarvqState, matrix: torch.Tensor, token_weights: torch.Tensor | None) -> torch.Tensor:
    """What ranked state's correction rows [V]: the token weights when the fit had them, else
    each row's decode error."""
    if token_weights is not None:
        return token_weights
    return (matrix.float() - CarvqEmbedding(state).decode_all()).pow(2).sum(1)


def add_prediction(state: CarvqState, matrix: torch.Tensor, min_cos2: float,
                   neighbours: tuple[torch.Tensor, torch.Tensor], importance: torch.Tensor,
                   col_weights: torch.Tensor | None = None, progress: bool = False) -> CarvqState:
    """state (trellis-coded, no row predicted yet) with the rows whose nearest row has cos^2 >=
    min_cos2 predicted from it, in chains of up to MAX_PREDICTION_CHAIN links (codec/prediction.py),
    paid for by the correction rows of least importance [V], so the stored bits do not grow. Rows
    with a correction row are not predicted. neighbours is prediction.nearest_rows(matrix). state
    itself when no row qualifies or the correction rows cannot pay for one."""
    t = state.trellis
    if t is None or t.prediction is not None:
        raise CarvqError("rows can be predicted only in a trellis codec without predicted rows")
    V, n = state.vocab_size, state.embedding_dim
    if V > MAX_PREDICTED_VOCAB:
        return state
    rows, roots, pair_cos = prediction.choose_roots(*neighbours, min_cos2, excluded=state.correction_ids,
                                                    max_depth=MAX_PREDICTION_CHAIN)
    row_bits = correction_row_bits(n)
    R = state.n_correction_rows
    affordable = (R * row_bits - (prediction_bits(V, n, 1) - 32)) // 32  # after the map and the leftovers' columns
    if rows.numel() > affordable:  # the closest pairs first
        keep = pair_cos.argsort(descending=True)[:max(affordable, 0)].sort().values
        rows, roots = rows[keep], roots[keep]
    if rows.numel() == 0:
        return state
    drop = -(-prediction_bits(V, n, rows.numel()) // row_bits)
    by_importance = torch.argsort(-importance[state.correction_ids.long()].double(), stable=True)
    rows_kept = torch.zeros(R, dtype=torch.bool)
    rows_kept[by_importance[:R - drop]] = True
    coded = prediction.predict_rows(t, matrix.detach().float().cpu(), rows, roots, col_weights, progress=progress)
    out = replace(state, trellis=coded, correction_ids=state.correction_ids[rows_kept].contiguous(),
                  correction_rows=None if state.correction_rows is None else
                  state.correction_rows[rows_kept].contiguous())
    out.check()
    return out


def rvq_only(state: CarvqState) -> CarvqState:
    """The same codec with the adaptor and correction rows removed (the codes-alone ablation,
    RVQ or trellis)."""
    out = CarvqState(vocab_size=state.vocab_size, embedding_dim=state.embedding_dim, rvq=state.rvq,
                     adaptor=replace(state.adaptor, table_dim=0, hidden_dims=()), codes=state.codes,
                     codebooks=state.codebooks, preset=state.preset + "/rvq-only", trellis=state.trellis)
    out.check()
    return out


def without_corrections(state: CarvqState) -> CarvqState:
    """The same codec with the correction rows removed (codes + adaptor only)."""
    out = CarvqState(vocab_size=state.vocab_size, embedding_dim=state.embedding_dim, rvq=state.rvq,
                     adaptor=state.adaptor, codes=state.codes, codebooks=state.codebooks, sigma0=state.sigma0,
                     linears=state.linears, norms=state.norms, preset=state.preset + "/no-rows",
                     trellis=state.trellis)
    out.check()
    return out


def reconstruction_metrics(original: torch.Tensor, decoded: torch.Tensor,
                           weights: torch.Tensor | None = None) -> dict[str, float]:
    """rel_mse = |E - D|^2 / |E|^2, mean and median per-row cosine, and (with weights) the
    importance-weighted relative row error sum w |e_t - d_t|^2 / sum w |e_t|^2."""
    diff = (original - decoded).pow(2).sum(1)
    norm = original.pow(2).sum(1)
    cos = torch.nn.functional.cosine_similarity(original, decoded, dim=1)
    out = {"rel_mse": float(diff.sum() / norm.sum()), "mean_cosine": float(cos.mean()),
           "median_cosine": float(cos.median())}
    if weights is not None:
        out["weighted_rel_mse"] = float((weights * diff).sum() / (weights * norm).sum())
    return out
