"""Tensor table of a GGUF file (name, ggml type, shape, bytes, SHA-256 of the data), read with
the gguf-py of the pinned llama.cpp tree.

llama.cpp's quantizer can write ggml types (Q2_0, ...) that the gguf release on PyPI does not
know yet, and gguf-py's reader refuses a file with an unknown type. So tensor_table() runs this
file as a script in a subprocess with the pinned tree's gguf-py first on PYTHONPATH; the script
part below imports nothing from carvq_gguf (and no module beside this file may shadow a standard
library name, such as inspect.py: running the file puts this directory first on sys.path).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file."""

    name: str
    type_name: str
    shape: tuple[int, ...]  # ggml ne, fastest-varying first
    n_bytes: int
    sha256: str


@dataclass(frozen=True)
class GgufSummary:
    """The tensors of a GGUF file (by name, in file order) and its scalar keys (arrays left out)."""

    tensors: dict[str, TensorInfo]
    keys: dict[str, object]


def read_summary(path: Path) -> GgufSummary:
    """Tensor table and scalar keys of the GGUF file at path.

    CarvqError if the file cannot be read as GGUF."""
    import os
    import subprocess

    from ..runtime.sdist import vendored_llama_cpp
    from ..errors import CarvqError

    path = Path(path)
    if not path.is_file():
        raise CarvqError(f"{path} does not exist")
    env = dict(os.environ)
    gguf_py = str(vendored_llama_cpp() / "gguf-py")
    env["PYTHONPATH"] = os.pathsep.join([gguf_py, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else gguf_py
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CarvqError(f"cannot read the tensors of {path} as GGUF: {last}")
    dump = json.loads(result.stdout)
    tensors = {r["name"]: TensorInfo(r["name"], r["type"], tuple(r["shape"]), r["n_bytes"], r["sha256"])
               for r in dump["tensors"]}
    return GgufSummary(tensors, dump["keys"])


def _dump(path: str) -> dict:
    """Tensor rows and scalar keys, computed with whatever gguf package is importable."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    keys = {}
    for f in reader.fields.values():
        if f.types and f.types[0] != GGUFValueType.ARRAY and not f.name.startswith("GGUF."):
            keys[f.name] = f.contents()
    rows = []
    for t in reader.tensors:
        data = np.ascontiguousarray(t.data)
        rows.append({"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                     "n_bytes": int(t.n_bytes), "sha256": hashlib.sha256(data.tobytes()).hexdigest()})
    return {"tensors": rows, "keys": keys}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: summary.py FILE.gguf")
    json.dump(_dump(sys.argv[1]), sys.stdout)
