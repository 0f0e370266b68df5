"""`carvq-gguf inspect FILE [--json]`: what a CARVQ-GGUF holds, what it costs, and whether it is valid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..gguf.inspection import format_report, inspect_file


def register(sub: argparse._SubParsersAction) -> None:
    """Add the inspect subcommand."""
    p = sub.add_parser("inspect", help="show and validate a CARVQ-GGUF file",
                       description="Architecture, CARVQ settings, bytes and bpw per component, file size "
                                   "and a validation verdict. Exit code 0 only for a valid CARVQ-GGUF.")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report; exit code 1 when the file is not a valid CARVQ-GGUF."""
    report = inspect_file(args.file)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["valid"] else 1
