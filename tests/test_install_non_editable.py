"""A plain `pip install .` (not editable) must be complete: from a directory outside the source
tree, `carvq-gguf build-runtime` finds the patch series inside the installed package and
`carvq-gguf convert` writes a verified CARVQ-GGUF. The new environment is made the way a user
would make it: a venv, the CPU torch wheel, then `pip install .`."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tiny_sources import make_tiny_hf

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.runtime
def test_non_editable_install_builds_the_runtime_and_converts(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "carvq-gguf"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    _run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], elsewhere, env)  # the CPU wheel, as setup.sh
    _run([python, "-m", "pip", "install", "-q", REPO], elsewhere, env)
    where = _run([python, "-c", "import carvq_gguf.patches as p, carvq_gguf as c; print(c.__file__); print(p.__file__)"],
                 elsewhere, env).stdout.split()
    assert all(Path(f).is_relative_to(site) for f in where), where  # installed copies, not the source tree

    built = _run([cli, "build-runtime"], elsewhere, env)
    assert "tools in" in built.stderr
    stamp = site / "llama_cpp" / "carvq_patches.txt"
    assert stamp.is_file(), "the patched wheel was not installed into the new environment"
    assert stamp.read_text().strip() == __import__("carvq_gguf.runtime.build").runtime.build.patches_hash()

    source = make_tiny_hf(tmp_path / "tiny", tied=True)
    out = elsewhere / "tiny-carvq.gguf"
    converted = _run([cli, "convert", source, "-o", out.name, "--preset", "rvq-1.6"], elsewhere, env)
    assert out.is_file() and out.stat().st_size > 0, converted.stderr[-2000:]
    assert sys.executable != str(python)
