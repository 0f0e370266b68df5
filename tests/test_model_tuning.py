"""End-to-end codec tuning with the model in the loop, on tiny random models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from carvq_gguf.codec.compress import compress_matrix
from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.codec.importance import token_weights
from carvq_gguf.errors import CarvqError
from carvq_gguf.hf.tune import TuneConfig, calibration_windows, tune_codec
from conftest import save_tiny_llama

CONFIG = TuneConfig(steps=25, window=64, batch_windows=4, anchor_rows=256)


def _tiny(tmp_path, vocab_size=8192):  # 1.6 bpw with correction rows needs V >= ~7.7k at n = 64
    from transformers import AutoModelForCausalLM

    from carvq_gguf.hf.model import untie_output_head

    save_tiny_llama(tmp_path, tie_word_embeddings=True, vocab_size=vocab_size)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    untie_output_head(model)
    with torch.no_grad():  # a random model is nearly uniform; sharpen its logits so the embedding matters
        model.get_output_embeddings().weight *= 30
    return model


def _calib_ids(n=1200, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.arange(1, 129, dtype=torch.float).reciprocal(), n, replacement=True,
                             generator=g) * 2


def _kl(model, matrix, ids, window=64):
    """Mean KL(original || with matrix) over the calibration windows, measured independently of
    tune_codec's own report."""
    emb = model.get_input_embeddings().weight.detach()
    x = calibration_windows(ids, window)[:, :-1]
    with torch.no_grad():
        ref = torch.log_softmax(model(inputs_embeds=emb[x]).logits, -1)
        got = torch.log_softmax(model(inputs_embeds=matrix[x]).logits, -1)
    return float((ref.exp() * (ref - got)).sum(-1).mean())


def _fit(model, ids):
    matrix = model.get_input_embeddings().weight.detach().clone()
    weights = token_weights(ids.tolist(), matrix.shape[0])
    return matrix, weights, compress_matrix(matrix, "carvq-1.6-rvq", weights, seed=0, progress=False)


def test_tuning_lowers_calibration_kl_against_the_matrix_only_fit(tmp_path):
    model = _tiny(tmp_path)
    ids = _calib_ids()
    matrix, weights, state = _fit(model, ids)
    flags = [p.requires_grad for p in model.parameters()]
    tuned, stats = tune_codec(model, state, matrix, ids, weights, CONFIG, progress=False)
    before = _kl(model, CarvqEmbedding(state).decode_all(), ids)
    after = _kl(model, CarvqEmbedding(tuned).decode_all(), ids)
    assert after < 0.8 * before, (before, after)
    assert stats["kl_end"] < stats["kl_start"] and stats["kept"]
    assert "retried_at" not in stats  # the KL had fallen by the check
    assert torch.equal(tuned.codes, state.codes)  # codes fixed: only the F16 parts move
    assert torch.equal(tuned.correction_ids, state.correction_ids)
    assert tuned.codebooks.dtype == torch.float16 and not torch.equal(tuned.codebooks, state.codebooks)
    # the model is left as it was: requires_grad flags restored, weights untouched
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model.get_input_embeddings().weight, matrix)


def test_tuning_a_trellis_codec_lowers_calibration_kl(tmp_path, monkeypatch):
    """The trellis tables, column scales and means and the correction rows move; the streams do not."""
    from carvq_gguf.codec import presets
    from carvq_gguf.codec.state import TrellisConfig

    small = dataclasses.replace(presets.get_preset("carvq-1.6"), name="tcq-test",
                                trellis=TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=2))
    monkeypatch.setitem(presets.PRESETS, "tcq-test", small)
    model = _tiny(tmp_path)
    ids = _calib_ids()
    matrix = model.get_input_embeddings().weight.detach().clone()
    weights = token_weights(ids.tolist(), matrix.shape[0])
    state = compress_matrix(matrix, "tcq-test", weights, seed=0, progress=False)
    tuned, stats = tune_codec(model, state, matrix, ids, weights, CONFIG, progress=False)
    before = _kl(model, CarvqEmbedding(state).decode_all(), ids)
    after = _kl(model, CarvqEmbedding(tuned).decode_all(), ids)
    assert after < 0.8 * before, (before, after)
    assert torch.equal(tuned.trellis.streams, state.trellis.streams)
    assert tuned.trellis.tables.dtype == torch.float16 and not torch.equal(tuned.trellis.tables, state.trellis.tables)
    assert not torch.equal(tuned.trellis.columns, state.trellis.columns)


