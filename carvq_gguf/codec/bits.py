"""Exact bit accounting of a CARVQ codec, component by component, as stored in the GGUF file.

Stored sizes (docs/FORMAT.md): indices 4 bits each (packed two per byte whatever kappa is),
codebooks F16, sigma0 F16, MLP weights F16, MLP biases and LayerNorm weights/biases F32,
correction rows F16 per value plus an I32 token id per row. Metadata keys are not counted.
A trellis codec's streams count as its codes (whole bytes per row) and its F16 tables plus the
F16 column scale and mean as its codebooks. Predicted rows (docs/FORMAT.md "Predicted rows") add
the row map (two 32-bit words per 32 rows), one 32-bit word per predicted row and the leftovers'
F16 column scale and mean.
"""

from __future__ import annotations

from .state import AdaptorConfig, CarvqState, RvqConfig, TrellisConfig

INDEX_BITS = 4


def correction_row_bits(embedding_dim: int) -> int:
    """Stored bits of one correction row: its F16 values and its I32 token id."""
    return 16 * embedding_dim + 32


def prediction_bits(vocab_size: int, embedding_dim: int, n_predicted: int) -> int:
    """Stored bits of n_predicted predicted rows: the row map, their words and the leftovers'
    column scale and mean (0 when no row is predicted)."""
    if n_predicted == 0:
        return 0
    return 64 * -(-vocab_size // 32) + 32 * n_predicted + 32 * embedding_dim


def bits_from_config(vocab_size: int, embedding_dim: int, rvq: RvqConfig, adaptor: AdaptorConfig,
                     n_corrections: int = 0, trellis: TrellisConfig | None = None,
                     n_predicted: int = 0) -> dict[str, int]:
    """Stored bits per component of a codec with these settings (no tensors needed); with
    trellis, the rows are trellis-coded and rvq is not used, and n_predicted of them are
    predicted from other rows."""
    V, n = vocab_size, embedding_dim
    if trellis is None:
        S, K, L, h = rvq.n_subvectors(n), rvq.codebook_size, rvq.levels, rvq.subvector_dim
        codes, codebooks = V * L * S * INDEX_BITS, L * rvq.n_groups(V, n) * K * h * 16
    else:
        codes = V * trellis.stream_bytes(n) * 8
        codebooks = (trellis.groups * trellis.table_size * trellis.step_dim + 2 * n) * 16
    bits = {
        "codes": codes,
        "codebooks": codebooks,
        "sigma0": 0,
        "mlp_weights": 0,
        "mlp_biases": 0,
        "norms": 0,
        "correction_rows": n_corrections * n * 16,
        "correction_ids": n_corrections * 32,
        "prediction": prediction_bits(V, n, n_predicted),
    }
    if adaptor.enabled:
        layers = adaptor.layer_dims(n)
        bits["sigma0"] = V * adaptor.table_dim * 16
        bits["mlp_weights"] = sum(d_in * d_out for d_in, d_out in layers) * 16
        bits["mlp_biases"] = sum(d_out for _, d_out in layers) * 32
        bits["norms"] = sum(2 * d_out for _, d_out in layers[:-1]) * 32
    return bits


def total_bits(bits: dict[str, int]) -> int:
    """Sum of a component dict."""
    return sum(bits.values())


def component_bits(state: CarvqState) -> dict[str, int]:
    """Exact stored bits per component of a (checked) codec state."""
    state.check()
    t = state.trellis
    return bits_from_config(state.vocab_size, state.embedding_dim, state.rvq, state.adaptor,
                            state.n_correction_rows, None if t is None else t.config,
                            0 if t is None or t.prediction is None else t.prediction.count)


def bpw(state: CarvqState) -> float:
    """Total stored bits divided by the V * n weights of the dense matrix."""
    return total_bits(component_bits(state)) / (state.vocab_size * state.embedding_dim)


def bpw_from_config(vocab_size: int, embedding_dim: int, rvq: RvqConfig, adaptor: AdaptorConfig,
                    n_corrections: int = 0, trellis: TrellisConfig | None = None) -> float:
    """bpw of a codec with these settings, without tensors."""
    bits = bits_from_config(vocab_size, embedding_dim, rvq, adaptor, n_corrections, trellis)
    return total_bits(bits) / (vocab_size * embedding_dim)
