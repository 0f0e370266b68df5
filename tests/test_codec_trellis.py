"""Bitshift trellis-coded quantization: the Viterbi search is exact, streams are what
docs/FORMAT.md says, the decode follows the format's recurrence, the fits lower the error."""

from __future__ import annotations

import itertools

import pytest
import torch

from carvq_gguf.codec import trellis
from carvq_gguf.codec.state import TrellisCodes, TrellisConfig
from carvq_gguf.errors import CarvqError

TINY = TrellisConfig(state_bits=4, step_bits=2, step_dim=2, groups=2)


def _cost(points, weights, step_tables, states):
    picked = step_tables[torch.arange(states.shape[0]), states]
    return float((weights * (points - picked).pow(2)).sum())


def _all_paths(cfg, steps):
    """Every path of the trellis from state 0: every choice of new bits per step."""
    mask = cfg.table_size - 1
    for new in itertools.product(range(1 << cfg.step_bits), repeat=steps):
        state, path = 0, []
        for b in new:
            state = ((state << cfg.step_bits) | b) & mask
            path.append(state)
        yield torch.tensor(path)


def _format_decode(stream: bytes, codes: TrellisCodes, n: int) -> list[float]:
    """docs/FORMAT.md "Trellis codes", bit by bit in plain Python."""
    c = codes.config
    T, values, state = n // c.step_dim, [], 0
    bit = lambda i: (stream[i // 8] >> (7 - i % 8)) & 1  # noqa: E731
    for t in range(T):
        new = 0
        for i in range(c.step_bits):
            new = (new << 1) | bit(c.step_bits * t + i)
        state = ((state << c.step_bits) | new) & (c.table_size - 1)
        g = t * c.groups // T
        for j in range(c.step_dim):
            col = t * c.step_dim + j
            scale, mean = float(codes.columns[0, col]), float(codes.columns[1, col])
            values.append(float(codes.tables[g, state, j]) * scale + mean)
    return values


def test_viterbi_finds_the_cheapest_path():
    g = torch.Generator().manual_seed(0)
    steps = 4
    tables = torch.randn(TINY.groups, TINY.table_size, 2, generator=g)
    step_tables = tables[TINY.group_index(steps * 2)]
    weights = torch.rand(steps, 2, generator=g) + 0.1
    points = torch.randn(5, steps, 2, generator=g)
    states = trellis.encode(points, weights, tables, TINY)
    paths = torch.stack(list(_all_paths(TINY, steps)))
    for r in range(points.shape[0]):
        best = min(_cost(points[r], weights, step_tables, p) for p in paths)
        assert _cost(points[r], weights, step_tables, states[r]) == pytest.approx(best, rel=1e-5)
        assert any(torch.equal(states[r], p) for p in paths)  # a path of the trellis from state 0


def test_viterbi_breaks_ties_towards_the_first_predecessor():
    # every path costs the same, so the search must settle each tie the same way: the first
    # predecessor from the last state 0 gives the all-zero path
    cfg = TrellisConfig(state_bits=6, step_bits=2, step_dim=2, groups=1)
    steps = 7
    states = trellis.encode(torch.zeros(3, steps, 2), torch.ones(steps, 2), torch.zeros(1, cfg.table_size, 2), cfg)
    assert torch.equal(states, torch.zeros(3, steps, dtype=torch.int64))


@pytest.mark.parametrize("cfg", [TINY, TrellisConfig(), TrellisConfig(state_bits=12, step_bits=5, step_dim=1, groups=3)])
def test_streams_round_trip_and_have_the_stated_length(cfg):
    g = torch.Generator().manual_seed(2)
    steps = 9
    tables = torch.randn(cfg.groups, cfg.table_size, cfg.step_dim, generator=g)
    states = trellis.encode(torch.randn(7, steps, cfg.step_dim, generator=g), torch.ones(steps, cfg.step_dim),
                            tables, cfg)
    stream = trellis.pack_states(states, cfg)
    assert stream.dtype == torch.uint8 and stream.shape == (7, cfg.stream_bytes(steps * cfg.step_dim))
    assert torch.equal(trellis.unpack_states(stream, steps, cfg), states)


@pytest.mark.parametrize("cfg", [TINY, TrellisConfig(), TrellisConfig(state_bits=9, step_bits=8, step_dim=4, groups=5)])
def test_decode_follows_the_format(cfg):
    from carvq_gguf.codec.synthetic import random_trellis

    n = 40 if cfg.step_dim != 4 else 80
    codes = random_trellis(6, n, cfg, torch.Generator().manual_seed(4))
    got = trellis.decode(codes, torch.arange(6))
    for r in range(6):
        want = torch.tensor(_format_decode(bytes(codes.streams[r].tolist()), codes, n))
        assert torch.allclose(got[r], want, rtol=1e-6, atol=1e-6)


def test_pack_refuses_a_broken_path_and_unpack_a_short_stream():
    with pytest.raises(CarvqError, match="not a path"):
        trellis.pack_states(torch.tensor([[1, 9]]), TINY)  # from state 1 the next has high bits 01, not 10
    with pytest.raises(CarvqError, match="not a path"):
        trellis.pack_states(torch.tensor([[5]]), TINY)  # state 0 leads to 0..3 only
    with pytest.raises(CarvqError, match="too short"):
        trellis.unpack_states(torch.zeros(1, 1, dtype=torch.uint8), 5, TINY)


def test_validate_names_the_problem():
    with pytest.raises(CarvqError, match="below state_bits"):
        TrellisConfig(state_bits=3, step_bits=3).validate(8)
    with pytest.raises(CarvqError, match="not divisible"):
        TrellisConfig(step_dim=2).validate(7)
    with pytest.raises(CarvqError, match="groups must be 1..4"):
        TrellisConfig(step_dim=2, groups=5).validate(8)
    with pytest.raises(CarvqError, match="state_bits must be 2..16"):
        TrellisConfig(state_bits=17).validate(8)


def test_table_fit_lowers_the_error_and_is_deterministic():
    g = torch.Generator().manual_seed(3)
    cfg = TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=2)
    points = torch.randn(300, 8, 2, generator=g)
    rows, cols = torch.rand(300, generator=g) + 0.5, torch.ones(8, 2)
    group = cfg.group_index(16)

    def error(tables):
        states = trellis.encode(points, cols, tables, cfg)
        return float((rows[:, None, None] * (points - tables[group, states]).pow(2)).sum())

    start = trellis.fit_tables(points, rows, cols, cfg, iters=0)
    fitted = trellis.fit_tables(points, rows, cols, cfg, iters=4)
    assert error(fitted) < 0.8 * error(start)
    assert torch.equal(fitted, trellis.fit_tables(points, rows, cols, cfg, iters=4))
    assert torch.equal(fitted, fitted.half().float())  # stored as F16


def test_fit_trellis_codes_a_matrix_nearer_than_the_rate_allows_a_scalar_quantizer():
    """1.5 bits per value on Gaussian rows: a trellis gets relative MSE near the bound (0.125),
    below what a 3-bit-per-pair scalar code can (about 0.19 for the best 2-D lattice)."""
    g = torch.Generator().manual_seed(5)
    matrix = torch.randn(600, 16, generator=g) * torch.linspace(0.5, 2, 16)
    cfg = TrellisConfig(state_bits=8, step_bits=3, step_dim=2, groups=1)
    codes = trellis.fit_trellis(matrix, cfg, torch.arange(600), torch.ones(600))
    codes_again = trellis.fit_trellis(matrix, cfg, torch.arange(600), torch.ones(600))
    decoded = trellis.decode(codes, torch.arange(600))
    rel = float((decoded - matrix).pow(2).sum() / (matrix - matrix.mean(0)).pow(2).sum())
    assert rel < 0.18
    assert torch.equal(codes.streams, codes_again.streams) and torch.equal(codes.tables, codes_again.tables)


def test_column_weights_steer_the_encoding():
    """An error costs more in a heavily weighted column: the search trades it for the others."""
    g = torch.Generator().manual_seed(6)
    matrix = torch.randn(400, 8, generator=g)
    cfg = TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=1)
    weights = torch.ones(8)
    weights[0] = 100.0
    plain = trellis.decode(trellis.fit_trellis(matrix, cfg, torch.arange(400), torch.ones(400)), torch.arange(400))
    steered = trellis.decode(trellis.fit_trellis(matrix, cfg, torch.arange(400), torch.ones(400), weights),
                             torch.arange(400))
    assert float((steered - matrix)[:, 0].pow(2).mean()) < 0.5 * float((plain - matrix)[:, 0].pow(2).mean())