def _family_tiny(tmp_path, monkeypatch):
    """A tiny model whose embedding rows come in related pairs, the small trellis preset that
    predicts rows, and its calibration ids and weights."""
    from carvq_gguf.codec import presets
    from carvq_gguf.codec.state import TrellisConfig
    from test_codec_prediction import families

    small = dataclasses.replace(presets.get_preset("carvq-2.0"), name="tcq-test",
                                trellis=TrellisConfig(state_bits=6, step_bits=3, step_dim=2, groups=2))
    monkeypatch.setitem(presets.PRESETS, "tcq-test", small)
    model = _tiny(tmp_path)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(0.02 * families(8192, 64, noise=0.5))
    g = torch.Generator().manual_seed(1)  # a long tail: most tokens read have no correction row
    ids = torch.multinomial(torch.arange(1, 8193, dtype=torch.float).pow(-0.7), 2000, replacement=True, generator=g)
    matrix = model.get_input_embeddings().weight.detach().clone()
    return model, matrix, ids, token_weights(ids.tolist(), matrix.shape[0])


def test_predicted_rows_are_chosen_by_the_calibration_kl_and_tuned_through(tmp_path, monkeypatch):
    """Rows predicted from their related rows lower the calibration KL of the same fit without them;
    the fit keeps them because it measures that, not a threshold read from a table; and tuning
    then moves the leftovers' columns too."""
    from carvq_gguf.hf.fit import choose_prediction
    from carvq_gguf.hf.tune import probe_windows

    model, matrix, ids, weights = _family_tiny(tmp_path, monkeypatch)
    plain = compress_matrix(matrix, "tcq-test", weights, seed=0, progress=False, predict=False)
    probe = probe_windows(ids, CONFIG)
    best, tried = choose_prediction(model, plain, matrix, (0.25, 1.5), probe, weights, progress=False)
    assert set(tried) == {"none", "cos2>=0.25"}  # nothing is related that closely at 1.5
    assert best.trellis.prediction is not None and tried["cos2>=0.25"] < tried["none"]
    before = _kl(model, CarvqEmbedding(plain).decode_all(), ids)
    after = _kl(model, CarvqEmbedding(best).decode_all(), ids)
    assert after < before, (before, after)
    unchanged, tried = choose_prediction(model, plain, matrix, (1.5,), probe, weights, progress=False)
    assert unchanged is plain and set(tried) == {"none"}

    tuned, stats = tune_codec(model, best, matrix, ids, weights, CONFIG, progress=False)
    assert stats["kept"] and stats["kl_end"] < stats["kl_start"]
    p, q = best.trellis.prediction, tuned.trellis.prediction
    assert torch.equal(q.rows, p.rows) and torch.equal(q.scale_codes, p.scale_codes) and q.scale_step == p.scale_step
    assert q.columns.dtype == torch.float16 and not torch.equal(q.columns, p.columns)


def test_tuning_is_deterministic_for_a_seed(tmp_path):
    model = _tiny(tmp_path)
    ids = _calib_ids()
    matrix, weights, state = _fit(model, ids)
    config = TuneConfig(steps=5, window=64, batch_windows=2, anchor_rows=128)
    a, _ = tune_codec(model, state, matrix, ids, weights, config, seed=3, progress=False)
    b, _ = tune_codec(model, state, matrix, ids, weights, config, seed=3, progress=False)
    c, _ = tune_codec(model, state, matrix, ids, weights, config, seed=4, progress=False)
    assert torch.equal(a.codebooks, b.codebooks) and torch.equal(a.correction_rows, b.correction_rows)
    assert not torch.equal(a.codebooks, c.codebooks)


