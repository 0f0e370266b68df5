"""Bitshift trellis-coded quantization: the Viterbi search is exact, streams round-trip, the
table fit lowers the error."""

from __future__ import annotations

import itertools

import pytest
import torch

from carvq_gguf.codec import trellis
from carvq_gguf.codec.trellis import TrellisConfig
from carvq_gguf.errors import CarvqError

TINY = TrellisConfig(state_bits=4, step_bits=2, step_dim=2)


def _cost(points, weights, table, states):
    return float((weights * (points - table[states]).pow(2)).sum())


def _all_paths(cfg, steps):
    """Every path of the trellis: a free first state, then every choice of new bits."""
    mask = (1 << cfg.state_bits) - 1
    for first in range(1 << cfg.state_bits):
        for new in itertools.product(range(1 << cfg.step_bits), repeat=steps - 1):
            path = [first]
            for b in new:
                path.append(((path[-1] << cfg.step_bits) | b) & mask)
            yield torch.tensor(path)


def test_viterbi_finds_the_cheapest_path():
    g = torch.Generator().manual_seed(0)
    steps = 4
    table = torch.randn(16, 2, generator=g)
    weights = torch.rand(steps, 2, generator=g) + 0.1
    points = torch.randn(5, steps, 2, generator=g)
    states = trellis.viterbi(points, weights, table, TINY)
    paths = torch.stack(list(_all_paths(TINY, steps)))
    for r in range(points.shape[0]):
        best = min(_cost(points[r], weights, table, p) for p in paths)
        assert _cost(points[r], weights, table, states[r]) == pytest.approx(best, rel=1e-5)
        assert any(torch.equal(states[r], p) for p in paths)  # a path of the trellis


def test_viterbi_from_a_start_state():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(16, 2, generator=g)
    points = torch.randn(6, 3, 2, generator=g)
    start = torch.arange(6) * 2
    states = trellis.viterbi(points, torch.ones(3, 2), table, TINY, start=start)
    assert torch.equal((states[:, 0] >> TINY.step_bits), start & ((1 << (TINY.state_bits - TINY.step_bits)) - 1))


@pytest.mark.parametrize("cfg", [TINY, TrellisConfig(), TrellisConfig(state_bits=12, step_bits=3, step_dim=2)])
def test_streams_round_trip_and_have_the_stated_length(cfg):
    g = torch.Generator().manual_seed(2)
    steps = 9
    table = torch.randn(1 << cfg.state_bits, cfg.step_dim, generator=g)
    states = trellis.viterbi(torch.randn(7, steps, cfg.step_dim, generator=g), torch.ones(steps, cfg.step_dim), table, cfg)
    stream = trellis.pack_states(states, cfg)
    assert stream.dtype == torch.uint8 and stream.shape == (7, -(-cfg.stream_bits(steps) // 8))
    assert torch.equal(trellis.unpack_states(stream, steps, cfg), states)


def test_pack_refuses_a_broken_path_and_unpack_a_short_stream():
    with pytest.raises(CarvqError, match="not a path"):
        trellis.pack_states(torch.tensor([[1, 9]]), TINY)  # 1 << 2 = 4, so 9 >> 2 should be 1
    with pytest.raises(CarvqError, match="too short"):
        trellis.unpack_states(torch.zeros(1, 1, dtype=torch.uint8), 4, TINY)


def test_validate_names_the_problem():
    with pytest.raises(CarvqError, match="step_bits < state_bits"):
        TrellisConfig(state_bits=3, step_bits=3).validate(8)
    with pytest.raises(CarvqError, match="multiple of the step"):
        TrellisConfig(step_dim=2).validate(7)


def test_table_fit_lowers_the_error_and_is_deterministic():
    g = torch.Generator().manual_seed(3)
    cfg = TrellisConfig(state_bits=6, step_bits=3, step_dim=2)
    points = torch.randn(300, 8, 2, generator=g)
    rows, cols = torch.rand(300, generator=g) + 0.5, torch.ones(8, 2)
    start = trellis.fit_table(points, rows, cols, cfg, iters=0)
    fitted = trellis.fit_table(points, rows, cols, cfg, iters=4)
    def error(table):
        states = trellis.encode(points, cols, table, cfg)
        return float((rows[:, None, None] * (points - table[states]).pow(2)).sum())
    assert error(fitted) < 0.8 * error(start)
    assert torch.equal(fitted, trellis.fit_table(points, rows, cols, cfg, iters=4))
    assert torch.equal(fitted, fitted.half().float())  # stored as F16
