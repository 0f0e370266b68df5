"""The patch series and the build step: series and README consistent, patches apply to the
pinned tree (and a bad one is named), the cache keys, cache hits without rebuilding, the
installed build and the tools."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from carvq_gguf.runtime import build as runtime
from carvq_gguf.runtime import sdist
from carvq_gguf.codec.state import CarvqError

LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def test_series_lists_numbered_format_patch_files_in_order() -> None:
    patches = runtime.patch_files()
    names = [p.name for p in patches]
    assert names == sorted(names)
    for i, path in enumerate(patches, start=1):
        assert re.fullmatch(rf"{i:04d}-[A-Za-z0-9_.-]+\.patch", path.name), path.name
        text = path.read_text()
        assert text.startswith("From ") and "\nSubject: [PATCH" in text and "\ndiff --git a/" in text


def test_readme_names_the_pinned_versions() -> None:
    readme = (runtime.PATCHES_DIR / "README.md").read_text()
    assert f"llama-cpp-python {sdist.LLAMA_CPP_PYTHON_VERSION}" in readme
    assert LLAMA_CPP_COMMIT in readme and sdist.SDIST_SHA256 in readme


def test_the_pinned_sdist_vendors_the_commit_the_readme_names() -> None:
    head = sdist.ensure_pristine_tree() / ".git" / "modules" / "vendor" / "llama.cpp" / "HEAD"
    assert head.read_text().strip() == LLAMA_CPP_COMMIT


def test_the_series_applies_to_the_pristine_tree(tmp_path: Path) -> None:
    """Applied in order, each patch checked first, as build-runtime does, to a copy of the pristine
    files the series touches (one `git apply` of several patches would check each against the
    pristine files, and patches 0001 and 0007 change the same ones)."""
    patches = runtime.patch_files()
    pristine = sdist.vendored_llama_cpp()
    llama_dir = tmp_path / "vendor" / "llama.cpp"
    touched = {line.split()[2][len("a/"):] for patch in patches for line in patch.read_text().splitlines()
               if line.startswith("diff --git ")}
    for rel in touched:
        if (pristine / rel).exists():
            (llama_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pristine / rel, llama_dir / rel)
    runtime.apply_patches(tmp_path, patches)
    assert (llama_dir / "src" / "llama-carvq.cpp").is_file()


def test_a_patch_that_does_not_apply_is_named(tmp_path: Path) -> None:
    good = runtime.patch_files()[0]
    tree = tmp_path / "tree"
    (tree / "vendor" / "llama.cpp" / "ggml" / "include").mkdir(parents=True)
    (tree / "vendor" / "llama.cpp" / "ggml" / "include" / "ggml.h").write_text("not the real header\n")
    with pytest.raises(CarvqError, match=re.escape(good.name)):
        runtime.apply_patches(tree, [good])


def test_series_problems_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CarvqError, match="series"):
        runtime.patch_files(tmp_path)
    (tmp_path / "series").write_text("0001-missing.patch\n")
    with pytest.raises(CarvqError, match="0001-missing.patch"):
        runtime.patch_files(tmp_path)
    (tmp_path / "series").write_text("# nothing\n\n")
    with pytest.raises(CarvqError, match="no patches"):
        runtime.patch_files(tmp_path)


def test_cache_key_follows_every_patch_byte(tmp_path: Path) -> None:
    copy = tmp_path / "patches"
    shutil.copytree(runtime.PATCHES_DIR, copy)
    assert runtime.patches_hash(copy) == runtime.patches_hash()
    assert runtime.build_key(patches_dir=copy) == runtime.build_key()
    last = runtime.patch_files(copy)[-1]
    last.write_bytes(last.read_bytes() + b"\n")
    assert runtime.build_key(patches_dir=copy) != runtime.build_key()
    assert "stock" in runtime.build_key(stock=True) and "stock" not in runtime.build_key()
    assert sdist.SDIST_SHA256[:16] in runtime.build_key()


def test_user_cmake_args_are_kept_after_ours() -> None:
    env = runtime.build_env({"CMAKE_ARGS": "-DGGML_CUDA=on -DGGML_NATIVE=OFF", "PATH": "/usr/bin"})
    args = env["CMAKE_ARGS"].split()
    assert args[: len(runtime.DEFAULT_CMAKE_ARGS)] == list(runtime.DEFAULT_CMAKE_ARGS)
    assert args[-2:] == ["-DGGML_CUDA=on", "-DGGML_NATIVE=OFF"]  # last -D wins in CMake
    assert env["PATH"] == "/usr/bin"
    assert runtime.build_env({})["CMAKE_ARGS"] == " ".join(runtime.DEFAULT_CMAKE_ARGS)


def test_cache_key_follows_the_flags_that_change_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = runtime.build_key(environ={})
    assert runtime.build_key(environ={"CMAKE_ARGS": "-DGGML_VULKAN=on"}) != plain
    assert runtime.build_key(environ={}) == plain
    monkeypatch.setattr(runtime, "cpu_features", lambda: "x86_64: sse2")
    assert runtime.build_key(environ={}) != plain  # native builds are per CPU ...
    portable = {"CMAKE_ARGS": "-DGGML_NATIVE=OFF"}
    key_here = runtime.build_key(environ=portable)
    monkeypatch.setattr(runtime, "cpu_features", lambda: "x86_64: avx512f")
    assert runtime.build_key(environ=portable) == key_here  # ... portable ones are not


def test_cpu_features_name_the_instruction_set() -> None:
    features = runtime.cpu_features()
    assert features.startswith(__import__("platform").machine())
    assert len(features) > len(__import__("platform").machine()) + 2


def test_the_patch_series_ships_inside_the_package() -> None:
    import carvq_gguf.patches

    assert runtime.PATCHES_DIR == Path(carvq_gguf.patches.__file__).parent
    assert [p.name for p in runtime.patch_files()] == (runtime.PATCHES_DIR / "series").read_text().split()


@pytest.mark.runtime
def test_installed_build_is_the_patched_one() -> None:
    assert runtime.is_patched(), "run carvq-gguf build-runtime"
    assert runtime.installed_stamp() == runtime.patches_hash()


@pytest.mark.runtime
def test_repeat_setup_uses_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError(f"rebuilt although cached: {args[0]}")
    monkeypatch.setattr(runtime, "_run_logged", no_build)
    monkeypatch.setattr(runtime, "install_wheel", no_build)
    tools = runtime.ensure_runtime()
    assert runtime.build_wheel().name.startswith("llama_cpp_python-")
    assert tools == runtime.build_tools()


@pytest.mark.runtime
@pytest.mark.parametrize("name", runtime.TOOLS)
def test_tools_are_built_and_run(name: str) -> None:
    path = runtime.tool_path(name)
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})  # no LD_LIBRARY_PATH: the tools find their libs
    assert result.returncode in (0, 1) and len(result.stdout + result.stderr) > 100


def _build_id(path: Path) -> str:
    """The GNU build ID of an ELF file: kept by strip, so it identifies the link that made it."""
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert found, f"{path} has no build ID"
    return found.group(1)


@pytest.mark.runtime
def test_tools_and_wheel_come_from_one_compile(tmp_path: Path) -> None:
    """The tools load the very llama and ggml libraries the wheel ships (one build tree, one
    compile); the wheel's copies are stripped, so the link is compared by build ID."""
    import zipfile

    with zipfile.ZipFile(runtime.build_wheel()) as wheel:
        wheel.extractall(tmp_path, [n for n in wheel.namelist() if n.startswith("llama_cpp/lib/lib")])
    for lib in ("libllama.so", "libggml-base.so", "libggml-cpu.so"):
        assert _build_id(runtime.build_tools() / lib) == _build_id(tmp_path / "llama_cpp" / "lib" / lib), lib


def test_unknown_tool_is_refused() -> None:
    with pytest.raises(CarvqError, match="llama-server"):
        runtime.tool_path("llama-server")


def test_missing_build_programs_are_named() -> None:
    with pytest.raises(CarvqError, match="no-such-compiler-xyz"):
        runtime.require_programs("git", "no-such-compiler-xyz")
