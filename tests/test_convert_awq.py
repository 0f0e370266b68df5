"""--awq end to end: scales folded into the GGUF leave llama.cpp's float logits unchanged, and the
AWQ + Q4 + CARVQ file loads and generates in the patched llama-cpp-python with the CARVQ tensors
exactly as written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from carvq_gguf.awq import search as awq
from carvq_gguf.gguf import carvq_io
from carvq_gguf.cli.main import main
from carvq_gguf.convert.awq_fold import write_awq_base
from carvq_gguf.convert.hf_source import hf_to_gguf
from carvq_gguf.convert.pipeline import ConvertOptions, convert
from carvq_gguf.hf.model import load_causal_lm
from carvq_gguf.errors import CarvqError
from test_gguf_io import assert_states_identical
from tiny_sources import SENTENCES, make_tiny_hf_arch

ARCHS = ["llama-mha", "gemma3"]  # llama-mha also folds v -> o
PROMPT = b"Return the number of items in a container."
SMALL = awq.AwqConfig(max_windows=4, seq_len=64)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("awq-src")
    return {arch: make_tiny_hf_arch(root / arch, arch) for arch in ARCHS}


def llama_logits(path: Path) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(llm.tokenize(PROMPT))
    return np.array(llm.scores[: llm.n_tokens])


@pytest.mark.runtime
@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_fold_keeps_llama_cpp_logits(sources: dict[str, Path], tmp_path: Path, arch: str) -> None:
    base = hf_to_gguf(sources[arch], tmp_path / "base.gguf", "f32")
    model, tokenizer = load_causal_lm(sources[arch])
    ids = tokenizer(" ".join(SENTENCES), return_tensors="pt").input_ids[0]
    scales = awq.search(model, ids, replace(SMALL, clip=False), progress=False).scales  # clipping changes the function
    assert write_awq_base(GGUFReader(base), awq.AwqResult(scales, []), tmp_path / "awq.gguf", progress=False) > 0

    base_t = {t.name: np.asarray(t.data) for t in GGUFReader(base).tensors}
    awq_t = {t.name: np.asarray(t.data) for t in GGUFReader(tmp_path / "awq.gguf").tensors}
    assert base_t.keys() == awq_t.keys()
    assert any(not np.array_equal(base_t[k], awq_t[k]) for k in base_t if k.endswith("ffn_up.weight"))
    np.testing.assert_allclose(llama_logits(tmp_path / "awq.gguf"), llama_logits(base), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_fold_matches_torch(sources: dict[str, Path], tmp_path: Path, arch: str) -> None:
    """Scales and clipping applied to the GGUF give the weights they give the torch model."""
    base = hf_to_gguf(sources[arch], tmp_path / "base.gguf", "f32")
    model, tokenizer = load_causal_lm(sources[arch])
    ids = tokenizer(" ".join(SENTENCES), return_tensors="pt").input_ids[0]
    result = awq.search(model, ids, SMALL, progress=False)
    awq.clip_model(model, result.clips)
    write_awq_base(GGUFReader(base), result, tmp_path / "awq.gguf", progress=False)
    written = {t.name: np.asarray(t.data) for t in GGUFReader(tmp_path / "awq.gguf").tensors}
    weights = model.state_dict()
    for layer in range(2):
        for hf, gguf_name in [("mlp.down_proj", "ffn_down"), ("mlp.up_proj", "ffn_up"), ("self_attn.v_proj", "attn_v"),
                              ("self_attn.o_proj", "attn_output"), ("input_layernorm", "attn_norm")]:
            expected = weights[f"model.layers.{layer}.{hf}.weight"].numpy()
            if hf.endswith("layernorm") and arch == "gemma3":
                expected = expected + 1  # the GGUF stores Gemma's (1 + w)
            np.testing.assert_allclose(written[f"blk.{layer}.{gguf_name}.weight"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.runtime
@pytest.mark.parametrize("arch", ARCHS)
def test_awq_q4_carvq_loads_and_generates(sources: dict[str, Path], tmp_path: Path, arch: str) -> None:
    plain = convert(sources[arch], tmp_path / "q4.gguf", ConvertOptions("rvq-1.6", progress=False, quantize="Q4_0"))
    result = convert(sources[arch], tmp_path / "awq.gguf", ConvertOptions("rvq-1.6", progress=False, quantize="Q4_0", awq=SMALL))
    assert result.awq is not None and result.awq["tensors_changed"] > 0
    assert result.awq["awq_error"] <= result.awq["rtn_error"]

    out = GGUFReader(result.out_path)
    types = {t.name: t.tensor_type.name for t in out.tensors}
    assert types["blk.0.ffn_up.weight"] == "Q4_0" and types["blk.1.attn_q.weight"] == "Q4_0"
    # the CARVQ tensors are the ones the codec wrote, and the same as without --awq
    state = carvq_io.read_carvq_state(out)
    assert_states_identical(result.state, state)
    assert_states_identical(carvq_io.read_carvq_state(GGUFReader(plain.out_path)), state)
    plain_t = {t.name: np.asarray(t.data) for t in GGUFReader(plain.out_path).tensors}
    assert any(not np.array_equal(plain_t[t.name], np.asarray(t.data)) for t in out.tensors
               if t.name.startswith("blk."))

    import llama_cpp

    llm = llama_cpp.Llama(str(result.out_path), n_ctx=64, verbose=False, seed=0)
    completion = llm(PROMPT.decode(), max_tokens=8, temperature=0.0)
    assert completion["usage"]["completion_tokens"] > 0
    assert np.isfinite(llama_logits(result.out_path)).all()


@pytest.mark.runtime
def test_awq_with_carvq_calibrates_on_the_carvq_model(sources: dict[str, Path], tmp_path: Path) -> None:
    dense = convert(sources["gemma3"], tmp_path / "dense.gguf", ConvertOptions("rvq-1.6", progress=False, quantize="Q4_0", awq=SMALL))
    on_carvq = convert(sources["gemma3"], tmp_path / "carvq.gguf", ConvertOptions("rvq-1.6", progress=False, quantize="Q4_0", awq=SMALL, awq_with_carvq=True))
    assert_states_identical(dense.state, on_carvq.state)  # the same codec either way
    assert dense.awq["rtn_error"] != on_carvq.awq["rtn_error"]  # the search saw other activations
    a = {t.name: np.asarray(t.data) for t in GGUFReader(dense.out_path).tensors}
    b = {t.name: np.asarray(t.data) for t in GGUFReader(on_carvq.out_path).tensors}
    assert any(not np.array_equal(a[k], b[k]) for k in a if k.startswith("blk."))
    assert np.isfinite(llama_logits(on_carvq.out_path)).all()
    with pytest.raises(CarvqError, match="give --awq too"):
        convert(sources["gemma3"], tmp_path / "x.gguf", ConvertOptions("rvq-1.6", quantize="Q4_0", awq_with_carvq=True))


@pytest.mark.runtime
def test_awq_q4_k_m(sources: dict[str, Path], tmp_path: Path) -> None:
    """Q4_K_M goes through the same path (the search simulates asymmetric Q4_1-style blocks); the
    tiny model's 64-wide rows make llama.cpp fall back from the k-quants, as on SmolLM2's 576."""
    result = convert(sources["llama-mha"], tmp_path / "k.gguf", ConvertOptions("rvq-1.6", progress=False, quantize="Q4_K_M", awq=SMALL))
    out = GGUFReader(result.out_path)
    assert out.get_field("general.file_type").contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert result.awq["tensors_changed"] > 0
    assert_states_identical(result.state, carvq_io.read_carvq_state(out))
    assert np.isfinite(llama_logits(result.out_path)).all()


@pytest.mark.runtime
def test_awq_cli(sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(SENTENCES * 4))
    out = tmp_path / "cli.gguf"
    assert main(["convert", str(sources["gemma3"]), "-o", str(out), "--preset", "rvq-1.6", "--awq",
                 "--quantize", "Q4_0", "--calib-text", str(calib), "--awq-windows", "2", "--no-progress"]) == 0
    assert "AWQ: 6 scale groups" in capsys.readouterr().out
    assert GGUFReader(out).get_field("general.file_type").contents() == 2  # LLAMA_FTYPE_MOSTLY_Q4_0


@pytest.mark.runtime
@pytest.mark.parametrize("quantize, message", [(None, "give --quantize"), ("Q8_0", "4-bit llama.cpp types")])
def test_awq_needs_a_4bit_type(sources: dict[str, Path], tmp_path: Path, quantize: str | None,
                               message: str) -> None:
    with pytest.raises(CarvqError, match=message):
        convert(sources["llama-mha"], tmp_path / "o.gguf", ConvertOptions("rvq-1.6", quantize=quantize, awq=awq.AwqConfig()))
    assert list(tmp_path.iterdir()) == []
