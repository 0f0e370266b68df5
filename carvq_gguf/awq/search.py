"""AWQ-style activation-aware weight scaling (Lin et al., 2023) for llama.cpp 4-bit types, on the
CPU in PyTorch.

Within each decoder layer, the linears that read one input (q/k/v; gate/up; down; o when it is
as wide as v) get their input channels multiplied by a scale s, and the op that produced the
input (an RMSNorm weight, or the rows of the linear before) is divided by s, so the float model
computes the same function. s = mean|x|^alpha, normalised, with alpha picked from a grid to
minimise the output error of the linears after llama.cpp's block quantization (simulated here
bit for bit for Q4_0, and by its asymmetric cousin Q4_1 for Q4_1 and the Q4_K mixes). alpha = 0
(s = 1) is on the grid, so on the calibration tokens a group never does worse than rounding to
nearest. Then, as in the AWQ reference code, each block of 32 weights of the scaled linears
(q and k excepted) gets a clipping range, a fraction of its max |w| down to one half, picked to
minimise the block's quantized output error; unlike the scales, clipping changes the float model.

`search` runs both; `fold_into_model` / `clip_model` apply them to the torch model, and
`convert.awq_fold` applies the same to a GGUF.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..errors import CarvqError

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
    clip: bool = True             # also search a clipping range per block (not for q/k)
    clip_tokens: int = 512        # tokens used by the clipping search
    max_shrink: float = 0.5       # clipping ranges tried: block max * (1 - i / n_grid) down to this


def module_path(layer: int, name: str) -> str:
    """HF path of a module inside decoder layer `layer`, e.g. model.layers.3.mlp.up_proj."""
    return f"model.layers.{layer}.{name}"


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
        """HF path of a module of this group's layer, e.g. model.layers.3.mlp.up_proj."""
        return module_path(self.layer, name)


@dataclass
class LinearClip:
    """The clipping range found for one linear (after scaling): |w| <= max_val per block of 32."""

    layer: int
    linear: str
    max_val: torch.Tensor         # [out_features, in_features / 32]
    rtn_error: float              # summed per-block output error without clipping
    clip_error: float             # the same with max_val


@dataclass
class AwqResult:
    """Everything the search found: scales (function-preserving) and clipping ranges (not)."""

    scales: list[GroupScale]
    clips: list[LinearClip]


# clipping the query and key projections hurts attention (as in the AWQ reference code)
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


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


