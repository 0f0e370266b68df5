"""--quantize: llama.cpp's quantizer from the patched build quantizes the transformer weights and
leaves every CARVQ tensor and key as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from carvq_gguf.gguf import carvq_io
from carvq_gguf.gguf.inspection import inspect_file
from carvq_gguf.convert.pipeline import ConvertOptions, convert
from carvq_gguf.errors import CarvqError
from test_gguf_io import assert_states_identical
from tiny_sources import make_tiny_hf


@pytest.mark.runtime
def test_quantize_keeps_carvq_tensors(tmp_path: Path) -> None:
    src = make_tiny_hf(tmp_path / "tiny", tied=True)
    base = tmp_path / "base.gguf"
    result = convert(src, tmp_path / "q.gguf", ConvertOptions("rvq-1.6", progress=False, keep_base=base, quantize="Q8_0"))
    assert result.quantized == "Q8_0" and result.out_bytes < result.base_bytes

    out = GGUFReader(result.out_path)
    types = {t.name: t.tensor_type.name for t in out.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["carvq_codes"] == "I8" and types["carvq_codebooks"] == "F16"
    assert_states_identical(result.state, carvq_io.read_carvq_state(out))
    assert out.get_field("general.file_type").contents() == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert inspect_file(result.out_path)["valid"]

    import llama_cpp  # the patched build runs the quantized CARVQ model

    llm = llama_cpp.Llama(str(result.out_path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(llm.tokenize(b"the function returns"))
    assert np.isfinite(np.asarray(llm.scores[: llm.n_tokens])).all()


@pytest.mark.runtime
def test_quantize_unknown_type_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(CarvqError, match="unknown quantization type 'Q9_X'"):
        convert(tmp_path, tmp_path / "o.gguf", ConvertOptions("rvq-1.6", quantize="Q9_X"))
    assert list(tmp_path.iterdir()) == []
