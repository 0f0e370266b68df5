"""AWQ-style activation-aware weight scaling (Lin et al., 2023) for llama.cpp 4-bit types, on the
CPU in PyTorch.

Within each decoder layer, the linears that read one input (q/k/v; gate/up; down; o when it is
as wide as v) get their input channels multiplied by a scale s, and the op that produced the
input (an RMSNorm weight, or the rows of the linear before) is divided by s, so the float model
computes the same function. s = mean|x|^alpha, normalised, with alpha picked from a grid to
minimise the output error of the linears after llama.cpp's block quantization (simulated here
bit for bit for Q4_0, and by its asymmetric cousin Q4_1 for Q4_1 and the Q4_K mixes). alpha = 0
(s = 1) is on the grid, so on the calibration tokens a group never does worse than rounding to
nearest.

The search reads the model only; `fold_into_model` applies the scales to the torch model (for
checking the fold) and `convert.awq_fold` applies the same scales to a GGUF.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .state import CarvqError

QK = 32  # llama.cpp's Q4_0 / Q4_1 block length along a row


@dataclass(frozen=True)
class ScaleGroup:
    """Linears (paths inside a decoder layer) that read the output of one op, `prev`."""

    prev: str
    linears: tuple[str, ...]


_ATTN_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_ATTN_O = ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",))
_MLP_DOWN = ScaleGroup("mlp.up_proj", ("mlp.down_proj",))
_LLAMA_GROUPS = (ScaleGroup("input_layernorm", _ATTN_QKV), _ATTN_O,
                 ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")), _MLP_DOWN)
# Gemma 3 normalises the attention output (post_attention_layernorm) before the residual add; the
# MLP reads pre_feedforward_layernorm.
_GEMMA_GROUPS = (ScaleGroup("input_layernorm", _ATTN_QKV), _ATTN_O,
                 ScaleGroup("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")), _MLP_DOWN)

# transformers model_type -> the scale groups of one decoder layer
ARCH_GROUPS: dict[str, tuple[ScaleGroup, ...]] = {
    "llama": _LLAMA_GROUPS, "mistral": _LLAMA_GROUPS, "qwen2": _LLAMA_GROUPS, "qwen3": _LLAMA_GROUPS,
    "gemma3": _GEMMA_GROUPS, "gemma3_text": _GEMMA_GROUPS,
}
# Gemma's RMSNorm multiplies by (1 + weight); the others by weight.
NORM_OFFSET = {"gemma3": 1.0, "gemma3_text": 1.0}

# llama.cpp quantization type -> the block quantizer the search simulates
QUANT_PROXY = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q4_K_S": "q4_1", "Q4_K_M": "q4_1"}


@dataclass
class AwqConfig:
    """How the scales are searched."""

    quant: str = "q4_0"           # "q4_0" or "q4_1": the block format simulated
    n_grid: int = 20              # alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid}
    seq_len: int = 512            # calibration window length
    max_windows: int = 16         # calibration windows (all tokens feed mean|x|)
    search_tokens: int = 4096     # tokens kept per group for the error of each candidate


@dataclass
class GroupScale:
    """The scale found for one group of one layer, and what it did on the calibration tokens."""

    layer: int
    group: ScaleGroup
    scale: torch.Tensor           # [in_features] float32; the linears' inputs are divided by it
    alpha: float
    rtn_error: float              # mean squared output error, round to nearest (s = 1)
    awq_error: float              # the same with the chosen scale

    def module_path(self, name: str) -> str:
        """HF parameter prefix of a module of this group's layer, e.g. model.layers.3.mlp.up_proj."""
        return f"model.layers.{self.layer}.{name}"


def quant_proxy(type_name: str) -> str:
    """The block quantizer the search simulates for a llama.cpp type; CarvqError for other types."""
    proxy = QUANT_PROXY.get(type_name.upper())
    if proxy is None:
        raise CarvqError(f"--awq searches scales for the 4-bit llama.cpp types {', '.join(QUANT_PROXY)}; "
                         f"got {type_name!r}")
    return proxy