def test_tuning_that_has_not_lowered_the_kl_by_the_check_step_starts_again_gentler(tmp_path):
    """Adam's first steps move every parameter by about the rate: too far for a fit already close,
    where the KL rises (SmolLM2 at 2.0 bpw, Gemma 3 at 1.6). A failed check restarts from the fit
    at retry_lr times the rate for the steps left."""
    model = _tiny(tmp_path)
    ids = _calib_ids()
    matrix, weights, state = _fit(model, ids)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    wild = dataclasses.replace(CONFIG, lr=50.0, check_step=3, retry_lr=CONFIG.lr / 50.0)  # then the usual rate
    tuned, stats = tune_codec(model, state, matrix, ids, weights, wild, progress=False)
    assert stats["retried_at"] == 3 and stats["kept"] and stats["kl_end"] < stats["kl_start"]
    assert torch.equal(tuned.codes, state.codes)
    # teacher and student: the start, 3 steps, the check, the steps left, the end
    assert len(calls) == 2 * (1 + 3 + 1 + CONFIG.steps - 3 + 1)
    tuned, stats = tune_codec(model, state, matrix, ids, weights, dataclasses.replace(wild, check_step=0),
                              progress=False)
    assert tuned is state and "retried_at" not in stats and not stats["kept"]  # no check: all steps wild, discarded


def test_tuning_is_skipped_when_every_calibration_token_is_corrected(tmp_path):
    """Correction rows for every token the calibration text reads leave the KL nothing to learn
    from (Gemma 3's carvq-2.0 read 0.0000 and spent 4 minutes for nothing): the model is not run."""
    model = _tiny(tmp_path)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    few = torch.tensor([2, 4, 6]).repeat(300)  # 3 distinct tokens: carvq-1.6 gives 3 correction rows here
    matrix, weights, state = _fit(model, few)
    assert set(few.tolist()) <= set(state.correction_ids.tolist())
    tuned, stats = tune_codec(model, state, matrix, few, weights, CONFIG, progress=False)
    assert tuned is state and "correction row" in stats["skipped"] and not calls
    mixed = torch.cat([torch.tensor([4001] * 3), few])  # one token without a row: the tuning runs
    tune_codec(model, state, matrix, mixed, weights, TuneConfig(steps=1, window=64, anchor_rows=16), progress=False)
    assert calls


def test_calibration_windows_lead_with_bos():
    ids = torch.arange(10, 40)
    plain = calibration_windows(ids, 8)
    assert plain.shape == (3, 9) and torch.equal(plain[1], ids[8:17])
    led = calibration_windows(ids, 8, bos=1)
    assert led.shape == (4, 9) and bool((led[:, 0] == 1).all()) and torch.equal(led[0, 1:], ids[:8])
    with pytest.raises(CarvqError, match="tokens"):
        calibration_windows(torch.arange(5), 8)


def test_tuning_refuses_bad_input(tmp_path):
    model = _tiny(tmp_path)
    ids = _calib_ids()
    matrix, weights, state = _fit(model, ids)
    with pytest.raises(CarvqError, match="matrix"):
        tune_codec(model, state, matrix[:, :32], ids, weights, CONFIG, progress=False)
    with pytest.raises(CarvqError, match="vocabulary"):
        tune_codec(model, state, matrix, ids + 9000, weights, CONFIG, progress=False)


def _sensitive_tiny_source(tmp_path):
    """A tiny HF model whose logits depend on the embedding, and calibration text with many
    distinct pieces (so a matrix-only fit leaves an error): (source, model, matrix, calib, ids)."""
    from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm
    from carvq_gguf.hf.perplexity import tokenize_text
    from tiny_sources import make_tiny_hf

    src = make_tiny_hf(tmp_path / "hf", tied=False, vocab_size=8192)  # 1.6 bpw needs V >= ~7.7k at n = 64
    model, tokenizer = load_causal_lm(src)
    with torch.no_grad():  # sharpen the random model's logits so that the embedding matters, and make a
        model.get_output_embeddings().weight *= 30  # few directions matter most, as in a trained model
        for norm in [layer.input_layernorm for layer in model.model.layers] + [model.model.norm]:
            norm.weight[:8] *= 8
    model.save_pretrained(src)
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    text = " ".join("".join(letters[int(i)] for i in torch.randint(26, (int(k),), generator=g))
                    for k in torch.randint(2, 9, (600,), generator=g))
    calib = tmp_path / "calib.txt"
    calib.write_text(text)
    return src, model, input_embedding_matrix(model), calib, torch.tensor(tokenize_text(tokenizer, text))


