"""AWQ scale search and folding in PyTorch: the simulated quantizer is llama.cpp's, folding keeps
the float model's logits, and scales pay off where activations have outlier channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from carvq_gguf.awq import search as awq
from carvq_gguf.errors import CarvqError
from tiny_sources import tiny_causal_lm

ARCHS = ["llama", "llama-mha", "mistral", "qwen2", "qwen3", "gemma3"]


@pytest.mark.parametrize("quant, qtype", [("q4_0", GGMLQuantizationType.Q4_0), ("q4_1", GGMLQuantizationType.Q4_1)])
def test_fake_quantize_is_llama_cpp_block_format(quant: str, qtype: GGMLQuantizationType) -> None:
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 128)
    w[3, :32] = 0  # an all-zero block
    expected = quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)
    np.testing.assert_array_equal(awq.fake_quantize(w, quant).numpy(), expected)


def test_fake_quantize_rejects_rows_not_in_blocks() -> None:
    with pytest.raises(CarvqError, match="not a multiple of 32"):
        awq.fake_quantize(torch.zeros(2, 48), "q4_0")


def calibration_ids(vocab_size: int, n: int = 640) -> torch.Tensor:
    return torch.randint(0, vocab_size, (n,), generator=torch.Generator().manual_seed(1))


def outlier_channels(model) -> None:
    """Make a few input channels of every normed input large, as trained LLMs have."""
    with torch.no_grad():
        for layer in awq.decoder_layers(model):
            for g in awq.layer_groups(model):
                prev = layer.get_submodule(g.prev)
                if not isinstance(prev, torch.nn.Linear):
                    prev.weight[:4] += 20.0


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_keeps_logits(arch: str) -> None:
    model = tiny_causal_lm(arch)
    outlier_channels(model)
    ids = calibration_ids(model.config.vocab_size)
    config = awq.AwqConfig(seq_len=64, max_windows=8, search_tokens=256, clip=False)
    probe = ids[:48][None]
    with torch.no_grad():
        before = model(probe).logits
        weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    scales = awq.search(model, ids, config, progress=False).scales  # folds the scales into model
    with_o = arch == "llama-mha"  # v -> o is foldable only when v is as wide as o's input
    assert len(scales) == model.config.num_hidden_layers * (4 if with_o else 3)
    assert any(g.alpha > 0 for g in scales)
    with torch.no_grad():
        after = model(probe).logits
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, weights_before[k])]
    assert any("norm" in k for k in changed) and any("proj" in k for k in changed)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_scales_cut_simulated_error_on_outlier_channels() -> None:
    model = tiny_causal_lm("llama")
    outlier_channels(model)
    scales = awq.search(model, calibration_ids(model.config.vocab_size),
                        awq.AwqConfig(seq_len=64, max_windows=8, clip=False), progress=False).scales
    total = awq.summary(awq.AwqResult(scales, []))
    assert total["error_ratio"] < 0.8
    assert all(g.awq_error <= g.rtn_error for g in scales)


def test_search_folds_scales_and_finds_clipping_ranges() -> None:
    model = tiny_causal_lm("llama")
    outlier_channels(model)
    unscaled = {k: v.clone() for k, v in model.state_dict().items()}
    probe = calibration_ids(model.config.vocab_size)[:48][None]
    with torch.no_grad():
        before = model(probe).logits
    result = awq.search(model, calibration_ids(model.config.vocab_size), awq.AwqConfig(seq_len=64, max_windows=8),
                        progress=False)
    with torch.no_grad():
        torch.testing.assert_close(model(probe).logits, before, rtol=1e-4, atol=1e-4)  # scales only so far
    # every linear but q/k: o, gate, up, down per layer (o reads v's heads, so it is clipped unscaled)
    assert sorted({c.linear for c in result.clips}) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                                                        "self_attn.o_proj", "self_attn.v_proj"]
    assert all(c.clip_error <= c.rtn_error for c in result.clips)
    assert awq.summary(result)["clip_error_ratio"] < 1.0
    scaled = {k: v.clone() for k, v in model.state_dict().items()}
    awq.clip_model(model, result.clips)
    for name, w in model.state_dict().items():
        if "q_proj" in name or "k_proj" in name or "norm" in name:
            assert torch.equal(w, scaled[name]), name
    assert not torch.equal(model.state_dict()["model.layers.0.mlp.down_proj.weight"],
                           scaled["model.layers.0.mlp.down_proj.weight"])
    assert not torch.equal(scaled["model.layers.0.input_layernorm.weight"],
                           unscaled["model.layers.0.input_layernorm.weight"])


def test_clipping_never_widens_a_block() -> None:
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    x = torch.randn(100, 64, generator=torch.Generator().manual_seed(3))
    max_val, rtn, best = awq.search_clip(x, w, "q4_0", n_grid=20, max_shrink=0.5)
    block_max = w.reshape(8, 2, 32).abs().amax(-1)
    assert (max_val <= block_max).all() and (max_val >= 0.5 * block_max - 1e-6).all()
    assert best <= rtn
    assert (awq.clipped(w, max_val).reshape(8, 2, 32).abs().amax(-1) <= max_val + 1e-7).all()


def test_unsupported_architecture_and_type() -> None:
    model = tiny_causal_lm("llama")
    model.config.model_type = "gpt2"
    with pytest.raises(CarvqError, match="does not know architecture 'gpt2'"):
        awq.search(model, calibration_ids(256), progress=False)
    with pytest.raises(CarvqError, match="4-bit llama.cpp types"):
        awq.quant_proxy("Q8_0")
    assert awq.quant_proxy("q4_k_m") == "q4_1"


def test_too_little_calibration_text() -> None:
    with pytest.raises(CarvqError, match="fewer than 2 tokens"):
        awq.calibration_windows(torch.tensor([5]), awq.AwqConfig())
    with pytest.raises(CarvqError, match="at least one calibration window"):
        awq.calibration_windows(torch.arange(100), awq.AwqConfig(max_windows=0))
