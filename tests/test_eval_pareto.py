"""End to end on a tiny random llama: two variants (a llama.cpp token_embd type and an RVQ preset)
built, measured by llama-perplexity against the source, reported; a rerun comes from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carvq_gguf.eval.cache import EvalCache
from carvq_gguf.gguf.summary import read_summary
from carvq_gguf.eval.pareto import ParetoOptions, run_pareto
from carvq_gguf.eval.pareto_report import write_report
from carvq_gguf.eval import variants
from carvq_gguf.gguf.rewrite import untie_head
from carvq_gguf.runtime.tools import build_imatrix
from tiny_sources import SENTENCES, make_tiny_hf

pytestmark = pytest.mark.runtime

CTX = 64
WINDOWS = 5  # 5 x 31 = 155 tokens scored (llama-perplexity runs 6 windows, results are read after 5)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tied llama GGUF (F16) with a tokenizer, made by llama.cpp's convert_hf_to_gguf.py."""
    from carvq_gguf.convert.hf_source import hf_to_gguf

    root = tmp_path_factory.mktemp("tiny")
    return hf_to_gguf(make_tiny_hf(root / "hf", tied=True), root / "tiny.gguf", "f16")


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Evaluation and calibration texts on one line each: the tiny sentencepiece vocabulary has no
    newline token, which llama.cpp's tokenizer needs for text with line breaks."""
    root = tmp_path_factory.mktemp("texts")
    text, calib = root / "eval.txt", root / "calib.txt"
    text.write_text(" ".join(SENTENCES * 3))
    calib.write_text(" ".join(reversed(SENTENCES * 3)))
    return text, calib


def _options(texts: tuple[Path, Path], **kw) -> ParetoOptions:
    return ParetoOptions(text=texts[0], calib_text=texts[1], ctx=CTX, windows=WINDOWS, imatrix_chunks=4,
                         progress=False, **kw)


