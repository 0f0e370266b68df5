"""Regenerate the bundled English texts.

carvq_gguf/data/calib.txt (calibration: token frequencies, importance weights, tuning) and
carvq_gguf/data/eval.txt (perplexity) are CPython standard-library docstrings from disjoint
module lists, so calibration never sees the evaluation text. carvq_gguf/data/prose.txt is prose
from another domain: the essay chapters (1, 2, 4 to 9) and appendices A and B of the Jargon
File 4.4.7, which is in the public domain (Debian package jargon-text, jargon.txt.gz), its
paragraphs joined onto one line each, paragraphs under 200 characters dropped, {cross-reference}
braces removed. Run with Python 3.11: python scripts/make_texts.py [--jargon jargon.txt]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
from pathlib import Path

CALIB_MODULES = ["argparse", "asyncio.events", "collections", "dataclasses", "functools", "http.client",
                 "json", "logging", "pathlib", "subprocess", "threading", "typing", "zipfile"]
EVAL_MODULES = ["unittest.case", "email.message", "tarfile", "shutil", "socket", "string", "textwrap",
                "urllib.request", "configparser", "csv", "decimal", "difflib", "inspect", "pickle"]
DATA = Path(__file__).resolve().parents[1] / "carvq_gguf" / "data"


def docstrings(module_name: str) -> list[str]:
    """The module's own docstrings (module, classes, functions, methods), in source order."""
    module = importlib.import_module(module_name)
    texts = [inspect.getdoc(module) or ""]
    for _, obj in inspect.getmembers(module):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        texts.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for _, member in inspect.getmembers(obj):
                if getattr(member, "__qualname__", "").startswith(obj.__name__ + "."):
                    texts.append(inspect.getdoc(member) or "")
    return [t.strip() for t in texts if len(t.strip()) > 40]


def write(path: Path, modules: list[str]) -> None:
    seen: set[str] = set()
    parts = []
    for name in modules:
        for text in docstrings(name):
            if text not in seen:
                seen.add(text)
                parts.append(text)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"{path}: {len(parts)} docstrings, {path.stat().st_size} bytes")


JARGON_SECTIONS = [(275, 466), (801, 1781), (40101, 41385)]  # 1-based line ranges of jargon.txt 4.4.7


def write_prose(path: Path, jargon: Path) -> None:
    """prose.txt from the Jargon File's essay chapters and appendices (see the module docstring)."""
    lines = jargon.read_text(encoding="utf-8").split("\n")
    paragraphs, current = [], []
    for first, end in JARGON_SECTIONS:
        for line in lines[first - 1:end - 1] + [""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(current))
                current = []
    kept = [p for p in paragraphs if len(p) > 200 and not p.startswith(("Chapter", "Appendix"))]
    path.write_text(re.sub(r"\{([^{}]*)\}", r"\1", "\n\n".join(kept) + "\n"), encoding="utf-8")
    print(f"{path}: {len(kept)} paragraphs, {path.stat().st_size} bytes")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="regenerate carvq_gguf/data/*.txt")
    ap.add_argument("--jargon", type=Path, help="jargon.txt (gunzipped from Debian's jargon-text) to rebuild prose.txt")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    write(DATA / "calib.txt", CALIB_MODULES)
    write(DATA / "eval.txt", EVAL_MODULES)
    if args.jargon:
        write_prose(DATA / "prose.txt", args.jargon)
