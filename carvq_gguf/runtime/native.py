"""The native test programs of native/ (carvq-load, test-backend-ops), built against the patched
llama.cpp with AddressSanitizer and UndefinedBehaviorSanitizer.

They exist to check the C side, not to ship: carvq-load loads GGUF files through the patched loader
and decodes one batch (the fuzzing harness and the architecture test), test-backend-ops runs
llama.cpp's op tests for GGML_OP_GET_ROWS_RVQ. The build is separate from the runtime's because
sanitizers change the compiled code, and it is kept small (ggml + llama + the two programs).

Layout under sdist.cache_dir():
    native/src-<key>/    the pinned sdist with patches/ applied
    native/asan-<key>/   a persistent CMake build directory (incremental after an edit of native/)
<key> = the first 16 hex digits of the patch-series hash: new patches, new tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..native import NATIVE_DIR
from . import build as runtime, sdist

PROGRAMS = ("carvq-load", "test-backend-ops")
# A sanitizer report ends the process with one of these exit codes (nothing else uses them).
ASAN_EXIT, UBSAN_EXIT = 86, 87


def _key() -> str:
    return runtime.patches_hash()[:16]


def patched_source() -> Path:
    """vendor/llama.cpp of the pinned sdist with patches/ applied, unpacked once per patch series."""
    final = sdist.cache_dir() / "native" / f"src-{_key()}"
    if not final.exists():
        scratch = runtime._scratch("native-src")
        try:
            tree = runtime.unpack_sdist(scratch)
            runtime.apply_patches(tree, runtime.patch_files())
            runtime._publish(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final / f"llama_cpp_python-{sdist.LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"


def build(llama_cpp_dir: Path | None = None, build_dir: Path | None = None,
          targets: tuple[str, ...] = PROGRAMS) -> Path:
    """Configure (once) and build targets; returns the directory holding the programs.

    llama_cpp_dir / build_dir default to $CARVQ_NATIVE_LLAMA_CPP / $CARVQ_NATIVE_BUILD when both
    are set (a development tree with patches/ committed, and a build directory of one's own), else
    to the cached patched tree and its sanitizer build directory."""
    runtime.require_programs("cmake", "c++")
    if llama_cpp_dir is None and build_dir is None and os.environ.get("CARVQ_NATIVE_LLAMA_CPP") \
            and os.environ.get("CARVQ_NATIVE_BUILD"):
        llama_cpp_dir, build_dir = Path(os.environ["CARVQ_NATIVE_LLAMA_CPP"]), Path(os.environ["CARVQ_NATIVE_BUILD"])
    src = llama_cpp_dir or patched_source()
    out = build_dir or sdist.cache_dir() / "native" / f"asan-{_key()}"
    log = out / "build.log"
    out.mkdir(parents=True, exist_ok=True)
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(min(os.cpu_count() or 2, 2)))
    if not (out / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        runtime._run_logged(["cmake", "-S", str(NATIVE_DIR), "-B", str(out), *generator,
                             "-DCMAKE_BUILD_TYPE=RelWithDebInfo", f"-DLLAMA_CPP_DIR={src}"], log, "configure native")
    runtime._run_logged(["cmake", "--build", str(out), "-j", jobs, "--target", *targets], log,
                        f"building {', '.join(targets)}")
    return out


def sanitizer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running the programs: a sanitizer report exits with ASAN_EXIT / UBSAN_EXIT.

    Leak checking is off: the question is memory safety on malformed input, and a leak report at
    exit would hide which file was being loaded."""
    env = dict(os.environ if base is None else base)
    env["ASAN_OPTIONS"] = f"exitcode={ASAN_EXIT}:detect_leaks=0:abort_on_error=0:symbolize=1"
    env["UBSAN_OPTIONS"] = f"exitcode={UBSAN_EXIT}:halt_on_error=1:print_stacktrace=1"
    return env
