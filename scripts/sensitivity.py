"""How much a model's next-token distribution moves for a given relative error in its input
embedding, and how compressible the embedding is: the measurements behind the "why do narrow
models suffer" section of docs/EXPERIMENTS.md.

For each model: the KL(original || noisy) on a text when every row gets isotropic Gaussian noise
of relative norm r (|noise_t| = r |e_t|), the share of the rows' energy held by their mean
vector, the spread of the centred spectrum (arithmetic over geometric mean of eigenvalues,
the coding gain a decorrelating transform could bring), and the same spread for the model's
Fisher with respect to an embedding row (hf/importance.embedding_fisher: how unevenly the
directions of an error cost), with the share of its trace in its 10 largest eigenvalues.
Usage: python scripts/sensitivity.py MODEL.gguf [MODEL.gguf ...] [--text prose.txt] [--ratio 0.3]
"""

from __future__ import annotations

import argparse
import math

import torch

from carvq_gguf.data import bundled_text
from carvq_gguf.hf.fit import bos_id
from carvq_gguf.hf.importance import embedding_fisher
from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm, replace_input_matrix, untie_output_head
from carvq_gguf.hf.perplexity import eval_windows, kl_divergence, tokenize_text, window_logprobs


def spread_db(eigenvalues: torch.Tensor) -> float:
    """Arithmetic over geometric mean of a symmetric matrix's eigenvalues, in dB."""
    eig = eigenvalues.double().clamp_min(1e-20)
    return 10 * math.log10(float(eig.mean() / eig.log().mean().exp()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--text", default="prose.txt", help="bundled text name or a path")
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.2, 0.35])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for source in args.models:
        model, tokenizer = load_causal_lm(source, need_tokenizer=True)
        untie_output_head(model)
        matrix = input_embedding_matrix(model)
        V, n = matrix.shape
        path = bundled_text(args.text) if "/" not in args.text else args.text
        windows = eval_windows(tokenize_text(tokenizer, open(path, encoding="utf-8").read()), args.windows, 512)
        bos = bos_id(tokenizer)
        if bos is not None:
            windows[:, 0] = bos
        reference = window_logprobs(model, windows)
        energy = matrix.pow(2).sum(1).mean()
        centred = (matrix - matrix.mean(0)).double()
        data = torch.linalg.eigvalsh(centred.T @ centred / V)
        with torch.enable_grad():
            fisher = torch.linalg.eigvalsh(embedding_fisher(model, windows)).clamp_min(1e-20)
        print(f"{source}: V={V} n={n} mean-vector energy share {float(matrix.mean(0).pow(2).sum() / energy):.3f}, "
              f"decorrelation gain {spread_db(data):.2f} dB, "
              f"Fisher spread {spread_db(fisher):.2f} dB (top-10 share {float(fisher[-10:].sum() / fisher.sum()):.3f})",
              flush=True)
        g = torch.Generator().manual_seed(0)
        original = model.get_input_embeddings()
        for ratio in args.ratio:
            noise = torch.randn(matrix.shape, generator=g)
            noise *= (ratio * matrix.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True))
            replace_input_matrix(model, matrix + noise)
            kl = kl_divergence(reference, window_logprobs(model, windows))
            model.set_input_embeddings(original)
            print(f"  relative row error {ratio:.2f}: KL {kl:.4f}", flush=True)


if __name__ == "__main__":
    main()
