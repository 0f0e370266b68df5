"""`carvq-gguf inspect`: settings, bytes and bpw per component, verdicts for good and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGUFValueType

from carvq_gguf.codec.bits import bpw, component_bits
from carvq_gguf.cli.main import main
from carvq_gguf.gguf.inspection import inspect_file
from carvq_gguf.gguf import rewrite as gguf_source
from conftest import make_random_state
from test_gguf_io import write_state
from tiny_sources import make_synthetic_gguf


@pytest.fixture
def carvq_file(tmp_path: Path) -> tuple[Path, object]:
    """A converted synthetic model (tied, so it has an explicit output.weight) and its state."""
    from gguf import GGUFReader

    src = GGUFReader(make_synthetic_gguf(tmp_path / "src.gguf"))
    matrix, _ = gguf_source.token_embedding(src)
    state = make_random_state(vocab_size=96, embedding_dim=64)
    out = tmp_path / "carvq.gguf"
    gguf_source.write_carvq_model(src, state, out, gguf_source.output_head(src, matrix, None), progress=False)
    return out, state


def test_json_report_has_the_agreed_keys(carvq_file, capsys: pytest.CaptureFixture) -> None:
    path, state = carvq_file
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("format_version", "bpw_total", "embedding_bytes", "file_bytes", "valid"):
        assert key in report
    assert report["valid"] is True and report["reason"] is None
    assert report["format_version"] == 1 and report["architecture"] == "llama"
    assert report["file_bytes"] == path.stat().st_size
    assert report["bpw_total"] == pytest.approx(bpw(state))
    bits = component_bits(state)
    assert report["embedding_bytes"] * 8 == sum(bits.values())  # the file holds exactly what bits.py counts
    assert {k: v["bytes"] * 8 for k, v in report["components"].items()} == bits
    s = report["settings"]
    assert (s["vocab_size"], s["embedding_length"], s["levels"], s["codebook_size"]) == (96, 64, 2, 16)
    assert s["adaptor_hidden_dims"] == [32, 48] and s["correction_rows"] == 3
    assert report["output_head"] == {"type": "Q8_0", "bytes": 96 * 64 // 32 * 34}


def test_text_report(carvq_file, capsys: pytest.CaptureFixture) -> None:
    path, _ = carvq_file
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "architecture    llama" in text and "valid           yes" in text
    assert "L=2 layout=column" in text and "codes" in text and "total" in text


def test_non_carvq_gguf_is_reported_invalid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = make_synthetic_gguf(tmp_path / "plain.gguf")
    assert main(["inspect", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and report["architecture"] == "llama"
    assert report["reason"].startswith("not a CARVQ-GGUF")
    assert "dense Q8_0" in report["reason"]


def test_broken_carvq_file_is_reported_invalid(tmp_path: Path) -> None:
    state = make_random_state()
    path = write_state(tmp_path / "v4.gguf", state, set_keys={"carvq.version": (4, GGUFValueType.UINT32)})
    report = inspect_file(path)
    assert report["valid"] is False and "unsupported carvq.version 4" in report["reason"]
    assert report["format_version"] == 4


def test_missing_output_head_is_invalid(tmp_path: Path) -> None:
    report = inspect_file(write_state(tmp_path / "nohead.gguf", make_random_state()))
    assert report["valid"] is False and "no output.weight" in report["reason"]
    assert report["bpw_total"] > 0  # the CARVQ part itself was read


def test_truncated_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    full = make_synthetic_gguf(tmp_path / "x.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:-500])
    assert main(["inspect", str(cut)]) == 1
    assert "truncated" in capsys.readouterr().out
    report = inspect_file(tmp_path / "nope.gguf")
    assert report["valid"] is False and "no such file" in report["reason"]


def test_trellis_file_report_names_the_quantizer(tmp_path: Path) -> None:
    from carvq_gguf.codec.state import TrellisConfig
    from carvq_gguf.gguf.inspection import format_report

    state = make_random_state(trellis=TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=3))
    report = inspect_file(write_state(tmp_path / "t.gguf", state))
    assert report["format_version"] == 2 and report["settings"]["quantizer"] == "trellis"
    assert report["settings"]["trellis_groups"] == 3
    assert "trellis         L=6 k=3 d=2 (1.5 bits per value), 3 tables, 0 rows predicted" in format_report(report)


def test_a_file_with_predicted_rows_reports_them_and_their_bits(tmp_path: Path) -> None:
    from carvq_gguf.codec.state import TrellisConfig
    from carvq_gguf.gguf.inspection import format_report

    state = make_random_state(trellis=TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=3), predicted=20)
    report = inspect_file(write_state(tmp_path / "p.gguf", state))
    assert report["format_version"] == 3 and report["settings"]["predicted_rows"] == 20
    assert report["components"]["prediction"]["bytes"] == (64 * 3 + 32 * 20 + 32 * 64) / 8
    assert "3 tables, 20 rows predicted from related rows" in format_report(report)
