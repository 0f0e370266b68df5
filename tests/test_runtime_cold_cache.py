"""A first setup on a fresh machine: an empty cache, and a virtual environment that holds only
what `python -m venv` puts there plus this package (no build backend, no scikit-build-core, no
torch). The runtime layer must fetch and verify the pinned sdist, unpack it and check the patch
series from there, with nothing cached; a warm cache on the developer's machine hid that it
could not."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COLD_STEPS = """
import sys
from carvq_gguf.runtime import build as runtime
from carvq_gguf.runtime import sdist
archive = sdist.ensure_sdist()                    # pip download + sha256 check
tree = runtime.unpack_sdist(sdist.cache_dir() / "unpacked")
runtime.apply_patches(tree, runtime.patch_files())
assert "torch" not in sys.modules
print("COLD-OK", archive)
"""


def test_download_verify_and_patch_from_an_empty_cache_in_a_fresh_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "CARVQ_"))}
    env.update(HOME=str(home), CARVQ_CACHE=str(cache), PYTHONNOUSERSITE="1")
    # this package alone, as setup.sh's first step leaves it before anything else is installed
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(REPO)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    result = subprocess.run([str(python), "-c", COLD_STEPS], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "COLD-OK" in result.stdout
    assert (cache / "sdist").is_dir() and not (home / ".cache" / "carvq-gguf").exists()
    # the fresh interpreter really lacked the build backend the old download needed
    probe = subprocess.run([str(python), "-c", "import scikit_build_core"], env=env, capture_output=True)
    assert probe.returncode != 0
    assert sys.executable != str(python)
