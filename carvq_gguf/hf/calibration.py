"""Calibration token ids for importance weighting, from the source model's own tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CarvqError


def _transformers_ids(directory: Path, text: str, gguf_file: str | None) -> list[int]:
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _llama_cpp_ids(path: Path, text: str) -> list[int]:
    from llama_cpp import Llama  # the installed runtime, only when transformers cannot read the vocab

    llm = Llama(str(path), vocab_only=True, verbose=False)
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def calibration_token_ids(source: Path, text: str) -> torch.Tensor:
    """Token ids (int64 [T]) of text under source's tokenizer.

    source is an HF model directory (its tokenizer files, through transformers) or a GGUF file
    (the tokenizer inside it: transformers' gguf_file= support, else llama_cpp's vocab_only
    loader when the runtime is installed).
    """
    source = Path(source)
    if not text.strip():
        raise CarvqError("calibration text is empty")
    if source.is_dir():
        try:
            ids = _transformers_ids(source, text, None)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise CarvqError(f"cannot load the tokenizer of {source}: {e}") from e
    else:
        errors = []
        ids = None
        try:
            ids = _transformers_ids(source.parent, text, source.name)
        except Exception as e:  # transformers supports a few tokenizer types in GGUF only
            errors.append(f"transformers: {e}")
        if ids is None:
            try:
                ids = _llama_cpp_ids(source, text)
            except Exception as e:
                errors.append(f"llama_cpp: {e}")
        if ids is None:
            raise CarvqError(f"cannot tokenize with the tokenizer inside {source}: {'; '.join(errors)}")
    if not ids:
        raise CarvqError("calibration text produced no tokens")
    return torch.tensor(ids, dtype=torch.int64)
