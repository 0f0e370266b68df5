"""The converter: HF model directory or GGUF in, CARVQ-GGUF out."""
