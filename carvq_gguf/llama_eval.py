"""Perplexity and KL divergence measured by llama.cpp's own llama-perplexity tool (built from the
patched tree by `carvq-gguf build-runtime`), and parsers for its output.

Two kinds of run, as llama.cpp does it:
  base run  llama-perplexity -m BASE -f TEXT -c CTX --chunks N --kl-divergence-base LOGITS
            scores BASE and saves its log-probabilities and the evaluation tokens to LOGITS;
  KLD run   llama-perplexity -m MODEL --kl-divergence-base LOGITS --kl-divergence
            re-reads the tokens from LOGITS, so every model is scored on the same windows, and
            prints MODEL's perplexity next to the base's, and the KL divergence per token.
Each window of CTX tokens is scored on its second half (CTX - 1 - CTX/2 tokens), as llama.cpp does.

llama-perplexity can log an error and still exit 0 (e.g. a vocabulary mismatch in a KLD run), so
the parsers require every number they return and raise CarvqError naming what is missing.
Its logger writes from a background thread that is not joined at exit (llama.cpp leaks the
logger on purpose, see common/log.cpp), so now and then the last lines, with the final numbers,
never reach the pipe although the run completed. The parsers raise TruncatedOutput for a run
that started scoring and then fell silent, and the runners repeat such a run (MAX_ATTEMPTS).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .state import CarvqError

DEFAULT_CTX = 512
DEFAULT_THREADS = 2
MAX_ATTEMPTS = 4
MIN_STAT_TOKENS = 100  # llama-perplexity prints no KLD statistics below this many scored tokens

_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|-nan|-inf))"
_PM = r"\s*(?:±|\+/-)\s*"
_FINAL_PPL = re.compile(r"Final estimate: PPL = " + _NUM + _PM + _NUM)
_CHUNKS_PPL = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")
_CHUNKS_KLD = re.compile(r"computing over (\d+) chunks, n_ctx=(\d+)")
_CHUNK_PPL = re.compile(r"\[(\d+)\]" + _NUM)
_TOO_FEW = re.compile(r"tokenizes to only (\d+) tokens")
_KLD_FIELDS = {
    "ppl": re.compile(r"Mean PPL\(Q\)\s*:\s*" + _NUM + _PM + _NUM),
    "base_ppl": re.compile(r"Mean PPL\(base\)\s*:\s*" + _NUM + _PM + _NUM),
    "ppl_ratio": re.compile(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + _NUM + _PM + _NUM),
    "kld": re.compile(r"Mean\s+KLD:\s*" + _NUM + _PM + _NUM),
    "same_top_p": re.compile(r"Same top p:\s*" + _NUM + _PM + _NUM + r"\s*%"),
}
_KLD_SINGLE = {
    "kld_max": re.compile(r"Maximum KLD:\s*" + _NUM),
    "kld_p99": re.compile(r"99\.0%\s+KLD:\s*" + _NUM),
    "kld_median": re.compile(r"Median\s+KLD:\s*" + _NUM),
}
# one row of the per-chunk table of a KLD run: chunk, PPL ± u, ln ratio ± u, KLD ± u, dp RMS ± u %, top p ± u %
_KLD_ROW = re.compile(r"^\s*(\d+)\s+" + _NUM + _PM + _NUM + r"\s+" + _NUM + _PM + _NUM + r"\s+"
                      + _NUM + _PM + _NUM + r"\s+" + _NUM + _PM + _NUM + r"\s*%\s+" + _NUM + _PM + _NUM + r"\s*%\s*$",
                      re.MULTILINE)


class TruncatedOutput(CarvqError):
    """The run started scoring but its output stops before the final numbers."""


@dataclass
class PerplexityRun:
    """Result of a base run."""

    ppl: float
    ppl_err: float
    n_chunks: int
    n_ctx: int
    chunk_ppl: list[float] = field(default_factory=list)  # running estimate after each chunk

    @property
    def scored_tokens(self) -> int:
        """Tokens scored: the second half of every window."""
        return scored_tokens(self.n_chunks, self.n_ctx)


@dataclass
class KldRun:
    """Result of a KLD run: the model's perplexity on the base run's windows and the KL divergence."""

    ppl: float
    ppl_err: float
    base_ppl: float
    base_ppl_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    kld: float
    kld_err: float
    kld_max: float
    kld_p99: float
    kld_median: float
    same_top_p: float      # percent of scored tokens whose top-1 token is the base's
    same_top_p_err: float
    n_chunks: int
    n_ctx: int
    chunk_ppl: list[float] = field(default_factory=list)  # running estimates after each chunk
    chunk_kld: list[float] = field(default_factory=list)

    @property
    def scored_tokens(self) -> int:
        return scored_tokens(self.n_chunks, self.n_ctx)

    @property
    def dppl_percent(self) -> float:
        """Perplexity change against the base, in percent."""
        return 100.0 * (self.ppl / self.base_ppl - 1.0)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def scored_tokens(n_chunks: int, n_ctx: int) -> int:
    """Tokens llama-perplexity scores over n_chunks windows of n_ctx tokens."""
    return n_chunks * (n_ctx - 1 - n_ctx // 2)


def _float(text: str) -> float:
    return float(text.replace("-nan", "nan"))


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def _finite(name: str, value: float, output: str) -> float:
    if not math.isfinite(value):
        raise CarvqError(f"llama-perplexity reported a non-finite {name} ({value}); output ends:\n{_tail(output)}")
    return value


def parse_perplexity_output(output: str) -> PerplexityRun:
    """The numbers of a base run's output (stdout and stderr together).

    CarvqError if the output has no final estimate (too little text, a load error, or a format
    this parser does not know)."""
    too_few = _TOO_FEW.search(output)
    if too_few:
        raise CarvqError(f"the evaluation text tokenizes to only {too_few.group(1)} tokens: llama-perplexity "
                         "needs at least 2 windows (2 x ctx tokens); use a longer text or a smaller ctx")
    final = _FINAL_PPL.search(output)
    chunks = _CHUNKS_PPL.search(output)
    if final is None and chunks is not None and "failed" not in output:
        raise TruncatedOutput(f"llama-perplexity output stops before 'Final estimate'; output ends:\n{_tail(output)}")
    if final is None or chunks is None:
        missing = "'Final estimate: PPL = ...'" if final is None else "'calculating perplexity over N chunks'"
        raise CarvqError(f"llama-perplexity output not recognized (no {missing} line); output ends:\n{_tail(output)}")
    ppl = _finite("perplexity", _float(final.group(1)), output)
    per_chunk = [_float(m.group(2)) for m in _CHUNK_PPL.finditer(output)]
    return PerplexityRun(ppl=ppl, ppl_err=_float(final.group(2)), n_chunks=int(chunks.group(1)),
                         n_ctx=int(chunks.group(2)), chunk_ppl=per_chunk)


def parse_kld_output(output: str) -> KldRun:
    """The numbers of a KLD run's output (stdout and stderr together).

    CarvqError naming the first statistic that is missing (llama-perplexity stops early, without
    the statistics, when the base logits do not fit the model)."""
    for problem in ("inconsistent vocabulary", "does not look like a file containing log-probabilities",
                    "failed reading", "failed to open"):
        if problem in output:
            line = next(l for l in output.splitlines() if problem in l)
            raise CarvqError(f"llama-perplexity could not compare with the base logits: {line.strip()}")
    rows = _KLD_ROW.findall(output)
    chunks = _CHUNKS_KLD.search(output)
    if chunks is not None and "Minimum KLD" not in output:
        n = scored_tokens(int(chunks.group(1)), int(chunks.group(2)))
        if n < MIN_STAT_TOKENS:
            raise CarvqError(f"llama-perplexity scored only {n} tokens and prints no statistics below "
                             f"{MIN_STAT_TOKENS}; use more chunks or a larger ctx")
        if "failed" not in output:
            raise TruncatedOutput(f"llama-perplexity KL-divergence output stops before the statistics; "
                                  f"output ends:\n{_tail(output)}")
    values: dict[str, float] = {}
    for name, pattern in _KLD_FIELDS.items():
        m = pattern.search(output)
        if m is None:
            raise CarvqError(f"llama-perplexity KL-divergence output not recognized (no {name} statistic); "
                             f"output ends:\n{_tail(output)}")
        values[name], values[name + "_err"] = _float(m.group(1)), _float(m.group(2))
    for name, pattern in _KLD_SINGLE.items():
        m = pattern.search(output)
        if m is None:
            raise CarvqError(f"llama-perplexity KL-divergence output not recognized (no {name} statistic); "
                             f"output ends:\n{_tail(output)}")
        values[name] = _float(m.group(1))
    if chunks is None:
        raise CarvqError(f"llama-perplexity KL-divergence output not recognized (no chunk count); "
                         f"output ends:\n{_tail(output)}")
    _finite("perplexity", values["ppl"], output)
    _finite("KL divergence", values["kld"], output)
    return KldRun(**values, n_chunks=int(chunks.group(1)), n_ctx=int(chunks.group(2)),
                  chunk_ppl=[_float(r[1]) for r in rows], chunk_kld=[_float(r[5]) for r in rows])


def perplexity_tool() -> Path:
    """llama-perplexity from the patched build (built by runtime.build_tools() if missing)."""
    from . import runtime

    return runtime.tool_path("llama-perplexity")


def _run(cmd: list[str], desc: str) -> str:
    print(f"[eval] {desc}", file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.returncode != 0:
        raise CarvqError(f"llama-perplexity failed (exit {result.returncode}): {' '.join(cmd)}\n"
                         f"{_tail(result.stdout, 25)}")
    return result.stdout


def _run_parsed(cmd: list[str], desc: str, parse):
    """Run cmd and parse its output, repeating a run whose output was cut short."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        output = _run(cmd, desc if attempt == 1 else f"{desc} (again: the last run's output was cut short)")
        try:
            return parse(output), output
        except TruncatedOutput:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def check_model_file(path: Path) -> None:
    """CarvqError unless path is an existing file that starts with the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        raise CarvqError(f"model {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CarvqError(f"model {path} is not a GGUF file (no GGUF magic)")


def run_base(model: Path, text: Path, logits_out: Path, ctx: int = DEFAULT_CTX, chunks: int | None = None,
             threads: int = DEFAULT_THREADS) -> tuple[PerplexityRun, str]:
    """Score model on text and save its log-probabilities to logits_out; (result, full output)."""
    check_model_file(model)
    cmd = [str(perplexity_tool()), "-m", str(model), "-f", str(text), "-c", str(ctx), "-t", str(threads),
           "--kl-divergence-base", str(logits_out)]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    return _run_parsed(cmd, f"llama-perplexity base run on {Path(model).name}", parse_perplexity_output)


def run_kld(model: Path, base_logits: Path, ctx: int = DEFAULT_CTX,
            threads: int = DEFAULT_THREADS) -> tuple[KldRun, str]:
    """Score model on the windows saved in base_logits and compare with them; (result, full output)."""
    check_model_file(model)
    if not Path(base_logits).is_file():
        raise CarvqError(f"base logits {base_logits} do not exist")
    cmd = [str(perplexity_tool()), "-m", str(model), "-c", str(ctx), "-t", str(threads),
           "--kl-divergence-base", str(base_logits), "--kl-divergence"]
    return _run_parsed(cmd, f"llama-perplexity KL divergence of {Path(model).name}", parse_kld_output)
