"""Bitshift trellis-coded quantization of rows (the trellis of QTIP, Tseng et al. 2024).

A row of n values is cut into T = n / d steps of d values. Its code is one bit stream of k bits
per step; the trellis state after step t is the last L bits pushed (starting from state 0), and
step t decodes as tables[group(t), state_t]: one shift, one k-bit read and one lookup per step
(docs/FORMAT.md "Trellis codes"). At k = 3, d = 2 that is 1.5 bits per value, the rate of
three 4-bit RVQ levels over 8 values, and it comes much closer to the rate-distortion bound
(docs/EXPERIMENTS.md). Encoding is a Viterbi search per row.

The search works on normalised values: fit_trellis maps each column to zero mean and unit
scale and back, and takes per-column weights that say what an error costs.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm import tqdm

from ..errors import CarvqError
from .state import RowPrediction, TrellisCodes, TrellisConfig


def viterbi(points: torch.Tensor, col_weights: torch.Tensor, step_tables: torch.Tensor,
            cfg: TrellisConfig) -> torch.Tensor:
    """States int64 [R, T] of the path from state 0 that minimises, per row of points [R, T, d],
    the sum over steps of col_weights [T, d] * (points - step_tables[t, state])^2, where
    step_tables [T, 2^L, d] is the table each step reads."""
    R, T, _ = points.shape
    S = cfg.table_size
    branches = 1 << cfg.step_bits
    M = S >> cfg.step_bits  # a state's predecessors share its high L - k bits as their low bits
    cost = torch.full((R, S), float("inf"))
    cost[:, 0] = 0.0
    back = torch.empty(T, R, M, dtype=torch.uint8)
    step = torch.empty(R, S)
    reverse_ids = torch.arange(branches - 1, -1, -1, dtype=torch.uint8)[:, None]
    for t in range(T):
        x, w, table = points[:, t], col_weights[t], step_tables[t]
        # step[r, s] = sum_i w_i (x_ri - table_si)^2, built in place; two buffers take turns as
        # the step and the path costs
        torch.matmul(2 * (x * w), table.T, out=step)
        step.neg_().add_((x.pow(2) * w).sum(1, keepdim=True)).add_((table.pow(2) * w).sum(1))
        # predecessors of state s are (s >> k) + j * M for j < 2^k; s = m * 2^k + b shares them with all b
        best = cost.view(R, branches, M).amin(1)
        back[t] = _first_at(cost.view(R, branches, M), best, reverse_ids)
        cost, step = step.view(R, M, branches).add_(best[:, :, None]).view(R, S), cost
    states = torch.empty(R, T, dtype=torch.int64)
    state = cost.argmin(1)
    for t in range(T - 1, -1, -1):
        states[:, t] = state
        high = state >> cfg.step_bits
        state = high + back[t].gather(1, high[:, None])[:, 0].long() * M
    return states


def _first_at(values: torch.Tensor, least: torch.Tensor, reverse_ids: torch.Tensor) -> torch.Tensor:
    """uint8 [R, M]: the first j with values[r, j, m] == least[r, m], for values [R, B, M] and
    reverse_ids [B, 1] = B - 1 - j. torch.min over a strided dim with indices is four times
    slower than amin and this mask together, and the search spends most of its time there."""
    last_from_end = ((values == least[:, None]) * reverse_ids).amax(1)
    return reverse_ids[0] - last_from_end


def encode(points: torch.Tensor, col_weights: torch.Tensor, tables: torch.Tensor, cfg: TrellisConfig,
           chunk: int = 4096, progress: bool = False) -> torch.Tensor:
    """viterbi over rows, chunk at a time (its back pointers take T * chunk * 2^(L-k) bytes),
    with tables [G, 2^L, d] spread over the steps by cfg.group_index."""
    step_tables = tables[cfg.group_index(points.shape[1] * cfg.step_dim)]
    starts = tqdm(range(0, points.shape[0], chunk), desc="trellis encoding", unit="chunk", disable=not progress)
    return torch.cat([viterbi(points[i:i + chunk], col_weights, step_tables, cfg) for i in starts])


def fit_tables(points: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, cfg: TrellisConfig,
               iters: int = 8, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Tables [G, 2^L, d] (F16 values in float32) fitted by Lloyd rounds on the trellis: encode,
    then each entry becomes the weighted mean of the steps that chose it (entries no step chose
    stay). Starts from Gaussian noise, since points are normalised values."""
    R, T, d = points.shape
    G, S = cfg.groups, cfg.table_size
    generator = torch.Generator().manual_seed(seed)
    tables = torch.randn(G, S, d, generator=generator).half().float()
    weight = row_weights.reshape(R, 1, 1) * col_weights.reshape(1, T, d)  # [R, T, d]
    group = cfg.group_index(T * d)
    for _ in tqdm(range(iters), desc="trellis tables", unit="round", disable=not progress):
        slots = (group * S + encode(points, col_weights, tables, cfg)).reshape(-1)
        num = torch.zeros(G * S, d).index_add_(0, slots, (weight * points).reshape(-1, d))
        den = torch.zeros(G * S, d).index_add_(0, slots, weight.reshape(-1, d))
        tables = torch.where(den > 0, num / den.clamp_min(1e-30), tables.reshape(G * S, d))
        tables = tables.reshape(G, S, d).half().float()
    return tables


