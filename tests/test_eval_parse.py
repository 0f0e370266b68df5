"""Parsing llama-perplexity's output: real outputs captured from the built tool (tests/data/
llama_perplexity: a tiny random llama, 6 windows of 64 tokens, and SmolLM2-135M, 8 windows of 512),
outputs cut short by the tool's logger, error cases, and a live run of the current build."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from carvq_gguf.eval import llama_perplexity
from carvq_gguf.eval.llama_perplexity import TruncatedOutput, parse_kld_output, parse_perplexity_output, scored_tokens
from carvq_gguf.errors import CarvqError

DATA = Path(__file__).parent / "data" / "llama_perplexity"


def _read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_base_run_tiny() -> None:
    out = _read("base_tiny.txt")  # 6 windows saved
    run = parse_perplexity_output(out, 5)
    assert run.ppl == pytest.approx(264.2685)  # the running value printed after window 5
    assert (run.windows, run.n_ctx, run.saved_windows) == (5, 64, 6)
    assert run.chunk_ppl == pytest.approx([264.4784, 257.9288, 259.2073, 259.8836, 264.2685])
    assert run.scored_tokens == 5 * 31
    assert parse_perplexity_output(out).windows == 5  # default: one before the last saved window
    assert parse_perplexity_output(out, 2).ppl == pytest.approx(257.9288)


def test_base_run_smollm2() -> None:
    run = parse_perplexity_output(_read("base_smollm2_8x512.txt"))
    assert run.ppl == pytest.approx(16.6165) and run.chunk_ppl[0] == pytest.approx(14.5603)
    assert (run.windows, run.n_ctx, run.scored_tokens) == (7, 512, 7 * 255)


def test_kld_run_tiny() -> None:
    out = _read("kld_tiny.txt")
    run = parse_kld_output(out, 5)
    # row 5 of the table: 263.9001 ± 4.2084, -0.00140 ± 0.00233, 0.00068 ± 0.00005, ..., 100.000 ± 0.000 %
    assert run.ppl == pytest.approx(263.9001) and run.ppl_err == pytest.approx(4.2084)
    assert run.ln_ratio == pytest.approx(-0.00140) and run.ln_ratio_err == pytest.approx(0.00233)
    assert run.kld == pytest.approx(0.00068) and run.kld_err == pytest.approx(0.00005)
    assert run.same_top_p == pytest.approx(100.0)
    assert (run.windows, run.n_ctx, run.scored_tokens) == (5, 64, 155)
    assert run.dppl_percent == pytest.approx(100 * (math.exp(-0.00140) - 1))
    assert run.base_ppl == pytest.approx(263.9001 / math.exp(-0.00140))
    assert run.chunk_kld == pytest.approx([0.00050, 0.00064, 0.00069, 0.00067, 0.00068])
    # the base perplexity it implies is the base run's after the same 5 windows
    assert run.base_ppl == pytest.approx(parse_perplexity_output(_read("base_tiny.txt"), 5).ppl, rel=1e-3)
    with pytest.raises(CarvqError, match="only 6 windows were scored"):
        parse_kld_output(out, 6)


def _cut_after(text: str, marker: str) -> str:
    return text[: text.index(marker)]


def test_real_cut_outputs_still_parse_one_window_early() -> None:
    """Captured runs whose last lines the tool's logger dropped: the result window is still there."""
    base = parse_perplexity_output(_read("base_tiny_cut.txt"), 5)
    assert base.ppl == pytest.approx(264.2685)
    kld = parse_kld_output(_read("kld_tiny_cut.txt"), 5)
    assert kld.kld == pytest.approx(0.00068)


def test_outputs_cut_before_the_result_window() -> None:
    with pytest.raises(TruncatedOutput, match="stops after window 3 of 5"):
        parse_perplexity_output(_cut_after(_read("base_tiny_cut.txt"), "[4]"), 5)
    with pytest.raises(TruncatedOutput, match="stops after window 3 of 5"):
        parse_kld_output(_cut_after(_read("kld_tiny_cut.txt"), "\n   4 "), 5)


