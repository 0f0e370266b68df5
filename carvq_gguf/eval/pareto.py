"""The Pareto benchmark: for one source GGUF, build every input-embedding variant (llama.cpp's
stock token_embd types, the CARVQ presets, RVQ without the adaptor) and measure each in llama.cpp
against the unmodified source, on the same windows of the same text.

Every variant keeps the source's other tensors byte for byte and its head: a tied head is written
explicitly as output.weight in the source's token_embd type (for stock types by gguf.rewrite.untie_head before
llama-quantize, for CARVQ by the converter), so only the input embedding differs.

Each step is cached by content hash (eval/cache.py): the untied source, the imatrix, every variant
file, the base logits and every measurement. A rerun only rebuilds what changed (e.g. a preset).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..data import bundled_text
from ..errors import CarvqError
from ..gguf.rewrite import untie_head
from ..runtime.build import build_key
from ..runtime.tools import build_imatrix
from . import variants
from .cache import EvalCache, codec_code_version, content_hash, hash_key
from .evaluate import EvalSettings, base_logits, check_text, embedding_size, evaluate_model

VARIANTS_VERSION = 1  # bump when the way variant files are made changes
# llama.cpp's usual token_embd types from 8 down to 1.6 bits, plus Q5_0/Q4_0 (block 32) and the tree's
# Q2_0 (block 64) and Q1_0 (block 128) so that rows whose length is not a multiple of 256 still
# get low-bit stock points; types the tree cannot use for a tensor are reported as such.
STOCK_TYPES = ("Q8_0", "Q6_K", "Q5_0", "Q4_K", "IQ4_NL", "Q4_0", "Q3_K", "IQ3_XXS", "Q2_K", "Q2_0",
               "IQ2_XXS", "IQ1_M", "Q1_0")


@dataclass
class VariantSpec:
    """One row of the benchmark."""

    name: str
    method: str            # "llama.cpp" or a CARVQ line of preset_method
    setting: str           # ggml type name or preset name


@dataclass
class ParetoOptions:
    """Everything a run depends on besides the source model."""

    text: Path = field(default_factory=lambda: bundled_text("eval.txt"))
    calib_text: Path = field(default_factory=lambda: bundled_text("calib.txt"))
    ctx: int = 512
    windows: int | None = 10
    imatrix_chunks: int | None = 16
    threads: int = 2
    stock_types: tuple[str, ...] = STOCK_TYPES
    presets: tuple[str, ...] | None = None   # None: every preset in carvq_gguf.presets
    seed: int = 0
    progress: bool = True


def preset_method(name: str) -> str:
    """The plot line a preset belongs to."""
    if name.startswith("rvq"):
        return "RVQ only"
    if "paper" in name:
        return "CARVQ (paper)"
    if "adaptor" in name:
        return "CARVQ + adaptor"
    if name.endswith("-rvq"):
        return "CARVQ, RVQ codes"
    return "CARVQ"


def variant_specs(options: ParetoOptions) -> list[VariantSpec]:
    """Stock types first, then the presets (from carvq_gguf.presets unless options name them)."""
    from ..codec.presets import PRESET_NAMES, get_preset

    presets = options.presets if options.presets is not None else PRESET_NAMES
    for name in presets:
        get_preset(name)  # unknown names fail before any work
    specs = [VariantSpec(t, "llama.cpp", t) for t in options.stock_types]
    specs += [VariantSpec(p, preset_method(p), p) for p in presets]
    return specs


class VariantBuilder:
    """Builds (or takes from the cache) the model file of each variant."""

    def __init__(self, source: Path, options: ParetoOptions, cache: EvalCache) -> None:
        self.source = Path(source)
        self.options = options
        self.cache = cache
        self.source_hash = content_hash(self.source)
        self._untied: Path | None = None
        self._imatrix: Path | None = None
        self.prepare_seconds = 0.0  # recorded build time of the untied source and the imatrix
        # taken once, when the run starts and the codec modules are imported: the key of every
        # CARVQ variant of this run then names the code that actually built it
        from ..codec import compress  # noqa: F401  (imported now, with the code the version is taken from)
        from ..convert import pipeline  # noqa: F401

        self.codec_version = codec_code_version()

    def untied(self) -> Path:
        """The source with its tied head made explicit (the source itself if already untied)."""
        if self._untied is None:
            summary = variants.read_summary(self.source)
            if not variants.is_tied(summary):
                self._untied = self.source
            else:
                key = hash_key("untied", VARIANTS_VERSION, self.source_hash)
                self._untied = self._timed(key, "models", ".gguf", lambda tmp: untie_head(self.source, tmp))
        return self._untied

    def imatrix(self) -> Path:
        """llama-imatrix of the untied source on the calibration text (not the evaluation text)."""
        if self._imatrix is None:
            key = hash_key("imatrix", VARIANTS_VERSION, content_hash(self.untied()),
                           content_hash(self.options.calib_text), self.options.ctx, self.options.imatrix_chunks,
                           build_key())
            self._imatrix = self._timed(
                key, "imatrix", ".gguf",
                lambda tmp: build_imatrix(self.untied(), self.options.calib_text, tmp, self.options.ctx,
                                                   self.options.imatrix_chunks, self.options.threads))
        return self._imatrix

    def _timed(self, key: str, kind: str, suffix: str, build) -> Path:
        """A cached file whose build time is recorded (builds/<key>.json) and counted in
        self.prepare_seconds."""
        path = self.cache.file(kind, key, suffix, lambda tmp: self._record_time(key, build, tmp))
        record = self.cache.load_json("builds", key)
        self.prepare_seconds += record["seconds"] if record else 0.0
        return path

    def _record_time(self, key: str, build, tmp: Path) -> None:
        start = time.monotonic()
        build(tmp)
        self.cache.save_json("builds", key, {"seconds": time.monotonic() - start})

    def build(self, spec: VariantSpec) -> tuple[Path | None, dict]:
        """(model file or None if the variant cannot be made, build record)."""
        if spec.method == "llama.cpp":
            return self._stock(spec.setting)
        return self._carvq(spec.setting)

    def _stock(self, type_name: str) -> tuple[Path | None, dict]:
        untied = self.untied()
        imatrix = self.imatrix() if type_name.upper() in variants.IMATRIX_TYPES else None
        key = hash_key("stock", VARIANTS_VERSION, content_hash(untied), type_name,
                       None if imatrix is None else content_hash(imatrix), build_key())
        record = self.cache.load_json("builds", key)
        model = self.cache.path("models", key, ".gguf")
        if record is not None and (record["actual"] is None or model.is_file()):
            return (model if record["actual"] else None), record
        model.unlink(missing_ok=True)  # a file without its record (the run was killed in between)
        start = time.monotonic()
        outcome: list[variants.QuantizeOutcome] = []

        def build(tmp: Path) -> None:
            result = variants.quantize_token_embd(untied, tmp, type_name, imatrix, self.options.threads)
            outcome.append(result)
            if result.actual is None:
                raise _Refused()

        try:
            self.cache.file("models", key, ".gguf", build)
        except _Refused:
            pass
        result = outcome[0]
        record = {"requested": type_name, "actual": result.actual, "note": result.note,
                  "imatrix": imatrix is not None, "seconds": time.monotonic() - start}
        self.cache.save_json("builds", key, record)
        return (model if result.actual else None), record

    def _carvq(self, preset: str) -> tuple[Path, dict]:
        key = hash_key("carvq", VARIANTS_VERSION, self.source_hash, preset, self.codec_version,
                       content_hash(self.options.calib_text), self.options.seed)
        record = self.cache.load_json("builds", key)
        model = self.cache.path("models", key, ".gguf")
        if record is not None and model.is_file():
            return model, record
        model.unlink(missing_ok=True)  # a file without its record (the run was killed in between)
        start = time.monotonic()
        info: list[dict] = []
        self.cache.file("models", key, ".gguf", lambda tmp: info.append(
            variants.carvq_variant(self.source, tmp, preset, self.options.calib_text, self.options.seed,
                                   self.options.progress)))
        record = {**info[0], "requested": preset, "actual": "CARVQ", "note": info[0]["recipe"],
                  "seconds": time.monotonic() - start}
        self.cache.save_json("builds", key, record)
        return model, record


def git_commit() -> str | None:
    """Short hash of the repository's HEAD (for the report), or None outside a git checkout."""
    import subprocess

    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                            capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


