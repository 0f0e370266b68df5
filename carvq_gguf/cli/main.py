"""The `carvq-gguf` command line: one subcommand per module, each with a register() function."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator

from ..errors import CarvqError

# Each module defines register(subparsers) that adds its subcommand and sets func=handler(args) -> int.
COMMAND_MODULES = [
    "carvq_gguf.cli.compress",
    "carvq_gguf.cli.convert",
    "carvq_gguf.cli.inspect",
    "carvq_gguf.cli.build_runtime",
    "carvq_gguf.cli.eval",
    "carvq_gguf.cli.pareto",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="carvq-gguf",
        description="CARVQ token-embedding compression for llama.cpp GGUF models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (kill, timeout, a job scheduler) into SystemExit(143) while a command runs, so
    temporary files and directories are removed as on Ctrl-C; Python's default exits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        with exit_on_sigterm():
            return int(args.func(args) or 0)
    except CarvqError as e:
        print(f"carvq-gguf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
