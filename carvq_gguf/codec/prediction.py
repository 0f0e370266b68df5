"""Rows predicted from a related row (docs/FORMAT.md "Predicted rows").

A vocabulary's rows are not independent: tokens come in families (` reject` / ` rejected`, case
and leading-space variants), and a row's nearest other row often says half of it. The long-tail
rows that text from another domain reads have the closest relatives (docs/EXPERIMENTS.md "Rows
predicted from other rows"). So a row t may be coded as a multiple a_t of a *root* row's
decode plus a trellis code of what is left:

1. nearest_rows: each row's nearest other rows by |cos| of the centred rows;
2. choose_roots: a greedy star forest over those pairs, best first: a row becomes predicted when
   it is free, its partner is not predicted and cos^2 clears a threshold; the partner becomes a
   root. Roots are never predicted, so decoding takes two trellis walks, never a chain;
3. predict_rows: a_t in 8 bits, the leftovers searched in the same trellis tables under their
   own column scale and mean, then one scale that gives the predicted rows back their mean norm.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from .state import RowPrediction, TrellisCodes
from .trellis import decode, encode, normalise, pack_states, search_weights, table_values

NEIGHBOURS = 4  # partners considered per row
EXACT_ROWS = 65536  # above this many rows, candidates come from a projection first
PROJECTION_DIMS = 64  # principal directions of that projection
PROJECTION_CANDIDATES = 32  # candidates per row rescored exactly
CODE_LIMIT = 127  # a_t = step * code, |code| <= 127
CHUNK = 2048


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_rows(matrix: torch.Tensor, count: int = NEIGHBOURS, seed: int = 0,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(|cos| float32 [V, count], ids int64 [V, count]): each row's count nearest other rows by
    the |cos| of the rows centred on the column means, best first. Exact up to EXACT_ROWS rows;
    above, PROJECTION_CANDIDATES candidates per row from the top PROJECTION_DIMS principal
    directions (of a seeded sample of rows) are rescored exactly."""
    x = matrix.float() - matrix.float().mean(0)
    V, n = x.shape
    unit = _unit_rows(x)
    project = V > EXACT_ROWS and n > PROJECTION_DIMS
    if project:
        sample = x[torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:16384]]
        directions = torch.linalg.eigh(sample.T @ sample)[1][:, -PROJECTION_DIMS:]
        search = _unit_rows(x @ directions)
    else:
        search = unit
    k = min(count, V - 1)
    cos = torch.zeros(V, k)
    ids = torch.zeros(V, k, dtype=torch.int64)
    for start in tqdm(range(0, V, CHUNK), desc="nearest rows", unit="chunk", disable=not progress):
        stop = min(V, start + CHUNK)
        sim = (search[start:stop] @ search.T).abs_()
        sim[torch.arange(stop - start), torch.arange(start, stop)] = -1.0  # not the row itself
        if project:
            cand = sim.topk(min(PROJECTION_CANDIDATES, V - 1), dim=1).indices
            sim = (unit[start:stop, None, :] * unit[cand]).sum(-1).abs_()
            best, j = sim.topk(k, dim=1)
            cos[start:stop], ids[start:stop] = best, cand.gather(1, j)
        else:
            cos[start:stop], ids[start:stop] = sim.topk(k, dim=1)
    return cos, ids


def choose_roots(cos: torch.Tensor, ids: torch.Tensor, min_cos2: float,
                 excluded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, roots, cos of each pair), rows sorted: a greedy star forest over the pairs of
    nearest_rows, taken in order of |cos|. Row t becomes predicted from its partner r when t is
    neither a root nor predicted, r is not predicted, cos^2 >= min_cos2 and t is not in excluded
    (rows that carry a correction row, say); r then becomes a root."""
    V, k = cos.shape
    flat = cos.reshape(-1)
    order = torch.argsort(-flat)
    order = order[flat[order].pow(2) >= min_cos2].tolist()
    partner = ids.reshape(-1).tolist()
    role = np.zeros(V, dtype=np.int8)  # 0 free, 1 root, 2 predicted
    if excluded is not None and excluded.numel():
        role[excluded.long().numpy()] = 3  # never predicted, may be a root
    rows, roots, pair_cos = [], [], []
    for edge in order:
        t, r = edge // k, partner[edge]
        if role[t] != 0 or role[r] == 2:
            continue
        role[t] = 2
        if role[r] == 0:
            role[r] = 1
        rows.append(t)
        roots.append(r)
        pair_cos.append(edge)
    rows_t = torch.tensor(rows, dtype=torch.int64)
    order_rows = torch.argsort(rows_t)
    return (rows_t[order_rows], torch.tensor(roots, dtype=torch.int64)[order_rows],
            flat[torch.tensor(pair_cos, dtype=torch.int64)][order_rows])


def predict_rows(codes: TrellisCodes, matrix: torch.Tensor, rows: torch.Tensor, roots: torch.Tensor,
                 col_weights: torch.Tensor | None = None, progress: bool = False) -> TrellisCodes:
    """codes with rows [P] (sorted) predicted from roots [P] (rows codes holds plainly): each
    row's multiple of its root's decode without the column mean, least squares against the row
    centred on the column means, kept in 8 bits; what is left searched in the same tables under
    its own F16 column scale and mean (paths weighted by col_weights [n], as fit_trellis does);
    then the predicted rows scaled about the column means to their mean norm in matrix (as
    trellis.restore_norm does for the plain rows), folded into the step and the leftovers'
    columns."""
    if codes.prediction is not None:
        raise ValueError("codes already predict rows")
    cfg = codes.config
    x = matrix.float()
    mu = x.mean(0)
    scale = codes.columns.float()[0]
    root = table_values(codes, roots) * scale  # the roots' decode without the column mean
    target = x[rows] - mu
    multiple = (target * root).sum(1) / root.pow(2).sum(1).clamp_min(1e-30)
    largest = float(multiple.abs().max())
    step = float(np.float32(largest / CODE_LIMIT)) if largest > 0 else 1.0
    scale_codes = (multiple / step).round().clamp(-CODE_LIMIT, CODE_LIMIT).to(torch.int8)
    left = x[rows] - step * scale_codes.float()[:, None] * root
    points, own_scale, own_mean = normalise(left, cfg)
    states = encode(points, search_weights(own_scale, col_weights, cfg), codes.tables.float(), cfg, progress=progress)
    streams = codes.streams.clone()
    streams[rows] = pack_states(states, cfg)
    prediction = RowPrediction(rows=rows.to(torch.int32), roots=roots.to(torch.int32), scale_codes=scale_codes,
                               scale_step=step, columns=torch.stack([own_scale, own_mean]))
    predicted = replace(codes, streams=streams, prediction=prediction)
    decoded = decode(predicted, rows) - mu
    size = float(decoded.norm(dim=1).sum())
    s = float(target.norm(dim=1).sum()) / size if size > 0 else 1.0
    own = prediction.columns.float()
    columns = torch.stack([own[0] * s, own[1] * s + (1 - s) * mu]).half()
    return replace(predicted, prediction=replace(prediction, scale_step=float(np.float32(step * s)), columns=columns))