def test_convert_fits_with_the_model_in_the_loop_for_the_default_preset(tmp_path):
    """convert's codec step with carvq-1.6 (trellis) runs the model in the loop: paths searched
    under its Fisher, then tuning, lower the calibration KL of the matrix-only fit by more than 10%."""
    from carvq_gguf.convert.pipeline import ConvertOptions, make_state

    src, model, matrix, calib, ids = _sensitive_tiny_source(tmp_path)

    def fit(**overrides):
        return make_state(src, matrix, ConvertOptions(preset="carvq-1.6", calib_text=calib, progress=False,
                                                      **overrides))

    full, plain = fit(), fit(tune_steps=0, metric_rounds=0)
    assert full.quantizer == plain.quantizer == "trellis"
    assert torch.equal(plain.trellis.streams, compress_matrix(
        matrix, "carvq-1.6", token_weights(ids.tolist(), matrix.shape[0]), progress=False).trellis.streams)
    before = _kl(model, CarvqEmbedding(plain).decode_all(), ids)
    after = _kl(model, CarvqEmbedding(full).decode_all(), ids)
    assert after < 0.9 * before, (before, after)


def test_convert_re_encodes_rvq_codes_under_the_model_metric(tmp_path):
    """With RVQ codes (carvq-1.6-rvq) the codes themselves are re-encoded under the model's Fisher
    metric, which lowers the calibration KL of the matrix-only fit by more than 10%."""
    from carvq_gguf.convert.pipeline import ConvertOptions, make_state

    src, model, matrix, calib, ids = _sensitive_tiny_source(tmp_path)

    def fit(**overrides):
        return make_state(src, matrix, ConvertOptions(preset="carvq-1.6-rvq", calib_text=calib, progress=False,
                                                      **overrides))

    def kl(state):
        return _kl(model, CarvqEmbedding(state).decode_all(), ids)

    full, encoded, plain = fit(), fit(tune_steps=0), fit(tune_steps=0, metric_rounds=0)
    assert torch.equal(plain.codebooks, compress_matrix(
        matrix, "carvq-1.6-rvq", token_weights(ids.tolist(), matrix.shape[0]), progress=False).codebooks)
    assert not torch.equal(encoded.codes, plain.codes)
    assert kl(encoded) < 0.9 * kl(plain), (kl(encoded), kl(plain))
    # tuning keeps the codes, and keeps its result only where it lowers the KL (on this tiny model
    # the metric's fit is already close: test_tuning_lowers_calibration_kl... covers the tuning)
    assert torch.equal(full.codes, encoded.codes)
    assert kl(full) <= 1.02 * kl(encoded)


class _BosTokenizer:
    """A tokenizer that puts BOS in front of a text, as Gemma's does."""

    bos_token_id = 8000

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, add_special_tokens=True):
        ids = list(self.inner(text, add_special_tokens=False)["input_ids"])
        return {"input_ids": [self.bos_token_id] + ids if add_special_tokens else ids}