def test_pareto_two_variants(tiny_source: Path, texts: tuple[Path, Path], tmp_path: Path) -> None:
    cache = EvalCache(tmp_path / "cache")
    options = _options(texts, stock_types=("Q4_0",), presets=("rvq-1.6",))
    data = run_pareto(tiny_source, options, cache)
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"Q4_0", "rvq-1.6"}
    q4, rvq = rows["Q4_0"], rows["rvq-1.6"]
    assert q4["embedding_type"] == "Q4_0" and rvq["embedding_type"] == "CARVQ"
    assert q4["embedding_bpw"] == pytest.approx(4.5)  # Q4_0: 18 bytes per 32 weights
    # RVQ L=3 on 256 x 64: 3 x 8 x 4-bit indices per row plus 3 x 8 F16 codebooks of 16 x 8
    assert rvq["embedding_bytes"] == 256 * 3 * 8 // 2 + 3 * 8 * 16 * 8 * 2
    assert rvq["embedding_bpw"] == pytest.approx(8 * rvq["embedding_bytes"] / (256 * 64))
    assert q4["head_type"] == rvq["head_type"] == "F16"  # the tied head is kept as in the source
    assert rvq["note"] == ("RVQ L=3 K=16 h=8, codebooks per column, k-means weighted by calibration frequency, "
                           "refined by joint least squares + beam search, no adaptor, 0 correction rows")
    for r in (q4, rvq):
        assert r["windows"] == WINDOWS and r["scored_tokens"] == WINDOWS * (CTX - 1 - CTX // 2)
        assert r["base_ppl"] == pytest.approx(data["source"]["ppl"], rel=1e-3)
        assert r["kld"] > 0 and r["ppl"] > 1
    # RVQ at 1.5 bpw on a random model moves the output more than 4.5-bit round-to-nearest
    assert rvq["kld"] > q4["kld"]

    paths = write_report(data, tmp_path / "report")
    md = paths["md"].read_text()
    assert "| Q4_0 | llama.cpp | Q4_0 | 4.500 |" in md and "| rvq-1.6 | RVQ only | CARVQ tensors |" in md
    assert f"{WINDOWS} windows of {CTX} tokens" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["rows"][0]["name"] == "Q4_0"

    # a rerun takes everything from the cache: no new entries, same numbers
    before = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    again = run_pareto(tiny_source, options, cache)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == before
    assert [r["kld"] for r in again["rows"]] == [r["kld"] for r in data["rows"]]

    # a model file whose build record is missing (a run killed in between) is rebuilt, not trusted
    for record in (tmp_path / "cache" / "builds").glob("*.json"):
        if json.loads(record.read_text()).get("requested") in ("Q4_0", "rvq-1.6"):
            record.unlink()
    third = run_pareto(tiny_source, options, cache)
    assert [r["model_sha256"] for r in third["rows"]] == [r["model_sha256"] for r in data["rows"]]


def test_stock_types_change_only_token_embd(tiny_source: Path, tmp_path: Path) -> None:
    untied = tmp_path / "untied.gguf"
    untie_head(tiny_source, untied)
    before = read_summary(untied)
    out = tmp_path / "q2_0.gguf"
    outcome = variants.quantize_token_embd(untied, out, "Q2_0")
    after = read_summary(out)
    assert outcome.actual == "Q2_0" and after.tensors["token_embd.weight"].type_name == "Q2_0"
    for name, t in before.tensors.items():
        if name != "token_embd.weight":
            assert after.tensors[name].sha256 == t.sha256, name
    assert after.tensors["output.weight"].type_name == "F16"

    # n = 64 is not a multiple of Q4_K's 256-wide block (nor of Q1_0's 128): llama.cpp's quantizer
    # does not fall back for --token-embedding-type, it refuses; the row says so and nothing is written
    for name in ("Q4_K", "Q1_0"):
        refused = variants.quantize_token_embd(untied, tmp_path / f"{name}.gguf", name)
        assert refused.actual is None, name
        assert "not supported by llama.cpp here: tensor row size not divisible by block size" in refused.note
        assert not (tmp_path / f"{name}.gguf").exists()


def test_quantizer_runs_without_ggml_backtrace(tiny_source: Path, tmp_path: Path, monkeypatch) -> None:
    """Refusals of a type are GGML_ASSERTs; ggml's backtrace forks the multithreaded quantizer to
    attach a debugger, and that fork has hung a pareto run for good. The quantizer must run with
    GGML_NO_BACKTRACE set."""
    untied = tmp_path / "untied.gguf"
    untie_head(tiny_source, untied)
    seen = {}
    real_run = variants.subprocess.run

    def run(cmd, **kwargs):
        if not str(cmd[0]).endswith("llama-quantize"):
            return real_run(cmd, **kwargs)
        seen.update(kwargs.get("env") or {})
        raise RuntimeError("stop before running the quantizer")

    monkeypatch.setattr(variants.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="stop before"):
        variants.quantize_token_embd(untied, tmp_path / "out.gguf", "IQ1_M")
    assert seen.get("GGML_NO_BACKTRACE") == "1"
    assert not (tmp_path / "out.gguf.tensor-types").exists()


def test_stock_types_keep_a_mixed_type_source_as_it_is(tiny_source: Path, tmp_path: Path) -> None:
    """A source whose tensors are not all of its file type (Q4_K_M keeps some in Q6_K/Q5_0) keeps
    them: only token_embd changes."""
    import subprocess

    from carvq_gguf.runtime.build import tool_path

    untied = tmp_path / "untied.gguf"
    untie_head(tiny_source, untied)
    mixed = tmp_path / "mixed.gguf"
    subprocess.run([str(tool_path("llama-quantize")), "--allow-requantize", "--tensor-type", "attn_v=q4_0",
                    str(untied), str(mixed), "Q8_0"], check=True, capture_output=True)
    before = read_summary(mixed)
    assert before.tensors["blk.0.attn_v.weight"].type_name == "Q4_0"
    assert before.tensors["blk.0.attn_q.weight"].type_name == "Q8_0"
    outcome = variants.quantize_token_embd(mixed, tmp_path / "q5_0.gguf", "Q5_0")  # CarvqError if others changed
    assert outcome.actual == "Q5_0"
    assert read_summary(tmp_path / "q5_0.gguf").tensors["blk.0.attn_v.weight"].type_name == "Q4_0"


def test_imatrix_is_built_on_calibration_text_and_reported(tiny_source: Path, texts: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    untied = tmp_path / "untied.gguf"
    untie_head(tiny_source, untied)
    imatrix = tmp_path / "imatrix.gguf"
    build_imatrix(untied, texts[1], imatrix, ctx=CTX, chunks=4)
    outcome = variants.quantize_token_embd(untied, tmp_path / "iq4.gguf", "IQ4_NL", imatrix)
    assert outcome.actual == "IQ4_NL"
    assert f"imatrix datasets=['{texts[1]}']" in outcome.log  # made from the calibration text
    # llama-imatrix records inputs of matrix products; token_embd is a row lookup, so it has no entry
    assert "imatrix given, but it has no entry for token_embd" in outcome.note


def test_eval_cli_with_base(tiny_source: Path, texts: tuple[Path, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from carvq_gguf.cli.main import main

    q4 = tmp_path / "q4.gguf"
    untied = tmp_path / "untied.gguf"
    untie_head(tiny_source, untied)
    variants.quantize_token_embd(untied, q4, "Q4_0")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    args = ["eval", str(q4), "--text", str(texts[0]), "--base", str(tiny_source), "--ctx", str(CTX),
            "--windows", str(WINDOWS), "--cache-dir", str(tmp_path / "c"), "--json", str(out_json),
            "--plot", str(out_png)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "input embedding Q4_0, 9,216 bytes, 4.500 bpw (V=256 x n=64)" in printed
    assert f"windows         {WINDOWS} x {CTX} tokens, {WINDOWS * 31} tokens scored" in printed
    assert "KL divergence" in printed and "dPPL" in printed
    row = json.loads(out_json.read_text())
    assert row["embedding_type"] == "Q4_0" and row["head_type"] == "F16" and row["kld"] >= 0
    assert len(row["chunk_kld"]) == WINDOWS
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    # without --base: perplexity only, equal to the KLD run's
    assert main(["eval", str(q4), "--text", str(texts[0]), "--ctx", str(CTX), "--windows", str(WINDOWS),
                 "--cache-dir", str(tmp_path / "c")]) == 0
    assert f"perplexity      {row['ppl']:.4f}" in capsys.readouterr().out


def test_every_preset_has_a_plot_line() -> None:
    """Each preset maps to a method the report knows how to draw; RVQ variants of the trellis
    presets get a line of their own rather than joining the main one."""
    from carvq_gguf.codec.presets import PRESET_NAMES
    from carvq_gguf.eval.pareto import preset_method
    from carvq_gguf.eval.pareto_report import METHOD_STYLE

    assert all(preset_method(name) in METHOD_STYLE for name in PRESET_NAMES)
    assert [preset_method(n) for n in ("carvq-1.6", "carvq-1.6-rvq", "carvq-1.6-adaptor", "rvq-1.6")] == [
        "CARVQ", "CARVQ, RVQ codes", "CARVQ + adaptor", "RVQ only"]


def test_report_note_says_what_each_preset_is_made_of() -> None:
    """The note names the row quantizer and its rate, and states the tuning's keep rule rather
    than claiming the tuning was kept (it is discarded where it does not lower the KL)."""
    from carvq_gguf.codec.state import TrellisConfig
    from carvq_gguf.codec.synthetic import random_state

    trellis = variants.recipe(random_state(table_dim=0, trellis=TrellisConfig(groups=2)), "carvq-1.6")
    assert trellis.startswith("trellis L=10 k=3 d=2 (1.5 bits per value), 2 tables")
    assert "paths searched under the diagonal of the model's Fisher" in trellis
    assert trellis.endswith("0 rows predicted from a related row, tuned 45 steps on the model's KL (restarted at a "
                            "lower rate if an early check finds the KL not lower), kept if the calibration KL fell")
    predicted = variants.recipe(random_state(table_dim=0, trellis=TrellisConfig(groups=2), predicted=7), "carvq-1.6")
    assert "3 correction rows, 7 rows predicted from a related row" in predicted
    rvq = variants.recipe(random_state(levels=3, table_dim=0), "carvq-1.6-rvq")
    assert rvq.startswith("RVQ L=3 K=16 h=8, codebooks per column") and "re-encoded 2 rounds" in rvq
    assert "tuned" not in variants.recipe(random_state(levels=3, table_dim=0), "rvq-1.6")
