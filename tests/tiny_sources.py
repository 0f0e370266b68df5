"""Tiny model sources for the converter tests: an HF llama directory with a tokenizer built
offline, and synthetic GGUF files with many key and tensor types."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, quants

from conftest import save_tiny_llama

SENTENCES = [
    "Return the number of items in a container.",
    "The function returns a new list containing all items from the iterable in ascending order.",
    "Open file and return a corresponding file object. If the file cannot be opened, an error is raised.",
    "Split the string at the first occurrence of sep, and return a tuple containing three parts.",
    "Create a new dictionary with keys from iterable and values set to value.",
    "Read and return one line from the stream. If size is specified, at most size bytes will be read.",
] * 4


def save_tiny_tokenizer(path: Path, vocab_size: int = 200) -> None:
    """A sentencepiece unigram model (tokenizer.model, which convert_hf_to_gguf.py reads for
    llama) and the same vocabulary as a tokenizers-library tokenizer.json (which transformers
    reads), trained on a few sentences."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (path / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.IdToPiece(i), sp.GetScore(i)) for i in range(sp.GetPieceSize())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)


def make_tiny_hf(path: Path, tied: bool, vocab_size: int = 256) -> Path:
    """A tiny random llama (transformers config + save_pretrained) with a tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    save_tiny_llama(path, tie_word_embeddings=tied, vocab_size=vocab_size)
    save_tiny_tokenizer(path)
    return path


def make_tiny_hf_arch(path: Path, arch: str) -> Path:
    """A tiny random model of arch (see tiny_config; tied head) saved with a tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    tiny_causal_lm(arch).save_pretrained(path)
    save_tiny_tokenizer(path)
    return path


def make_synthetic_gguf(path: Path, vocab_size: int = 96, embedding_dim: int = 64, tied: bool = True,
                        embd_type: GGMLQuantizationType = GGMLQuantizationType.Q8_0, seed: int = 0) -> Path:
    """A llama-architecture GGUF with keys of every common type and tensors of several ggml types."""
    rng = np.random.default_rng(seed)
    V, n = vocab_size, embedding_dim
    w = GGUFWriter(path, "llama")
    w.add_uint32("llama.embedding_length", n)
    w.add_uint32("llama.vocab_size", V)
    w.add_string("general.name", "synthetic \u00e9\u00e8 test")
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_uint64("test.u64", 2 ** 40 + 3)
    w.add_int32("test.i32", -7)
    w.add_float64("test.f64", 1 / 3)
    w.add_array("test.strings", ["a", "bb", "\u2581ccc"])
    w.add_key_value("test.ints", [1, -2, 3], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_key_value("test.floats", [0.5, 0.25], GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
    embd = rng.standard_normal((V, n)).astype(np.float32)
    w.add_tensor("token_embd.weight", quants.quantize(embd, embd_type), raw_dtype=embd_type)
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(n).astype(np.float32))
    w.add_tensor("blk.0.ffn_up.weight", quants.quantize(rng.standard_normal((2 * n, n)).astype(np.float32),
                                                        GGMLQuantizationType.Q4_1),
                 raw_dtype=GGMLQuantizationType.Q4_1)
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((n, n)).astype(np.float16))
    w.add_tensor("output_norm.weight", rng.standard_normal(n).astype(np.float32))
    if not tied:
        w.add_tensor("output.weight", rng.standard_normal((V, n)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_config(arch: str, vocab_size: int = 256, tied: bool = True):
    """A transformers config of a tiny random decoder: llama (grouped-query attention),
    llama-mha (as many kv heads as heads), mistral, qwen2 (q/k/v biases), qwen3 (q/k norms) or
    gemma3 (text-only)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tied)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "llama-mha":
        return LlamaConfig(**{**common, "num_key_value_heads": 4})
    if arch == "mistral":
        return MistralConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=16)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=32, layer_types=["sliding_attention", "full_attention"])
    raise ValueError(arch)


def tiny_causal_lm(arch: str, seed: int = 0):
    """A tiny random causal LM of arch (see tiny_config), float32, eval mode, with non-trivial
    norm weights and biases so that folding into them is tested."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()