def test_runner_repeats_a_cut_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cut = _cut_after(_read("kld_tiny_cut.txt"), "\n   4 ")
    outputs = [cut, cut, _read("kld_tiny.txt")]
    monkeypatch.setattr(llama_perplexity, "_run", lambda cmd, desc: outputs.pop(0))
    run, _ = llama_perplexity._run_parsed(["x"], "test", lambda out: parse_kld_output(out, 5))
    assert run.kld == pytest.approx(0.00068) and outputs == []

    monkeypatch.setattr(llama_perplexity, "_run", lambda cmd, desc: cut)
    with pytest.raises(TruncatedOutput):
        llama_perplexity._run_parsed(["x"], "test", lambda out: parse_kld_output(out, 5))


def test_log_cut_before_the_scoring_is_retried() -> None:
    # Seen in CI: a tiny model's KLD run finished before llama.cpp's logger thread printed more
    # than its first lines; the process exited 0.
    cut = ("0.00.004.298 W load: SPM vocabulary, but newline token not found: unordered_map::at! Using "
           "special_pad_id instead.0.00.005.481 I cmn          init: llama threadpool init, n_threads = 2\n")
    with pytest.raises(TruncatedOutput, match="stops before the 'computing over N chunks' line"):
        parse_kld_output(cut, 5)
    with pytest.raises(TruncatedOutput, match="stops before the 'calculating perplexity over N chunks' line"):
        parse_perplexity_output(cut, 5)


def test_unrecognized_output() -> None:
    with pytest.raises(CarvqError, match="output not recognized"):
        parse_perplexity_output("llama-perplexity 2.0\nresult: 12.3\n")
    with pytest.raises(CarvqError, match="KL-divergence output not recognized"):
        parse_kld_output("some other tool\n")
    with pytest.raises(CarvqError, match="non-finite perplexity"):
        parse_perplexity_output(_read("base_tiny.txt").replace("[5]264.2685", "[5]nan"), 5)


def test_kld_errors_are_reported() -> None:
    text = _read("kld_tiny.txt")
    head = text.split("kl_divergence: computing")[0]
    with pytest.raises(CarvqError, match="inconsistent vocabulary"):
        parse_kld_output(head + "0.00.1 E kl_divergence: inconsistent vocabulary (256 vs 49152)\n" + text[len(head):])


def test_too_little_text() -> None:
    out = ("0.00.5 E perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512\n"
           "0.00.5 E perplexity: the data file you provided tokenizes to only 377 tokens\n")
    with pytest.raises(CarvqError, match="tokenizes to only 377 tokens"):
        parse_perplexity_output(out)
    one = _read("base_tiny.txt").replace("over 6 chunks", "over 1 chunks")
    with pytest.raises(CarvqError, match="at least 2 are needed"):
        parse_perplexity_output(one)


def test_scored_tokens() -> None:
    assert scored_tokens(32, 512) == 32 * 255
    assert scored_tokens(6, 64) == 186


@pytest.mark.runtime
def test_live_run_of_the_built_tool(tmp_path: Path) -> None:
    """The current build's output still parses: base run, then a KLD run of the same model."""
    from carvq_gguf.convert.hf_source import hf_to_gguf
    from tiny_sources import SENTENCES, make_tiny_hf

    model = hf_to_gguf(make_tiny_hf(tmp_path / "hf", tied=True), tmp_path / "tiny.gguf", "f16")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(SENTENCES * 3))
    logits = tmp_path / "base.logits"
    base, _ = llama_perplexity.run_base(model, text, logits, ctx=64, windows=4)
    assert (base.windows, base.saved_windows) == (4, 5) and base.ppl > 1 and logits.stat().st_size > 0
    same, _ = llama_perplexity.run_kld(model, logits, windows=4, ctx=64)
    assert same.windows == 4
    assert same.kld == pytest.approx(0, abs=1e-4) and same.ppl == pytest.approx(base.ppl, rel=1e-3)
    assert same.same_top_p == pytest.approx(100.0)