def fake_quantize(w: torch.Tensor, quant: str) -> torch.Tensor:
    """w [rows, cols] quantized to llama.cpp's Q4_0 or Q4_1 blocks of 32 along each row and
    dequantized, as ggml's reference quantizer does (block scale stored as F16)."""
    rows, cols = w.shape
    if cols % QK:
        raise CarvqError(f"row length {cols} is not a multiple of {QK}, which {quant.upper()} needs")
    b = w.reshape(rows, cols // QK, QK)
    if quant == "q4_0":
        extreme = b.gather(-1, b.abs().argmax(-1, keepdim=True))   # signed value of largest magnitude
        d = extreme / -8
        inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
        q = torch.clamp(torch.floor(b * inv + 8.5), max=15)
        out = (q - 8) * d.half().float()
    elif quant == "q4_1":
        lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
        q = torch.clamp(torch.floor((b - lo) * inv + 0.5), max=15)
        out = q * d.half().float() + lo.half().float()
    else:
        raise CarvqError(f"unknown block quantizer {quant!r} (q4_0 or q4_1)")
    return out.reshape(rows, cols)


def search_scale(x: torch.Tensor, x_abs_mean: torch.Tensor, weight: torch.Tensor, quant: str,
                 n_grid: int) -> tuple[torch.Tensor, float, float, float]:
    """The per-input-channel scale for weight [out, in] given sample inputs x [N, in] and the
    mean |x| over all calibration tokens. Returns (scale, alpha, rtn_error, best_error)."""
    reference = x @ weight.T
    best: tuple[float, float, torch.Tensor] | None = None
    rtn_error = math.nan
    for i in range(n_grid):
        alpha = i / n_grid
        s = x_abs_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        w_q = fake_quantize(weight * s, quant) / s
        error = float((x @ w_q.T - reference).pow(2).mean())
        if i == 0:
            rtn_error = error
        if best is None or error < best[0]:
            best = (error, alpha, s)
    assert best is not None
    return best[2], best[1], rtn_error, best[0]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of an HF causal LM (model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise CarvqError(f"{type(model).__name__} has no model.layers; AWQ supports decoder-only causal LMs")
    return layers


def layer_groups(model) -> tuple[ScaleGroup, ...]:
    """The scale groups of the model's architecture; CarvqError when it is not supported."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCH_GROUPS:
        raise CarvqError(f"AWQ does not know architecture {model_type!r}; supported: {', '.join(sorted(ARCH_GROUPS))}")
    return ARCH_GROUPS[model_type]


def usable_groups(layer: torch.nn.Module, groups: tuple[ScaleGroup, ...]) -> list[ScaleGroup]:
    """The groups whose scale can be folded: prev's output width equals the linears' input width
    (v -> o is skipped under grouped-query attention, where v is narrower than o's input)."""
    usable = []
    for g in groups:
        prev = layer.get_submodule(g.prev)
        width = prev.out_features if isinstance(prev, torch.nn.Linear) else prev.weight.shape[0]
        if all(layer.get_submodule(name).in_features == width for name in g.linears):
            usable.append(g)
    return usable


def calibration_windows(token_ids: torch.Tensor, config: AwqConfig) -> torch.Tensor:
    """Token ids [T] cut into at most config.max_windows windows [W, seq_len] (a short text gives
    one shorter window)."""
    if config.max_windows < 1 or config.seq_len < 2:
        raise CarvqError(f"AWQ needs at least one calibration window of 2 or more tokens "
                         f"(got {config.max_windows} windows of {config.seq_len})")
    ids = token_ids.flatten()
    if ids.numel() < 2:
        raise CarvqError("calibration text has fewer than 2 tokens")
    length = min(config.seq_len, ids.numel())
    count = min(config.max_windows, ids.numel() // length)
    return ids[: count * length].reshape(count, length)


class _InputStats:
    """Forward pre-hook state for one linear: running sum of |x| per channel over every token, and
    every stride-th token kept for the search."""

    def __init__(self, stride: int):
        self.stride = stride
        self.abs_sum: torch.Tensor | None = None
        self.count = 0
        self.samples: list[torch.Tensor] = []

    def __call__(self, module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.abs_sum = x.abs().sum(0) if self.abs_sum is None else self.abs_sum + x.abs().sum(0)
        self.count += x.shape[0]
        self.samples.append(x[:: self.stride].clone())

    def mean(self) -> torch.Tensor:
        return self.abs_sum / self.count

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples)


@torch.no_grad()
def collect_inputs(model, windows: torch.Tensor, config: AwqConfig, progress: bool) -> dict[str, _InputStats]:
    """Input statistics of the first linear of every usable group, keyed by module path, from one
    forward pass of the decoder over the calibration windows."""
    layers = decoder_layers(model)
    groups = layer_groups(model)
    stride = max(1, windows.numel() // config.search_tokens)
    stats: dict[str, _InputStats] = {}
    handles = []
    for i, layer in enumerate(layers):
        for g in usable_groups(layer, groups):
            path = f"model.layers.{i}.{g.linears[0]}"
            stats[path] = _InputStats(stride)
            handles.append(layer.get_submodule(g.linears[0]).register_forward_pre_hook(stats[path]))
    try:
        for window in tqdm(windows, desc="AWQ calibration", unit="window", disable=not progress):
            model.model(input_ids=window[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def search_scales(model, token_ids: torch.Tensor, config: AwqConfig | None = None,
                  progress: bool = True) -> list[GroupScale]:
    """Search the AWQ scale of every usable group of every decoder layer of model (an HF causal
    LM in float32, which is not modified) on the calibration token ids."""
    config = config or AwqConfig()
    windows = calibration_windows(token_ids, config)
    print(f"[awq] {windows.shape[0]} calibration windows of {windows.shape[1]} tokens, "
          f"simulating {config.quant.upper()}", file=sys.stderr)
    stats = collect_inputs(model, windows, config, progress)
    groups = layer_groups(model)
    layers = decoder_layers(model)
    found = []
    with tqdm(total=len(stats), desc="AWQ scale search", unit="group", disable=not progress) as bar:
        for i, layer in enumerate(layers):
            for g in usable_groups(layer, groups):
                st = stats[f"model.layers.{i}.{g.linears[0]}"]
                weight = torch.cat([layer.get_submodule(name).weight.detach().float() for name in g.linears])
                scale, alpha, rtn, best = search_scale(st.sample(), st.mean(), weight, config.quant, config.n_grid)
                found.append(GroupScale(i, g, scale, alpha, rtn, best))
                bar.update(1)
    return found


@torch.no_grad()
def fold_into_model(model, scales: list[GroupScale]) -> None:
    """Apply scales to model in place: each group's linears' input channels times s, the op
    before divided by s (the float model's function is unchanged up to rounding)."""
    offset = NORM_OFFSET.get(getattr(model.config, "model_type", None), 0.0)
    layers = decoder_layers(model)
    for gs in scales:
        layer = layers[gs.layer]
        s = gs.scale
        prev = layer.get_submodule(gs.group.prev)
        if isinstance(prev, torch.nn.Linear):
            prev.weight.div_(s[:, None].to(prev.weight.dtype))
            if prev.bias is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        else:
            w = prev.weight
            w.copy_(((offset + w.float()) / s - offset).to(w.dtype))
        for name in gs.group.linears:
            lin = layer.get_submodule(name)
            lin.weight.mul_(s[None, :].to(lin.weight.dtype))


def summary(scales: list[GroupScale]) -> dict:
    """Totals over all groups: summed output error with rounding to nearest and with AWQ."""
    rtn = sum(g.rtn_error for g in scales)
    awq = sum(g.awq_error for g in scales)
    return {"groups": len(scales), "rtn_error": rtn, "awq_error": awq,
            "error_ratio": awq / rtn if rtn else 1.0,
            "unscaled_groups": sum(1 for g in scales if g.alpha == 0.0)}
