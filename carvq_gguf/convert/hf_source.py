"""HF model directory in, base GGUF out: llama.cpp's own convert_hf_to_gguf.py does the mapping.

The script comes from the llama.cpp tree vendored in the pinned llama-cpp-python sdist (the one
the runtime patches target), so the base GGUF matches what the patched loader expects. It runs
in a subprocess with this interpreter; it imports the gguf-py next to it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..runtime.sdist import vendored_llama_cpp
from ..errors import CarvqError

BASE_TYPES = ("f32", "f16", "bf16", "q8_0", "auto")


def convert_script() -> Path:
    """Path of the pinned convert_hf_to_gguf.py."""
    script = vendored_llama_cpp() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise CarvqError(f"{script} not found in the pinned llama.cpp tree")
    return script


def check_hf_dir(model_dir: Path) -> None:
    """CarvqError unless model_dir looks like a saved HF model (config.json and weights)."""
    if not model_dir.is_dir():
        raise CarvqError(f"{model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise CarvqError(f"{model_dir} has no config.json (not a Hugging Face model directory)")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise CarvqError(f"{model_dir} has no *.safetensors or *.bin weights")


def hf_to_gguf(model_dir: Path, out_path: Path, base_type: str = "auto") -> Path:
    """Convert an HF model directory to a GGUF at out_path with convert_hf_to_gguf.py.

    base_type is the script's --outtype for the transformer weights (and token_embd).
    """
    check_hf_dir(model_dir)
    if base_type not in BASE_TYPES:
        raise CarvqError(f"base type {base_type!r} not one of {BASE_TYPES}")
    cmd = [sys.executable, str(convert_script()), str(model_dir), "--outfile", str(out_path),
           "--outtype", base_type]
    print(f"[convert] convert_hf_to_gguf.py {model_dir} --outtype {base_type}", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not out_path.is_file():
        raise CarvqError(f"convert_hf_to_gguf.py failed on {model_dir} (exit {result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    return out_path
