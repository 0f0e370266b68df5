"""Perplexity and KL divergence measured by llama.cpp's own llama-perplexity tool (built from the
patched tree by `carvq-gguf build-runtime`), and parsers for its output.

Two kinds of run, as llama.cpp does it:
  base run  llama-perplexity -m BASE -f TEXT -c CTX -b CTX --chunks N+1 --kl-divergence-base LOGITS
            scores BASE and saves its log-probabilities and the evaluation tokens to LOGITS;
  KLD run   llama-perplexity -m MODEL -c CTX -b CTX --kl-divergence-base LOGITS --kl-divergence
            re-reads the tokens from LOGITS, so every model is scored on the same windows, and
            prints MODEL's perplexity, ln(PPL(MODEL)/PPL(BASE)) and the KL divergence per token.
Each window of CTX tokens is scored on its second half (CTX - 1 - CTX/2 tokens), as llama.cpp does.

Results are read from the running line llama-perplexity prints after each window, at window N,
and one window more (N+1) is scored. The reason: the tool's logger writes from a background
thread that is not joined at exit (llama.cpp leaks the logger on purpose, see common/log.cpp), so
on a busy machine the lines printed just before exit (the final statistics) are often lost
although the run completed. The line for window N is printed while window N+1 is still being
computed (-b CTX: one window per pass), so it reaches the pipe. Should it still be missing, the
parsers raise TruncatedOutput and the runners repeat the run (MAX_ATTEMPTS).

llama-perplexity can log an error and still exit 0 (e.g. a vocabulary mismatch in a KLD run), so
the parsers require every number they return and raise CarvqError naming what is missing.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CarvqError
from ..runtime.tools import tail

DEFAULT_CTX = 512
DEFAULT_THREADS = 2
MAX_ATTEMPTS = 6

_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|-nan|-inf))"
_PM = r"\s*(?:±|\+/-)\s*"
_CHUNKS_PPL = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")
_CHUNKS_KLD = re.compile(r"computing over (\d+) chunks, n_ctx=(\d+)")
_CHUNK_PPL = re.compile(r"\[(\d+)\]" + _NUM + ",")
_TOO_FEW = re.compile(r"tokenizes to only (\d+) tokens")
# one row of the per-window table of a KLD run (running values over the windows so far):
# window, PPL(Q) ± u, ln(PPL(Q)/PPL(base)) ± u, KLD ± u, dp RMS ± u %, same top p ± u %
_KLD_ROW = re.compile(r"^\s*(\d+)\s+" + _NUM + _PM + _NUM + r"\s+" + _NUM + _PM + _NUM + r"\s+"
                      + _NUM + _PM + _NUM + r"\s+" + _NUM + _PM + _NUM + r"\s*%\s+" + _NUM + _PM + _NUM + r"\s*%\s*$",
                      re.MULTILINE)
_KLD_ERRORS = ("inconsistent vocabulary", "does not look like a file containing log-probabilities",
               "failed reading", "failed to open", "has been computed with")


class TruncatedOutput(CarvqError):
    """The run's output stops before the window the result is read at."""


# llama.cpp's logger prefixes its lines with a timestamp and a level, e.g. "0.00.004.298 W load: ..."
_LLAMA_LOG_LINE = re.compile(r"^\d+\.\d{2}\.\d{3}\.\d{3} [DIWE] ", re.MULTILINE)


def _missing_header(output: str, kind: str, line: str) -> CarvqError:
    """The error for output without the line that starts the scoring: TruncatedOutput if it is
    llama.cpp's log cut short (a small model can finish before the logger thread printed the
    rest), else CarvqError for output that is not llama-perplexity's at all."""
    if _LLAMA_LOG_LINE.search(output):
        return TruncatedOutput(f"llama-perplexity {kind} stops before the '{line}' line; "
                               f"output ends:\n{tail(output)}")
    return CarvqError(f"llama-perplexity {kind} not recognized (no '{line}' line); output ends:\n{tail(output)}")


