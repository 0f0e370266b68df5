"""`carvq-gguf build-runtime`: build (once, then from the cache) and install the patched llama-cpp-python."""

from __future__ import annotations

import argparse
import sys

from ..runtime import build as runtime


def register(sub: argparse._SubParsersAction) -> None:
    """Add the build-runtime subcommand."""
    p = sub.add_parser(
        "build-runtime", help="build and install the patched llama-cpp-python and llama.cpp tools",
        description="Download the pinned llama-cpp-python sdist with pip, verify its hash, apply patches/ "
                    "(checking that each patch applies), compile llama.cpp once for both the wheel and "
                    "llama.cpp's perplexity, bench, quantize and imatrix tools, cache them by sdist, patch "
                    "and build-flag hash, and install the wheel into this Python environment. Your own "
                    "CMAKE_ARGS (e.g. -DGGML_CUDA=on) are kept and appended after -DGGML_NATIVE=ON. "
                    "A repeat run takes seconds.")
    p.add_argument("--stock", action="store_true",
                   help="also build the stock (unpatched) llama-cpp-python used by comparison tests "
                        "(kept in the cache, never installed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `carvq-gguf build-runtime`."""
    runtime.ensure_runtime()
    if args.stock:
        print(f"[build-runtime] stock llama_cpp in {runtime.stock_package_dir()}", file=sys.stderr)
    return 0
