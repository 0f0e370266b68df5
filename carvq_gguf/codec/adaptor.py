"""The Corrective Adaptor: a per-token table sigma0 followed by a small MLP, fitted to the RVQ residual.

gamma(t) = MLP(sigma0[t]); hidden layers are Linear -> LayerNorm -> ReLU, the last layer is
Linear only so the correction can take either sign. Training minimises the L1 distance
between gamma(t) and the residual E[t] - RVQ(t) with Adam and a cosine learning-rate
schedule. Batches are drawn with probability proportional to the row weights (token
importance) when given, else as shuffled passes over the vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

from ..errors import CarvqError
from .state import AdaptorConfig


class AdaptorNet(nn.Module):
    """Trainable float32 adaptor: sigma0 [V, m1] then the MLP m1 -> hidden... -> n."""

    def __init__(self, vocab_size: int, embedding_dim: int, cfg: AdaptorConfig):
        super().__init__()
        if not cfg.enabled:
            raise CarvqError("cannot build an adaptor with table_dim 0")
        self.sigma0 = nn.Parameter(torch.randn(vocab_size, cfg.table_dim))
        layers = cfg.layer_dims(embedding_dim)
        self.linears = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in layers)
        self.norms = nn.ModuleList(nn.LayerNorm(d_out, eps=cfg.norm_eps) for _, d_out in layers[:-1])
        with torch.no_grad():  # start close to "no correction"
            self.linears[-1].weight.mul_(0.1)
            self.linears[-1].bias.zero_()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Correction rows [T, n] for token ids [T]."""
        x = self.sigma0[token_ids]
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.norms):
                x = torch.relu(self.norms[i](x))
        return x

    def stored_tensors(self) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]],
                                      list[tuple[torch.Tensor, torch.Tensor]]]:
        """(sigma0 F16, [(weight F16, bias F32)], [(norm weight F32, norm bias F32)]) as stored."""
        sigma0 = self.sigma0.detach().to(torch.float16).contiguous()
        linears = [(lin.weight.detach().to(torch.float16).contiguous(), lin.bias.detach().float().clone())
                   for lin in self.linears]
        norms = [(norm.weight.detach().float().clone(), norm.bias.detach().float().clone()) for norm in self.norms]
        return sigma0, linears, norms


def train_adaptor(target: torch.Tensor, cfg: AdaptorConfig, epochs: int = 30, batch_size: int = 1024,
                  lr: float = 3e-3, row_weights: torch.Tensor | None = None, seed: int = 0,
                  progress: bool = True) -> AdaptorNet:
    """Fit an adaptor to target [V, n] (the RVQ residual) with L1 loss; returns the trained net.

    One epoch is ceil(V / batch_size) steps. row_weights [V] (non-negative) switches batch
    sampling to draws with replacement proportional to the weights.
    """
    V, n = target.shape
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise CarvqError(f"adaptor training needs epochs, batch_size >= 1 and lr > 0 "
                         f"(got {epochs}, {batch_size}, {lr})")
    if row_weights is not None and (tuple(row_weights.shape) != (V,) or float(row_weights.sum()) <= 0):
        raise CarvqError(f"adaptor row weights must be [{V}] with a positive sum")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AdaptorNet(V, n, cfg)
    net.to(device)
    target = target.to(device=device, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    steps_per_epoch = math.ceil(V / batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    bar = tqdm(total=total, desc="adaptor", disable=not progress)
    for _ in range(epochs):
        if row_weights is None:
            order = torch.randperm(V, generator=generator)
        else:
            order = torch.multinomial(row_weights.float(), steps_per_epoch * batch_size, replacement=True,
                                      generator=generator)
        for step in range(steps_per_epoch):
            ids = order[step * batch_size:(step + 1) * batch_size].to(device)
            if ids.numel() == 0:
                continue
            loss = (net(ids) - target[ids]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(l1=f"{loss.item():.5f}", refresh=False)
    bar.close()
    return net.cpu().eval()
