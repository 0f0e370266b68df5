"""Measurements and reports: llama-perplexity runs and their cache, the Pareto and AWQ reports,
and the PyTorch comparison behind `carvq-gguf compress`."""
