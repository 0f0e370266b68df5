"""The pinned llama-cpp-python sdist: download (through pip), verify and unpack it.

The sdist vendors the llama.cpp tree that patches/ targets, including llama.cpp's own
convert_hf_to_gguf.py and gguf-py, which the converter reuses.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from ..errors import CarvqError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"


def cache_dir() -> Path:
    """Where downloads, unpacked trees and built wheels are kept ($CARVQ_CACHE or ~/.cache/carvq-gguf)."""
    root = os.environ.get("CARVQ_CACHE") or Path.home() / ".cache" / "carvq-gguf"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_sdist() -> Path:
    """Return the path of the verified sdist archive, downloading it with pip if needed."""
    dest = cache_dir() / "sdist"
    archive = dest / SDIST_NAME
    if not archive.exists():
        dest.mkdir(parents=True, exist_ok=True)
        # pip prepares an sdist's metadata even for `download`; build isolation lets it fetch the
        # sdist's build backend (scikit-build-core) itself, so a fresh environment needs nothing.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dest)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            raise CarvqError(f"could not download {SDIST_NAME} with pip:\n{result.stderr[-2000:]}")
    actual = file_sha256(archive)
    if actual != SDIST_SHA256:
        raise CarvqError(f"{archive} has sha256 {actual}, expected {SDIST_SHA256}; delete it and retry")
    return archive


def ensure_pristine_tree() -> Path:
    """Return the unpacked, unpatched sdist directory (llama_cpp_python-<version>/)."""
    archive = ensure_sdist()
    root = cache_dir() / "pristine"
    tree = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    stamp = root / f"{SDIST_SHA256}.unpacked"
    if not stamp.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        stamp.touch()
    return tree


def vendored_llama_cpp() -> Path:
    """The pristine vendor/llama.cpp directory (convert_hf_to_gguf.py, gguf-py, sources)."""
    return ensure_pristine_tree() / "vendor" / "llama.cpp"
