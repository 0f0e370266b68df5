"""Regenerate the bundled English texts from CPython's standard-library docstrings.

carvq_gguf/data/calib.txt (calibration: token frequencies, importance weights) and
carvq_gguf/data/eval.txt (perplexity) come from disjoint module lists, so calibration never
sees the evaluation text. Run with Python 3.11: python scripts/make_texts.py
"""

from __future__ import annotations

import importlib
import inspect
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


if __name__ == "__main__":
    DATA.mkdir(parents=True, exist_ok=True)
    write(DATA / "calib.txt", CALIB_MODULES)
    write(DATA / "eval.txt", EVAL_MODULES)
