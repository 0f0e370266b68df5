"""CarvqEmbedding: shapes, dtypes, the FORMAT.md decode, state round trip and model surgery."""

import torch

from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.hf.model import replace_input_embedding
from carvq_gguf.codec.state import CarvqState

from conftest import make_random_state, save_tiny_llama


def _naive_decode(state: CarvqState, t: int) -> torch.Tensor:
    """docs/FORMAT.md "Decode", one token, written as plainly as possible."""
    r, h = state.rvq, state.rvq.subvector_dim
    S = state.embedding_dim // h
    out = torch.zeros(state.embedding_dim, dtype=torch.float32)
    for s in range(S):
        group = s if r.group_layout == "column" else (t * S + s) // r.group_size
        for level in range(r.levels):
            code = int(state.codes[t, level, s])
            out[s * h:(s + 1) * h] += state.codebooks[level, group, code].float()
    if state.adaptor.enabled:
        x = state.sigma0[t].float()
        for i, (w, b) in enumerate(state.linears):
            x = x.half().float() @ w.float().t() + b
            if i < len(state.norms):
                mean = x.mean()
                var = ((x - mean) ** 2).mean()
                x = (x - mean) / torch.sqrt(var + state.adaptor.norm_eps)
                x = torch.relu(x * state.norms[i][0] + state.norms[i][1])
        out += x
    for j, tid in enumerate(state.correction_ids.tolist()):
        if tid == t:
            out += state.correction_rows[j].float()
    return out


def test_decode_all_matches_naive_decode_column_and_block():
    for layout in ("column", "block"):
        state = make_random_state(group_layout=layout)
        decoded = CarvqEmbedding(state).decode_all()
        naive = torch.stack([_naive_decode(state, t) for t in range(state.vocab_size)])
        diff = (decoded - naive).abs()
        # F32 sums in a different order may flip one F16 rounding of an MLP input: allow that
        # rarely, demand agreement to F32 precision almost everywhere
        assert float(diff.max()) < 2e-3, layout
        assert float((diff > 1e-5).float().mean()) < 0.01, layout


def test_forward_shapes_and_dtype():
    state = make_random_state()
    emb = CarvqEmbedding(state)
    ids = torch.tensor([[0, 5, 95], [3, 3, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 64) and out.dtype == torch.float32
    assert torch.allclose(out[1, 0], out[1, 1], atol=2e-3)
    assert torch.allclose(out.reshape(-1, 64), emb.decode_all()[ids.reshape(-1)], atol=2e-3)


def test_without_adaptor_or_corrections():
    state = make_random_state(table_dim=0, n_corrections=0)
    emb = CarvqEmbedding(state)
    naive = torch.stack([_naive_decode(state, t) for t in range(state.vocab_size)])
    assert torch.allclose(emb.decode_all(), naive, atol=1e-6)


def test_to_state_round_trip():
    state = make_random_state()
    back = CarvqEmbedding(state).to_state()
    assert torch.equal(back.codes, state.codes) and torch.equal(back.codebooks, state.codebooks)
    assert torch.equal(back.sigma0, state.sigma0) and back.linears[1][0].dtype == torch.float16
    assert torch.equal(back.correction_rows, state.correction_rows)


def test_replace_input_embedding_keeps_tied_head(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_llama(tmp_path / "tiny", tie_word_embeddings=True, vocab_size=96)
    model = AutoModelForCausalLM.from_pretrained(path)
    head_before = model.get_output_embeddings().weight.detach().clone()
    state = make_random_state(vocab_size=96, embedding_dim=64)
    replace_input_embedding(model, state)
    assert isinstance(model.get_input_embeddings(), CarvqEmbedding)
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 3, 96) and torch.isfinite(logits).all()
