"""CARVQ-GGUFs of several architectures through the patched loader: each either loads and decodes
a batch, or is refused at load with an error naming the reason; none crashes.

The files are tiny random models converted by the pinned convert_hf_to_gguf.py, with token_embd
replaced by a random CARVQ state (tied heads kept as an explicit output.weight, as the converter
writes them). Architectures whose llama.cpp graph reads token_embd outside the embedding helper
(bitnet's head, MTP heads without their own embedding, speculative drafts) are refused by the
loader; the pinned converter cannot make tiny models of those from transformers' classes (their
tokenizers or tensor names do not convert), so they are not in this table. Each file is loaded in its own carvq-load process (ASan+UBSan build), so a crash
is reported as such instead of ending the test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGUFReader

from carvq_gguf.eval import loader_fuzz
from carvq_gguf.gguf import fuzz as gguf_fuzz
from carvq_gguf.convert import hf_source
from conftest import make_random_state
from native_fixtures import native_bin
from test_runtime_parity import save_tiny_hf, vocab_and_width, write_carvq
from tiny_sources import save_tiny_tokenizer

pytestmark = pytest.mark.native
_ = native_bin

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def save_hf(arch: str, path: Path) -> Path:
    """A tiny random HF model of arch with a sentencepiece tokenizer."""
    if arch in ("llama", "qwen2", "gemma3"):
        return save_tiny_hf(arch, path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if arch == "gemma2":  # llama.cpp always ties gemma2's head to token_embd
        from transformers import Gemma2Config, Gemma2ForCausalLM
        Gemma2ForCausalLM(Gemma2Config(**COMMON, head_dim=16, sliding_window=32)).save_pretrained(path)
    elif arch == "llama-untied":
        from transformers import LlamaConfig, LlamaForCausalLM
        LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=False)).save_pretrained(path)
    else:
        raise ValueError(arch)
    save_tiny_tokenizer(path)
    return path


# arch -> (outcome, text the rejection message must contain)
EXPECTED = {
    "llama": ("ok", ""),
    "llama-untied": ("ok", ""),
    "qwen2": ("ok", ""),
    "gemma3": ("ok", ""),
    "gemma2": ("ok", ""),
    # the converter always writes output.weight for a tied head; without it the head has nothing to use
    "gemma2-without-output": ("rejected", "has no output.weight and its output head would be tied"),
}


@pytest.fixture(scope="module")
def carvq_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """arch -> (dense base GGUF, its CARVQ-GGUF)."""
    root = tmp_path_factory.mktemp("archs")
    out = {}
    for arch in EXPECTED:
        if arch.endswith("-without-output"):
            continue
        base = hf_source.hf_to_gguf(save_hf(arch, root / arch), root / f"{arch}.gguf", "f16")
        V, n = vocab_and_width(base)
        state = make_random_state(vocab_size=V, embedding_dim=n, group_layout="block", seed=3)
        out[arch] = (base, write_carvq(base, state, root / f"{arch}-carvq.gguf"))
    base, carvq = out["gemma2"]
    f = gguf_fuzz.parse(carvq.read_bytes())
    f.tensors = [t for t in f.tensors if t.name != "output.weight"]
    (root / "gemma2-without-output.gguf").write_bytes(gguf_fuzz.serialize(f))
    out["gemma2-without-output"] = (base, root / "gemma2-without-output.gguf")
    return out


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_architecture_works_or_is_refused_by_name(native_bin: Path, carvq_files, arch: str) -> None:
    base, carvq = carvq_files[arch]
    (dense,) = loader_fuzz.run_files(native_bin / "carvq-load", [base])
    assert dense.status == "ok", f"the dense {arch} model itself does not load: {dense.message}"
    (outcome,) = loader_fuzz.run_files(native_bin / "carvq-load", [carvq])
    status, message = EXPECTED[arch]
    print(f"\n| {arch} | {outcome.status} | {outcome.message.split('error loading model: ')[-1]} |")
    assert outcome.status == status, outcome.message[-3000:]
    assert message in outcome.message


def test_a_tied_head_loads_the_converters_output_weight(carvq_files) -> None:
    """The always-tied architecture's file has output.weight and no token_embd.weight."""
    names = {t.name for t in GGUFReader(carvq_files["gemma2"][1]).tensors}
    assert "output.weight" in names and "token_embd.weight" not in names