def test_restore_norm_gives_the_coded_rows_back_their_mean_norm():
    """A trellis decodes conditional means, shorter than the rows; one scale folded into the column
    scale and mean restores the mean norm of the selected rows, and leaves streams and tables."""
    g = torch.Generator().manual_seed(7)
    matrix = torch.randn(600, 16, generator=g)
    cfg = TrellisConfig(state_bits=6, step_bits=2, step_dim=2, groups=1)
    codes = trellis.fit_trellis(matrix, cfg, torch.arange(600), torch.ones(600))
    rows = torch.ones(600, dtype=torch.bool)
    rows[:50] = False
    ids = rows.nonzero()[:, 0]

    def mean_norm(c: TrellisCodes) -> float:
        return float(trellis.decode(c, ids).norm(dim=1).mean())

    target = float(matrix[ids].norm(dim=1).mean())
    assert mean_norm(codes) < 0.95 * target  # 1 bit per value shrinks the rows
    scaled = trellis.restore_norm(codes, matrix, rows, chunk=64)
    assert mean_norm(scaled) == pytest.approx(target, rel=2e-3)  # F16 column scale and mean
    assert torch.equal(scaled.streams, codes.streams) and torch.equal(scaled.tables, codes.tables)
    assert scaled.columns.dtype == torch.float16
    assert trellis.restore_norm(codes, matrix, torch.zeros(600, dtype=torch.bool)) is codes


def test_compress_restores_the_norm_of_rows_without_a_correction_row():
    from carvq_gguf.codec.compress import compress_matrix

    g = torch.Generator().manual_seed(8)
    matrix = torch.randn(20000, 64, generator=g) * 0.05
    weights = torch.full((20000,), 0.01)
    weights[:300] = torch.arange(300, 0, -1).float()
    state = compress_matrix(matrix, "carvq-1.6", weights, progress=False)
    coded = torch.ones(20000, dtype=torch.bool)
    coded[state.correction_ids.long()] = False
    ids = coded.nonzero()[:, 0]
    ratio = trellis.decode(state.trellis, ids).norm(dim=1).mean() / matrix[ids].norm(dim=1).mean()
    assert float(ratio) == pytest.approx(1.0, rel=3e-3)
