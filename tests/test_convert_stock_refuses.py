"""The stock, unpatched llama-cpp-python must refuse a CARVQ-GGUF with an error, not run it.

Control: the same stock build loads the base GGUF the CARVQ file was made from, so the refusal
comes from the CARVQ change (token_embd.weight replaced), not from the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carvq_gguf.runtime import build as runtime
from carvq_gguf.convert.pipeline import ConvertOptions, convert
from tiny_sources import make_tiny_hf

LOAD_AND_EVAL = """
import sys
import llama_cpp
assert not (Path := __import__("pathlib").Path)(llama_cpp.__file__).with_name("carvq_patches.txt").exists()
llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=True)
llm.eval(llm.tokenize(b"the function returns"))
print("EVAL-OK")
"""


def run_stock(model: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD_AND_EVAL, str(model)], env=runtime.stock_python_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.runtime
def test_stock_llama_cpp_refuses_carvq_gguf(tmp_path: Path) -> None:
    src = make_tiny_hf(tmp_path / "tiny", tied=True)
    base = tmp_path / "base.gguf"
    result = convert(src, tmp_path / "carvq.gguf", ConvertOptions("rvq-1.6", progress=False, keep_base=base))

    control = run_stock(base)
    assert control.returncode == 0 and "EVAL-OK" in control.stdout, control.stderr[-2000:]

    refused = run_stock(result.out_path)
    assert refused.returncode != 0
    assert "EVAL-OK" not in refused.stdout
    assert "tensor 'token_embd.weight' not found" in refused.stderr  # the loader names what is missing
