"""Subcommands of the carvq-gguf CLI, one module each."""
