#!/usr/bin/env python
"""Regenerate the committed SmolLM2-135M report (reports/smollm2-135m/pareto.{md,json,png}).

    .venv/bin/python scripts/pareto.py [extra `carvq-gguf pareto` options]

Needs the patched runtime and tools (`carvq-gguf build-runtime`). Every step is cached by content
hash under the carvq-gguf cache, so a rerun only rebuilds what changed (e.g. a tuned preset).
"""

from __future__ import annotations

import sys
from pathlib import Path

from carvq_gguf.data.models import smollm2_gguf
from carvq_gguf.cli.main import main

REPO = Path(__file__).resolve().parent.parent


if __name__ == "__main__":
    sys.exit(main(["pareto", str(smollm2_gguf()), "-o", str(REPO / "reports" / "smollm2-135m"), *sys.argv[1:]]))
