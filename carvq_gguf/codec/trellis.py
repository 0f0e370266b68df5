"""Bitshift trellis-coded quantization of rows (the trellis of QTIP, Tseng et al. 2024).

A row of n values is cut into T = n / d steps of d values. Its code is one bit stream: the
first step's state is sent whole (L bits), every later step adds k bits, and the state of step
t is the L-bit window of the stream that starts at bit k * t (most significant bit first), so
state_t = ((state_{t-1} << k) | new bits) mod 2^L. Step t decodes as table[state_t], a table of
2^L x d values shared by all rows. At k = 3, d = 2 that is 1.5 bits per value, the rate of the
4-bit RVQ codes over 8 values, and it comes much closer to the rate-distortion bound
(docs/EXPERIMENTS.md). Encoding is a Viterbi search per row; decoding is one window read and
one lookup per step.

Everything here works on normalised values: the caller maps rows to them and back (per-column
mean and scale) and passes per-column weights that say what an error costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CarvqError


@dataclass(frozen=True)
class TrellisConfig:
    """state_bits L, step_bits k (new bits per step), step_dim d (values per step)."""

    state_bits: int = 10
    step_bits: int = 3
    step_dim: int = 2

    def validate(self, embedding_dim: int) -> None:
        """CarvqError unless the trellis fits rows of embedding_dim values."""
        if not 0 < self.step_bits < self.state_bits <= 16:
            raise CarvqError(f"a trellis needs 0 < step_bits < state_bits <= 16, got k = {self.step_bits}, "
                             f"L = {self.state_bits}")
        if self.step_dim < 1 or embedding_dim % self.step_dim:
            raise CarvqError(f"the row width {embedding_dim} is not a multiple of the step of {self.step_dim} values")

    def stream_bits(self, steps: int) -> int:
        """Bits of one row's stream: the first state whole, then step_bits per later step."""
        return self.state_bits + self.step_bits * (steps - 1)


def viterbi(points: torch.Tensor, col_weights: torch.Tensor, table: torch.Tensor, cfg: TrellisConfig,
            start: torch.Tensor | None = None) -> torch.Tensor:
    """States int64 [R, T] of the path through the trellis that minimises, per row of points
    [R, T, d], the sum over steps of col_weights [T, d] * (points - table[state])^2.
    start [R]: a state each row's path must leave from before step 0 (None: step 0 is free)."""
    R, T, d = points.shape
    S = 1 << cfg.state_bits
    branches = 1 << cfg.step_bits
    M = S >> cfg.step_bits  # states that share their low L - k bits with a successor's high bits
    t2 = table.pow(2)
    if start is None:
        cost = torch.zeros(R, S)
    else:
        cost = torch.full((R, S), float("inf"))
        cost[torch.arange(R), start] = 0.0
    back = torch.zeros(T, R, M, dtype=torch.uint8)
    for t in range(T):
        x, w = points[:, t], col_weights[t]
        step = (x.pow(2) * w).sum(1, keepdim=True) - 2 * (x * w) @ table.T + (t2 * w).sum(1)  # [R, S]
        if t == 0 and start is None:
            cost = step
            continue
        # predecessors of a state s are (s >> k) + j * M for j < 2^k
        best, j = cost.view(R, branches, M).min(1)
        back[t] = j.to(torch.uint8)
        cost = best.repeat_interleave(branches, dim=1) + step
    states = torch.empty(R, T, dtype=torch.int64)
    state = cost.argmin(1)
    for t in range(T - 1, -1, -1):
        states[:, t] = state
        high = state >> cfg.step_bits
        state = high + back[t].gather(1, high[:, None])[:, 0].long() * M
    return states


def encode(points: torch.Tensor, col_weights: torch.Tensor, table: torch.Tensor, cfg: TrellisConfig,
           chunk: int = 4096) -> torch.Tensor:
    """viterbi over rows chunk at a time (its back pointers take T * chunk * 2^(L-k) bytes)."""
    return torch.cat([viterbi(points[i:i + chunk], col_weights, table, cfg) for i in range(0, points.shape[0], chunk)])


def fit_table(points: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, cfg: TrellisConfig,
              iters: int = 8, seed: int = 0) -> torch.Tensor:
    """A table [2^L, d] (F16 values in float32) fitted by Lloyd rounds on the trellis: encode, then
    each entry becomes the weighted mean of the steps that chose it (entries no step chose stay).
    Starts from Gaussian noise, since points are normalised values."""
    R, T, d = points.shape
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(1 << cfg.state_bits, d, generator=generator).half().float()
    weight = row_weights.reshape(R, 1, 1) * col_weights.reshape(1, T, d)  # [R, T, d]
    for _ in range(iters):
        states = encode(points, col_weights, table, cfg).reshape(-1)
        num = torch.zeros_like(table).index_add_(0, states, (weight * points).reshape(-1, d))
        den = torch.zeros_like(table).index_add_(0, states, weight.reshape(-1, d))
        table = torch.where(den > 0, num / den.clamp_min(1e-30), table).half().float()
    return table


def pack_states(states: torch.Tensor, cfg: TrellisConfig) -> torch.Tensor:
    """Bit streams uint8 [R, ceil(stream_bits / 8)] (most significant bit first) of trellis paths
    states [R, T]. CarvqError if a path breaks the shift rule."""
    R, T = states.shape
    k, L = cfg.step_bits, cfg.state_bits
    mask = (1 << L) - 1
    if T > 1 and bool((((states[:, :-1] << k) & mask) != ((states[:, 1:] >> k) << k)).any()):
        raise CarvqError("the states are not a path of the bitshift trellis")
    first = (states[:, :1] >> torch.arange(L - 1, -1, -1)) & 1  # [R, L]
    later = (states[:, 1:, None] >> torch.arange(k - 1, -1, -1)) & 1  # [R, T - 1, k]
    bits = torch.cat([first, later.reshape(R, -1)], dim=1).to(torch.uint8)
    pad = -bits.shape[1] % 8
    bits = torch.cat([bits, bits.new_zeros(R, pad)], dim=1).reshape(R, -1, 8)
    return (bits << torch.arange(7, -1, -1, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def unpack_states(stream: torch.Tensor, steps: int, cfg: TrellisConfig) -> torch.Tensor:
    """States int64 [R, steps] read from bit streams uint8 [R, bytes]: step t's state is the
    L-bit window at bit step_bits * t, as the decoder reads it."""
    R = stream.shape[0]
    if stream.shape[1] * 8 < cfg.stream_bits(steps):
        raise CarvqError(f"a stream of {stream.shape[1]} bytes is too short for {steps} steps "
                         f"({cfg.stream_bits(steps)} bits)")
    bits = ((stream[..., None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1).reshape(R, -1).long()
    offsets = torch.arange(steps)[:, None] * cfg.step_bits + torch.arange(cfg.state_bits)  # [T, L]
    weights = 1 << torch.arange(cfg.state_bits - 1, -1, -1)
    return (bits[:, offsets] * weights).sum(-1)
