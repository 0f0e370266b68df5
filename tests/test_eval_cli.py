"""`carvq-gguf eval` and `carvq-gguf pareto` refuse bad input with a clear message before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvq_gguf.cli.main import main


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_eval_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["eval", str(tmp_path / "nope.gguf"), "--cache-dir", str(tmp_path / "c")])
    assert "nope.gguf does not exist" in err


def test_eval_not_a_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    err = _error(capsys, ["eval", str(bad), "--cache-dir", str(tmp_path / "c")])
    assert "bad.gguf is not a GGUF file" in err


def test_eval_missing_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(20))
    err = _error(capsys, ["eval", str(model), "--text", str(tmp_path / "none.txt"), "--cache-dir", str(tmp_path)])
    assert "evaluation text" in err and "none.txt does not exist" in err


def test_eval_missing_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(20))
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    err = _error(capsys, ["eval", str(model), "--text", str(text), "--base", str(tmp_path / "orig.gguf"),
                          "--cache-dir", str(tmp_path / "c")])
    assert "orig.gguf does not exist" in err


def test_eval_truncated_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(20))
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    err = _error(capsys, ["eval", str(model), "--text", str(text), "--cache-dir", str(tmp_path / "c")])
    assert "cannot read the tensors of" in err and "m.gguf" in err


def test_pareto_unknown_preset_fails_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "s.gguf"
    src.write_bytes(b"GGUF" + bytes(20))
    err = _error(capsys, ["pareto", str(src), "-o", str(tmp_path / "out"), "--presets", "carvq-9.9",
                          "--cache-dir", str(tmp_path / "c")])
    assert "unknown preset 'carvq-9.9'" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "c" / "models").exists()


def test_pareto_same_eval_and_calib_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "s.gguf"
    src.write_bytes(b"GGUF" + bytes(20))
    text = tmp_path / "t.txt"
    text.write_text("the same words\n")
    err = _error(capsys, ["pareto", str(src), "-o", str(tmp_path / "out"), "--text", str(text),
                          "--calib-text", str(text), "--cache-dir", str(tmp_path / "c")])
    assert "evaluation text and the calibration text are the same" in err
