#!/usr/bin/env python3
"""Fuzz the patched llama.cpp loader with mutated CARVQ-GGUFs (ASan+UBSan build of native/).

    .venv/bin/python scripts/fuzz_loader.py --cases 10000 [--seed N] [--corpus DIR] [--keep DIR]

Builds native/ against the patched tree if needed, writes the corpus (tiny CARVQ-GGUFs from the
converter's writer) unless --corpus names a directory of .gguf files, then prints, every batch and
at the end: cases, ok, rejections (and how many without a message), sanitizer reports, aborts,
other crashes, and the most frequent rejection messages. Exit status 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the corpus helpers

from carvq_gguf.eval import loader_fuzz
from carvq_gguf.runtime import native as native_build  # noqa: E402


def line(s: loader_fuzz.Summary, t0: float) -> str:
    return (f"cases {s.cases}  ok {s.ok}  rejected {s.rejected} (without message {s.rejected_without_message})  "
            f"sanitizer reports {s.sanitizer_reports}  aborts {s.aborts}  other crashes {s.other_crashes}  "
            f"[{time.monotonic() - t0:.0f} s]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", type=Path, help="directory of CARVQ-GGUF files (default: make the tiny corpus)")
    ap.add_argument("--keep", type=Path, default=Path("fuzz-crashes"), help="where crashing files are copied")
    ap.add_argument("--llama-cpp-dir", type=Path, help="build against this llama.cpp tree instead of patches/")
    ap.add_argument("--build-dir", type=Path, help="CMake build directory for --llama-cpp-dir")
    args = ap.parse_args()

    bin_dir = native_build.build(args.llama_cpp_dir, args.build_dir, targets=("carvq-load",))
    with tempfile.TemporaryDirectory(prefix="carvq-corpus-") as tmp:
        if args.corpus:
            corpus = sorted(args.corpus.glob("*.gguf"))
        else:
            from fuzz_corpus import make_corpus
            corpus = make_corpus(Path(tmp))
        print(f"corpus: {', '.join(p.name for p in corpus)}", flush=True)
        t0 = time.monotonic()
        summary = loader_fuzz.fuzz(bin_dir / "carvq-load", corpus, args.cases, seed=args.seed, keep_crashes=args.keep,
                                   progress=lambda s: print(line(s, t0), flush=True))
    print("\nfinal: " + line(summary, t0))
    print("\nmost frequent rejection messages:")
    for msg, n in sorted(summary.messages.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{n:7d}  {msg}")
    for c in summary.crashes[:10]:
        print(f"\nCRASH {c.path.name}:\n{c.message[:3000]}")
    return 1 if summary.n_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
