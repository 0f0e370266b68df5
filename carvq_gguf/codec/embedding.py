"""CarvqEmbedding: the PyTorch reference of the lookup-and-correct op.

The arithmetic mirrors docs/FORMAT.md "Decode", i.e. what llama.cpp computes: codebook values
(F16) summed over levels in F32 (trellis codes: table value times column scale plus column
mean, in F32, and for a predicted row its multiple of its root's decode without column means
added, link by link along the chain of roots); sigma0 F16 read as F32; every linear layer
rounds its F32 input to F16, multiplies by the F16 weight with F32 accumulation and adds the
F32 bias; LayerNorm in F32 (normalize, then * weight + bias); ReLU; then the F16 correction rows.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CarvqError
from . import trellis
from .rvq import decode
from .state import CarvqState, RowPrediction, TrellisCodes


class CarvqEmbedding(nn.Module):
    """Token embedding decoded from a CARVQ codec state: forward(ids) -> float32 [..., n].

    Computes on the CPU, like the llama.cpp op (token_embd stays on the CPU there); the
    result is moved to the device of the token ids.
    """

    def __init__(self, state: CarvqState):
        super().__init__()
        state.check()
        self.vocab_size = state.vocab_size
        self.embedding_dim = state.embedding_dim
        self.rvq_config = state.rvq
        self.adaptor_config = state.adaptor
        self.preset = state.preset
        self.register_buffer("codes", None if state.codes is None else state.codes.clone())
        self.register_buffer("codebooks", None if state.codebooks is None else state.codebooks.clone())
        self.trellis_config = None if state.trellis is None else state.trellis.config
        for part in ("streams", "tables", "columns"):
            self.register_buffer(f"trellis_{part}",
                                 None if state.trellis is None else getattr(state.trellis, part).clone())
        prediction = None if state.trellis is None else state.trellis.prediction
        self.prediction_scale_step = None if prediction is None else prediction.scale_step
        for part in ("rows", "roots", "scale_codes", "columns"):
            self.register_buffer(f"prediction_{part}", None if prediction is None else getattr(prediction, part).clone())
        self.register_buffer("sigma0", None if state.sigma0 is None else state.sigma0.clone())
        self.n_linears, self.n_norms = len(state.linears), len(state.norms)
        for i, (w, b) in enumerate(state.linears):
            self.register_buffer(f"linear{i}_weight", w.clone())
            self.register_buffer(f"linear{i}_bias", b.clone())
        for i, (w, b) in enumerate(state.norms):
            self.register_buffer(f"norm{i}_weight", w.clone())
            self.register_buffer(f"norm{i}_bias", b.clone())
        self.register_buffer("correction_ids", state.correction_ids.clone())
        rows = state.correction_rows
        self.register_buffer("correction_rows", None if rows is None else rows.clone())
        slot = torch.full((state.vocab_size,), -1, dtype=torch.int64)
        slot[state.correction_ids.long()] = torch.arange(state.n_correction_rows)
        self.register_buffer("correction_slot", slot)

    def _numbered(self, layer: str, count: int, part: str) -> list[torch.Tensor]:
        """The buffers {layer}0_{part}, {layer}1_{part}, ... registered in __init__."""
        return [getattr(self, f"{layer}{i}_{part}") for i in range(count)]

    @property
    def weights(self) -> list[torch.Tensor]:
        """F16 weights [out, in] of the adaptor's linear layers, first to last."""
        return self._numbered("linear", self.n_linears, "weight")

    @property
    def biases(self) -> list[torch.Tensor]:
        """F32 biases of the adaptor's linear layers."""
        return self._numbered("linear", self.n_linears, "bias")

    @property
    def norm_weights(self) -> list[torch.Tensor]:
        """F32 LayerNorm weights, one per hidden layer."""
        return self._numbered("norm", self.n_norms, "weight")

    @property
    def norm_biases(self) -> list[torch.Tensor]:
        """F32 LayerNorm biases, one per hidden layer."""
        return self._numbered("norm", self.n_norms, "bias")

    def to_state(self) -> CarvqState:
        """The codec state this module decodes (tensors copied)."""
        state = CarvqState(
            vocab_size=self.vocab_size, embedding_dim=self.embedding_dim, rvq=self.rvq_config,
            adaptor=self.adaptor_config, codes=None if self.codes is None else self.codes.clone(),
            codebooks=None if self.codebooks is None else self.codebooks.clone(),
            trellis=copy.deepcopy(self._trellis_codes()),
            sigma0=None if self.sigma0 is None else self.sigma0.clone(),
            linears=[(w.clone(), b.clone()) for w, b in zip(self.weights, self.biases)],
            norms=[(w.clone(), b.clone()) for w, b in zip(self.norm_weights, self.norm_biases)],
            correction_ids=self.correction_ids.clone(),
            correction_rows=None if self.correction_rows is None else self.correction_rows.clone(),
            preset=self.preset)
        state.check()
        return state

    def _trellis_codes(self) -> TrellisCodes | None:
        """The trellis codes held in this module's buffers (not copies); None for RVQ codes."""
        if self.trellis_config is None:
            return None
        prediction = None
        if self.prediction_scale_step is not None:
            prediction = RowPrediction(self.prediction_rows, self.prediction_roots, self.prediction_scale_codes,
                                       self.prediction_scale_step, self.prediction_columns)
        return TrellisCodes(self.trellis_config, self.trellis_streams, self.trellis_tables, self.trellis_columns,
                            prediction)

    def codes_part(self, ids: torch.Tensor) -> torch.Tensor:
        """What the codes decode to (RVQ or trellis) for flat ids [T] -> float32 [T, n]."""
        if self.trellis_config is not None:
            return trellis.decode(self._trellis_codes(), ids)
        return decode(self.codes, self.codebooks, self.rvq_config, ids)

    def adaptor_part(self, ids: torch.Tensor) -> torch.Tensor:
        """Adaptor output for flat ids [T] -> float32 [T, n] (zeros without adaptor)."""
        if self.sigma0 is None:
            return torch.zeros(ids.shape[0], self.embedding_dim)
        x = self.sigma0[ids].to(torch.float32)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x.to(torch.float16).to(torch.float32) @ w.to(torch.float32).t() + b
            if i < last:
                x = F.layer_norm(x, (x.shape[-1],), self.norm_weights[i], self.norm_biases[i],
                                 eps=self.adaptor_config.norm_eps)
                x = torch.relu(x)
        return x

    def correction_part(self, ids: torch.Tensor) -> torch.Tensor:
        """Correction rows for flat ids [T] -> float32 [T, n] (zeros where a token has none)."""
        out = torch.zeros(ids.shape[0], self.embedding_dim)
        if self.correction_rows is None or self.correction_rows.numel() == 0:
            return out
        slot = self.correction_slot[ids]
        hit = slot >= 0
        out[hit] = self.correction_rows[slot[hit]].to(torch.float32)
        return out

    @torch.no_grad()
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings float32 [..., n] of integer token ids [...]."""
        if token_ids.dtype.is_floating_point:
            raise CarvqError(f"token ids must be integers, got {token_ids.dtype}")
        flat = token_ids.reshape(-1).long().cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.vocab_size):
            raise CarvqError(f"token id out of range [0, {self.vocab_size})")
        out = self.codes_part(flat) + self.adaptor_part(flat) + self.correction_part(flat)
        return out.reshape(*token_ids.shape, self.embedding_dim).to(token_ids.device)

    @torch.no_grad()
    def decode_all(self, chunk: int = 8192) -> torch.Tensor:
        """The whole decoded matrix, float32 [V, n]."""
        parts = [self.forward(torch.arange(start, min(start + chunk, self.vocab_size)))
                 for start in range(0, self.vocab_size, chunk)]
        return torch.cat(parts)
