"""The Corrective Adaptor: training lowers the L1 residual on a toy matrix."""

import torch

from carvq_gguf.codec.adaptor import train_adaptor
from carvq_gguf.codec.state import AdaptorConfig


def test_adaptor_lowers_l1_on_toy_matrix():
    target = torch.randn(256, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    cfg = AdaptorConfig(table_dim=4, hidden_dims=(32,))
    net = train_adaptor(target, cfg, epochs=60, batch_size=64, lr=1e-2, progress=False)
    with torch.no_grad():
        after = (net(torch.arange(256)) - target).abs().mean()
    before = target.abs().mean()
    assert after < 0.8 * before


def test_adaptor_training_is_deterministic_and_stored_dtypes():
    target = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    cfg = AdaptorConfig(table_dim=2, hidden_dims=(8,))
    a = train_adaptor(target, cfg, epochs=3, batch_size=16, seed=4, progress=False).stored_tensors()
    b = train_adaptor(target, cfg, epochs=3, batch_size=16, seed=4, progress=False).stored_tensors()
    assert torch.equal(a[0], b[0]) and a[0].dtype == torch.float16
    assert a[1][0][0].dtype == torch.float16 and a[1][0][1].dtype == torch.float32
    assert a[2][0][0].dtype == torch.float32 and len(a[1]) == 2 and len(a[2]) == 1