def test_bos_gets_a_correction_row_when_the_tokenizer_adds_it(tmp_path):
    """A BOS the tokenizer adds is read at the start of every sequence (an attention sink): it
    is fitted exactly, though no calibration text contains it."""
    from carvq_gguf.hf.fit import fit_with_model
    from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm
    from tiny_sources import make_tiny_hf

    src = make_tiny_hf(tmp_path / "hf", tied=True, vocab_size=8192)
    model, tokenizer = load_causal_lm(src)
    matrix = input_embedding_matrix(model)
    text = "Return the number of items in a container. Open file and return a file object. " * 40
    plain = fit_with_model(model, tokenizer, matrix, "carvq-1.6", text, tune_steps=0, rounds=0, progress=False)
    led = fit_with_model(model, _BosTokenizer(tokenizer), matrix, "carvq-1.6", text, tune_steps=0, rounds=0,
                         progress=False)
    assert 8000 not in plain.state.correction_ids.tolist()
    assert 8000 in led.state.correction_ids.tolist()
    decoded = CarvqEmbedding(led.state)(torch.tensor([8000]))[0]
    assert torch.allclose(decoded, matrix[8000], atol=1e-2 * float(matrix[8000].abs().max()))


def test_model_aware_preset_needs_a_tokenizer(tmp_path):
    from carvq_gguf.convert.pipeline import ConvertOptions, make_state
    from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm

    save_tiny_llama(tmp_path, tie_word_embeddings=True)
    model, _ = load_causal_lm(tmp_path)
    with pytest.raises(CarvqError, match="tokenizer"):
        make_state(tmp_path, input_embedding_matrix(model), ConvertOptions(preset="carvq-1.6", progress=False))


def test_unloadable_model_falls_back_to_the_matrix_only_fit(tmp_path, monkeypatch, capsys):
    """A GGUF whose architecture transformers cannot read still converts, with a warning: the
    fit is then the matrix-only one (what --metric-rounds 0 --tune-steps 0 gives)."""
    from carvq_gguf.convert.pipeline import ConvertOptions, make_state
    from carvq_gguf.hf import model as hf_model
    from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm
    from tiny_sources import make_tiny_hf

    src = make_tiny_hf(tmp_path / "hf", tied=True, vocab_size=8192)
    matrix = input_embedding_matrix(load_causal_lm(src)[0])
    calib = tmp_path / "calib.txt"
    calib.write_text("Return the number of items in a container. Open file and return a file object. " * 40)
    plain = make_state(src, matrix, ConvertOptions(preset="carvq-1.6", calib_text=calib, progress=False,
                                                   tune_steps=0, metric_rounds=0))

    def unsupported(*args, **kwargs):
        raise ValueError("GGUF model with architecture tinyarch is not supported yet")

    monkeypatch.setattr(hf_model, "load_causal_lm", unsupported)
    state = make_state(src, matrix, ConvertOptions(preset="carvq-1.6", calib_text=calib, progress=False))
    assert torch.equal(CarvqEmbedding(state).decode_all(), CarvqEmbedding(plain).decode_all())
    assert "transformers cannot load" in capsys.readouterr().err
    with pytest.raises(CarvqError, match="transformers cannot load"):
        make_state(src, matrix, ConvertOptions(preset="carvq-1.6-fisher", calib_text=calib, progress=False))


def test_bad_model_loop_options_are_refused_before_any_work(tmp_path):
    from carvq_gguf.convert.pipeline import ConvertOptions, convert

    with pytest.raises(CarvqError, match="--tune-steps"):
        convert(tmp_path, tmp_path / "out.gguf", ConvertOptions(tune_steps=-1))
    with pytest.raises(CarvqError, match="--metric-rounds"):
        convert(tmp_path, tmp_path / "out.gguf", ConvertOptions(metric_rounds=-1))
    with pytest.raises(CarvqError, match="column layout"):
        convert(tmp_path, tmp_path / "out.gguf", ConvertOptions(preset="carvq-paper", metric_rounds=1))


