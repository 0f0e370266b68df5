"""The llama.cpp patch series, shipped inside the package (as carvq_gguf.patches) so that a
non-editable install can build the runtime. `series` lists the patches in order."""

from pathlib import Path

PATCHES_DIR = Path(__file__).resolve().parent