@dataclass
class PerplexityRun:
    """A base run: the perplexity after `windows` windows."""

    ppl: float
    windows: int               # windows the result covers
    n_ctx: int
    saved_windows: int         # windows scored and saved to the logits file (windows + 1)
    chunk_ppl: list[float] = field(default_factory=list)  # running perplexity after each window

    @property
    def scored_tokens(self) -> int:
        """Tokens scored: the second half of every window."""
        return scored_tokens(self.windows, self.n_ctx)


@dataclass
class KldRun:
    """A KLD run: the model against the base, after `windows` windows."""

    ppl: float
    ppl_err: float
    ln_ratio: float            # mean ln(PPL(model) / PPL(base))
    ln_ratio_err: float
    kld: float                 # mean KL(base || model) per token
    kld_err: float
    same_top_p: float          # percent of tokens whose most likely next token is the base's
    same_top_p_err: float
    windows: int
    n_ctx: int
    chunk_ppl: list[float] = field(default_factory=list)  # running values after each window
    chunk_kld: list[float] = field(default_factory=list)

    @property
    def scored_tokens(self) -> int:
        return scored_tokens(self.windows, self.n_ctx)

    @property
    def ppl_ratio(self) -> float:
        """PPL(model) / PPL(base)."""
        return math.exp(self.ln_ratio)

    @property
    def base_ppl(self) -> float:
        """The base's perplexity on the same tokens (from the saved log-probabilities)."""
        return self.ppl / self.ppl_ratio

    @property
    def dppl_percent(self) -> float:
        """Perplexity change against the base, in percent."""
        return 100.0 * (self.ppl_ratio - 1.0)

    def to_dict(self) -> dict:
        """Plain dict for JSON, derived values included."""
        return {**asdict(self), "ppl_ratio": self.ppl_ratio, "base_ppl": self.base_ppl,
                "dppl_percent": self.dppl_percent, "scored_tokens": self.scored_tokens}


