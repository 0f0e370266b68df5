"""Parsing llama-perplexity's output: real outputs captured from the built tool (tests/data/
llama_perplexity: a tiny random llama, 6 windows of 64 tokens, and SmolLM2-135M, 8 windows of 512),
outputs cut short by the tool's logger, error cases, and a live run of the current build."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvq_gguf import llama_eval
from carvq_gguf.llama_eval import TruncatedOutput, parse_kld_output, parse_perplexity_output, scored_tokens
from carvq_gguf.state import CarvqError

DATA = Path(__file__).parent / "data" / "llama_perplexity"


def _read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_base_run_tiny() -> None:
    run = parse_perplexity_output(_read("base_tiny.txt"))
    assert run.ppl == pytest.approx(266.5634) and run.ppl_err == pytest.approx(3.81162)
    assert (run.n_chunks, run.n_ctx) == (6, 64)
    assert run.chunk_ppl[0] == pytest.approx(264.4784) and len(run.chunk_ppl) == 6
    assert run.chunk_ppl[-1] == pytest.approx(run.ppl)
    assert run.scored_tokens == 6 * 31


def test_base_run_smollm2() -> None:
    run = parse_perplexity_output(_read("base_smollm2_8x512.txt"))
    assert run.ppl == pytest.approx(16.1908) and run.ppl_err == pytest.approx(1.01435)
    assert (run.n_chunks, run.n_ctx, run.scored_tokens) == (8, 512, 8 * 255)


def test_kld_run_tiny() -> None:
    run = parse_kld_output(_read("kld_tiny.txt"))
    assert run.ppl == pytest.approx(265.985762) and run.base_ppl == pytest.approx(266.563433)
    assert run.ppl_ratio == pytest.approx(0.997833) and run.ppl_ratio_err == pytest.approx(0.002238)
    assert run.kld == pytest.approx(0.000665) and run.kld_err == pytest.approx(0.000046)
    assert run.kld_max == pytest.approx(0.003972) and run.kld_p99 == pytest.approx(0.002967)
    assert run.kld_median == pytest.approx(0.000427)
    assert run.same_top_p == pytest.approx(100.0)
    assert (run.n_chunks, run.n_ctx) == (6, 64)
    assert run.dppl_percent == pytest.approx(100 * (265.985762 / 266.563433 - 1))
    # per-window table: running PPL and KLD, the last row equal to the final means
    assert len(run.chunk_ppl) == len(run.chunk_kld) == 6
    assert run.chunk_ppl[-1] == pytest.approx(run.ppl, abs=1e-4)
    assert run.chunk_kld[-1] == pytest.approx(run.kld, abs=1e-5)
    # the base run with the same windows gave the same base perplexity
    assert run.base_ppl == pytest.approx(parse_perplexity_output(_read("base_tiny.txt")).ppl, abs=1e-4)


def test_cut_outputs_are_recognized_as_cut() -> None:
    with pytest.raises(TruncatedOutput, match="stops before 'Final estimate'"):
        parse_perplexity_output(_read("base_tiny_cut.txt"))
    with pytest.raises(TruncatedOutput, match="stops before the statistics"):
        parse_kld_output(_read("kld_tiny_cut.txt"))


def test_runner_repeats_a_cut_run(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = [_read("kld_tiny_cut.txt"), _read("kld_tiny_cut.txt"), _read("kld_tiny.txt")]
    monkeypatch.setattr(llama_eval, "_run", lambda cmd, desc: outputs.pop(0))
    run, _ = llama_eval._run_parsed(["x"], "test", parse_kld_output)
    assert run.kld == pytest.approx(0.000665) and outputs == []

    monkeypatch.setattr(llama_eval, "_run", lambda cmd, desc: _read("kld_tiny_cut.txt"))
    with pytest.raises(TruncatedOutput):
        llama_eval._run_parsed(["x"], "test", parse_kld_output)


def test_unrecognized_output() -> None:
    with pytest.raises(CarvqError, match="output not recognized"):
        parse_perplexity_output("llama-perplexity 2.0\nresult: 12.3\n")
    with pytest.raises(CarvqError, match="not recognized .no ppl statistic"):
        parse_kld_output("some other tool\n")
    with pytest.raises(CarvqError, match="non-finite perplexity"):
        parse_perplexity_output(_read("base_tiny.txt").replace("PPL = 266.5634", "PPL = nan"))


def test_kld_errors_are_reported() -> None:
    text = _read("kld_tiny.txt")
    head = text.split("kl_divergence: computing")[0]
    with pytest.raises(CarvqError, match="inconsistent vocabulary"):
        parse_kld_output(head + "0.00.1 E kl_divergence: inconsistent vocabulary (256 vs 49152)\n" + text[len(head):])
    # fewer than 100 scored tokens: llama-perplexity prints no statistics (not a cut output)
    few = head + "0.00.1 I kl_divergence: computing over 3 chunks, n_ctx=64, batch_size=2048, n_seq=32\n"
    with pytest.raises(CarvqError, match="scored only 93 tokens") as e:
        parse_kld_output(few)
    assert not isinstance(e.value, TruncatedOutput)


def test_too_little_text() -> None:
    out = ("0.00.5 E perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512\n"
           "0.00.5 E perplexity: the data file you provided tokenizes to only 377 tokens\n")
    with pytest.raises(CarvqError, match="tokenizes to only 377 tokens"):
        parse_perplexity_output(out)


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
    base, _ = llama_eval.run_base(model, text, logits, ctx=64, chunks=4)
    assert base.n_chunks == 4 and base.ppl > 1 and logits.stat().st_size > 0
    same, _ = llama_eval.run_kld(model, logits, ctx=64)
    assert same.kld == pytest.approx(0, abs=1e-4) and same.ppl == pytest.approx(base.ppl, rel=1e-3)
    assert same.same_top_p == pytest.approx(100.0)
