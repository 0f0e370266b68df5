"""Rows predicted from a related row (docs/FORMAT.md "Predicted rows").

A vocabulary's rows are not independent: tokens come in families (` reject` / ` rejected`, case
and leading-space variants), and a row's nearest other row often says half of it. The long-tail
rows that text from another domain reads have the closest relatives (docs/EXPERIMENTS.md "Rows
predicted from other rows"). So a row t may be coded as a multiple a_t of a *root* row's
decode plus a trellis code of what is left:

1. nearest_rows: each row's nearest other rows by |cos| of the centred rows;
2. choose_roots: a greedy forest over those pairs, best first: a row becomes predicted when it
   is free, cos^2 clears a threshold and the chain of roots above it stays within a number of
   links. A root may be predicted itself: the long-tail rows that text from another domain reads
   are often the hub of a family, which a star forest (roots never predicted) leaves plain;
3. predict_rows: a_t in 8 bits, the leftovers searched in the same trellis tables under their
   own column scale and mean, a generation at a time from the plain rows down, then one scale
   that gives the predicted rows back their mean norm.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from .state import RowPrediction, TrellisCodes, chain_lengths
from .trellis import decode, encode, normalise, pack_states, root_values, search_weights, table_values

NEIGHBOURS = 4  # partners considered per row
EXACT_ROWS = 65536  # above this many rows, candidates come from a projection first
# Principal directions of that projection. 64 found Gemma 3's exact first neighbour for under half
# of the rows prose reads; 256 find it for 98% (docs/EXPERIMENTS.md), at about twice the search time.
PROJECTION_DIMS = 256
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
                 excluded: torch.Tensor | None = None,
                 max_depth: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, roots, cos of each pair), rows sorted: a greedy forest over the pairs of
    nearest_rows, taken in order of |cos|. Row t becomes predicted from its partner r when t is
    not predicted yet, cos^2 >= min_cos2, t is not in excluded (rows that carry a correction row,
    say), r is not in t's tree, and no chain of predictions would then pass max_depth links
    (1: a star forest, where a root is never predicted)."""
    V, k = cos.shape
    flat = cos.reshape(-1)
    order = torch.argsort(-flat)
    order = order[flat[order].pow(2) >= min_cos2].tolist()
    partner = ids.reshape(-1).tolist()
    parent = np.full(V, -1, dtype=np.int64)
    depth = np.zeros(V, dtype=np.int64)  # links from a row up to its tree's root
    height = np.zeros(V, dtype=np.int64)  # links from a row down to its deepest descendant
    tree = np.arange(V)  # union-find over the trees
    children: dict[int, list[int]] = {}
    if excluded is not None and excluded.numel():
        parent[excluded.long().numpy()] = -2  # never predicted, may be a root

    def find(a: int) -> int:
        while tree[a] != a:
            tree[a] = tree[tree[a]]
            a = int(tree[a])
        return a

    rows, roots, pair_cos = [], [], []
    for edge in order:
        t, r = edge // k, partner[edge]
        if parent[t] != -1 or depth[r] + 1 + height[t] > max_depth or find(t) == find(r):
            continue
        parent[t] = r
        tree[find(t)] = find(r)
        children.setdefault(r, []).append(t)
        stack = [t]
        depth[t] = depth[r] + 1
        while stack:  # t's subtree moves down by depth[r] + 1 links
            u = stack.pop()
            for c in children.get(u, ()):
                depth[c] = depth[u] + 1
                stack.append(c)
        h, u = height[t] + 1, r
        while u >= 0 and height[u] < h:
            height[u] = h
            h, u = h + 1, parent[u]
        rows.append(t)
        roots.append(r)
        pair_cos.append(edge)
    rows_t = torch.tensor(rows, dtype=torch.int64)
    order_rows = torch.argsort(rows_t)
    return (rows_t[order_rows], torch.tensor(roots, dtype=torch.int64)[order_rows],
            flat[torch.tensor(pair_cos, dtype=torch.int64)][order_rows])


def predict_rows(codes: TrellisCodes, matrix: torch.Tensor, rows: torch.Tensor, roots: torch.Tensor,
                 col_weights: torch.Tensor | None = None, progress: bool = False) -> TrellisCodes:
    """codes with rows [P] (sorted) predicted from roots [P] (a forest: a root may be predicted
    itself, choose_roots): each row's multiple of its root's decode without column means (trellis.
    root_values), least squares against the row centred on the column means, kept in 8 bits; what
    is left searched in the same tables under its own F16 column scale and mean (paths weighted
    by col_weights [n], as fit_trellis does); then the predicted rows scaled about the column means
    to their mean norm in matrix (as trellis.restore_norm does for the plain rows), folded into the
    step and the leftovers' columns. Rows are coded a generation at a time, nearest the plain
    rows first, so each is predicted from its root's final decode; the step and the leftovers'
    columns come from the first generation's view of every row (each root decoded plainly)."""
    if codes.prediction is not None:
        raise ValueError("codes already predict rows")
    cfg = codes.config
    x = matrix.float()
    mu = x.mean(0)
    scale = codes.columns.float()[0]
    target = x[rows] - mu

    def multiples(root: torch.Tensor, rows_target: torch.Tensor) -> torch.Tensor:
        return (rows_target * root).sum(1) / root.pow(2).sum(1).clamp_min(1e-30)

    root = table_values(codes, roots) * scale  # every root decoded plainly, without the column mean
    multiple = multiples(root, target)
    largest = float(multiple.abs().max())
    step = float(np.float32(largest / CODE_LIMIT)) if largest > 0 else 1.0

    def quantised(m: torch.Tensor) -> torch.Tensor:
        return (m / step).round().clamp(-CODE_LIMIT, CODE_LIMIT).to(torch.int8)

    scale_codes = quantised(multiple)
    _, own_scale, own_mean = normalise(x[rows] - step * scale_codes.float()[:, None] * root, cfg)
    weights = search_weights(own_scale, col_weights, cfg)
    streams = codes.streams.clone()
    prediction = RowPrediction(rows=rows.to(torch.int32), roots=roots.to(torch.int32), scale_codes=scale_codes,
                               scale_step=step, columns=torch.stack([own_scale, own_mean]))
    predicted = replace(codes, streams=streams, prediction=prediction)  # filled in place below
    generation = chain_lengths(rows, roots, codes.streams.shape[0])
    for g in range(1, int(generation.max()) + 1):  # the roots of generation g are final once g - 1 is coded
        here = (generation == g).nonzero()[:, 0]
        if g > 1:
            root = root_values(predicted, roots[here])
            scale_codes[here] = quantised(multiples(root, target[here]))
        else:
            root = root[here]
        left = x[rows[here]] - step * scale_codes[here].float()[:, None] * root
        points = ((left - own_mean.float()) / own_scale.float()).reshape(here.numel(), -1, cfg.step_dim)
        streams[rows[here]] = pack_states(encode(points, weights, codes.tables.float(), cfg, progress=progress), cfg)
    decoded = decode(predicted, rows) - mu
    size = float(decoded.norm(dim=1).sum())
    s = float(target.norm(dim=1).sum()) / size if size > 0 else 1.0
    own = prediction.columns.float()
    columns = torch.stack([own[0] * s, own[1] * s + (1 - s) * mu]).half()
    return replace(predicted, prediction=replace(prediction, scale_step=float(np.float32(step * s)), columns=columns))

