"""Hugging Face models in PyTorch: loading, tokenizing, swapping the input embedding, perplexity."""
