"""The native test programs' sources (carvq-load, the loader fuzz harness, and the CMake project
that builds it and test-backend-ops against the patched llama.cpp), shipped inside the package
as carvq_gguf.native so that the runtime layer finds them the same way in any install."""

from pathlib import Path

NATIVE_DIR = Path(__file__).resolve().parent
