"""HF source: a tiny random llama (tied and untied) through llama.cpp's convert_hf_to_gguf.py,
then CARVQ; the result against a base GGUF made by the same script."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGUFReader

from carvq_gguf.gguf import carvq_io
from carvq_gguf.cli.main import main
from carvq_gguf.gguf.inspection import inspect_file
from carvq_gguf.hf.calibration import calibration_token_ids
from carvq_gguf.convert.hf_source import hf_to_gguf
from carvq_gguf.convert.pipeline import ConvertOptions, convert
from carvq_gguf.errors import CarvqError
from test_convert_gguf import raw_fields, raw_tensors
from test_gguf_io import assert_states_identical
from tiny_sources import SENTENCES, make_tiny_hf

PRESET = "rvq-1.6"  # RVQ only: fast enough for a unit test; the adaptor path is covered below


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {tied: make_tiny_hf(root / f"tiny-{'tied' if tied else 'untied'}", tied) for tied in (True, False)}


@pytest.fixture(scope="module")
def converted(hf_dirs: dict[bool, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple]:
    """(result, out reader, base reader) per tied flag."""
    root = tmp_path_factory.mktemp("out")
    results = {}
    for tied, src in hf_dirs.items():
        base = root / f"base-{tied}.gguf"
        result = convert(src, root / f"carvq-{tied}.gguf", ConvertOptions(PRESET, progress=False, keep_base=base))
        results[tied] = (result, GGUFReader(result.out_path), GGUFReader(base))
    return results


@pytest.mark.parametrize("tied", [True, False])
def test_hf_conversion_keeps_everything_else(converted: dict, tied: bool) -> None:
    result, out, base = converted[tied]
    base_fields, out_fields = raw_fields(base), raw_fields(out)
    for name, raw in base_fields.items():
        assert out_fields[name] == raw, name
    base_t, out_t = raw_tensors(base), raw_tensors(out)
    assert "token_embd.weight" not in out_t and "carvq_codes" in out_t
    for name, value in base_t.items():
        if name != "token_embd.weight":
            assert out_t[name] == value, name
    assert ("output.weight" in base_t) == (not tied)


def test_hf_tied_head_is_explicit(converted: dict) -> None:
    result, out, base = converted[True]
    assert result.head_type == "F16" and result.token_embd_type == "F16"
    assert raw_tensors(out)["output.weight"] == raw_tensors(base)["token_embd.weight"]
    assert result.out_bytes > result.base_bytes  # the head stays dense, the CARVQ tensors come on top


def test_hf_untied_has_no_extra_head(converted: dict) -> None:
    result, out, base = converted[False]
    assert result.head_type is None and result.head_bytes == 0
    assert result.out_bytes - result.base_bytes < 0


@pytest.mark.parametrize("tied", [True, False])
def test_hf_conversion_reads_back_identically(converted: dict, tied: bool) -> None:
    from carvq_gguf.codec.embedding import CarvqEmbedding

    result, _, _ = converted[tied]
    back = carvq_io.load_carvq_state(result.out_path)
    assert_states_identical(result.state, back)
    a = CarvqEmbedding(result.state).decode_all()
    b = CarvqEmbedding(back).decode_all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("tied", [True, False])
def test_hf_conversion_inspects_valid(converted: dict, tied: bool) -> None:
    result, _, _ = converted[tied]
    report = inspect_file(result.out_path)
    assert report["valid"], report["reason"]
    assert report["architecture"] == "llama" and report["format_version"] == 1
    assert report["settings"]["vocab_size"] == 256 and report["settings"]["preset"] == PRESET
    assert report["embedding_bytes"] == result.carvq_bytes
    assert report["file_bytes"] == result.out_bytes


def test_calibration_ids_from_hf_dir_and_gguf(hf_dirs: dict, converted: dict) -> None:
    text = " ".join(SENTENCES[:3])
    from_dir = calibration_token_ids(hf_dirs[True], text)
    base_path = Path(converted[True][2].data.filename)
    from_gguf = calibration_token_ids(base_path, text)
    for ids in (from_dir, from_gguf):
        assert ids.dtype == torch.int64 and len(ids) > 10
        assert int(ids.min()) >= 0 and int(ids.max()) < 200
    with pytest.raises(CarvqError, match="calibration text is empty"):
        calibration_token_ids(hf_dirs[True], "  \n")


def test_gguf_source_conversion(converted: dict, tmp_path: Path) -> None:
    """The base GGUF (made from HF) as a GGUF source: the same codec as from the HF directory
    (the tokenizer inside the GGUF tokenizes differently, so only the settings are compared)."""
    base_path = Path(converted[True][2].data.filename)
    result = convert(base_path, tmp_path / "from-gguf.gguf", ConvertOptions(PRESET, progress=False))
    assert carvq_io.load_carvq_state(result.out_path).rvq == converted[True][0].state.rvq
    assert result.base_bytes == base_path.stat().st_size and result.head_type == "F16"


def test_base_gguf_script_failure_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "broken"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"]}')
    (src / "model.safetensors").write_bytes(b"")
    with pytest.raises(CarvqError, match="convert_hf_to_gguf.py failed"):
        hf_to_gguf(src, tmp_path / "b.gguf")


def test_bad_hf_dir_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CarvqError, match="has no config.json"):
        convert(tmp_path / "empty", tmp_path / "o.gguf", ConvertOptions(PRESET, progress=False))
    assert not (tmp_path / "o.gguf").exists()


def test_cli_convert_reports_size_change(converted: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.gguf"
    base_path = converted[True][2].data.filename
    rc = main(["convert", str(base_path), "-o", str(out), "--preset", PRESET, "--output-type", "q8_0",
               "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verified by reading it back" in text and "tied head written as output.weight Q8_0" in text
    assert "file size" in text
    head = next(t for t in GGUFReader(out).tensors if t.name == "output.weight")
    assert head.tensor_type.name == "Q8_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.gguf"]  # no temporary files left


def test_convert_with_a_saved_codec(converted: dict, tmp_path: Path) -> None:
    from carvq_gguf.codec.codec_file import save_codec

    result0, _, base = converted[True]
    save_codec(result0.state, tmp_path / "codec.pt")
    base_path = Path(base.data.filename)
    result = convert(base_path, tmp_path / "c.gguf", ConvertOptions("no-such-preset", codec=tmp_path / "codec.pt", progress=False))
    assert_states_identical(result0.state, carvq_io.load_carvq_state(result.out_path))
    from conftest import make_random_state
    save_codec(make_random_state(), tmp_path / "small.pt")
    with pytest.raises(CarvqError, match="is 96 x 64, but the model's token_embd is 256 x 64"):
        convert(base_path, tmp_path / "d.gguf", ConvertOptions(PRESET, codec=tmp_path / "small.pt", progress=False))


def test_unknown_preset_fails_before_any_work(hf_dirs: dict, tmp_path: Path) -> None:
    with pytest.raises(CarvqError, match="unknown preset 'nope'"):
        convert(hf_dirs[True], tmp_path / "o.gguf", ConvertOptions("nope", progress=False))
    assert list(tmp_path.iterdir()) == []
