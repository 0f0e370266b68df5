"""Codec states with random but valid tensors (nothing trained): for format, op and speed tests,
where what matters is that every tensor has the right shape and dtype, not what it decodes to."""

from __future__ import annotations

import torch

from .state import (MAX_PREDICTION_CHAIN, AdaptorConfig, CarvqState, RowPrediction, RvqConfig, TrellisCodes,
                    TrellisConfig)


def random_prediction(vocab_size: int, embedding_dim: int, count: int, generator: torch.Generator) -> RowPrediction:
    """count random predicted rows with random scale codes, their roots making chains of 1, 2, ...
    MAX_PREDICTION_CHAIN links in turn: a root is the row before in a random order of the predicted
    rows, or a random unpredicted row to start the next chain."""
    order = torch.randperm(vocab_size, generator=generator)
    chosen, others = order[:count], order[count:]
    roots = others[torch.randint(0, others.numel(), (count,), generator=generator)]
    chained = torch.arange(count) % MAX_PREDICTION_CHAIN != 0
    roots[chained] = chosen[:-1][chained[1:]]
    rows, by_row = chosen.sort()
    roots = roots[by_row]
    columns = torch.stack([0.5 + torch.rand(embedding_dim, generator=generator),
                           0.1 * torch.randn(embedding_dim, generator=generator)])
    return RowPrediction(rows=rows.to(torch.int32), roots=roots.to(torch.int32),
                         scale_codes=torch.randint(-128, 128, (count,), generator=generator, dtype=torch.int8),
                         scale_step=0.0078125, columns=columns.half())


def random_trellis(vocab_size: int, embedding_dim: int, config: TrellisConfig,
                   generator: torch.Generator, predicted: int = 0) -> TrellisCodes:
    """Random trellis codes: any bytes are valid streams (the padding bits after them zero);
    predicted > 0 of the rows are predicted from random roots."""
    V, n, c = vocab_size, embedding_dim, config
    streams = torch.randint(0, 256, (V, c.stream_bytes(n)), generator=generator, dtype=torch.uint8)
    pad = c.stream_bytes(n) * 8 - c.n_steps(n) * c.step_bits
    streams[:, -1] &= (0xFF << pad) & 0xFF
    columns = torch.stack([0.5 + torch.rand(n, generator=generator), 0.1 * torch.randn(n, generator=generator)])
    return TrellisCodes(config=c, streams=streams,
                        tables=torch.randn(c.groups, c.table_size, c.step_dim, generator=generator).half(),
                        columns=columns.half(),
                        prediction=random_prediction(V, n, predicted, generator) if predicted else None)


def random_state(vocab_size: int = 96, embedding_dim: int = 64, levels: int = 2,
                      group_layout: str = "column", table_dim: int = 8,
                      hidden_dims: tuple[int, ...] = (32, 48), n_corrections: int = 3,
                      seed: int = 0, trellis: TrellisConfig | None = None, predicted: int = 0) -> CarvqState:
    """A checked CarvqState of this shape with random tensors, the same for the same arguments;
    with trellis, the rows are trellis-coded (levels and group_layout are then not used) and
    predicted of them predicted from other rows."""
    gen = torch.Generator().manual_seed(seed)
    rvq = RvqConfig(subvector_dim=8, codebook_bits=4, levels=levels, group_layout=group_layout, group_size=40)
    adaptor = AdaptorConfig(table_dim=table_dim, hidden_dims=hidden_dims if table_dim else ())
    V, n = vocab_size, embedding_dim
    S, K, G = rvq.n_subvectors(n), rvq.codebook_size, rvq.n_groups(V, n)
    if trellis is None:
        state = CarvqState(
            vocab_size=V, embedding_dim=n, rvq=rvq, adaptor=adaptor,
            codes=torch.randint(0, K, (V, levels, S), generator=gen, dtype=torch.uint8),
            codebooks=(torch.randn(levels, G, K, rvq.subvector_dim, generator=gen) * 0.1).half(),
            preset="test-random")
    else:
        state = CarvqState(vocab_size=V, embedding_dim=n, rvq=rvq, adaptor=adaptor, codes=None, codebooks=None,
                           preset="test-random", trellis=random_trellis(V, n, trellis, gen, predicted))
    if table_dim:
        state.sigma0 = torch.randn(V, table_dim, generator=gen).half()
        for d_in, d_out in adaptor.layer_dims(n):
            state.linears.append(((torch.randn(d_out, d_in, generator=gen) / d_in ** 0.5).half(),
                                  torch.randn(d_out, generator=gen) * 0.01))
        for _, d_out in adaptor.layer_dims(n)[:-1]:
            state.norms.append((1 + 0.1 * torch.randn(d_out, generator=gen), 0.1 * torch.randn(d_out, generator=gen)))
    if n_corrections:
        ids = torch.randperm(V, generator=gen)[:n_corrections].sort().values
        state.correction_ids = ids.to(torch.int32)
        state.correction_rows = (torch.randn(n_corrections, n, generator=gen) * 0.05).half()
    state.check()
    return state
