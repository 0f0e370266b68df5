"""4-bit index packing: the byte layout the llama.cpp op reads.

Row t of the packed tensor holds L * S / 2 bytes: level 0's S indices, then level 1's, and
so on. Within a level, byte j holds sub-vector 2j in its low nibble and sub-vector 2j + 1 in
its high nibble. In GGUF this is an I8 tensor with ne = [L * S / 2, V].
"""

from __future__ import annotations

import torch

from ..errors import CarvqError


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes [V, L, S] (values < 16, S even) into uint8 [V, L * S / 2]."""
    if codes.dtype != torch.uint8 or codes.dim() != 3:
        raise CarvqError(f"codes must be uint8 [V, L, S], got {codes.dtype} {tuple(codes.shape)}")
    V, L, S = codes.shape
    if S % 2:
        raise CarvqError(f"cannot pack an odd number of sub-vectors per row (S={S})")
    if codes.numel() and int(codes.max()) > 15:
        raise CarvqError(f"code {int(codes.max())} does not fit in 4 bits")
    pairs = codes.reshape(V, L, S // 2, 2)
    packed = pairs[..., 0] | (pairs[..., 1] << 4)
    return packed.reshape(V, L * S // 2).contiguous()


def unpack_codes(packed: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of pack_codes: uint8 [V, L * S / 2] -> uint8 [V, L, S]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise CarvqError(f"packed codes must be uint8 [V, bytes], got {packed.dtype} {tuple(packed.shape)}")
    V, n_bytes = packed.shape
    if levels < 1 or n_bytes % levels:
        raise CarvqError(f"{n_bytes} bytes per row cannot hold {levels} levels")
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).reshape(V, levels, 2 * n_bytes // levels).contiguous()
