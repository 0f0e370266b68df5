"""GGUF files: every key and tensor name, the CARVQ keys and tensors in and out, the rewrite of a
model with its other tensors copied byte for byte, and tensor summaries. Knows nothing of
evaluation."""
