"""One real-model check: SmolLM2-135M's embedding through carvq-1.6 beats INT2 at fewer bits.

Takes one to two minutes (model load, compression, three perplexity runs on the 8 standard windows).
"""


import pytest

from carvq_gguf.codec.baselines import rtn_quantize
from carvq_gguf.codec.bits import bpw
from carvq_gguf.data.models import smollm2_gguf
from carvq_gguf.codec.importance import text_token_weights
from carvq_gguf.data import bundled_text
from carvq_gguf.codec.compress import compress_matrix
from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm
from carvq_gguf.hf.model import replace_input_embedding, replace_input_matrix
from carvq_gguf.hf.perplexity import eval_windows, perplexity_from_logprobs, tokenize_text, window_logprobs

@pytest.mark.slow
def test_smollm2_carvq_1_6_beats_int2():
    model, tokenizer = load_causal_lm(smollm2_gguf(), need_tokenizer=True)
    E = input_embedding_matrix(model)
    weights = text_token_weights(bundled_text("calib.txt").read_text(), lambda t: tokenize_text(tokenizer, t),
                                 E.shape[0])
    state = compress_matrix(E, "carvq-1.6", weights, progress=False)
    assert bpw(state) <= 1.6
    windows = eval_windows(tokenize_text(tokenizer, bundled_text("eval.txt").read_text()), 8, 512)
    original = perplexity_from_logprobs(window_logprobs(model, windows), windows)
    previous = replace_input_embedding(model, state)
    carvq = perplexity_from_logprobs(window_logprobs(model, windows), windows)
    model.set_input_embeddings(previous)
    replace_input_matrix(model, rtn_quantize(E, 2))
    int2 = perplexity_from_logprobs(window_logprobs(model, windows), windows)
    assert original < carvq < int2, (original, carvq, int2)
