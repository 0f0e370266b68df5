"""llama.cpp's command-line tools from the patched build, run with their log kept for errors.

Only the standard library at import time, like the rest of the runtime package.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ..errors import CarvqError
from .build import tool_path


def tail(text: str, lines: int = 15) -> str:
    """The last lines of a tool's output, for an error message."""
    return "\n".join(text.strip().splitlines()[-lines:])


def refusal_reason(log: str, type_name: str) -> str:
    """Why llama-quantize refused: its assertion or error message, in one line."""
    assertion = re.search(r'GGML_ASSERT\((.*)\) failed', log)
    if assertion:
        message = re.search(r'"([^"]+)"', assertion.group(1))
        return message.group(1) if message else assertion.group(1)
    for line in log.splitlines():
        if "failed to quantize:" in line:
            return line.split("failed to quantize:", 1)[1].strip()
    if "usage:" in log:
        return f"llama-quantize does not accept {type_name} here"
    return tail(log, 1)


def build_imatrix(model: Path, calib_text: Path, out: Path, ctx: int = 512, chunks: int | None = None,
                  threads: int = 2) -> str:
    """llama-imatrix on calib_text; writes the importance matrix (GGUF) to out; returns the log."""
    cmd = [str(tool_path("llama-imatrix")), "-m", str(model), "-f", str(calib_text), "-o", str(out),
           "-c", str(ctx), "-t", str(threads), "--output-format", "gguf"]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    print(f"[pareto] llama-imatrix on {Path(calib_text).name}", file=sys.stderr)
    return run_tool(cmd, Path(out), "llama-imatrix")


def quantize_with_imatrix(src: Path, dst: Path, type_name: str, imatrix: Path, threads: int = 2) -> str:
    """llama-quantize --imatrix of a whole model (the patched build copies CARVQ tensors
    unchanged); returns the log."""
    cmd = [str(tool_path("llama-quantize")), "--allow-requantize", "--imatrix", str(imatrix), str(src), str(dst),
           type_name, str(threads)]
    return run_tool(cmd, Path(dst), "llama-quantize --imatrix")


def run_tool(cmd: list[str], out: Path, what: str) -> str:
    """Run a llama.cpp tool that must write out; its log, or CarvqError with the log's end."""
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.returncode != 0 or not out.is_file():
        raise CarvqError(f"{what} failed (exit {result.returncode}):\n{tail(result.stdout, 25)}")
    return result.stdout
