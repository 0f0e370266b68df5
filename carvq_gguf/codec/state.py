"""The CARVQ codec state: what a compressed embedding is, independent of how it was made.

This module is the contract between the trainer (rvq.py, adaptor.py), the GGUF writer and
reader (gguf/carvq_io.py), the PyTorch reference (embedding.py) and the llama.cpp op. Every tensor here
is held in the precision it is stored in (F16 codebooks, F16 adaptor matrices, F32 biases and
norms), so writing and reading back is bit-exact and the reference computes what llama.cpp
computes.

Shapes (V = vocab_size, n = embedding_dim, h = subvector_dim, S = n / h, L = levels,
K = 2**codebook_bits, G = number of codebook groups, see RvqConfig.n_groups):
    codes      uint8   [V, L, S]     index of the chosen centroid, 0 <= code < K
    codebooks  float16 [L, G, K, h]  centroids per level and group
    sigma0     float16 [V, m1]       the adaptor's per-token table (None without adaptor)
    linears    list of (weight float16 [out, in], bias float32 [out]), m1 -> ... -> n
    norms      list of (weight float32 [out], bias float32 [out]), one per hidden layer
    correction_ids   int32   [R]     sorted, unique token ids that carry a correction row
    correction_rows  float16 [R, n]  added to those tokens' RVQ + adaptor output

A trellis codec (docs/FORMAT.md "Trellis codes") holds a TrellisCodes in place of codes and
codebooks (T = n / d steps, B = TrellisConfig.stream_bytes(n), G tables of 2^L entries):
    streams    uint8   [V, B]        each row's bit stream, k bits per step
    tables     float16 [G, 2^L, d]   the trellis tables, one per run of consecutive steps
    columns    float16 [2, n]        per-column scale (row 0) and mean (row 1)
and, when some rows are predicted from a related row (docs/FORMAT.md "Predicted rows"), a
RowPrediction (P predicted rows):
    rows         int32   [P]     the predicted rows, sorted, unique
    roots        int32   [P]     each one's root (a chain of roots ends at a row not predicted)
    scale_codes  int8    [P]     the root's multiple, in steps of scale_step
    columns      float16 [2, n]  the leftovers' column scale and mean

embedding(t) = rvq_decode(t) (or trellis_decode(t)) + adaptor(t)
               + (correction_rows[j] if correction_ids[j] == t).
The correction rows spend extra bits on the few tokens that carry most of the text (frequent
tokens are the outliers that RVQ fits worst; docs/EXPERIMENTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import CarvqError

GROUP_LAYOUTS = ("column", "block")


@dataclass(frozen=True)
class RvqConfig:
    """Group residual vector quantization settings.

    group_layout:
      "column": one codebook per sub-vector column position s, shared by all rows
                (G = S; group of sub-vector (t, s) is s).
      "block":  one codebook per block of group_size consecutive sub-vectors in row-major
                order, as in the paper (G = ceil(V * S / g); group of (t, s) is (t*S + s) // g).
    """

    subvector_dim: int = 8
    codebook_bits: int = 4
    levels: int = 2
    group_layout: str = "column"
    group_size: int = 1024

    @property
    def codebook_size(self) -> int:
        """K, the number of centroids per codebook."""
        return 1 << self.codebook_bits

    def n_subvectors(self, embedding_dim: int) -> int:
        """S, the sub-vectors per row."""
        return embedding_dim // self.subvector_dim

    def n_groups(self, vocab_size: int, embedding_dim: int) -> int:
        """G, the number of codebooks per level."""
        n_sub = self.n_subvectors(embedding_dim)
        if self.group_layout == "column":
            return n_sub
        return math.ceil(vocab_size * n_sub / self.group_size)

    def group_index(self, vocab_size: int, embedding_dim: int) -> torch.Tensor:
        """Group id of every sub-vector, int64 [V, S]."""
        n_sub = self.n_subvectors(embedding_dim)
        if self.group_layout == "column":
            return torch.arange(n_sub).expand(vocab_size, n_sub)
        flat = torch.arange(vocab_size * n_sub).view(vocab_size, n_sub)
        return flat // self.group_size

    def validate(self, embedding_dim: int) -> None:
        """Raise CarvqError if these settings cannot encode rows of width embedding_dim."""
        if self.subvector_dim <= 0 or embedding_dim % self.subvector_dim != 0:
            raise CarvqError(
                f"embedding width n={embedding_dim} is not divisible by sub-vector dim h={self.subvector_dim}")
        if self.n_subvectors(embedding_dim) % 2 != 0:
            raise CarvqError(
                f"n/h = {self.n_subvectors(embedding_dim)} sub-vectors per row must be even "
                "(indices are packed two per byte)")
        if not 1 <= self.codebook_bits <= 4:
            raise CarvqError(f"codebook_bits must be 1..4 (K = 2..16), got {self.codebook_bits}")
        if self.levels < 1:
            raise CarvqError(f"levels must be >= 1, got {self.levels}")
        if self.group_layout not in GROUP_LAYOUTS:
            raise CarvqError(f"unknown group layout {self.group_layout!r}; expected one of {GROUP_LAYOUTS}")
        if self.group_layout == "block" and self.group_size < 1:
            raise CarvqError(f"group_size must be >= 1, got {self.group_size}")


@dataclass(frozen=True)
class TrellisConfig:
    """Bitshift trellis settings: state_bits L (a table has 2^L entries), step_bits k (bits a step
    adds to the stream), step_dim d (values a step decodes), groups G (tables, each serving a run
    of consecutive steps). k = 3, d = 2 spends 1.5 bits per value."""

    state_bits: int = 10
    step_bits: int = 3
    step_dim: int = 2
    groups: int = 8

    @property
    def table_size(self) -> int:
        """2^L, the entries of one table."""
        return 1 << self.state_bits

    def n_steps(self, embedding_dim: int) -> int:
        """T, the steps per row."""
        return embedding_dim // self.step_dim

    def stream_bytes(self, embedding_dim: int) -> int:
        """B, the bytes of one row's stream (T * k bits, rounded up)."""
        return (self.n_steps(embedding_dim) * self.step_bits + 7) // 8

    def group_index(self, embedding_dim: int) -> torch.Tensor:
        """The table of every step, int64 [T]: step t uses table t * G // T."""
        steps = self.n_steps(embedding_dim)
        return torch.arange(steps) * self.groups // steps

    def validate(self, embedding_dim: int) -> None:
        """Raise CarvqError if these settings cannot encode rows of width embedding_dim."""
        if not 2 <= self.state_bits <= 16:
            raise CarvqError(f"trellis state_bits must be 2..16, got {self.state_bits}")
        if not 1 <= self.step_bits <= 8 or self.step_bits >= self.state_bits:
            raise CarvqError(f"trellis step_bits must be 1..8 and below state_bits={self.state_bits}, "
                             f"got {self.step_bits}")
        if self.step_dim < 1 or embedding_dim % self.step_dim:
            raise CarvqError(f"embedding width n={embedding_dim} is not divisible by the trellis step of "
                             f"{self.step_dim} values")
        if not 1 <= self.groups <= self.n_steps(embedding_dim):
            raise CarvqError(f"trellis groups must be 1..{self.n_steps(embedding_dim)} (the steps per row), "
                             f"got {self.groups}")


MAX_PREDICTED_VOCAB = 1 << 24  # a root id takes the low 24 bits of a 32-bit word in the file
MAX_PREDICTION_CHAIN = 4  # links from a predicted row to the plain row its chain ends at


def chain_lengths(rows: torch.Tensor, roots: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int64 [P]: for each predicted row rows[j] (unique ids < vocab_size), the links from it along
    its roots roots[j] (< vocab_size) to the first row that is not predicted; MAX_PREDICTION_CHAIN + 1
    for a chain longer than that or a cycle."""
    slot = torch.full((vocab_size,), -1, dtype=torch.int64)
    slot[rows.long()] = torch.arange(rows.numel())
    roots = roots.long()
    length = torch.ones(rows.numel(), dtype=torch.int64)
    up = slot[roots]
    for _ in range(MAX_PREDICTION_CHAIN):
        length += (up >= 0).long()
        up = torch.where(up >= 0, slot[roots[up.clamp_min(0)]], up)
    return length


@dataclass
class RowPrediction:
    """Rows coded from a related row (codec/prediction.py): row rows[j] decodes as
    scale_step * scale_codes[j] times the decode of row roots[j] without column means, plus its
    own stream decoded with these columns (the leftovers' scale and mean). A root may be
    predicted itself (docs/FORMAT.md "Predicted rows")."""

    rows: torch.Tensor
    roots: torch.Tensor
    scale_codes: torch.Tensor
    scale_step: float
    columns: torch.Tensor

    @property
    def count(self) -> int:
        """P, the predicted rows."""
        return int(self.rows.numel())

    def check(self, vocab_size: int, embedding_dim: int) -> None:
        """Raise CarvqError unless the rows are sorted, unique and in range, every root is in range
        and its chain reaches a plain row within MAX_PREDICTION_CHAIN links, and the tensors have
        their stored shapes and dtypes."""
        P = self.count
        _expect(self.rows, "predicted rows", (P,), torch.int32)
        _expect(self.roots, "prediction roots", (P,), torch.int32)
        _expect(self.scale_codes, "prediction scale codes", (P,), torch.int8)
        _expect(self.columns, "prediction columns", (2, embedding_dim), torch.float16)
        if not 1 <= P < vocab_size:
            raise CarvqError(f"{P} predicted rows for a vocabulary of {vocab_size} (must be 1..V-1)")
        if vocab_size > MAX_PREDICTED_VOCAB:
            raise CarvqError(f"rows of a vocabulary over {MAX_PREDICTED_VOCAB} cannot be predicted")
        if not (math.isfinite(self.scale_step) and self.scale_step > 0):
            raise CarvqError(f"the prediction scale step must be finite and > 0, got {self.scale_step}")
        rows, roots = self.rows.long(), self.roots.long()
        if int(rows.min()) < 0 or int(rows.max()) >= vocab_size or bool((rows[1:] <= rows[:-1]).any()):
            raise CarvqError(f"predicted rows must be sorted, unique and in [0, {vocab_size})")
        if int(roots.min()) < 0 or int(roots.max()) >= vocab_size:
            raise CarvqError(f"prediction roots must lie in [0, {vocab_size})")
        too_long = (chain_lengths(rows, roots, vocab_size) > MAX_PREDICTION_CHAIN).nonzero()
        if too_long.numel():
            raise CarvqError(f"the roots of predicted row {int(rows[too_long[0, 0]])} make a chain of more than "
                             f"{MAX_PREDICTION_CHAIN} links, or a cycle")


@dataclass
class TrellisCodes:
    """A matrix coded by a bitshift trellis (codec/trellis.py): the streams, tables and columns,
    and the predicted rows if any."""

    config: TrellisConfig
    streams: torch.Tensor
    tables: torch.Tensor
    columns: torch.Tensor
    prediction: RowPrediction | None = None

    def check(self, vocab_size: int, embedding_dim: int) -> None:
        """Raise CarvqError if a tensor disagrees with the configuration."""
        c = self.config
        c.validate(embedding_dim)
        _expect(self.streams, "trellis streams", (vocab_size, c.stream_bytes(embedding_dim)), torch.uint8)
        _expect(self.tables, "trellis tables", (c.groups, c.table_size, c.step_dim), torch.float16)
        _expect(self.columns, "trellis columns", (2, embedding_dim), torch.float16)
        if self.prediction is not None:
            self.prediction.check(vocab_size, embedding_dim)


@dataclass(frozen=True)
class AdaptorConfig:
    """Corrective Adaptor settings: sigma0 table of width table_dim, then an MLP
    table_dim -> hidden_dims... -> n. Each hidden layer is Linear -> LayerNorm -> ReLU; the
    last layer is Linear only. table_dim == 0 means no adaptor."""

    table_dim: int = 16
    hidden_dims: tuple[int, ...] = (384, 512)
    norm_eps: float = 1e-5

    @property
    def enabled(self) -> bool:
        return self.table_dim > 0

    def layer_dims(self, embedding_dim: int) -> list[tuple[int, int]]:
        """(in, out) of every linear layer, first to last."""
        dims = [self.table_dim, *self.hidden_dims, embedding_dim]
        return list(zip(dims[:-1], dims[1:]))


@dataclass
class CarvqState:
    """A compressed token-embedding matrix: RVQ codes and codebooks (or trellis codes, with
    codes and codebooks None) plus the adaptor and the correction rows."""

    vocab_size: int
    embedding_dim: int
    rvq: RvqConfig
    adaptor: AdaptorConfig
    codes: torch.Tensor | None
    codebooks: torch.Tensor | None
    sigma0: torch.Tensor | None = None
    linears: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    norms: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    correction_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int32))
    correction_rows: torch.Tensor | None = None
    preset: str = ""
    trellis: TrellisCodes | None = None

    @property
    def quantizer(self) -> str:
        """"rvq" or "trellis": what codes the rows (docs/FORMAT.md carvq.quantizer)."""
        return "rvq" if self.trellis is None else "trellis"

    @property
    def n_correction_rows(self) -> int:
        """R, the number of tokens with a correction row."""
        return int(self.correction_ids.numel())

    def check(self) -> None:
        """Raise CarvqError if any tensor disagrees with the configuration."""
        V, n = self.vocab_size, self.embedding_dim
        if self.trellis is not None:
            if self.codes is not None or self.codebooks is not None:
                raise CarvqError("a trellis codec holds no RVQ codes or codebooks")
            self.trellis.check(V, n)
        else:
            self._check_rvq()
        self._check_corrections()
        if not self.adaptor.enabled:
            if self.sigma0 is not None or self.linears or self.norms:
                raise CarvqError("adaptor tensors present but adaptor table_dim is 0")
            return
        if self.sigma0 is None:
            raise CarvqError("adaptor enabled but sigma0 table missing")
        _expect(self.sigma0, "sigma0", (V, self.adaptor.table_dim), torch.float16)
        layer_dims = self.adaptor.layer_dims(n)
        if len(self.linears) != len(layer_dims) or len(self.norms) != len(layer_dims) - 1:
            raise CarvqError(
                f"adaptor has {len(self.linears)} linears and {len(self.norms)} norms, "
                f"expected {len(layer_dims)} and {len(layer_dims) - 1}")
        for i, ((w, b), (d_in, d_out)) in enumerate(zip(self.linears, layer_dims)):
            _expect(w, f"linear {i} weight", (d_out, d_in), torch.float16)
            _expect(b, f"linear {i} bias", (d_out,), torch.float32)
        for i, (w, b) in enumerate(self.norms):
            _expect(w, f"norm {i} weight", (layer_dims[i][1],), torch.float32)
            _expect(b, f"norm {i} bias", (layer_dims[i][1],), torch.float32)

    def _check_rvq(self) -> None:
        V, n, r = self.vocab_size, self.embedding_dim, self.rvq
        r.validate(n)
        S, K, L = r.n_subvectors(n), r.codebook_size, r.levels
        if self.codes is None or self.codebooks is None:
            raise CarvqError("an RVQ codec needs codes and codebooks")
        _expect(self.codes, "codes", (V, L, S), torch.uint8)
        if self.codes.numel() and int(self.codes.max()) >= K:
            raise CarvqError(f"codes hold index {int(self.codes.max())} >= K={K}")
        _expect(self.codebooks, "codebooks", (L, r.n_groups(V, n), K, r.subvector_dim), torch.float16)

    def _check_corrections(self) -> None:
        R = self.n_correction_rows
        _expect(self.correction_ids, "correction_ids", (R,), torch.int32)
        if R == 0:
            if self.correction_rows is not None and self.correction_rows.numel():
                raise CarvqError("correction rows present without correction ids")
            return
        if self.correction_rows is None:
            raise CarvqError(f"{R} correction ids but no correction rows")
        _expect(self.correction_rows, "correction_rows", (R, self.embedding_dim), torch.float16)
        ids = self.correction_ids.long()
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise CarvqError(f"correction ids must lie in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        if R > 1 and not bool((ids[1:] > ids[:-1]).all()):
            raise CarvqError("correction ids must be sorted ascending and unique")


def _expect(t: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if tuple(t.shape) != tuple(shape):
        raise CarvqError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise CarvqError(f"{name} has dtype {t.dtype}, expected {dtype}")
