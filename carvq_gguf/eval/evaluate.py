"""Evaluate one GGUF model in llama.cpp: sizes (file, input embedding, bits per weight) and
perplexity, plus KL divergence against a base model, all cached by content hash.

The input embedding of a model is token_embd.weight, or for a CARVQ-GGUF every carvq_* tensor.
bpw = embedding bytes * 8 / (V * n).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import llama_perplexity
from .cache import EvalCache, content_hash, hash_key
from ..gguf.summary import GgufSummary, read_summary
from ..errors import CarvqError
from ..runtime.build import build_key  # the tools' build: a rebuilt llama.cpp invalidates results
from ..gguf.names import KEY_EMBEDDING_LENGTH, KEY_VOCAB_SIZE, OUTPUT, TENSOR_PREFIX, TOKEN_EMBD

EVAL_VERSION = 2  # bump when the way results are measured or parsed changes


@dataclass
class EmbeddingSize:
    """What a model spends on its input embedding."""

    embedding_type: str        # ggml type of token_embd, or "CARVQ"
    vocab_size: int
    embedding_dim: int
    embedding_bytes: int
    file_bytes: int
    head_type: str | None      # type of output.weight, None when the head is tied to token_embd

    @property
    def bpw(self) -> float:
        """Stored bits of the input embedding per weight of the V x n matrix."""
        return 8 * self.embedding_bytes / (self.vocab_size * self.embedding_dim)


def embedding_size(path: Path, summary: GgufSummary | None = None) -> EmbeddingSize:
    """Sizes of path's input embedding (dense token_embd or CARVQ tensors).

    CarvqError if the file has neither."""
    summary = summary if summary is not None else read_summary(path)
    tensors = summary.tensors
    head = tensors.get(OUTPUT)
    head_type = None if head is None else head.type_name
    file_bytes = Path(path).stat().st_size
    embd = tensors.get(TOKEN_EMBD)
    if embd is not None:
        n, V = embd.shape[:2]
        return EmbeddingSize(embd.type_name, int(V), int(n), embd.n_bytes, file_bytes, head_type)
    carvq = [t for name, t in tensors.items() if name.startswith(TENSOR_PREFIX)]
    if not carvq:
        raise CarvqError(f"{path} has neither {TOKEN_EMBD} nor CARVQ tensors")
    V, n = summary.keys.get(KEY_VOCAB_SIZE), summary.keys.get(KEY_EMBEDDING_LENGTH)
    if not isinstance(V, int) or not isinstance(n, int):
        raise CarvqError(f"{path} has CARVQ tensors but no {KEY_VOCAB_SIZE} / {KEY_EMBEDDING_LENGTH} keys")
    return EmbeddingSize("CARVQ", V, n, sum(t.n_bytes for t in carvq), file_bytes, head_type)


@dataclass
class EvalSettings:
    """How models are scored; every variant of one comparison uses the same settings."""

    text: Path
    ctx: int = llama_perplexity.DEFAULT_CTX
    windows: int | None = None       # windows scored; None: every full window of the text but one
    threads: int = llama_perplexity.DEFAULT_THREADS

    def key(self) -> dict:
        """The parts of the settings that change results (threads do not)."""
        return {"text": content_hash(self.text), "ctx": self.ctx, "windows": self.windows}


def check_text(path: Path) -> None:
    """CarvqError unless path is a readable, non-empty UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise CarvqError(f"evaluation text {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CarvqError(f"cannot read evaluation text {path} as UTF-8: {e}") from e
    if not text.strip():
        raise CarvqError(f"evaluation text {path} is empty")


def base_logits(base: Path, settings: EvalSettings, cache: EvalCache) -> tuple[Path, dict, str]:
    """The base model's saved log-probabilities on the settings' windows, its base run
    (perplexity, windows, ctx, scored tokens), both cached, and their cache key."""
    key = hash_key("base", EVAL_VERSION, content_hash(base), settings.key(), build_key())
    logits = cache.path("logits", key, ".logits")
    run = cache.load_json("base-runs", key)
    if run is None or not logits.is_file():
        def build(tmp: Path) -> None:
            nonlocal run
            start = time.monotonic()
            result, _ = llama_perplexity.run_base(base, settings.text, tmp, settings.ctx, settings.windows, settings.threads)
            run = {**asdict(result), "scored_tokens": result.scored_tokens, "seconds": time.monotonic() - start}

        logits.unlink(missing_ok=True)
        logits = cache.file("logits", key, ".logits", build)
        cache.save_json("base-runs", key, run)
    return logits, run, key


def evaluate_model(model: Path, settings: EvalSettings, base: Path | None = None,
                   cache: EvalCache | None = None) -> dict:
    """Sizes and llama.cpp measurements of model (a plain dict, JSON-ready).

    With base: perplexity of both on the same windows, dPPL % and KL divergence (the model is
    scored on the windows saved from the base run). Without: the model's own perplexity only.
    """
    model = Path(model)
    llama_perplexity.check_model_file(model)
    check_text(settings.text)
    if base is not None:
        llama_perplexity.check_model_file(base)
    cache = cache if cache is not None else EvalCache()
    size = embedding_size(model)
    row = {"model": str(model), "embedding_type": size.embedding_type, "vocab_size": size.vocab_size,
           "embedding_dim": size.embedding_dim, "embedding_bytes": size.embedding_bytes,
           "embedding_bpw": size.bpw, "file_bytes": size.file_bytes, "head_type": size.head_type,
           "ctx": settings.ctx}
    model_hash = content_hash(model)
    if base is None:
        key = hash_key("ppl", EVAL_VERSION, model_hash, settings.key(), build_key())

        def measure_ppl() -> dict:
            start = time.monotonic()
            scratch = cache.path("scratch", key, ".logits")
            scratch.parent.mkdir(parents=True, exist_ok=True)
            try:
                result, _ = llama_perplexity.run_base(model, settings.text, scratch, settings.ctx, settings.windows,
                                                settings.threads)
            finally:
                scratch.unlink(missing_ok=True)
            return {**asdict(result), "scored_tokens": result.scored_tokens, "seconds": time.monotonic() - start}

        run = cache.json("ppl-runs", key, measure_ppl)
        row.update(ppl=run["ppl"], windows=run["windows"],
                   scored_tokens=run["scored_tokens"], chunk_ppl=run["chunk_ppl"], eval_seconds=run.get("seconds"))
        return row
    logits, base_run, base_key = base_logits(base, settings, cache)
    key = hash_key("kld", EVAL_VERSION, model_hash, base_key)

    def measure_kld() -> dict:
        start = time.monotonic()
        result, _ = llama_perplexity.run_kld(model, logits, base_run["windows"], settings.ctx, settings.threads)
        return {**result.to_dict(), "seconds": time.monotonic() - start}

    run = cache.json("kld-runs", key, measure_kld)
    row.update({k: run[k] for k in ("ppl", "ppl_err", "base_ppl", "ppl_ratio", "ln_ratio", "ln_ratio_err",
                                    "dppl_percent", "kld", "kld_err", "same_top_p", "same_top_p_err", "windows",
                                    "scored_tokens", "chunk_ppl", "chunk_kld")})
    row["eval_seconds"] = run.get("seconds")
    row["base"] = str(base)
    return row