def test_embedding_fisher_finds_the_directions_that_cost(tmp_path):
    """The same small shift of every row costs far more KL along the Fisher's top eigenvector
    than along its bottom one; the estimate is symmetric and deterministic for a seed."""
    from carvq_gguf.hf.importance import embedding_fisher

    model = _tiny(tmp_path)
    ids = _calib_ids()
    windows = calibration_windows(ids, 64)[:8, :-1]
    fisher = embedding_fisher(model, windows, positions=16, seed=0)
    n = model.get_input_embeddings().weight.shape[1]
    assert fisher.shape == (n, n) and torch.allclose(fisher, fisher.T)
    assert torch.equal(fisher, embedding_fisher(model, windows, positions=16, seed=0))
    values, vectors = torch.linalg.eigh(fisher)
    matrix = model.get_input_embeddings().weight.detach()
    step = 0.2 * float(matrix.norm(dim=1).mean())
    top = _kl(model, matrix + step * vectors[:, -1].float(), ids)
    bottom = _kl(model, matrix + step * vectors[:, 0].float(), ids)
    assert top > 5 * bottom, (top, bottom)
    with pytest.raises(CarvqError, match="windows"):
        embedding_fisher(model, windows[:, :1])


def test_sampled_windows_are_the_models_own_text_and_seeded_apart(tmp_path):
    """Text the model writes: the shape asked, starting at the given token, the same for a seed
    and different for another, and the caller's random state untouched."""
    from carvq_gguf.hf.fit import sampled_windows

    model = _tiny(tmp_path)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a = sampled_windows(model, 7, 3, 20, seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    assert a.shape == (3, 20) and a.dtype == torch.int64 and bool((a[:, 0] == 7).all())
    assert torch.equal(a, sampled_windows(model, 7, 3, 20, seed=0))
    assert not torch.equal(a, sampled_windows(model, 7, 3, 20, seed=1))


def test_predicted_rows_are_judged_on_sampled_text_too(tmp_path, monkeypatch):
    """The windows that judge predicted rows hold the calibration's and the model's own text:
    the calibration's tokens chose the correction rows that pay for the prediction, so they
    alone cannot weigh the trade."""
    from carvq_gguf.hf import fit
    from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm
    from tiny_sources import make_tiny_hf

    src = make_tiny_hf(tmp_path / "hf", tied=True, vocab_size=8192)
    model, tokenizer = load_causal_lm(src)
    matrix = input_embedding_matrix(model)
    seen = {}

    def spy(model, state, matrix, thresholds, probe, *args, **kwargs):
        seen["probe"] = probe
        return state, {"none": 0.0}

    monkeypatch.setattr(fit, "choose_prediction", spy)
    text = "Return the number of items in a container. Open file and return a file object. " * 40
    fit.fit_with_model(model, tokenizer, matrix, "carvq-1.6", text, tune_steps=0, rounds=0, progress=False)
    probe = seen["probe"]
    calibration = fit.probe_windows(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]))
    assert probe.shape[0] == calibration.shape[0] + fit.SAMPLED_WINDOWS
    assert torch.equal(probe[:calibration.shape[0]], calibration)
    sampled = probe[calibration.shape[0]:]
    assert torch.equal(sampled, fit.sampled_windows(model, int(model.config.bos_token_id), fit.SAMPLED_WINDOWS,
                                                    probe.shape[1], seed=0))


def test_codec_kl_in_passes_equals_one_pass(tmp_path, monkeypatch):
    """A large vocabulary's probe goes through the model a few windows at a time; the mean must be
    the one of a single pass, uneven last pass included."""
    from carvq_gguf.hf import tune

    model = _tiny(tmp_path)
    ids = _calib_ids()
    matrix, _, state = _fit(model, ids)
    probe = calibration_windows(ids, 64)[:3, :-1]
    whole = tune.codec_kl(model, state, matrix, probe)
    monkeypatch.setattr(tune, "LOGITS_PER_PASS", 2 * probe.shape[1] * matrix.shape[0])  # passes of 2, then 1
    calls = []
    real = tune._kl
    monkeypatch.setattr(tune, "_kl", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    assert tune.codec_kl(model, state, matrix, probe) == pytest.approx(whole, rel=1e-5)
    assert calls == [2, 1]


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_models_own_mode_on_error_too(training):
    from carvq_gguf.hf.model import eval_mode

    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).train(training)
    with eval_mode(model):
        assert not model.training and not model[0].training
    assert model.training is training and model[0].training is training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("measurement failed")
    assert model.training is training