def pack_states(states: torch.Tensor, cfg: TrellisConfig) -> torch.Tensor:
    """Bit streams uint8 [R, B] of trellis paths states [R, T] from state 0: step t's k new bits
    (the low k bits of its state) at bit k * t, most significant bit first, then zero padding.
    CarvqError if a path breaks the shift rule."""
    R, T = states.shape
    k, mask = cfg.step_bits, cfg.table_size - 1
    previous = torch.cat([torch.zeros(R, 1, dtype=states.dtype), states[:, :-1]], dim=1)
    if bool((((previous << k) & mask) != ((states >> k) << k)).any()):
        raise CarvqError("the states are not a path of the bitshift trellis from state 0")
    bits = ((states[:, :, None] >> torch.arange(k - 1, -1, -1)) & 1).reshape(R, -1).to(torch.uint8)
    bits = torch.cat([bits, bits.new_zeros(R, -bits.shape[1] % 8)], dim=1).reshape(R, -1, 8)
    return (bits << torch.arange(7, -1, -1, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def unpack_states(streams: torch.Tensor, steps: int, cfg: TrellisConfig) -> torch.Tensor:
    """States int64 [R, steps] of bit streams uint8 [R, B], as the decoder walks them."""
    R, k = streams.shape[0], cfg.step_bits
    if streams.shape[1] * 8 < steps * k:
        raise CarvqError(f"a stream of {streams.shape[1]} bytes is too short for {steps} steps of {k} bits")
    bits = ((streams[..., None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1).reshape(R, -1).long()
    new = (bits[:, :steps * k].reshape(R, steps, k) * (1 << torch.arange(k - 1, -1, -1))).sum(-1)  # [R, T]
    # state_t = the last L bits pushed = sum over the last ceil(L / k) steps' bits, shifted
    states = torch.zeros(R, steps, dtype=torch.int64)
    for back in range(-(-cfg.state_bits // k)):
        shifted = torch.zeros_like(new)
        shifted[:, back:] = new[:, :steps - back]
        states |= shifted << (k * back)
    return states & (cfg.table_size - 1)


def table_values(codes: TrellisCodes, ids: torch.Tensor) -> torch.Tensor:
    """The table values float32 [len(ids), n] that the streams of rows ids walk to, before the
    column scale and mean."""
    cfg = codes.config
    n = codes.columns.shape[1]
    states = unpack_states(codes.streams[ids], cfg.n_steps(n), cfg)
    return codes.tables.float()[cfg.group_index(n), states].reshape(ids.shape[0], n)


def predicted_slots(prediction: RowPrediction, ids: torch.Tensor) -> torch.Tensor:
    """For each of the flat ids, its index in prediction.rows, or -1 when it is not predicted."""
    rows = prediction.rows.long()
    slot = torch.searchsorted(rows, ids).clamp_max(rows.numel() - 1)
    return torch.where(rows[slot] == ids, slot, -1)


def decode(codes: TrellisCodes, ids: torch.Tensor) -> torch.Tensor:
    """Rows float32 [len(ids), n] of flat token ids, computed as the op does: table value times
    the column's scale, plus its mean, in F32; a predicted row (docs/FORMAT.md "Predicted rows")
    decodes its own values with the leftovers' columns and adds its multiple of its root's
    decode without column means (root_values)."""
    return _decode(codes, ids, with_means=True)


def root_values(codes: TrellisCodes, ids: torch.Tensor) -> torch.Tensor:
    """What a predicted row multiplies, float32 [len(ids), n]: the decode of rows ids without
    column means: a plain row's table values times the column scale, a predicted row's own
    values times the leftovers' scale plus its multiple of its root's (a chain, followed to its
    plain row)."""
    return _decode(codes, ids, with_means=False)


def _decode(codes: TrellisCodes, ids: torch.Tensor, with_means: bool) -> torch.Tensor:
    """decode (with_means) or root_values: each row's values under its columns, in the op's order
    (value * scale, + mean), then a predicted row's chain of roots added."""
    values = table_values(codes, ids)
    scale, mean = codes.columns.float()
    out = values * scale + mean if with_means else values * scale
    p = codes.prediction
    if p is None:
        return out
    slot = predicted_slots(p, ids)
    hit = (slot >= 0).nonzero()[:, 0]
    if hit.numel() == 0:
        return out
    own_scale, own_mean = p.columns.float()
    own = values[hit] * own_scale + own_mean if with_means else values[hit] * own_scale
    return out.index_put((hit,), _add_roots(codes, own, slot[hit]))


def _add_roots(codes: TrellisCodes, acc: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """acc [m, n] plus, for the predicted rows at slots slot [m], their multiple of their roots'
    root_values, accumulated a link at a time in the op's order: (f * value) * scale, f the
    product of the multiples along the chain."""
    p = codes.prediction
    scale = codes.columns.float()[0]
    own_scale = p.columns.float()[0]
    multiple = p.scale_step * p.scale_codes.float()
    at = torch.arange(slot.numel())
    f, up = multiple[slot], p.roots[slot].long()
    while at.numel():
        up_slot = predicted_slots(p, up)
        chained = up_slot >= 0
        column = torch.where(chained[:, None], own_scale, scale)
        acc = acc.index_add(0, at, f[:, None] * table_values(codes, up) * column)
        at, f, up = at[chained], f[chained] * multiple[up_slot[chained]], p.roots[up_slot[chained]].long()
    return acc


def restore_norm(codes: TrellisCodes, matrix: torch.Tensor, rows: torch.Tensor, chunk: int = 16384) -> TrellisCodes:
    """codes with every decoded row scaled by one factor c (folded into the F16 column scale and
    mean) so that the rows selected by the bool mask rows [V] have, on average, their norm in
    matrix [V, n]. A trellis decodes a conditional mean, which is shorter than the row; the model's
    residual stream then starts smaller than its layers expect (docs/EXPERIMENTS.md: one such scale
    lowers the KL at every rate, on both models measured, at no cost in bits)."""
    ids = rows.nonzero()[:, 0]
    if ids.numel() == 0:
        return codes
    original = decoded = 0.0
    for i in range(0, ids.numel(), chunk):
        part = ids[i:i + chunk]
        original += float(matrix[part].float().norm(dim=1).sum())
        decoded += float(decode(codes, part).norm(dim=1).sum())
    if not decoded > 0:
        return codes
    columns = (codes.columns.float() * (original / decoded)).half()
    return replace(codes, columns=columns)


def fit_trellis(matrix: torch.Tensor, cfg: TrellisConfig, sample_ids: torch.Tensor, sample_weights: torch.Tensor,
                col_weights: torch.Tensor | None = None, seed: int = 0, iters: int = 8,
                progress: bool = False) -> TrellisCodes:
    """Trellis codes for matrix [V, n]: per-column F16 mean and scale, tables fitted on the rows
    sample_ids weighted by sample_weights under plain squared error, then every row encoded
    under col_weights [n] (the cost of an error in each column, e.g. the diagonal of the model's
    Fisher; None: plain squared error)."""
    cfg.validate(matrix.shape[1])
    points, scale, mean = normalise(matrix, cfg)
    tables = fit_tables(points[sample_ids], sample_weights, search_weights(scale, None, cfg), cfg, iters=iters,
                        seed=seed, progress=progress)
    states = encode(points, search_weights(scale, col_weights, cfg), tables, cfg, progress=progress)
    return TrellisCodes(config=cfg, streams=pack_states(states, cfg), tables=tables.half(),
                        columns=torch.stack([scale, mean]))


def normalise(matrix: torch.Tensor, cfg: TrellisConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(points float32 [R, T, d], scale, mean): the rows of matrix [R, n] mapped per column to zero
    mean and unit spread by an F16 scale and mean [n], as tables are fitted and paths searched.
    One row has no spread; its scale is the floor."""
    R, n = matrix.shape
    mean = matrix.mean(0).half()
    spread = (matrix - mean.float()).std(0, correction=1 if R > 1 else 0)
    scale = spread.clamp_min(2.0 ** -14).half()  # F16 normals only
    return ((matrix - mean.float()) / scale.float()).reshape(R, cfg.n_steps(n), cfg.step_dim), scale, mean


def search_weights(scale: torch.Tensor, col_weights: torch.Tensor | None, cfg: TrellisConfig) -> torch.Tensor:
    """Weights [T, d] for searching normalised values: the cost of an error in each column
    (col_weights [n]; None: plain squared error) times the column's squared scale, which an
    error in normalised values is multiplied by."""
    weights = scale.float().pow(2)
    if col_weights is not None:
        weights = col_weights.float() * weights
    return weights.reshape(-1, cfg.step_dim)
