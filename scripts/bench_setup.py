#!/usr/bin/env python3
"""Cold setup against a plain llama-cpp-python build, side by side on this machine.

Runs, one after the other in the same session (so both see the same machine and load):
  stock  `pip wheel llama-cpp-python==0.3.36` from the sdist, nothing else (the baseline);
  cold   a fresh clone of this repository's HEAD running scripts/setup.sh with an empty
         CARVQ_CACHE: venv, Python packages, patched wheel and llama.cpp tools;
  warm   scripts/setup.sh again in the same clone (everything cached).
and prints the wall times and the ratio cold / stock. The target is a ratio of at most 1.3.

    python scripts/bench_setup.py [--json FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def timed(cmd: list[str], log: Path, **kwargs) -> float:
    """Wall seconds of cmd, its output appended to log; exits with the log's tail if it fails."""
    start = time.monotonic()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kwargs)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary directory)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="carvq-bench-setup-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    env = {key: value for key, value in os.environ.items() if key not in ("CMAKE_ARGS", "VIRTUAL_ENV")}
    try:
        print(f"[bench-setup] stock: pip wheel {LLAMA_CPP_PYTHON} (log: {log})", flush=True)
        stock = timed([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python",
                       "-w", str(work / "stock-wheel"), LLAMA_CPP_PYTHON], log, env=env)
        print(f"[bench-setup] stock build: {stock / 60:.1f} min", flush=True)

        clone = work / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        cold_env = dict(env, CARVQ_CACHE=str(work / "empty-cache"))
        print(f"[bench-setup] cold: scripts/setup.sh in a fresh clone with an empty cache", flush=True)
        cold = timed(["bash", "scripts/setup.sh"], log, cwd=clone, env=cold_env)
        print(f"[bench-setup] cold setup: {cold / 60:.1f} min", flush=True)
        warm = timed(["bash", "scripts/setup.sh"], log, cwd=clone, env=cold_env)
        print(f"[bench-setup] warm setup: {warm:.1f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    result = {"stock_wheel_s": round(stock, 1), "cold_setup_s": round(cold, 1), "warm_setup_s": round(warm, 1),
              "ratio_cold_over_stock": round(cold / stock, 3), "load_average": os.getloadavg()}
    print(f"stock wheel {stock / 60:.1f} min | cold setup {cold / 60:.1f} min | warm setup {warm:.0f} s | "
          f"ratio cold/stock {cold / stock:.2f} (target <= 1.3)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
