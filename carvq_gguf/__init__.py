"""carvq-gguf: CARVQ token-embedding compression for llama.cpp GGUF models."""

from .state import AdaptorConfig, CarvqError, CarvqState, RvqConfig

__all__ = ["AdaptorConfig", "CarvqError", "CarvqState", "RvqConfig"]
__version__ = "0.1.0"
