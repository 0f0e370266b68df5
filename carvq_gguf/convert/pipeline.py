"""The converter end to end: source (HF directory or GGUF) -> base GGUF -> compress token_embd
-> CARVQ-GGUF written atomically and verified by reading it back."""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..atomic import atomic_output, owned_prefix, remove_stale_temporaries, same_file
from ..awq.search import AwqConfig, quant_proxy
from ..codec.state import CarvqState
from ..errors import CarvqError
from ..gguf import carvq_io, names
from ..gguf.rewrite import output_head, parse_type, token_embedding, verify_carvq_model, write_carvq_model
from .hf_source import hf_to_gguf

BASE_PREFIX = ".carvq-base-"  # the temporary directory, next to the output, of an HF source's base GGUF


@dataclass
class ConvertResult:
    """What a conversion produced, for the report."""

    out_path: Path
    base_bytes: int            # the GGUF whose token_embd was replaced (the source, or the base made from HF)
    out_bytes: int
    token_embd_type: str       # ggml type of the replaced token_embd.weight
    token_embd_bytes: int
    carvq_bytes: int           # all carvq_* tensor data
    head_type: str | None      # type of the explicit output.weight written for a tied head, else None
    head_bytes: int
    state: CarvqState
    quantized: str | None = None  # llama.cpp quantization type applied to the transformer weights
    awq: dict | None = None       # awq.summary of the scale search, when --awq ran


@dataclass(frozen=True)
class ConvertOptions:
    """How a conversion runs; the defaults are `carvq-gguf convert`'s.

    preset: the codec recipe (unused with codec, a file written by `carvq-gguf compress -o`).
    calib_text: importance weights and the AWQ search read it (None: the bundled calib.txt).
    output_type: ggml type of the explicit head written for a tied model (None: token_embd's bytes).
    base_type: convert_hf_to_gguf.py --outtype for an HF source.
    keep_base: move the base GGUF made from an HF source there, instead of deleting it.
    quantize: llama.cpp type (Q4_K_M ...) for the transformer weights, by the patched quantizer.
    awq: AWQ settings to fold activation-aware scales in before quantizing (None: no AWQ);
         awq_with_carvq runs that search with the CARVQ embedding in place of the dense one.
    tune_steps: end-to-end tuning steps of the codec with the model in the loop (None: the
         preset's; 0: none).
    metric_rounds: rounds of re-encoding the codes under the model's Fisher metric (None: the
         preset's; 0: none). With both 0 the fit is to the matrix alone and needs no model.
    """

    preset: str = "carvq-1.6"
    calib_text: Path | None = None
    output_type: str | None = None
    base_type: str = "auto"
    seed: int = 0
    progress: bool = True
    keep_base: Path | None = None
    codec: Path | None = None
    quantize: str | None = None
    awq: AwqConfig | None = None
    awq_with_carvq: bool = False
    tune_steps: int | None = None
    metric_rounds: int | None = None

    def check(self) -> "ConvertOptions":
        """CarvqError now, before any work, for options that cannot run together; returns the
        options with the AWQ block format fixed by the quantize type."""
        if self.codec is None:
            from ..codec.presets import get_preset

            get_preset(self.preset)  # an unknown name fails now, not after the base GGUF is made
        if self.quantize is not None:
            from .quantize import check_quantize_type

            check_quantize_type(self.quantize)
        for flag, value in (("--tune-steps", self.tune_steps), ("--metric-rounds", self.metric_rounds)):
            if value is not None and value < 0:
                raise CarvqError(f"{flag} must be >= 0, got {value}")
        if self.codec is None:
            from ..hf.fit import metric_rounds

            metric_rounds(self.preset, self.metric_rounds)  # a layout that cannot take them
        if self.awq_with_carvq and self.awq is None:
            raise CarvqError("--awq-with-carvq changes how --awq calibrates; give --awq too")
        if self.awq is None:
            return self
        if self.quantize is None:
            raise CarvqError("--awq scales the weights for a 4-bit quantizer; give --quantize (e.g. Q4_0)")
        return replace(self, awq=replace(self.awq, quant=quant_proxy(self.quantize)))


def check_paths(source: Path, out: Path) -> None:
    """CarvqError if the source is missing or the output would overwrite it."""
    if not source.exists():
        raise CarvqError(f"source {source} does not exist")
    if source.is_file() and source.suffix != ".gguf":
        raise CarvqError(f"source {source} is a file but not a .gguf file (or pass an HF model directory)")
    if out.is_dir():
        raise CarvqError(f"output {out} is a directory")
    if not out.parent.is_dir():
        raise CarvqError(f"output directory {out.parent} does not exist")
    if source.is_file() and same_file(source, out):
        raise CarvqError(f"refusing to overwrite the source {source}; choose another output path")


def read_calib_text(calib_text: Path | None) -> str:
    """The calibration text: the given file, or the bundled carvq_gguf/data/calib.txt."""
    from ..data import bundled_text

    path = calib_text if calib_text is not None else bundled_text("calib.txt")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CarvqError(f"cannot read calibration text {path}: {e}") from e