def scored_tokens(n_chunks: int, n_ctx: int) -> int:
    """Tokens llama-perplexity scores over n_chunks windows of n_ctx tokens."""
    return n_chunks * (n_ctx - 1 - n_ctx // 2)


def _float(text: str) -> float:
    return float(text.replace("-nan", "nan"))


def _finite(name: str, value: float, output: str) -> float:
    if not math.isfinite(value):
        raise CarvqError(f"llama-perplexity reported a non-finite {name} ({value}); output ends:\n{tail(output)}")
    return value


def _result_window(windows: int | None, saved: int) -> int:
    """The window results are read at: the one asked for, or (None) the last but one saved."""
    n = saved - 1 if windows is None else windows
    if n < 1:
        raise CarvqError(f"llama-perplexity scored {saved} window(s); at least 2 are needed (results are read "
                         "one window before the end); use a longer text or a smaller ctx")
    if n >= saved:
        raise CarvqError(f"results were asked after window {n} but only {saved} windows were scored")
    return n


def parse_perplexity_output(output: str, windows: int | None = None) -> PerplexityRun:
    """The perplexity after `windows` windows (None: after the last but one) of a base run's output
    (stdout and stderr together).

    TruncatedOutput if the output stops before that window; CarvqError if the text was too short
    or the output is not recognized."""
    too_few = _TOO_FEW.search(output)
    if too_few:
        raise CarvqError(f"the evaluation text tokenizes to only {too_few.group(1)} tokens: llama-perplexity "
                         "needs at least 2 windows (2 x ctx tokens); use a longer text or a smaller ctx")
    chunks = _CHUNKS_PPL.search(output)
    if chunks is None:
        raise _missing_header(output, "output", "calculating perplexity over N chunks")
    saved, n_ctx = int(chunks.group(1)), int(chunks.group(2))
    n = _result_window(windows, saved)
    per_window = [_float(m.group(2)) for m in _CHUNK_PPL.finditer(output)]
    if len(per_window) < n:
        if "failed" in output:
            raise CarvqError(f"llama-perplexity failed during the run; output ends:\n{tail(output)}")
        raise TruncatedOutput(f"llama-perplexity output stops after window {len(per_window)} of {n}; "
                              f"output ends:\n{tail(output)}")
    ppl = _finite("perplexity", per_window[n - 1], output)
    return PerplexityRun(ppl=ppl, windows=n, n_ctx=n_ctx, saved_windows=saved, chunk_ppl=per_window[:n])


def parse_kld_output(output: str, windows: int | None = None) -> KldRun:
    """The running values after `windows` windows (None: after the last but one) of a KLD run's
    output (stdout and stderr together).

    CarvqError naming the problem when llama-perplexity could not compare with the base logits
    (it then stops early); TruncatedOutput if the output stops before that window."""
    for problem in _KLD_ERRORS:
        if problem in output:
            line = next(l for l in output.splitlines() if problem in l)
            raise CarvqError(f"llama-perplexity could not compare with the base logits: {line.strip()}")
    chunks = _CHUNKS_KLD.search(output)
    if chunks is None:
        raise _missing_header(output, "KL-divergence output", "computing over N chunks")
    saved, n_ctx = int(chunks.group(1)), int(chunks.group(2))
    n = _result_window(windows, saved)
    rows = [[_float(v) for v in row] for row in _KLD_ROW.findall(output)]
    if len(rows) < n:
        if "failed" in output:
            raise CarvqError(f"llama-perplexity failed during the run; output ends:\n{tail(output)}")
        raise TruncatedOutput(f"llama-perplexity KL-divergence output stops after window {len(rows)} of {n}; "
                              f"output ends:\n{tail(output)}")
    if [int(r[0]) for r in rows[:n]] != list(range(1, n + 1)):
        raise CarvqError(f"llama-perplexity KL-divergence table not recognized (window numbers "
                         f"{[int(r[0]) for r in rows[:n]]}); output ends:\n{tail(output)}")
    row = rows[n - 1]
    run = KldRun(ppl=row[1], ppl_err=row[2], ln_ratio=row[3], ln_ratio_err=row[4], kld=row[5], kld_err=row[6],
                 same_top_p=row[9], same_top_p_err=row[10], windows=n, n_ctx=n_ctx,
                 chunk_ppl=[r[1] for r in rows[:n]], chunk_kld=[r[5] for r in rows[:n]])
    _finite("perplexity", run.ppl, output)
    _finite("KL divergence", run.kld, output)
    return run


def perplexity_tool() -> Path:
    """llama-perplexity from the patched build (built by runtime.build_tools() if missing)."""
    from ..runtime import build as runtime

    return runtime.tool_path("llama-perplexity")


def _run(cmd: list[str], desc: str) -> str:
    print(f"[eval] {desc}", file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.returncode != 0:
        raise CarvqError(f"llama-perplexity failed (exit {result.returncode}): {' '.join(cmd)}\n"
                         f"{tail(result.stdout, 25)}")
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


def run_base(model: Path, text: Path, logits_out: Path, ctx: int = DEFAULT_CTX, windows: int | None = None,
             threads: int = DEFAULT_THREADS) -> tuple[PerplexityRun, str]:
    """Score model on windows + 1 windows of text (None: every full window) and save its
    log-probabilities to logits_out; (result after `windows` windows, full output)."""
    check_model_file(model)
    cmd = [str(perplexity_tool()), "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", str(ctx),
           "-t", str(threads), "--kl-divergence-base", str(logits_out)]
    if windows is not None:
        cmd += ["--chunks", str(windows + 1)]
    return _run_parsed(cmd, f"llama-perplexity base run on {Path(model).name}",
                       lambda out: parse_perplexity_output(out, windows))


def run_kld(model: Path, base_logits: Path, windows: int, ctx: int = DEFAULT_CTX,
            threads: int = DEFAULT_THREADS) -> tuple[KldRun, str]:
    """Score model on the windows saved in base_logits and compare with them; (result after
    `windows` windows, full output)."""
    check_model_file(model)
    if not Path(base_logits).is_file():
        raise CarvqError(f"base logits {base_logits} do not exist")
    cmd = [str(perplexity_tool()), "-m", str(model), "-c", str(ctx), "-b", str(ctx), "-t", str(threads),
           "--kl-divergence-base", str(base_logits), "--kl-divergence"]
    return _run_parsed(cmd, f"llama-perplexity KL divergence of {Path(model).name}",
                       lambda out: parse_kld_output(out, windows))
