"""`carvq-gguf compress` end to end on tiny random HF llama models saved with save_pretrained."""

import json
import random

import pytest

from carvq_gguf.cli.main import main
from carvq_gguf.codec.codec_file import load_codec
from carvq_gguf.codec.embedding import CarvqEmbedding

from conftest import save_tiny_llama

V = 256


def _save_word_tokenizer(path):
    """A word-level tokenizer: token 'wI' is id I (whitespace split)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(path)


def _text(path, seed, words=400):
    rng = random.Random(seed)
    # Zipf-like: low ids are frequent, as in real text
    path.write_text(" ".join(f"w{min(int(rng.paretovariate(1.0)) - 1, V - 1)}" for _ in range(words)))
    return path


def test_compress_cli_with_tokenizer_writes_codec_and_report(tmp_path, capsys):
    model_dir = save_tiny_llama(tmp_path / "tiny", tie_word_embeddings=True, vocab_size=V)
    _save_word_tokenizer(model_dir)
    codec, report = tmp_path / "tiny.carvq", tmp_path / "report.json"
    rc = main(["compress", str(model_dir), "--preset", "rvq-1.6", "-o", str(codec), "--quiet",
               "--eval-text", str(_text(tmp_path / "eval.txt", 1)), "--calib-text", str(_text(tmp_path / "calib.txt", 2)),
               "--json", str(report), "--windows", "2", "--window", "64"])
    assert rc == 0
    data = json.loads(report.read_text())
    for key in ("bpw_total", "seconds", "ppl_original", "ppl_carvq", "ppl_rvq_only", "ppl_int2", "ppl_int3",
                "ppl_int4", "rel_mse_carvq", "mean_cosine_carvq"):
        assert isinstance(data[key], float), key
    assert data["eval_scored_tokens"] == 64
    assert data["ppl_carvq"] == pytest.approx(data["ppl_rvq_only"], rel=1e-4)  # rvq-1.6 has no adaptor
    state = load_codec(codec)
    assert state.vocab_size == V and state.preset == "rvq-1.6"
    assert "RTN INT2" in capsys.readouterr().out


def test_compress_cli_without_tokenizer_needs_no_eval(tmp_path, capsys):
    model_dir = save_tiny_llama(tmp_path / "tiny", tie_word_embeddings=False, vocab_size=V)
    codec = tmp_path / "tiny.carvq"
    assert main(["compress", str(model_dir), "--preset", "carvq-paper", "-o", str(codec), "--quiet"]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    assert not codec.exists()
    assert main(["compress", str(model_dir), "--preset", "carvq-paper", "-o", str(codec), "--quiet",
                 "--no-eval"]) == 0
    state = load_codec(codec)
    assert state.adaptor.table_dim == 16 and state.rvq.group_layout == "block"
    assert CarvqEmbedding(state).decode_all().shape == (V, 64)


def test_compress_cli_unknown_preset(tmp_path, capsys):
    assert main(["compress", str(tmp_path), "--preset", "nope", "-o", str(tmp_path / "x")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