def make_state(source: Path, matrix: torch.Tensor, options: ConvertOptions) -> CarvqState:
    """The codec for matrix: compressed now with preset, or loaded from a `compress -o` codec file."""
    V, n = matrix.shape
    preset, codec = options.preset, options.codec
    if codec is not None:
        from ..codec.codec_file import load_codec

        state = load_codec(codec)
        if (state.vocab_size, state.embedding_dim) != (V, n):
            raise CarvqError(f"codec {codec} is {state.vocab_size} x {state.embedding_dim}, "
                             f"but the model's token_embd is {V} x {n}")
        return state
    from ..hf.fit import fit_source

    print(f"[convert] compressing token_embd {V} x {n} with preset {preset}", file=sys.stderr)
    return fit_source(source, matrix, preset, read_calib_text(options.calib_text), seed=options.seed,
                      tune_steps=options.tune_steps, progress=options.progress, rounds=options.metric_rounds)


def write_verified(reader, state: CarvqState, tmp: Path, head, options: ConvertOptions) -> None:
    """Write the CARVQ-GGUF to tmp and verify it; with quantize, write an unquantized file next
    to it first, quantize that into tmp with llama.cpp and verify the quantized file too."""
    quantize, output_type, progress = options.quantize, options.output_type, options.progress
    if quantize is None:
        write_carvq_model(reader, state, tmp, head, progress=progress)
        verify_carvq_model(reader, carvq_io.open_gguf(tmp), state, head)
        return
    from .quantize import quantize_gguf, verify_quantized

    unquantized = tmp.with_name(tmp.name + ".unquantized")
    try:
        write_carvq_model(reader, state, unquantized, head, progress=progress)
        before = carvq_io.open_gguf(unquantized)
        verify_carvq_model(reader, before, state, head)
        print(f"[convert] quantizing the transformer weights to {quantize} with llama_model_quantize",
              file=sys.stderr)
        quantize_gguf(unquantized, tmp, quantize, None if output_type is None else parse_type(output_type))
        verify_quantized(before, carvq_io.open_gguf(tmp), state)
    finally:
        unquantized.unlink(missing_ok=True)


def convert_gguf(source: Path, base: Path, out: Path, options: ConvertOptions, state: CarvqState | None = None,
                 base_bytes: int | None = None, awq_summary: dict | None = None) -> ConvertResult:
    """Compress base's token_embd (or take options.codec, or state when already made) and write out;
    source supplies the tokenizer. base_bytes is the size the result compares against (default:
    base's), awq_summary what the AWQ search reported."""
    reader = carvq_io.open_gguf(base)
    matrix, src_type = token_embedding(reader)
    if state is None:
        state = make_state(source, matrix, options)
    head = output_head(reader, matrix, options.output_type)
    with atomic_output(out) as tmp:
        write_verified(reader, state, tmp, head, options)
    embd = next(t for t in reader.tensors if t.name == names.TOKEN_EMBD)
    written = {t.name: t for t in carvq_io.open_gguf(out).tensors}
    out_head = written[names.OUTPUT] if head is not None else None
    return ConvertResult(
        out_path=out, base_bytes=base.stat().st_size if base_bytes is None else base_bytes,
        out_bytes=out.stat().st_size, token_embd_type=src_type.name, token_embd_bytes=int(embd.n_bytes),
        carvq_bytes=sum(int(t.n_bytes) for name, t in written.items() if name.startswith(names.TENSOR_PREFIX)),
        head_type=None if out_head is None else out_head.tensor_type.name,
        head_bytes=0 if out_head is None else int(out_head.n_bytes), state=state, quantized=options.quantize,
        awq=awq_summary)


def convert(source: Path, out: Path, options: ConvertOptions | None = None) -> ConvertResult:
    """Convert an HF model directory or a GGUF file into a CARVQ-GGUF at out.

    An HF directory first goes through llama.cpp's convert_hf_to_gguf.py; the base GGUF lives in a
    temporary directory next to out and is removed unless options.keep_base names a path to move
    it to (for comparison with the CARVQ-GGUF). With options.quantize the patched llama.cpp
    quantizer, which leaves the CARVQ tensors as they are, quantizes the transformer weights;
    options.awq first folds activation-aware scales, searched on the calibration text, into them.
    """
    source, out = Path(source), Path(out)
    check_paths(source, out)
    options = (options or ConvertOptions()).check()
    remove_stale_temporaries(out.parent, BASE_PREFIX)
    with tempfile.TemporaryDirectory(prefix=owned_prefix(BASE_PREFIX), dir=out.parent) as tmp:
        base = source if source.is_file() else hf_to_gguf(source, Path(tmp) / "base.gguf", options.base_type)
        scaled, awq_summary, state = base, None, None
        if options.awq is not None:
            from .awq_fold import make_awq_base

            if options.awq_with_carvq:
                matrix, _ = token_embedding(carvq_io.open_gguf(base))
                state = make_state(source, matrix, options)
            scaled = Path(tmp) / "awq.gguf"
            awq_summary = make_awq_base(source, base, scaled, read_calib_text(options.calib_text), options.awq,
                                        options.progress, embedding=state)
        result = convert_gguf(source, scaled, out, options, state, base.stat().st_size, awq_summary)
        if options.keep_base is not None and base != source:
            shutil.move(base, options.keep_base)
        return result
