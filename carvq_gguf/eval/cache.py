"""Content-addressed cache for the evaluation pipeline: built model variants, base logits and
measured results, each stored under a key that hashes everything it depends on.

Layout under the root (default sdist.cache_dir() / "eval"):
    <kind>/<key><suffix>   one entry (a .gguf model, a .logits file, a .json result ...)

An entry exists only once complete: builders write to a temporary name in the same directory
and the entry is renamed into place at the end, so an interrupted run leaves nothing that a
later run would mistake for a result.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import owned_prefix, remove_stale_temporaries
from ..runtime import sdist
from ..errors import CarvqError

# The modules that decide what a built CARVQ variant contains: the codec and the model-in-the-loop
# fit, the GGUF writer and the converter (not the evaluation modules, so editing those keeps built
# models).
CODEC_MODULES = ("atomic", "gguf.carvq_io", "gguf.rewrite")
CODEC_PACKAGES = ("codec", "hf", "convert")  # whole packages, so a new module there is never missed


def hash_key(*parts: Any) -> str:
    """A short hex key over parts (each turned into canonical JSON, so dicts and lists work)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    return digest.hexdigest()[:24]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def content_hash(path: Path) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime) so big models are hashed once per run."""
    stat = Path(path).stat()
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        _FILE_HASHES[memo] = sdist.file_sha256(Path(path))
    return _FILE_HASHES[memo]


def _source_files() -> list[Path]:
    """The files of CODEC_MODULES and CODEC_PACKAGES, found by the import system (so an installed
    copy hashes what it runs); CarvqError if one is missing."""
    files = []
    for name in CODEC_MODULES:
        spec = importlib.util.find_spec(f"carvq_gguf.{name}")
        if spec is None or spec.origin is None:
            raise CarvqError(f"cannot find module carvq_gguf.{name} to version the codec")
        files.append(Path(spec.origin))
    for name in CODEC_PACKAGES:
        spec = importlib.util.find_spec(f"carvq_gguf.{name}")
        if spec is None or not spec.submodule_search_locations:
            raise CarvqError(f"cannot find package carvq_gguf.{name} to version the codec")
        for location in spec.submodule_search_locations:
            files += sorted(Path(location).glob("*.py"))
    return files


def codec_code_version() -> str:
    """Hash of the source files that decide what a CARVQ variant contains, so a code change
    invalidates built variants but an edit to the evaluation modules does not."""
    files = _source_files()
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class EvalCache:
    """Files and JSON results stored by key."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else sdist.cache_dir() / "eval"
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files left by builders that were killed (their process is gone)."""
        for kind in self.root.iterdir():
            if kind.is_dir():
                remove_stale_temporaries(kind, ".tmp-")

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """Where the entry kind/key lives (it may not exist yet)."""
        return self.root / kind / f"{key}{suffix}"

    def file(self, kind: str, key: str, suffix: str, build: Callable[[Path], None]) -> Path:
        """The cached file kind/key, made by build(tmp_path) if missing, then renamed into place."""
        final = self.path(kind, key, suffix)
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(owned_prefix(".tmp-") + final.name)
        try:
            build(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def load_json(self, kind: str, key: str) -> Any | None:
        """The JSON entry kind/key, or None if it is not cached."""
        path = self.path(kind, key, ".json")
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def save_json(self, kind: str, key: str, value: Any) -> None:
        """Store value as the JSON entry kind/key (atomically)."""
        self.file(kind, key, ".json", lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=True)))

    def json(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """The JSON entry kind/key, computed and stored if missing."""
        value = self.load_json(kind, key)
        if value is None:
            value = compute()
            self.save_json(kind, key, value)
        return value
