"""The codec: what a CARVQ embedding is (state), how it is fitted (k-means, RVQ, adaptor, presets,
importance weights) and decoded (the PyTorch reference), its bit cost and its own file format.
Knows nothing of GGUF or llama.cpp."""
