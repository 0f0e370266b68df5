"""carvq-gguf: CARVQ token-embedding compression for llama.cpp GGUF models.

The codec names are imported on first use, so that the runtime layer (downloading and building
llama.cpp) works in an environment that has no torch yet.
"""

from .errors import CarvqError

__all__ = ["AdaptorConfig", "CarvqError", "CarvqState", "RvqConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("AdaptorConfig", "CarvqState", "RvqConfig"):
        from .codec import state
        return getattr(state, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