def search_clip(x: torch.Tensor, weight: torch.Tensor, quant: str, n_grid: int,
                max_shrink: float) -> tuple[torch.Tensor, float, float]:
    """Per block of 32 weights of weight [out, in], the clipping range (a fraction of the block's
    max |w|) that minimises that block's contribution to the quantized output error on inputs
    x [N, in]. Returns (max_val [out, in/32], error without clipping, error with it)."""
    rows, cols = weight.shape
    blocks = weight.reshape(rows, cols // QK, QK)
    xb = x.reshape(x.shape[0], cols // QK, QK).permute(1, 0, 2)          # [blocks, N, 32]
    block_max = blocks.abs().amax(-1)                                      # [out, blocks]
    best_err = torch.full_like(block_max, math.inf)
    best_max = block_max.clone()
    unclipped = None
    for i in range(int(max_shrink * n_grid) + 1):
        max_val = block_max * (1 - i / n_grid)
        clipped = torch.maximum(torch.minimum(blocks, max_val[..., None]), -max_val[..., None])
        delta = fake_quantize(clipped.reshape(rows, cols), quant).reshape(rows, cols // QK, QK) - blocks
        err = torch.bmm(xb, delta.permute(1, 2, 0)).pow(2).mean(1).T    # [out, blocks]
        if unclipped is None:
            unclipped = err
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val, best_max)
    return best_max, float(unclipped.sum()), float(best_err.sum())


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
    """Input statistics of the first linear of every group, keyed by module path, from one
    forward pass of the decoder over the calibration windows."""
    layers = decoder_layers(model)
    groups = layer_groups(model)
    stride = max(1, windows.numel() // config.search_tokens)
    stats: dict[str, _InputStats] = {}
    handles = []
    for i, layer in enumerate(layers):
        for g in groups:
            path = module_path(i, g.linears[0])
            stats[path] = _InputStats(stride)
            handles.append(layer.get_submodule(g.linears[0]).register_forward_pre_hook(stats[path]))
    try:
        for window in tqdm(windows, desc="AWQ calibration", unit="window", disable=not progress):
            model.model(input_ids=window[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def _scales_from_stats(model, stats: dict[str, _InputStats], config: AwqConfig,
                       progress: bool) -> list[GroupScale]:
    """The scale of every usable group, from the recorded inputs."""
    groups = layer_groups(model)
    layers = decoder_layers(model)
    found = []
    total = sum(len(usable_groups(layer, groups)) for layer in layers)
    with tqdm(total=total, desc="AWQ scale search", unit="group", disable=not progress) as bar:
        for i, layer in enumerate(layers):
            for g in usable_groups(layer, groups):
                st = stats[module_path(i, g.linears[0])]
                weight = torch.cat([layer.get_submodule(name).weight.detach().float() for name in g.linears])
                scale, alpha, rtn, best = search_scale(st.sample(), st.mean(), weight, config.quant, config.n_grid)
                found.append(GroupScale(i, g, scale, alpha, rtn, best))
                bar.update(1)
    return found


def _clips_from_stats(model, stats: dict[str, _InputStats], scales: list[GroupScale], config: AwqConfig,
                      progress: bool) -> list[LinearClip]:
    """Clipping ranges of every linear but q/k of the model whose scales are already folded in;
    the inputs recorded before folding are divided by their group's scale."""
    scale_of = {(g.layer, g.group.linears[0]): g.scale for g in scales}
    layers = decoder_layers(model)
    todo = [(i, g) for i in range(len(layers)) for g in layer_groups(model)]
    found = []
    for i, g in tqdm(todo, desc="AWQ clip search", unit="group", disable=not progress):
        x = stats[module_path(i, g.linears[0])].sample()
        x = x[:: max(1, x.shape[0] // config.clip_tokens)]
        s = scale_of.get((i, g.linears[0]))
        if s is not None:
            x = x / s
        for name in g.linears:
            if name in NO_CLIP:
                continue
            weight = layers[i].get_submodule(name).weight.detach().float()
            max_val, rtn, best = search_clip(x, weight, config.quant, config.n_grid, config.max_shrink)
            found.append(LinearClip(i, name, max_val, rtn, best))
    return found


def search(model, token_ids: torch.Tensor, config: AwqConfig | None = None, progress: bool = True) -> AwqResult:
    """The whole AWQ search on the calibration token ids: scales, folded into model (which
    keeps its function), then, with config.clip, clipping ranges of the scaled weights (model is
    left unclipped; clip_model applies them)."""
    config = config or AwqConfig()
    windows = calibration_windows(token_ids, config)
    print(f"[awq] {windows.shape[0]} calibration windows of {windows.shape[1]} tokens, "
          f"simulating {config.quant.upper()}", file=sys.stderr)
    stats = collect_inputs(model, windows, config, progress)
    scales = _scales_from_stats(model, stats, config, progress)
    fold_into_model(model, scales)
    clips = _clips_from_stats(model, stats, scales, config, progress) if config.clip else []
    return AwqResult(scales, clips)


def clipped(weight: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """weight [out, in] with each block of 32 clamped to +-max_val [out, in/32]."""
    rows, cols = weight.shape
    blocks = weight.reshape(rows, cols // QK, QK)
    bound = max_val.to(weight.dtype)[..., None]
    return torch.maximum(torch.minimum(blocks, bound), -bound).reshape(rows, cols)


@torch.no_grad()
def clip_model(model, clips: list[LinearClip]) -> None:
    """Clamp the model's weights to the clipping ranges, in place."""
    layers = decoder_layers(model)
    for c in clips:
        lin = layers[c.layer].get_submodule(c.linear)
        lin.weight.copy_(clipped(lin.weight, c.max_val))


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


def summary(result: AwqResult) -> dict:
    """Totals: summed output error with rounding to nearest and with the scales; the same per
    block without and with the clipping ranges."""
    rtn = sum(g.rtn_error for g in result.scales)
    awq = sum(g.awq_error for g in result.scales)
    clip_rtn = sum(c.rtn_error for c in result.clips)
    clip_best = sum(c.clip_error for c in result.clips)
    return {"groups": len(result.scales), "rtn_error": rtn, "awq_error": awq,
            "error_ratio": awq / rtn if rtn else 1.0,
            "unscaled_groups": sum(1 for g in result.scales if g.alpha == 0.0),
            "clipped_linears": len(result.clips),
            "clip_error_ratio": clip_best / clip_rtn if clip_rtn else 1.0}