class _Refused(Exception):
    """llama-quantize refused a type: nothing to cache as a model file."""


def run_pareto(source: Path, options: ParetoOptions | None = None, cache: EvalCache | None = None) -> dict:
    """Build and measure every variant of source; returns the report data (see pareto_report.py)."""
    options = options if options is not None else ParetoOptions()
    source = Path(source)
    if not source.is_file():
        raise CarvqError(f"source model {source} does not exist")
    check_text(options.text)
    check_text(options.calib_text)
    if content_hash(options.text) == content_hash(options.calib_text):
        raise CarvqError("the evaluation text and the calibration text are the same file content")
    cache = cache if cache is not None else EvalCache()
    start = time.monotonic()
    specs = variant_specs(options)
    builder = VariantBuilder(source, options, cache)
    settings = EvalSettings(options.text, options.ctx, options.windows, options.threads)

    built = []
    for spec in tqdm(specs, desc="build variants", unit="variant", disable=not options.progress, file=sys.stderr):
        model, record = builder.build(spec)
        built.append((spec, model, record))

    rows = []
    for spec, model, record in tqdm(built, desc="evaluate", unit="variant", disable=not options.progress,
                                    file=sys.stderr):
        row = {"name": spec.name, "method": spec.method, "setting": spec.setting,
               "actual_type": record["actual"], "note": record["note"], "build_seconds": record["seconds"]}
        if model is not None:
            measured = evaluate_model(model, settings, base=source, cache=cache)
            row.update({k: v for k, v in measured.items() if k not in ("model", "base")})
            row["model_sha256"] = content_hash(model)
        rows.append(row)

    source_summary = variants.read_summary(source)
    src = embedding_size(source, source_summary)
    _, base_run, _ = base_logits(source, settings, cache)
    return {
        "source": {"path": str(source), "name": source.name, "sha256": content_hash(source),
                   "embedding_type": src.embedding_type, "vocab_size": src.vocab_size,
                   "embedding_dim": src.embedding_dim, "embedding_bytes": src.embedding_bytes,
                   "embedding_bpw": src.bpw, "file_bytes": src.file_bytes, "tied": variants.is_tied(source_summary),
                   "ppl": base_run["ppl"], "base_seconds": base_run.get("seconds")},
        "settings": {"text": str(options.text), "text_name": Path(options.text).name,
                     "calib_text_name": Path(options.calib_text).name, "ctx": options.ctx,
                     "windows": base_run["windows"], "scored_tokens": base_run["scored_tokens"],
                     "threads": options.threads, "imatrix_chunks": options.imatrix_chunks,
                     "seed": options.seed, "codec_code_version": builder.codec_version,
                     "git_commit": git_commit()},
        "rows": rows,
        "untie_imatrix_seconds": builder.prepare_seconds,
        "wall_seconds": time.monotonic() - start,
    }
