"""Model-in-the-loop row importance (diagonal Fisher) on tiny random models."""

from __future__ import annotations

import pytest
import torch

from carvq_gguf.codec.importance import token_weights
from carvq_gguf.codec.compress import compress_matrix
from carvq_gguf.hf.importance import (SENSITIVITY_CLAMP, fisher_row_scores, fisher_token_weights,
                                         model_token_weights)
from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.errors import CarvqError
from conftest import save_tiny_llama


def _tiny(tmp_path, vocab_size=256):
    from transformers import AutoModelForCausalLM

    save_tiny_llama(tmp_path, tie_word_embeddings=False, vocab_size=vocab_size)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    return model.eval()


def _calib_ids(vocab_size=256, n=600, seed=1):
    g = torch.Generator().manual_seed(seed)
    # a skewed, text-like distribution: a few ids occur often, most never
    return torch.multinomial(torch.arange(1, 65, dtype=torch.float).reciprocal(), n, replacement=True,
                             generator=g) * 3 % vocab_size


def test_fisher_counts_only_seen_rows(tmp_path):
    model = _tiny(tmp_path)
    ids = _calib_ids()
    fisher, counts = fisher_row_scores(model, ids, window=64)
    seen = torch.bincount(ids, minlength=256) > 0
    assert bool((fisher[seen] > 0).all())
    assert bool((fisher[~seen] == 0).all())
    assert int(counts.sum()) == ids.numel()


def test_fisher_weights_deterministic_and_bounded(tmp_path):
    model = _tiny(tmp_path)
    ids = _calib_ids()
    a = fisher_token_weights(model, ids, window=64)
    b = fisher_token_weights(model, ids, window=64)
    assert torch.equal(a, b)
    freq = token_weights(ids.tolist(), 256)
    lo, hi = SENSITIVITY_CLAMP
    counts = freq - freq.min()
    seen = counts > 0
    ratio = (a[seen] - freq.min()) / counts[seen]
    assert bool((ratio >= lo - 1e-4).all()) and bool((ratio <= hi + 1e-4).all())
    assert not torch.allclose(a, freq)  # the model changes the weights, not only the counts
    assert bool((a[~seen] == freq.min()).all())  # unseen rows keep the floor


def _calib_kl(model, matrix, ids):
    emb = model.get_input_embeddings()
    x = ids[:-1].unsqueeze(0)
    with torch.no_grad():
        ref = torch.log_softmax(model(inputs_embeds=emb.weight[x]).logits, -1)
        got = torch.log_softmax(model(inputs_embeds=matrix[x]).logits, -1)
    return float((ref.exp() * (ref - got)).sum(-1).mean())


def test_fisher_weights_lower_calibration_kl(tmp_path):
    """The model-aware weights must fit better, where the model reads, than counts alone."""
    model = _tiny(tmp_path)
    # make a few rows much more sensitive than the rest: shrink them (the first RMSNorm divides
    # by the row norm, so an absolute error in a short row costs more)
    with torch.no_grad():
        model.get_input_embeddings().weight[::7] *= 0.1
    ids = _calib_ids(n=800)
    matrix = model.get_input_embeddings().weight.detach().clone()
    kls = {}
    for name, w in {"freq": token_weights(ids.tolist(), 256),
                    "fisher": fisher_token_weights(model, ids, window=64)}.items():
        state = compress_matrix(matrix, "rvq-1.6", w, seed=0, progress=False)
        kls[name] = _calib_kl(model, CarvqEmbedding(state).decode_all(), ids)
    assert kls["fisher"] < kls["freq"], kls


def test_model_weights_need_a_tokenizer(tmp_path):
    save_tiny_llama(tmp_path, tie_word_embeddings=True)
    with pytest.raises(CarvqError, match="tokenizer"):
        model_token_weights(tmp_path, "some calibration text", 256)


def test_convert_state_with_fisher_preset(tmp_path):
    """convert's codec step runs the model-aware preset on an HF source, deterministically."""
    from carvq_gguf.convert.pipeline import ConvertOptions, make_state
    from tiny_sources import make_tiny_hf

    src = make_tiny_hf(tmp_path / "hf", tied=True, vocab_size=8192)  # 1.6 bpw needs V >= ~7.7k at n = 64
    calib = tmp_path / "calib.txt"
    calib.write_text("Return the number of items in a container. Open file and return a file object. " * 20)
    matrix = _tiny_matrix(src)
    a = make_state(src, matrix, ConvertOptions(preset="carvq-1.6-fisher", calib_text=calib, progress=False))
    b = make_state(src, matrix, ConvertOptions(preset="carvq-1.6-fisher", calib_text=calib, progress=False))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.correction_ids, b.correction_ids)
    assert torch.equal(a.correction_rows, b.correction_rows)


def test_convert_fisher_preset_needs_a_tokenizer(tmp_path):
    from carvq_gguf.convert.pipeline import ConvertOptions, make_state

    save_tiny_llama(tmp_path, tie_word_embeddings=True)
    with pytest.raises(CarvqError, match="tokenizer"):
        make_state(tmp_path, _tiny_matrix(tmp_path), ConvertOptions(preset="carvq-1.6-fisher", progress=False))


def _tiny_matrix(path):
    from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm

    model, _ = load_causal_lm(path)
    return input_embedding_matrix(model)
