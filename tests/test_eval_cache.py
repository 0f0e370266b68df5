"""The evaluation cache: keys change when (and only when) an input changes; entries appear only
once complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvq_gguf.eval import cache as eval_cache
from carvq_gguf.errors import CarvqError
from carvq_gguf.eval.cache import EvalCache, codec_code_version, content_hash, hash_key
from carvq_gguf.eval.evaluate import EvalSettings


def test_hash_key_depends_on_every_part() -> None:
    base = hash_key("stock", 1, "abc", "Q4_0", None)
    assert base == hash_key("stock", 1, "abc", "Q4_0", None)
    assert base != hash_key("stock", 1, "abd", "Q4_0", None)
    assert base != hash_key("stock", 1, "abc", "Q2_0", None)
    assert base != hash_key("stock", 2, "abc", "Q4_0", None)
    assert base != hash_key("stock", 1, "abc", "Q4_0", "imatrix-hash")
    assert hash_key({"a": 1, "b": 2}) == hash_key({"b": 2, "a": 1})


def test_content_hash_follows_file_content(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF one")
    first = content_hash(f)
    f.write_bytes(b"GGUF two!")
    assert content_hash(f) != first
    g = tmp_path / "copy.gguf"
    g.write_bytes(b"GGUF two!")
    assert content_hash(g) == content_hash(f)


def test_eval_settings_key_changes_with_text_and_windows(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    key = EvalSettings(text, ctx=512, windows=8).key()
    assert key == EvalSettings(text, ctx=512, windows=8, threads=7).key()  # threads do not change results
    assert key != EvalSettings(text, ctx=256, windows=8).key()
    assert key != EvalSettings(text, ctx=512, windows=9).key()
    text.write_text("other text\n")
    assert key != EvalSettings(text, ctx=512, windows=8).key()


def test_codec_code_version_changes_with_a_codec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = {path.name for path in eval_cache._source_files()}
    assert {"presets.py", "rvq.py", "pipeline.py"} <= names and "evaluate.py" not in names
    presets, pipeline = tmp_path / "presets.py", tmp_path / "pipeline.py"
    presets.write_text("A = 1\n")
    pipeline.write_text("B = 1\n")
    monkeypatch.setattr(eval_cache, "_source_files", lambda: [presets, pipeline])
    first = codec_code_version()
    assert codec_code_version() == first
    presets.write_text("A = 2\n")
    second = codec_code_version()
    assert second != first
    pipeline.write_text("B = 2\n")
    assert codec_code_version() != second


def test_cache_file_is_built_once_and_atomically(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path / "c")
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_text("done")

    a = cache.file("models", "k1", ".gguf", build)
    b = cache.file("models", "k1", ".gguf", build)
    assert a == b and a.read_text() == "done" and len(calls) == 1
    assert calls[0] != a  # built under a temporary name

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.file("models", "k2", ".gguf", failing)
    assert not cache.path("models", "k2", ".gguf").exists()
    assert [p.name for p in (tmp_path / "c" / "models").iterdir()] == [a.name]


def test_cache_json_computes_once(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path)
    calls = []
    value = cache.json("runs", "k", lambda: calls.append(1) or {"ppl": 12.5})
    again = cache.json("runs", "k", lambda: calls.append(1) or {"ppl": 99.0})
    assert value == again == {"ppl": 12.5} and calls == [1]
    assert cache.load_json("runs", "other") is None


def test_temporaries_of_killed_builders_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    models = tmp_path / "models"
    models.mkdir()
    stale = models / f".tmp-{dead_pid}-abc.gguf"
    live = models / f".tmp-{os.getpid()}-def.gguf"
    stale.write_text("half")
    live.write_text("being written")
    EvalCache(tmp_path)
    assert not stale.exists() and live.exists()


def test_codec_version_hashes_the_files_the_import_system_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import carvq_gguf.convert.pipeline as pipeline

    files = eval_cache._source_files()
    assert Path(pipeline.__file__) in files  # the converter package, wherever it is installed
    assert all(path.is_file() for path in files)
    monkeypatch.setattr(eval_cache, "CODEC_MODULES", (*eval_cache.CODEC_MODULES, "no_such_module"))
    with pytest.raises(CarvqError, match="no_such_module"):
        eval_cache.codec_code_version()
