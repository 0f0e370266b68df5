"""Scalar round-to-nearest baselines (INT4 / INT3 / INT2) on the same matrix, counted the same way.

Each row is cut into groups of 64 consecutive values; a group stores b-bit unsigned codes q,
an F16 scale and an F16 minimum, and decodes as q * scale + minimum (asymmetric, i.e. scale
and zero point). Stored bits: b per value + 32 per group, so INT2 is 2.5 bpw at group 64.
"""

from __future__ import annotations

import torch

from ..errors import CarvqError


def rtn_quantize(matrix: torch.Tensor, bits: int, group_size: int = 64) -> torch.Tensor:
    """Quantize and dequantize matrix [V, n] with b-bit round-to-nearest per group; float32 [V, n]."""
    if matrix.dim() != 2:
        raise CarvqError(f"expected a matrix [V, n], got shape {tuple(matrix.shape)}")
    V, n = matrix.shape
    if not 1 <= bits <= 8:
        raise CarvqError(f"round-to-nearest bits must be 1..8, got {bits}")
    if group_size < 1 or n % group_size:
        raise CarvqError(f"row width {n} is not divisible by the group size {group_size}")
    groups = matrix.to(torch.float32).reshape(V, n // group_size, group_size)
    low = groups.amin(dim=-1, keepdim=True).to(torch.float16).to(torch.float32)
    high = groups.amax(dim=-1, keepdim=True)
    levels = (1 << bits) - 1
    scale = ((high - low) / levels).to(torch.float16).to(torch.float32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((groups - low) / safe).clamp_(0, levels)
    return (q * scale + low).reshape(V, n)


def rtn_bits(vocab_size: int, embedding_dim: int, bits: int, group_size: int = 64) -> int:
    """Stored bits of the round-to-nearest matrix: codes plus an F16 scale and minimum per group."""
    values = vocab_size * embedding_dim
    return values * bits + (values // group_size) * 32


def rtn_bpw(bits: int, group_size: int = 64) -> float:
    """Bits per weight of round-to-nearest with this group size."""
    return bits + 32 / group_size
