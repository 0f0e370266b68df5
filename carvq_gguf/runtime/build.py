"""The CARVQ runtime: llama-cpp-python with patches/ applied, built once and cached.

One compile serves both products. `pip wheel` builds the patched llama-cpp-python in a
scikit-build-core build directory that is kept; the same CMake tree is then reconfigured with
llama.cpp's tools enabled and only the four tool targets are built, so ggml and llama are
compiled once and the tools run exactly the code the wheel ships.

Layout under sdist.cache_dir():
    wheels/<key>/llama_cpp_python-*.whl   the built wheel (patched, or stock)
    tools/<key>/llama-perplexity ...      llama.cpp's tools with the shared libraries they load
    stock/<key>/llama_cpp/                the stock wheel unpacked, for stock_python_env()
    logs/                                 full build logs

<key> = sdist sha256 + patch-series hash (or "stock") + hash of the build flags (CMAKE_ARGS and,
for a native build, the CPU's feature flags) + interpreter tag + platform, so a cache shared
between machines never hands out a build for another CPU or other GPU flags. A cached entry is
complete when its directory exists: everything is built in a scratch directory and renamed into
place at the end, so nothing half-built is ever used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from . import sdist
from ..errors import CarvqError
from ..patches import PATCHES_DIR

TOOLS = ("llama-perplexity", "llama-bench", "llama-quantize", "llama-imatrix")
# Our defaults come first in CMAKE_ARGS so that a user's own -D flags, appended after, win.
# $ORIGIN build rpaths make the tools' directory relocatable into the cache.
DEFAULT_CMAKE_ARGS = ("-DGGML_NATIVE=ON", "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON")
# Enabling llama.cpp's tools adds tools/mtmd, which llama-cpp-python's CMakeLists adds itself when
# LLAVA_BUILD is on; the reconfigure for the tools turns that copy off (the wheel is already built).
TOOLS_CMAKE_ARGS = ("-DLLAMA_BUILD_TOOLS=ON", "-DLLAVA_BUILD=OFF")
# What llama_cpp itself imports, and what llama_cpp.server needs (the sdist's "server" extra).
RUNTIME_DEPS = ("typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3")
SERVER_DEPS = ("uvicorn>=0.22.0", "fastapi>=0.100.0", "pydantic-settings>=2.0.1", "sse-starlette>=1.6.1",
               "starlette-context>=0.3.6,<0.4", "PyYAML>=5.1")
STAMP = "carvq_patches.txt"  # written into the patched llama_cpp package: the patch-series hash
_NINJA_STEP = re.compile(r"\[(\d+)/(\d+)\]")
_NATIVE_OFF = re.compile(r"-DGGML_NATIVE(?::BOOL)?=(OFF|0|FALSE|NO|N)\b", re.IGNORECASE)


def patch_files(patches_dir: Path = PATCHES_DIR) -> list[Path]:
    """The patches named in patches_dir/series, in order (blank lines and # comments skipped)."""
    series = patches_dir / "series"
    if not series.is_file():
        raise CarvqError(f"{series} not found: the patch series is missing")
    paths = []
    for line in series.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        path = patches_dir / name
        if not path.is_file():
            raise CarvqError(f"patch {name} is listed in {series} but does not exist")
        paths.append(path)
    if not paths:
        raise CarvqError(f"{series} lists no patches")
    return paths


def patches_hash(patches_dir: Path = PATCHES_DIR) -> str:
    """Hex SHA-256 over the series order, names and bytes of every patch."""
    digest = hashlib.sha256()
    for path in patch_files(patches_dir):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def cmake_args(environ: dict[str, str] | None = None) -> str:
    """CMAKE_ARGS for the build: our defaults, then the user's own CMAKE_ARGS (which therefore win,
    e.g. -DGGML_CUDA=on or -DGGML_NATIVE=OFF)."""
    user = (os.environ if environ is None else environ).get("CMAKE_ARGS", "").strip()
    return " ".join([*DEFAULT_CMAKE_ARGS, user]).strip()


def cpu_features() -> str:
    """What a -march=native build depends on: the CPU's instruction-set flags (Linux /proc/cpuinfo,
    macOS sysctl), or the processor name where neither is available."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features", "isa"):  # x86, arm, riscv
                return f"{platform.machine()}: {' '.join(sorted(value.split()))}"
    if sys.platform == "darwin":
        result = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "machdep.cpu.features"],
                                capture_output=True, text=True)
        if result.returncode == 0:
            return f"{platform.machine()}: {result.stdout.strip()}"
    return f"{platform.machine()}: {platform.processor()}"


def flags_hash(args: str) -> str:
    """Short hash of everything that changes the compiled binary besides sources: the CMake
    arguments and, unless the user turned GGML_NATIVE off, this CPU's features."""
    native = _NATIVE_OFF.search(args) is None
    payload = args + "\0" + (cpu_features() if native else "portable")
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_key(stock: bool = False, patches_dir: Path = PATCHES_DIR, environ: dict[str, str] | None = None) -> str:
    """Cache key of a build: sdist hash, patch hash (or 'stock'), build flags, interpreter tag, platform."""
    patches = "stock" if stock else patches_hash(patches_dir)[:16]
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return (f"{sdist.SDIST_SHA256[:16]}-{patches}-{flags_hash(cmake_args(environ))}-"
            f"{sys.implementation.cache_tag}-{plat}")


def _run_logged(cmd: list[str], log: Path, desc: str, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> None:
    """Run cmd, appending its output to log; a tqdm bar follows ninja's [i/n] steps.

    CarvqError with the end of the log if the command fails."""
    from tqdm import tqdm  # imported here: fetching and patching the sdist needs only the stdlib

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, tqdm(total=0, desc=desc, unit="step", file=sys.stderr) as bar:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            m = _NINJA_STEP.search(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                if bar.total != total:
                    bar.reset(total=total)
                bar.n = done
                bar.refresh()
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise CarvqError(f"{desc} failed (exit {rc}); full log: {log}\n{tail}")


def unpack_sdist(dest: Path) -> Path:
    """Unpack the verified pinned sdist into dest; returns the llama_cpp_python-<version> tree."""
    archive = sdist.ensure_sdist()
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    tree = dest / f"llama_cpp_python-{sdist.LLAMA_CPP_PYTHON_VERSION}"
    if not (tree / "vendor" / "llama.cpp").is_dir():
        raise CarvqError(f"{archive} does not contain vendor/llama.cpp")
    return tree


def apply_patches(tree: Path, patches: list[Path]) -> None:
    """Check, then apply, each patch in order to tree/vendor/llama.cpp (git apply).

    CarvqError naming the first patch that does not apply."""
    llama_dir = tree / "vendor" / "llama.cpp"
    for patch in patches:
        for args in (["--check"], []):
            result = subprocess.run(["git", "apply", *args, str(patch)], cwd=llama_dir,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise CarvqError(f"patch {patch.name} does not apply to llama-cpp-python "
                                 f"{sdist.LLAMA_CPP_PYTHON_VERSION}'s vendor/llama.cpp:\n{result.stderr.strip()}")


def require_programs(*names: str) -> None:
    """CarvqError naming any of the given programs that is not on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise CarvqError(f"building the runtime needs {', '.join(missing)} on PATH (apt-get install {' '.join(missing)})")


def build_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the build commands: the caller's, with CMAKE_ARGS extended (not replaced)."""
    env = dict(os.environ if environ is None else environ)
    env["CMAKE_ARGS"] = cmake_args(env)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    return env


def _publish(tmp: Path, final: Path) -> Path:
    """Move a finished build directory into its cache place (atomic rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    os.replace(tmp, final)
    return final


def _scratch(name: str) -> Path:
    root = sdist.cache_dir() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def _collect_tools(bin_dir: Path, out: Path) -> None:
    """Copy the built tools and the shared libraries beside them (symlinks kept) into out."""
    out.mkdir()
    for name in TOOLS:
        if not (bin_dir / name).is_file():
            raise CarvqError(f"the tools build produced no {name} in {bin_dir}")
        shutil.copy2(bin_dir / name, out / name)
    for lib in bin_dir.glob("*.so*"):
        shutil.copy2(lib, out / lib.name, follow_symlinks=False)
    for lib in bin_dir.glob("*.dylib"):
        shutil.copy2(lib, out / lib.name, follow_symlinks=False)


def _compile(stock: bool) -> None:
    """Build the wheel and, for the patched tree, the tools from the same CMake build directory."""
    key = build_key(stock)
    cache = sdist.cache_dir()
    wheel_final, tools_final = cache / "wheels" / key, cache / "tools" / key
    if wheel_final.exists() and (stock or tools_final.exists()):
        return
    require_programs("git", "cmake", "c++")
    env = build_env()
    what = "stock" if stock else "patched"
    log = cache / "logs" / f"build-{key}.log"
    log.unlink(missing_ok=True)
    scratch = _scratch("build")
    try:
        tree = unpack_sdist(scratch / "src")
        if not stock:
            apply_patches(tree, patch_files())
            (tree / "llama_cpp" / STAMP).write_text(patches_hash() + "\n")
        build_dir, wheel_out = scratch / "build", scratch / "wheel"
        print(f"[build-runtime] compiling {what} llama-cpp-python {sdist.LLAMA_CPP_PYTHON_VERSION}"
              f"{'' if stock else ' and ' + ', '.join(TOOLS)} with CMAKE_ARGS={env['CMAKE_ARGS']!r} "
              f"(several minutes; log: {log})", file=sys.stderr)
        start = time.monotonic()
        _run_logged([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheel_out),
                     f"--config-settings=build-dir={build_dir}", str(tree)], log, f"{what} wheel", env=env)
        if not stock:
            _run_logged(["cmake", "-S", str(tree), "-B", str(build_dir), *TOOLS_CMAKE_ARGS],
                        log, "configure tools", env=env)
            _run_logged(["cmake", "--build", str(build_dir), "--config", "Release",
                         "-j", env["CMAKE_BUILD_PARALLEL_LEVEL"], "--target", *TOOLS], log, "tools", env=env)
            _collect_tools(build_dir / "bin", scratch / "tools")
            _publish(scratch / "tools", tools_final)
        _publish(wheel_out, wheel_final)
        print(f"[build-runtime] {what} build took {(time.monotonic() - start) / 60:.1f} min", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build_wheel(stock: bool = False) -> Path:
    """The cached llama-cpp-python wheel (patched, or stock), built if missing."""
    _compile(stock)
    final = sdist.cache_dir() / "wheels" / build_key(stock)
    wheels = sorted(final.glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise CarvqError(f"{final} should hold exactly one wheel; delete it and rebuild")
    return wheels[0]


def build_tools() -> Path:
    """Directory with llama.cpp's TOOLS from the patched tree (and the libraries they load)."""
    _compile(stock=False)
    return sdist.cache_dir() / "tools" / build_key()


def tool_path(name: str) -> Path:
    """Path of a built llama.cpp tool (one of TOOLS), building the runtime if needed."""
    if name not in TOOLS:
        raise CarvqError(f"unknown tool {name!r}; built tools are {', '.join(TOOLS)}")
    return build_tools() / name


def installed_stamp() -> str | None:
    """The patch-series hash stamped into the installed llama_cpp, or None if it is not patched
    (or not installed). Read from the package files, without importing llama_cpp."""
    try:
        dist = importlib.metadata.distribution("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None
    stamp = Path(dist.locate_file(f"llama_cpp/{STAMP}"))
    return stamp.read_text().strip() if stamp.is_file() else None


def is_patched() -> bool:
    """True if the installed llama-cpp-python was built from the current patches/."""
    return installed_stamp() == patches_hash()


def install_wheel(wheel: Path, with_server: bool = True) -> None:
    """Install wheel into the current interpreter's environment with its runtime (and server) deps."""
    deps = [*RUNTIME_DEPS, *(SERVER_DEPS if with_server else ())]
    for cmd in ([sys.executable, "-m", "pip", "install", "-q", *deps],
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CarvqError(f"pip failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")


def ensure_runtime() -> Path:
    """Build (or take from the cache) the patched wheel and tools, and install the wheel unless it
    is already installed. A repeat run with nothing to do takes seconds. Returns the tools dir."""
    wheel = build_wheel()
    if is_patched():
        print(f"[build-runtime] patched llama-cpp-python already installed ({wheel.name})", file=sys.stderr)
    else:
        print(f"[build-runtime] installing {wheel}", file=sys.stderr)
        install_wheel(wheel)
        if not is_patched():
            raise CarvqError("installed the patched wheel but the installed llama_cpp carries no matching stamp")
    tools = build_tools()
    print(f"[build-runtime] tools in {tools}", file=sys.stderr)
    return tools


def stock_package_dir() -> Path:
    """A directory holding the STOCK (unpatched) llama_cpp package, built and unpacked if missing.

    Put it first on PYTHONPATH (see stock_python_env) to import the stock build instead of the
    patched one installed in the environment."""
    final = sdist.cache_dir() / "stock" / build_key(stock=True)
    if not final.exists():
        wheel = build_wheel(stock=True)
        scratch = _scratch("stock")
        try:
            out = scratch / "out"
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(out)
            for lib in (out / "llama_cpp" / "lib").iterdir():
                lib.chmod(0o755)  # zip extraction drops the executable bits of the shared libraries
            _publish(out, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def stock_python_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess of sys.executable that imports the stock llama_cpp (the
    other dependencies come from the current environment)."""
    env = dict(os.environ if base is None else base)
    parts = [str(stock_package_dir())]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env
