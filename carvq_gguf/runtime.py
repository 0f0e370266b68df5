"""The CARVQ runtime: llama-cpp-python with patches/ applied, built once and cached.

Layout under sdist.cache_dir():
    wheels/<key>/llama_cpp_python-*.whl   the built wheel (patched, or stock for the "stock" key)
    tools/<key>/llama-perplexity ...      llama.cpp's own tools from the same patched tree
    stock/<key>/llama_cpp/                the stock wheel unpacked, for stock_python_env()
    logs/                                 full build logs

<key> = sdist sha256 + sha256 of the patch series (or "stock") + interpreter tag + platform. A
cached entry is complete when its directory exists: everything is built in a temporary
directory next to it and renamed into place at the end, so nothing half-built is ever used.
The wheel is built with -DGGML_NATIVE=ON, i.e. for this machine's CPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

from . import sdist
from .errors import CarvqError

PATCHES_DIR = Path(__file__).resolve().parent.parent / "patches"
CMAKE_ARGS = "-DGGML_NATIVE=ON"
TOOLS = ("llama-perplexity", "llama-bench", "llama-quantize", "llama-imatrix")
# What llama_cpp itself imports, and what llama_cpp.server needs (the sdist's "server" extra).
RUNTIME_DEPS = ("typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3")
SERVER_DEPS = ("uvicorn>=0.22.0", "fastapi>=0.100.0", "pydantic-settings>=2.0.1", "sse-starlette>=1.6.1",
               "starlette-context>=0.3.6,<0.4", "PyYAML>=5.1")
STAMP = "carvq_patches.txt"  # written into the patched llama_cpp package: the patch-series hash
_NINJA_STEP = re.compile(r"\[(\d+)/(\d+)\]")


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


def build_key(stock: bool = False, patches_dir: Path = PATCHES_DIR) -> str:
    """Cache key of a build: sdist hash, patch hash (or 'stock'), interpreter tag, platform."""
    patches = "stock" if stock else patches_hash(patches_dir)[:16]
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{sdist.SDIST_SHA256[:16]}-{patches}-{sys.implementation.cache_tag}-{platform}"


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


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CMAKE_ARGS"] = CMAKE_ARGS
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


def build_wheel(stock: bool = False) -> Path:
    """The cached llama-cpp-python wheel (patched, or stock), built if missing."""
    key = build_key(stock)
    final = sdist.cache_dir() / "wheels" / key
    if not final.exists():
        require_programs("git", "cmake", "c++")
        scratch = _scratch("wheel")
        try:
            tree = unpack_sdist(scratch / "src")
            if not stock:
                apply_patches(tree, patch_files())
                (tree / "llama_cpp" / STAMP).write_text(patches_hash() + "\n")
            out = scratch / "out"
            log = sdist.cache_dir() / "logs" / f"wheel-{key}.log"
            log.unlink(missing_ok=True)
            print(f"[build-runtime] building {'stock' if stock else 'patched'} llama-cpp-python "
                  f"{sdist.LLAMA_CPP_PYTHON_VERSION} (several minutes; log: {log})", file=sys.stderr)
            _run_logged([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(tree)],
                        log, "wheel", env=_build_env())
            _publish(out, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    wheels = sorted(final.glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise CarvqError(f"{final} should hold exactly one wheel; delete it and rebuild")
    return wheels[0]


def build_tools() -> Path:
    """Directory with llama.cpp's TOOLS built (static) from the same patched tree, built if missing."""
    key = build_key()
    final = sdist.cache_dir() / "tools" / key
    if not final.exists():
        require_programs("git", "cmake", "c++")
        scratch = _scratch("tools")
        try:
            tree = unpack_sdist(scratch / "src")
            apply_patches(tree, patch_files())
            build = scratch / "build"
            log = sdist.cache_dir() / "logs" / f"tools-{key}.log"
            log.unlink(missing_ok=True)
            print(f"[build-runtime] building {', '.join(TOOLS)} (several minutes; log: {log})", file=sys.stderr)
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run_logged(["cmake", "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(build), *generator,
                         "-DCMAKE_BUILD_TYPE=Release", CMAKE_ARGS, "-DBUILD_SHARED_LIBS=OFF",
                         "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                         "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"],
                        log, "configure tools")
            _run_logged(["cmake", "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 2),
                         "--target", *TOOLS], log, "tools")
            out = scratch / "out"
            out.mkdir()
            for name in TOOLS:
                found = [p for p in build.rglob(name) if p.is_file() and os.access(p, os.X_OK)]
                if not found:
                    raise CarvqError(f"the tools build produced no {name}; see {log}")
                shutil.copy2(found[0], out / name)
            _publish(out, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def tool_path(name: str) -> Path:
    """Path of a built llama.cpp tool (one of TOOLS), building the tools if needed."""
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


def ensure_runtime(with_tools: bool = True) -> None:
    """Build (or take from the cache) the patched wheel, install it unless already installed, and
    build the tools. A repeat run with nothing to do takes seconds."""
    wheel = build_wheel()
    if is_patched():
        print(f"[build-runtime] patched llama-cpp-python already installed ({wheel.name})", file=sys.stderr)
    else:
        print(f"[build-runtime] installing {wheel}", file=sys.stderr)
        install_wheel(wheel)
        if not is_patched():
            raise CarvqError("installed the patched wheel but the installed llama_cpp carries no matching stamp")
    if with_tools:
        tools = build_tools()
        print(f"[build-runtime] tools in {tools}", file=sys.stderr)


def stock_package_dir() -> Path:
    """A directory holding the STOCK (unpatched) llama_cpp package, built and unpacked if missing.

    Put it first on PYTHONPATH (see stock_python_env) to import the stock build instead of the
    patched one installed in the environment."""
    key = build_key(stock=True)
    final = sdist.cache_dir() / "stock" / key
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
