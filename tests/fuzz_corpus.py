"""The fuzzing corpus: tiny CARVQ-GGUFs written by the converter's GGUF writer from a tiny random
llama (converted by the pinned convert_hf_to_gguf.py), in both group layouts, with and without
adaptor and correction rows, and 1 to 3 levels, two trellis-coded files (format version 2) and one
with predicted rows (version 3)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_random_state
from test_runtime_parity import save_tiny_hf, vocab_and_width, write_carvq

from carvq_gguf.codec.state import TrellisConfig
from carvq_gguf.convert import hf_source

VARIANTS = {
    "column-adaptor-corr": dict(group_layout="column", levels=2, table_dim=8, hidden_dims=(32, 48), n_corrections=3),
    "block-l3-adaptor": dict(group_layout="block", levels=3, table_dim=8, hidden_dims=(16,), n_corrections=0),
    "column-l1-corr": dict(group_layout="column", levels=1, table_dim=0, n_corrections=5),
    "block-linear-adaptor": dict(group_layout="block", levels=2, table_dim=4, hidden_dims=(), n_corrections=1),
    "trellis-adaptor-corr": dict(trellis=TrellisConfig(groups=4), table_dim=8, hidden_dims=(16,), n_corrections=3),
    "trellis-k8-corr": dict(trellis=TrellisConfig(state_bits=9, step_bits=8, step_dim=4, groups=3), table_dim=0,
                            n_corrections=2),
    "trellis-predicted-corr": dict(trellis=TrellisConfig(groups=2), table_dim=0, n_corrections=2, predicted=40),
}


def make_corpus(root: Path) -> list[Path]:
    """Write the corpus files under root (the base model is converted once)."""
    root.mkdir(parents=True, exist_ok=True)
    base = root / "llama.gguf"
    if not base.exists():
        hf_source.hf_to_gguf(save_tiny_hf("llama", root / "llama-hf"), base, "f16")
    V, n = vocab_and_width(base)
    paths = []
    for i, (name, kw) in enumerate(VARIANTS.items()):
        out = root / f"carvq-{name}.gguf"
        if not out.exists():
            write_carvq(base, make_random_state(vocab_size=V, embedding_dim=n, seed=i, **kw), out)
        paths.append(out)
    return paths
