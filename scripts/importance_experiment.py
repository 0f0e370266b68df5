"""Compare row-importance weightings (calibration frequency vs model Fisher) for a preset, in PyTorch.

Prints perplexity and KL(original || compressed) on eval.txt (8 windows of 512, second half
scored), with only the input embedding replaced and the tied head kept as the original.
Usage: python scripts/importance_experiment.py MODEL.gguf [preset ...] [--fisher-tokens N]
"""

from __future__ import annotations

import argparse
import time

import torch

from carvq_gguf.codec.importance import token_weights
from carvq_gguf.data import bundled_text
from carvq_gguf.codec.compress import compress_matrix
from carvq_gguf.hf.model import input_embedding_matrix, load_causal_lm, untie_output_head
from carvq_gguf.hf.importance import fisher_token_weights
from carvq_gguf.codec.embedding import CarvqEmbedding
from carvq_gguf.hf.perplexity import eval_windows, kl_divergence, perplexity_from_logprobs, tokenize_text, window_logprobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("presets", nargs="*", default=["carvq-1.6"])
    ap.add_argument("--fisher-tokens", type=int, default=4096)
    ap.add_argument("--power", type=float, nargs="*", default=[1.0])
    ap.add_argument("--no-frequency", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.source, need_tokenizer=True)
    untie_output_head(model)
    matrix = input_embedding_matrix(model)
    V = matrix.shape[0]
    calib = torch.tensor(tokenize_text(tok, bundled_text("calib.txt").read_text()))
    windows = eval_windows(tokenize_text(tok, bundled_text("eval.txt").read_text()), 8, 512)
    ref = window_logprobs(model, windows)
    print(f"original ppl {perplexity_from_logprobs(ref, windows):.3f}", flush=True)
    t = time.perf_counter()
    variants = {} if args.no_frequency else {"frequency": token_weights(calib.tolist(), V)}
    for p in args.power:
        variants[f"fisher^{p:g}"] = fisher_token_weights(model, calib, max_tokens=args.fisher_tokens, power=p)
    print(f"fisher weights in {time.perf_counter() - t:.1f} s", flush=True)
    emb = model.get_input_embeddings()
    for preset in args.presets:
        for name, w in variants.items():
            t = time.perf_counter()
            state = compress_matrix(matrix, preset, w, seed=0, progress=False)
            secs = time.perf_counter() - t
            with torch.no_grad():
                emb.weight.copy_(CarvqEmbedding(state).decode_all())
            lp = window_logprobs(model, windows)
            with torch.no_grad():
                emb.weight.copy_(matrix)
            print(f"{preset:<12} {name:<10} ppl {perplexity_from_logprobs(lp, windows):8.3f} "
                  f"KL {kl_divergence(ref, lp):.4f} fit {secs:.1f} s", flush=True)


if __name__ == "__main__":
    main()
