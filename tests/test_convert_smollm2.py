"""The real SmolLM2-135M-Instruct GGUF (Q4_1 weights, Q8_0 tied token_embd) through the
converter, with a fast test preset (2 levels, 2 k-means iterations, 1 adaptor epoch) so it stays short."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGUFReader

from carvq_gguf.gguf import carvq_io
from carvq_gguf.codec import presets
from carvq_gguf.gguf.inspection import inspect_file
from carvq_gguf.convert.pipeline import ConvertOptions, convert
from carvq_gguf.data.models import smollm2_gguf
from carvq_gguf.codec.state import AdaptorConfig, RvqConfig
from test_convert_gguf import raw_fields, raw_tensors


FAST = presets.Preset("test-fast", None, RvqConfig(subvector_dim=8, codebook_bits=4, levels=2),
                      AdaptorConfig(table_dim=2, hidden_dims=(64,)),
                      presets.TrainConfig(kmeans_iters=2, epochs=1), correction_rows=64)


@pytest.mark.slow
def test_convert_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from carvq_gguf.codec.embedding import CarvqEmbedding

    monkeypatch.setitem(presets.PRESETS, FAST.name, FAST)
    source = smollm2_gguf()
    result = convert(source, tmp_path / "smollm2-carvq.gguf", ConvertOptions(FAST.name, progress=False))

    src, out = GGUFReader(source), GGUFReader(result.out_path)
    src_fields, out_fields = raw_fields(src), raw_fields(out)
    assert all(out_fields[k] == v for k, v in src_fields.items())
    src_t, out_t = raw_tensors(src), raw_tensors(out)
    assert all(out_t[k] == v for k, v in src_t.items() if k != "token_embd.weight")
    assert out_t["output.weight"] == src_t["token_embd.weight"]  # tied head kept as the original Q8_0
    assert result.token_embd_type == "Q8_0" and result.head_type == "Q8_0"

    report = inspect_file(result.out_path)
    assert report["valid"], report["reason"]
    assert report["settings"]["vocab_size"] == 49152 and report["settings"]["embedding_length"] == 576
    assert report["settings"]["correction_rows"] == 64
    assert report["embedding_bytes"] == result.carvq_bytes
    # tied: the file grows by the CARVQ tensors (plus a little metadata and alignment)
    assert 0 <= result.out_bytes - result.base_bytes - result.carvq_bytes < 4096

    back = carvq_io.read_carvq_state(out)
    ids = torch.arange(0, 49152, 7)
    a = CarvqEmbedding(result.state)(ids)
    b = CarvqEmbedding(back)(ids)
    assert torch.equal(a, b)
