"""Rows predicted from a related row (codec/prediction.py, compress.add_prediction)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from carvq_gguf.codec import bits, prediction, presets, trellis
from carvq_gguf.codec.compress import add_prediction, compress_matrix, pick_correction_ids
from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.codec.presets import Preset, TrainConfig
from carvq_gguf.codec.state import AdaptorConfig, CarvqState, RvqConfig, TrellisConfig, chain_lengths
from carvq_gguf.errors import CarvqError


def families(vocab_size: int = 512, width: int = 64, seed: int = 0, noise: float = 0.3) -> torch.Tensor:
    """A matrix whose rows come in pairs: row 2i + 1 is a multiple of row 2i plus some noise, as
    case and leading-space variants of a token are."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(vocab_size // 2, width, generator=g)
    scale = 0.5 + torch.rand(vocab_size // 2, 1, generator=g)
    partner = scale * base + noise * torch.randn(vocab_size // 2, width, generator=g)
    return torch.stack([base, partner], 1).reshape(vocab_size, width)


def test_nearest_rows_are_the_exact_nearest_by_centred_cosine() -> None:
    m = families(128)
    cos, ids = prediction.nearest_rows(m, count=3)
    x = m - m.mean(0)
    unit = x / x.norm(dim=1, keepdim=True)
    sim = (unit @ unit.T).abs().fill_diagonal_(-1)
    best, best_ids = sim.topk(3, dim=1)
    assert torch.allclose(cos, best, atol=1e-5)
    assert torch.equal(ids[:, 0], best_ids[:, 0])
    assert torch.equal(ids[::2, 0], torch.arange(1, 128, 2))  # each pair finds its partner


def test_the_projected_search_finds_the_partners_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prediction, "EXACT_ROWS", 100)
    monkeypatch.setattr(prediction, "PROJECTION_DIMS", 16)
    m = families(256, noise=0.2)
    _, ids = prediction.nearest_rows(m, count=2)
    assert float((ids[::2, 0] == torch.arange(1, 256, 2)).float().mean()) > 0.95


def test_the_projected_search_sees_past_the_dominant_directions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pair of rows shares everything but its 64 directions of largest variance, where the two
    rows are unrelated: a projection onto those alone finds no partner (as 64 directions missed
    half of Gemma 3's nearest rows); PROJECTION_DIMS must reach past them."""
    monkeypatch.setattr(prediction, "EXACT_ROWS", 1000)
    g = torch.Generator().manual_seed(0)
    vocab_size, width, dominant = 4096, 640, 64
    shared = torch.randn(vocab_size // 2, width - dominant, generator=g).repeat_interleave(2, 0)
    m = torch.cat([2 * torch.randn(vocab_size, dominant, generator=g),
                   shared + 0.3 * torch.randn(vocab_size, width - dominant, generator=g)], 1)
    _, ids = prediction.nearest_rows(m, count=1)
    assert float((ids[::2, 0] == torch.arange(1, vocab_size, 2)).float().mean()) > 0.95


def chains(vocab_size: int = 512, width: int = 64, length: int = 4, seed: int = 0, noise: float = 0.3) -> torch.Tensor:
    """A matrix whose rows come in runs of length: each row a multiple of the one before plus
    some noise, so a row's nearest rows are its neighbours in the run."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(vocab_size // length, width, generator=g)]
    for _ in range(length - 1):
        scale = 0.7 + 0.6 * torch.rand(vocab_size // length, 1, generator=g)
        rows.append(scale * rows[-1] + noise * torch.randn(vocab_size // length, width, generator=g))
    return torch.stack(rows, 1).reshape(vocab_size, width)


def test_a_star_forest_never_predicts_a_root_and_the_threshold_and_exclusions_hold() -> None:
    m = families(256)
    cos, ids = prediction.nearest_rows(m)
    excluded = torch.tensor([0, 1, 7], dtype=torch.int32)
    rows, roots, pair_cos = prediction.choose_roots(cos, ids, 0.5, excluded, max_depth=1)
    assert rows.numel() > 60
    assert bool((rows[1:] > rows[:-1]).all())
    assert not bool(torch.isin(roots, rows).any())  # no chains
    assert not bool(torch.isin(rows, excluded.long()).any())
    assert bool((pair_cos.pow(2) >= 0.5).all())
    for t, r, c in zip(rows.tolist(), roots.tolist(), pair_cos.tolist()):
        k = ids[t].tolist().index(r)
        assert cos[t, k] == c
    assert prediction.choose_roots(cos, ids, 1.01)[0].numel() == 0


@pytest.mark.parametrize("max_depth", [2, 3, 4])
def test_chains_of_roots_stay_within_their_links(max_depth: int) -> None:
    m = chains(1024, 32, length=8)
    cos, ids = prediction.nearest_rows(m)
    star = prediction.choose_roots(cos, ids, 0.25, max_depth=1)[0]
    rows, roots, _ = prediction.choose_roots(cos, ids, 0.25, max_depth=max_depth)
    links = chain_lengths(rows, roots, 1024)
    assert int(links.max()) == max_depth
    assert rows.numel() > star.numel()  # a family's hub need not stay plain
    assert not bool((rows == roots).any())
    # following the roots from any predicted row reaches a plain row within max_depth links
    slot = {t: j for j, t in enumerate(rows.tolist())}
    for j in range(rows.numel()):
        r, steps = int(roots[j]), 1
        while r in slot:
            r, steps = int(roots[slot[r]]), steps + 1
        assert steps == int(links[j]) <= max_depth


def reference_decode(codes: trellis.TrellisCodes, t: int) -> torch.Tensor:
    """Row t as docs/FORMAT.md "Predicted rows" writes it: own values under the leftovers'
    columns plus (u * c_t) * R(root), R recursive."""
    p = codes.prediction
    scale, mean = codes.columns.float()
    own_scale, own_mean = p.columns.float()
    slot = {r: j for j, r in enumerate(p.rows.tolist())}
    values = lambda x: trellis.table_values(codes, torch.tensor([x]))[0]  # noqa: E731

    def root_part(x: int) -> torch.Tensor:
        if x not in slot:
            return values(x) * scale
        j = slot[x]
        return values(x) * own_scale + p.scale_step * float(p.scale_codes[j]) * root_part(int(p.roots[j]))

    if t not in slot:
        return values(t) * scale + mean
    j = slot[t]
    return values(t) * own_scale + own_mean + p.scale_step * float(p.scale_codes[j]) * root_part(int(p.roots[j]))


def test_chained_rows_decode_as_the_format_says_and_code_closer() -> None:
    m = chains(1024, 32)
    codes = trellis.fit_trellis(m, CFG, torch.arange(1024), torch.ones(1024), iters=3)
    neighbours = prediction.nearest_rows(m)
    star = prediction.predict_rows(codes, m, *prediction.choose_roots(*neighbours, 0.25, max_depth=1)[:2])
    rows, roots, _ = prediction.choose_roots(*neighbours, 0.25, max_depth=4)
    chained = prediction.predict_rows(codes, m, rows, roots)
    chained.check(1024, 32)
    links = chain_lengths(rows, roots, 1024)
    for length in range(1, 5):
        t = int(rows[(links == length).nonzero()[0, 0]])
        assert torch.allclose(trellis.decode(chained, torch.tensor([t]))[0], reference_decode(chained, t), atol=1e-5)
    error = lambda c: float((trellis.decode(c, torch.arange(1024)) - m).pow(2).sum())  # noqa: E731
    assert error(chained) < 0.9 * error(star)


def test_a_cycle_or_an_over_long_chain_of_roots_is_refused() -> None:
    m = chains(1024, 32, length=8)
    codes = trellis.fit_trellis(m, CFG, torch.arange(1024), torch.ones(1024), iters=3)
    rows, roots, _ = prediction.choose_roots(*prediction.nearest_rows(m), 0.25, max_depth=4)
    p = prediction.predict_rows(codes, m, rows, roots).prediction
    p.check(1024, 32)
    cycle = p.roots.clone()
    cycle[0], cycle[1] = p.rows[1], p.rows[0]
    with pytest.raises(CarvqError, match="more than 4 links, or a cycle"):
        replace(p, roots=cycle).check(1024, 32)
    # rows 8i .. 8i+4 each predicted from the next: a chain of 5 links
    run = torch.arange(5, dtype=torch.int32)
    long = replace(p, rows=run, roots=run + 1, scale_codes=p.scale_codes[:5])
    with pytest.raises(CarvqError, match="more than 4 links"):
        long.check(1024, 32)
    replace(p, rows=run[:4], roots=run[:4] + 1, scale_codes=p.scale_codes[:4]).check(1024, 32)


CFG = TrellisConfig(state_bits=8, step_bits=3, step_dim=2, groups=2)


def test_predicting_related_rows_lowers_their_error() -> None:
    m = families(1024, 32)
    codes = trellis.fit_trellis(m, CFG, torch.arange(1024), torch.ones(1024), iters=3)
    rows, roots, _ = prediction.choose_roots(*prediction.nearest_rows(m), 0.25)
    predicted = prediction.predict_rows(codes, m, rows, roots)
    predicted.check(1024, 32)
    before = (trellis.decode(codes, rows) - m[rows]).pow(2).sum()
    after = (trellis.decode(predicted, rows) - m[rows]).pow(2).sum()
    assert float(after) < 0.7 * float(before)
    others = torch.ones(1024, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(trellis.decode(predicted, others.nonzero()[:, 0]), trellis.decode(codes, others.nonzero()[:, 0]))
    # the predicted rows keep their mean norm about the column means
    mu = m.mean(0)
    norm = (trellis.decode(predicted, rows) - mu).norm(dim=1).mean()
    assert float(norm) == pytest.approx(float((m[rows] - mu).norm(dim=1).mean()), rel=0.01)


def coded(m: torch.Tensor, weights: torch.Tensor, n_corrections: int) -> CarvqState:
    """m trellis-coded with a correction row on the n_corrections rows weighing most."""
    V, n = m.shape
    state = CarvqState(vocab_size=V, embedding_dim=n, rvq=RvqConfig(), adaptor=AdaptorConfig(table_dim=0, hidden_dims=()),
                       codes=None, codebooks=None, trellis=trellis.fit_trellis(m, CFG, torch.arange(V), weights, iters=3))
    ids = pick_correction_ids(weights, n_corrections)
    state.correction_ids = ids
    state.correction_rows = (m[ids.long()] - trellis.decode(state.trellis, ids.long())).half()
    state.check()
    return state


def test_add_prediction_pays_with_the_least_important_correction_rows() -> None:
    m = families(1024, 32)
    weights = torch.linspace(1, 2, 1024)
    state = coded(m, weights, 40)
    out = add_prediction(state, m, 0.25, prediction.nearest_rows(m), weights)
    p = out.trellis.prediction
    assert p is not None and p.count > 200
    assert bits.bpw(out) <= bits.bpw(state)
    dropped = state.n_correction_rows - out.n_correction_rows
    assert dropped == -(-bits.prediction_bits(1024, 32, p.count) // (16 * 32 + 32))
    # the rows kept are the most important ones
    assert torch.equal(out.correction_ids, state.correction_ids[dropped:])
    assert not bool(torch.isin(p.rows, state.correction_ids).any())
    error = lambda s: float((CarvqEmbedding(s).decode_all() - m).pow(2).sum())  # noqa: E731
    assert error(out) < error(state)


def test_prediction_is_limited_to_what_the_correction_rows_pay_for() -> None:
    m = families(1024, 32)
    neighbours = prediction.nearest_rows(m)
    state = coded(m, torch.ones(1024), 8)
    out = add_prediction(state, m, 0.25, neighbours, torch.ones(1024))
    assert out.n_correction_rows == 0
    assert out.trellis.prediction.count == (8 * (16 * 32 + 32) - bits.prediction_bits(1024, 32, 0 + 1) + 32) // 32
    assert bits.bpw(out) <= bits.bpw(state)
    two_rows = replace(state, correction_ids=state.correction_ids[:2], correction_rows=state.correction_rows[:2])
    assert add_prediction(two_rows, m, 0.25, neighbours, torch.ones(1024)) is two_rows  # the map alone costs more


def test_a_preset_that_predicts_rows_does_so_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    preset = Preset("test-predict", None, RvqConfig(), AdaptorConfig(table_dim=0, hidden_dims=()),
                    TrainConfig(prediction=(0.25,), refine_rounds=0), correction_rows=40, trellis=CFG)
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    m = families(1024, 32)
    a = compress_matrix(m, preset.name, torch.ones(1024), progress=False, seed=3)
    b = compress_matrix(m, preset.name, torch.ones(1024), progress=False, seed=3)
    assert a.trellis.prediction is not None and a.n_correction_rows < 40
    assert torch.equal(CarvqEmbedding(a).decode_all(), CarvqEmbedding(b).decode_all())
    plain = compress_matrix(m, preset.name, torch.ones(1024), progress=False, seed=3, predict=False)
    assert plain.trellis.prediction is None and plain.n_correction_rows == 40
    assert bits.bpw(a) <= bits.bpw(plain)
